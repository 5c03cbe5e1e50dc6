//! IP-Adapter units through the A1111 ControlNet extension API of `sd serve` and `sd worker` (the tiny SD1 / SDXL
//! fixture models, the tiny random adapters and image encoder of scripts/fixtures/gen_94_ip_adapter.py, whose
//! diffusers parity `sd-pipeline`'s `ip_adapter` tests check):
//! - a unit naming an IP-Adapter file, as webuiapi's `ControlNetUnit` sends it, gives `sd generate --ip-adapter …
//!   --ip-image … --ip-scale …`'s pixels and parameters text, alone or mixed with a ControlNet unit, on SD1 and
//!   SDXL, and through a Redis `sd worker`;
//! - adapters are listed by `/controlnet/model_list`, their modules by `/controlnet/module_list`;
//! - bad units (unknown model, another family's adapter, unreadable picture, too many units, a guidance window,
//!   FaceID, an IP-Adapter module on a ControlNet) are A1111-shaped 4xx errors and the server stays healthy.
//!
//! Served PNGs are compared by pixels and by their parameters text: the files themselves differ in per-image ids
//! and times (AIGC ProduceID, XMP CreateDate), as in `controlnet_units`.

use crate::server;

use base64::Engine as _;
use sd_test_support::fixtures;
use serde_json::{json, Value};
use server::Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn fx(p: &str) -> String {
    fixtures().join(p).to_str().unwrap().to_string()
}

fn adapter(file: &str) -> String {
    fx(&format!("ip_adapter/models/{file}"))
}

fn picture() -> String {
    fx("ip_adapter/picture.png")
}

/// A folder laid out like A1111's `models/ControlNet` with IP-Adapters: a ControlNet, SD1 and SDXL adapter files
/// (one as `.bin`) and the image encoder as `image_encoder/` (h94's layout), all links to the fixtures.
fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let link = |from: String, to: &str| std::os::unix::fs::symlink(from, dir.path().join(to)).unwrap();
    link(fx("models/controlnet-sd1"), "controlnet-sd1");
    for f in ["ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors", "ip-adapter_sdxl.safetensors"] {
        link(adapter(f), f);
    }
    link(adapter("ip-adapter_sd15.bin"), "ip-adapter-bin_sd15.bin");
    link(adapter("image_encoder"), "image_encoder");
    dir
}

/// `sd generate` on a tiny fixture model: 32×32, 4 Euler steps, CFG 7, f32, one thread (as `controlnet_units`).
fn generate(model: &str, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a red circle", "--model", &fx(&format!("models/{model}")), "--steps", "4"]);
    c.args(["--dtype", "f32", "--threads", "1", "-q", "--seed", "5", "-W", "32", "-H", "32", "--sampler", "Euler"]);
    c.args(["--safety", "off", "--no-watermark", "--no-c2pa", "-n", "blurry"]);
    c.arg("--output").arg(out.join("{n}.png"));
    c
}

/// Run `sd generate` and return its one PNG.
fn generated(cmd: &mut Command, out: &Path) -> Vec<u8> {
    let o = cmd.output().expect("run sd generate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out.join("000.png")).unwrap()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().expect("client")
}

fn b64_file(p: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
}

fn png_of(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

fn px(png: &[u8]) -> Vec<u8> {
    image::load_from_memory(png).unwrap().to_rgb8().into_raw()
}

fn params(png: &[u8]) -> String {
    sd_provenance::inspect::inspect_bytes("png", png).unwrap().parameters_raw.unwrap()
}

/// A unit as webuiapi's `ControlNetUnit.to_dict()` sends it (its defaults: "Resize and Fill", thresholds 64).
fn unit(module: &str, model: &str, image: &str, weight: f64) -> Value {
    json!({"image": b64_file(image), "mask": null, "module": module, "model": model, "weight": weight,
           "resize_mode": "Resize and Fill", "low_vram": false, "processor_res": 512, "threshold_a": 64,
           "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
           "pixel_perfect": false, "hr_option": "Both", "enabled": true})
}

fn body(units: Vec<Value>) -> Value {
    json!({"prompt": "a red circle", "negative_prompt": "blurry", "seed": 5, "steps": 4, "width": 32, "height": 32,
           "cfg_scale": 7, "sampler_name": "Euler", "alwayson_scripts": {"controlnet": {"args": units}}})
}

/// POST txt2img: (status, body text).
fn post(url: &str, b: &Value) -> (u16, String) {
    let r = client().post(format!("{url}/sdapi/v1/txt2img")).json(b).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// POST txt2img, expecting 200: the first image.
fn image_of(url: &str, b: &Value) -> Vec<u8> {
    let (code, text) = post(url, b);
    assert_eq!(code, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    png_of(r["images"][0].as_str().unwrap())
}

fn serve(model: &str, dir: &Path) -> Server {
    Server::start_with_model(
        &fixtures().join(format!("models/{model}")),
        &["--controlnet-dir", dir.to_str().unwrap(), "--safety", "off", "--no-watermark"],
    )
}

#[test]
fn ip_adapter_units_give_sd_generates_image_on_sd1() {
    let models = models_dir();
    let s = serve("sd1", models.path());
    let r: Value = client().get(format!("{}/controlnet/model_list", s.url)).send().unwrap().json().unwrap();
    assert_eq!(
        r["model_list"],
        json!(["controlnet-sd1", "ip-adapter-bin_sd15", "ip-adapter-plus_sd15", "ip-adapter_sd15", "ip-adapter_sdxl"]),
        "{r}"
    );
    let r: Value = client().get(format!("{}/controlnet/module_list", s.url)).send().unwrap().json().unwrap();
    for m in ["none", "canny", "ip-adapter-auto", "ip-adapter_clip_sd15", "ip-adapter_clip_sdxl_plus_vith"] {
        assert!(r["module_list"].as_array().unwrap().contains(&json!(m)), "{m}: {r}");
        assert!(r["module_detail"][m].is_object(), "{m}: {r}");
    }

    // One adapter: the extension's model name with its hash suffix, the sd15 preprocessor.
    let single = body(vec![unit("ip-adapter_clip_sd15", "ip-adapter_sd15 [6a3f6166]", &picture(), 0.8)]);
    let served = image_of(&s.url, &single);
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate("sd1", dir.path());
    c.args(["--ip-adapter", &adapter("ip-adapter_sd15.safetensors"), "--ip-image", &picture(), "--ip-scale", "0.8"]);
    let single_file = generated(&mut c, dir.path());
    assert_eq!(px(&served), px(&single_file), "served pixels differ from sd generate --ip-adapter's");
    assert_eq!(params(&served), params(&single_file), "parameters differ");
    let p = params(&served);
    assert!(p.contains("ControlNet 0: \"Module: ip-adapter_clip, Model: ip-adapter_sd15, Weight: 0.8"), "{p}");
    // The adapter changes the picture, and the same unit again (adapter now loaded) gives the same image.
    let plain = image_of(&s.url, &body(vec![]));
    assert_ne!(px(&plain), px(&single_file), "the IP-Adapter unit had no effect");
    assert_eq!(px(&image_of(&s.url, &single)), px(&single_file), "a second request differs");
    // The `.bin` form of the same weights, chosen by its tensor names, not its file name: the same pixels.
    let bin = image_of(&s.url, &body(vec![unit("ip-adapter-auto", "ip-adapter-bin_sd15", &picture(), 0.8)]));
    assert_eq!(px(&bin), px(&single_file), "the .bin adapter differs from the .safetensors one");

    // Mixed: an IP-Adapter unit (plus, ip-adapter-auto) before a ControlNet unit; the parameters number the
    // ControlNet first, as `sd generate` does.
    let mut cn = unit("none", "controlnet-sd1", &fx("controlnet/control.png"), 0.7);
    cn["resize_mode"] = json!("Crop and Resize");
    let mixed = body(vec![unit("ip-adapter-auto", "ip-adapter-plus_sd15", &picture(), 0.6), cn]);
    let served = image_of(&s.url, &mixed);
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate("sd1", dir.path());
    c.args(["--controlnet", &fx("models/controlnet-sd1"), "--control-image", &fx("controlnet/control.png")]);
    c.args(["--control-scale", "0.7", "--ip-adapter", &adapter("ip-adapter-plus_sd15.safetensors")]);
    c.args(["--ip-image", &picture(), "--ip-scale", "0.6"]);
    let file = generated(&mut c, dir.path());
    assert_eq!(px(&served), px(&file), "mixed units: served pixels differ from sd generate's");
    let p = params(&served);
    assert_eq!(p, params(&file), "mixed units: parameters differ");
    assert!(
        p.contains("ControlNet 0: \"Module: none, Model: controlnet-sd1")
            && p.contains("ControlNet 1: \"Module: ip-adapter_clip, Model: ip-adapter-plus_sd15, Weight: 0.6"),
        "{p}"
    );

    // Bad units: A1111-shaped 4xx naming the field; the server keeps serving.
    let ip = |model: &str| unit("ip-adapter_clip_sd15", model, &picture(), 0.8);
    let cases: Vec<(Value, u16, Vec<&str>)> = vec![
        (body(vec![ip("nope")]), 404, vec!["args[0].model", "unknown ControlNet", "nope", "ip-adapter_sd15"]),
        (
            body(vec![ip("ip-adapter_sdxl")]),
            400,
            vec!["ip-adapter_sdxl", "cross_attention_dim is 16", "made for another base model"],
        ),
        (body(vec![ip("controlnet-sd1")]), 422, vec!["args[0].model", "is not an IP-Adapter file"]),
        (
            body(vec![unit("ip-adapter_face_id_plus", "ip-adapter_sd15", &picture(), 0.8)]),
            422,
            vec!["args[0].module", "FaceID"],
        ),
        (
            body(vec![unit("canny", "ip-adapter_sd15", &picture(), 0.8)]),
            422,
            vec!["args[0].module", "is an IP-Adapter"],
        ),
        (
            body(vec![unit("ip-adapter-auto", "ip-adapter_sd15", &picture(), 11.0)]),
            400,
            vec!["args[0].weight", "[0, 10]"],
        ),
        (body(vec![ip("ip-adapter_sd15"); 9]), 400, vec!["9 enabled IP-Adapter units", "IP-Adapters limit of 8"]),
    ];
    for (b, want_code, want) in cases {
        let (code, text) = post(&s.url, &b);
        assert_eq!(code, want_code, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v["error"].is_string() && v["detail"].is_string(), "not A1111's error shape: {v}");
        for w in want {
            assert!(text.contains(w), "{w:?} not in {text}");
        }
    }
    let mut b = body(vec![ip("ip-adapter_sd15")]);
    b["alwayson_scripts"]["controlnet"]["args"][0]["image"] = json!("bm90IGFuIGltYWdl");
    let (code, text) = post(&s.url, &b);
    assert!(code == 400 || code == 422, "{code} {text}");
    assert!(text.contains("args[0].image"), "{text}");
    for (field, v) in [("guidance_start", 0.25), ("guidance_end", 0.5)] {
        let mut b = body(vec![ip("ip-adapter_sd15")]);
        b["alwayson_scripts"]["controlnet"]["args"][0][field] = json!(v);
        let (code, text) = post(&s.url, &b);
        assert_eq!(code, 422, "{text}");
        assert!(text.contains(&format!("args[0].{field}")) && text.contains("partial windows"), "{text}");
    }
    // Still healthy, and the good request still gives `sd generate`'s image.
    assert_eq!(px(&image_of(&s.url, &single)), px(&single_file), "the bad requests changed the server's state");
}

#[test]
fn ip_adapter_unit_gives_sd_generates_image_on_sdxl() {
    let models = models_dir();
    let s = serve("sdxl", models.path());
    let served = image_of(&s.url, &body(vec![unit("ip-adapter_clip_sdxl", "ip-adapter_sdxl", &picture(), 0.8)]));
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate("sdxl", dir.path());
    c.args(["--ip-adapter", &adapter("ip-adapter_sdxl.safetensors"), "--ip-image", &picture(), "--ip-scale", "0.8"]);
    let file = generated(&mut c, dir.path());
    assert_eq!(px(&served), px(&file), "SDXL: served pixels differ from sd generate --ip-adapter's");
    assert_eq!(params(&served), params(&file), "SDXL: parameters differ");
    // An SD1.5 adapter on SDXL: a clear error, and the server goes on.
    let (code, text) = post(&s.url, &body(vec![unit("ip-adapter_clip_sd15", "ip-adapter_sd15", &picture(), 1.0)]));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("ip-adapter_sd15") && text.contains("made for another base model"), "{text}");
    let again = image_of(&s.url, &body(vec![unit("ip-adapter_clip_sdxl", "ip-adapter_sdxl", &picture(), 0.8)]));
    assert_eq!(px(&again), px(&file));
}

/// A front end on Redis and one `sd worker`: the job, units serialised through Redis, gives `sd generate`'s image.
#[test]
fn ip_adapter_unit_runs_on_a_redis_worker() {
    let models = models_dir();
    let dir = tempfile::tempdir().unwrap();
    let redis = crate::queue_redis::Redis::start(dir.path(), false);
    let m = models.path().to_str().unwrap();
    let front =
        Server::start_with_model(&fixtures().join("models/sd1"), &["--queue", &redis.url(), "--controlnet-dir", m]);
    let log = dir.path().join("worker.log");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["worker", "--queue", &redis.url(), "--name", "ipw", "--model", &fx("models/sd1")])
        .args(["--dtype", "f32", "--threads", "1", "--controlnet-dir", m, "--safety", "off", "--no-watermark"])
        .args(["--ip-encoder", &adapter("image_encoder")])
        .env("SD_LOG", "info")
        .env("SD_RS_CONFIG_DIR", dir.path().join("config"))
        .env_remove("SD_C2PA_CERT")
        .env_remove("SD_C2PA_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start sd worker");
    let b = body(vec![unit("ip-adapter_clip_sd15", "ip-adapter-plus_sd15", &picture(), 0.6)]);
    let (code, text) = post(&front.url, &b);
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(code, 200, "{text}\nworker:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let r: Value = serde_json::from_str(&text).unwrap();
    let served = png_of(r["images"][0].as_str().unwrap());
    let out: PathBuf = dir.path().join("ref");
    std::fs::create_dir_all(&out).unwrap();
    let mut c = generate("sd1", &out);
    c.args(["--ip-adapter", &adapter("ip-adapter-plus_sd15.safetensors"), "--ip-image", &picture()]);
    c.args(["--ip-scale", "0.6"]);
    let file = generated(&mut c, &out);
    assert_eq!(px(&served), px(&file), "worker pixels differ from sd generate's");
    assert_eq!(params(&served), params(&file), "worker parameters differ");
}

/// `--ip-encoder` names image encoder folders; anything else is a usage error (exit 2) before anything starts.
#[test]
fn ip_encoder_flags_are_checked() {
    let sd1 = fx("models/sd1");
    let config = tempfile::tempdir().unwrap();
    for args in [
        vec!["serve", "--model", &sd1, "--port", "0", "--ip-encoder", &sd1],
        vec!["worker", "--queue", "redis://127.0.0.1:1", "--model", &sd1, "--ip-encoder", &sd1],
    ] {
        let o =
            Command::new(env!("CARGO_BIN_EXE_sd")).args(&args).env("SD_RS_CONFIG_DIR", config.path()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--ip-encoder") && err.contains("not an image encoder folder"), "{args:?}: {err}");
    }
}
