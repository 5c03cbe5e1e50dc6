//! `sd serve` through real HTTP: A1111 and OpenAI shapes, byte-identical pixels with `sd generate`, concurrency,
//! interrupt, skip, the jobs API with its event stream, cancel, the queue limit, model switching, metrics.
//! Every test starts its own server on a free port with the self-trained demo model (32×32 px).

use crate::server;

use base64::Engine as _;
use serde_json::{json, Value};
use server::Server;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().expect("client")
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().expect("request");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = client().get(format!("{}{path}", s.url)).send().expect("request");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// RGB pixels and size of a base64 PNG.
fn pixels(png_b64: &str) -> (u32, u32, Vec<u8>) {
    let img = image::load_from_memory(&b64(png_b64)).expect("a PNG").to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

fn file_pixels(path: &Path) -> Vec<u8> {
    image::open(path).expect("PNG written by sd generate").to_rgb8().into_raw()
}

/// The A1111 `parameters` text stored in a PNG.
fn parameters_chunk(png: &[u8]) -> String {
    sd_provenance::inspect::inspect_bytes("png", png).expect("inspect").parameters_raw.expect("a parameters chunk")
}

/// What the `webuiapi` package sends besides the fields a caller sets (its defaults, copied from its signature).
fn webuiapi_defaults() -> Value {
    json!({
        "enable_hr": false, "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2,
        "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_checkpoint_name": null, "hr_sampler_name": null, "hr_scheduler": null, "hr_prompt": "",
        "hr_negative_prompt": "", "styles": [], "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "restore_faces": false, "tiling": false, "do_not_save_samples": false,
        "do_not_save_grid": false, "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": true, "scheduler": "automatic",
        "sampler_index": "Euler a", "script_name": null, "script_args": [], "send_images": true,
        "save_images": false, "alwayson_scripts": {},
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

fn sd_generate(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .arg("generate")
        .arg("--model")
        .arg(server::tiny_model())
        .args(["--dtype", "f32", "--threads", "1", "-q", "--overwrite"])
        .args(args)
        .output()
        .expect("run sd generate");
    assert!(out.status.success(), "sd generate failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a1111_txt2img_gives_sd_generates_pixels_and_parameters_in_a1111_shapes() {
    let s = Server::start(&[]);
    let body = merge(
        webuiapi_defaults(),
        json!({"prompt": "a yellow circle on a blue background", "negative_prompt": "red", "seed": 42, "steps": 8,
               "width": 32, "height": 32, "cfg_scale": 5, "sampler_name": "Euler a", "batch_size": 2, "n_iter": 2}),
    );
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let images = r["images"].as_array().expect("images");
    assert_eq!(images.len(), 4);
    assert_eq!(r["parameters"]["prompt"], "a yellow circle on a blue background");
    // A1111 returns `info` as a JSON string; clients do json.loads(r["info"]).
    let info: Value = serde_json::from_str(r["info"].as_str().expect("info is a string")).expect("info is JSON");
    assert_eq!(info["seed"], 42);
    assert_eq!(info["all_seeds"], json!([42, 42, 43, 43]), "one seed per batch, seed + 1 per batch");
    assert_eq!(info["infotexts"].as_array().map(Vec::len), Some(4));
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(info["sd_model_name"], "sd-tiny-shapes");
    assert_eq!(info["width"], 32);
    assert!(info["job_timestamp"].as_str().is_some_and(|t| t.len() == 14));

    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("{n}.png");
    sd_generate(&[
        "a yellow circle on a blue background",
        "-n",
        "red",
        "--seed",
        "42",
        "--steps",
        "8",
        "-W",
        "32",
        "-H",
        "32",
        "--cfg-scale",
        "5",
        "--sampler",
        "Euler a",
        "--batch-size",
        "2",
        "--batch-count",
        "2",
        "-o",
        pattern.to_str().unwrap(),
    ]);
    for (i, img) in images.iter().enumerate() {
        let file = dir.path().join(format!("{i:03}.png"));
        let (w, h, px) = pixels(img.as_str().unwrap());
        assert_eq!((w, h), (32, 32));
        assert_eq!(px, file_pixels(&file), "image {i}: served pixels differ from sd generate's");
        let served = parameters_chunk(&b64(img.as_str().unwrap()));
        assert_eq!(served, parameters_chunk(&std::fs::read(&file).unwrap()), "image {i}: parameters differ");
        assert_eq!(served, info["infotexts"][i], "infotexts[{i}] is the PNG's parameters chunk");
    }
}

#[test]
fn img2img_and_inpainting_give_sd_generates_pixels() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // An init image and a mask (left half repainted).
    let init = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
    let mask = image::GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 255 } else { 0 }]));
    let (init_path, mask_path) = (dir.path().join("init.png"), dir.path().join("mask.png"));
    init.save(&init_path).unwrap();
    mask.save(&mask_path).unwrap();
    let enc = |p: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());

    let body = json!({"prompt": "a red square", "seed": 7, "steps": 10, "width": 32, "height": 32,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "denoising_strength": 0.6,
        "init_images": [format!("data:image/png;base64,{}", enc(&init_path))]});
    let (code, r) = post(&s, "/sdapi/v1/img2img", &body);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["parameters"]["init_images"], Value::Null, "init images are not echoed back (A1111 default)");
    let out = dir.path().join("i2i-{n}.png");
    sd_generate(&[
        "a red square",
        "--seed",
        "7",
        "--steps",
        "10",
        "-W",
        "32",
        "-H",
        "32",
        "--sampler",
        "DPM++ 2M Karras",
        "--init-image",
        init_path.to_str().unwrap(),
        "--strength",
        "0.6",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(pixels(r["images"][0].as_str().unwrap()).2, file_pixels(&dir.path().join("i2i-000.png")));

    let body = json!({"prompt": "a red square", "seed": 9, "steps": 10, "width": 32, "height": 32,
        "sampler_name": "Euler", "denoising_strength": 0.8, "init_images": [enc(&init_path)], "mask": enc(&mask_path),
        "inpainting_fill": 1, "inpaint_full_res": false, "mask_blur": 0, "inpainting_mask_invert": 0});
    let (code, r) = post(&s, "/sdapi/v1/img2img", &body);
    assert_eq!(code, 200, "{r}");
    let out = dir.path().join("inp-{n}.png");
    sd_generate(&[
        "a red square",
        "--seed",
        "9",
        "--steps",
        "10",
        "-W",
        "32",
        "-H",
        "32",
        "--sampler",
        "Euler",
        "--init-image",
        init_path.to_str().unwrap(),
        "--mask",
        mask_path.to_str().unwrap(),
        "--strength",
        "0.8",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(pixels(r["images"][0].as_str().unwrap()).2, file_pixels(&dir.path().join("inp-000.png")));
    // A1111's defaults for these fields would silently give another image: refused, naming the field.
    let mut bad = body.clone();
    bad["inpaint_full_res"] = json!(true);
    let (code, r) = post(&s, "/sdapi/v1/img2img", &bad);
    assert_eq!(code, 422, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("inpaint_full_res"), "{r}");
}

#[test]
fn eight_concurrent_requests_each_get_the_image_they_get_alone() {
    let s = Server::start(&[]);
    let body = |seed: u64| json!({"prompt": "a green triangle", "seed": seed, "steps": 6, "width": 32, "height": 32});
    let alone: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let (code, r) = post(&s, "/sdapi/v1/txt2img", &body(100 + i));
            assert_eq!(code, 200, "{r}");
            pixels(r["images"][0].as_str().unwrap()).2
        })
        .collect();
    let url = s.url.clone();
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let url = url.clone();
            let b = body(100 + i);
            std::thread::spawn(move || {
                let r: Value =
                    client().post(format!("{url}/sdapi/v1/txt2img")).json(&b).send().expect("request").json().unwrap();
                pixels(r["images"][0].as_str().expect("an image")).2
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().expect("thread"), alone[i], "concurrent request {i} got another image than alone");
    }
}

/// Wait until the running job has done at least `step` steps.
fn wait_for_step(s: &Server, step: u64) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, p) = get(s, "/sdapi/v1/progress");
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= step {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress within 60 s: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interrupt_and_skip_return_what_sampling_reached() {
    let s = Server::start(&[]);
    let url = s.url.clone();
    let long = json!({"prompt": "a blue circle", "seed": 1, "steps": 150, "width": 128, "height": 128});
    let b = long.clone();
    let waiter = std::thread::spawn(move || {
        client().post(format!("{url}/sdapi/v1/txt2img")).json(&b).send().expect("request").json::<Value>().unwrap()
    });
    let p = wait_for_step(&s, 2);
    assert_eq!(p["state"]["sampling_steps"], 150, "{p}");
    assert!(p["progress"].as_f64().unwrap() > 0.0 && p["progress"].as_f64().unwrap() < 0.5, "{p}");
    assert!(p["eta_relative"].as_f64().unwrap() > 0.0, "{p}");
    let (code, _) = post(&s, "/sdapi/v1/interrupt", &json!({}));
    assert_eq!(code, 200);
    let r = waiter.join().unwrap();
    assert_eq!(r["images"].as_array().map(Vec::len), Some(1), "an interrupted job returns what it has: {r}");
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["interrupted"], true);
    let (_, idle) = get(&s, "/sdapi/v1/progress");
    assert_eq!(idle["state"]["job_count"], 0, "nothing runs afterwards: {idle}");

    // Skip ends the current batch early and goes on with the next.
    let url = s.url.clone();
    let mut b = long.clone();
    b["n_iter"] = json!(2);
    b["steps"] = json!(40);
    let waiter = std::thread::spawn(move || {
        client().post(format!("{url}/sdapi/v1/txt2img")).json(&b).send().expect("request").json::<Value>().unwrap()
    });
    wait_for_step(&s, 2);
    post(&s, "/sdapi/v1/skip", &json!({}));
    let r = waiter.join().unwrap();
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(r["images"].as_array().map(Vec::len), Some(2), "both batches return an image");
    assert_eq!(info["interrupted"], false);
    assert_eq!(info["all_seeds"], json!([1, 2]));
}

#[test]
fn jobs_api_queue_events_images_cancel_and_the_queue_limit() {
    let s = Server::start(&["--max-queue", "1"]);
    let long = json!({"prompt": "a blue circle", "seed": 3, "steps": 150, "width": 128, "height": 128});
    let short = json!({"prompt": "a red square", "seed": 4, "steps": 6, "width": 32, "height": 32});
    let (code, a) = post(&s, "/v1/jobs", &long);
    assert_eq!(code, 202, "{a}");
    let a_id = a["id"].as_str().unwrap().to_string();
    wait_for_step(&s, 1);
    let (code, b) = post(&s, "/v1/jobs", &short);
    assert_eq!(code, 202, "{b}");
    assert_eq!(b["status"], "queued");
    assert_eq!(b["queue_position"], 0);
    // The queue holds one job: the next is refused with 429 and Retry-After.
    let r = client().post(format!("{}/v1/jobs", s.url)).json(&short).send().unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some(), "429 carries Retry-After");
    let e: Value = r.json().unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("queue is full"), "{e}");
    // Cancel the queued job, then the running one.
    let b_id = b["id"].as_str().unwrap();
    let r: Value = client().delete(format!("{}/v1/jobs/{b_id}", s.url)).send().unwrap().json().unwrap();
    assert_eq!(r["status"], "cancelled", "{r}");
    client().delete(format!("{}/v1/jobs/{a_id}", s.url)).send().unwrap();
    let t0 = Instant::now();
    let a = loop {
        let (_, v) = get(&s, &format!("/v1/jobs/{a_id}"));
        if v["status"] != "running" {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "cancel did not stop the job: {v}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(a["status"], "cancelled", "{a}");
    assert!(a.get("images").is_none(), "a cancelled job returns no images: {a}");

    // A job followed through its event stream to the end, then its image fetched as a file.
    let (code, d) = post(&s, "/v1/jobs", &short);
    assert_eq!(code, 202);
    let d_id = d["id"].as_str().unwrap();
    let text = client().get(format!("{}/v1/jobs/{d_id}/events", s.url)).send().unwrap().text().unwrap();
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events.last(), Some(&"done"), "the stream ends with `done`: {events:?}");
    let last_data = text.lines().rev().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let done: Value = serde_json::from_str(last_data).unwrap();
    assert_eq!(done["images"].as_array().map(Vec::len), Some(1));
    let (_, v) = get(&s, &format!("/v1/jobs/{d_id}"));
    assert_eq!(v["status"], "done");
    assert_eq!(v["progress"], 1.0);
    let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([4]));
    let r = client().get(format!("{}/v1/jobs/{d_id}/images/0.png", s.url)).send().unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().unwrap();
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 32);
    assert_eq!(get(&s, &format!("/v1/jobs/{d_id}/images/1.png")).0, 404);
    assert_eq!(get(&s, "/v1/jobs/00000000-0000-4000-8000-000000000000").0, 404);
    assert_eq!(get(&s, "/v1/jobs/../../etc/passwd").0, 404);
}

#[test]
fn listings_options_model_switching_png_info_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&server::tiny_model(), &models.join("tiny-copy"));
    let loras = dir.path().join("loras");
    std::fs::create_dir_all(&loras).unwrap();
    std::fs::write(loras.join("ink.safetensors"), b"not read by the listing").unwrap();
    let s = Server::start(&["--models-dir", models.to_str().unwrap(), "--lora-dir", loras.to_str().unwrap()]);

    let (_, samplers) = get(&s, "/sdapi/v1/samplers");
    let names: Vec<&str> = samplers.as_array().unwrap().iter().filter_map(|x| x["name"].as_str()).collect();
    for want in ["Euler a", "Euler", "DPM++ 2M", "DDIM", "DPM++ 2M SDE"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let (_, sch) = get(&s, "/sdapi/v1/schedulers");
    assert!(sch.as_array().unwrap().iter().any(|x| x["name"] == "karras" && x["label"] == "Karras"));
    let (_, m) = get(&s, "/sdapi/v1/sd-models");
    let m = m.as_array().unwrap();
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0]["model_name"], "sd-tiny-shapes");
    let hash = m[0]["hash"].as_str().unwrap();
    assert_eq!(m[0]["title"], format!("sd-tiny-shapes [{hash}]"));
    assert_eq!(m[1]["model_name"], "tiny-copy");
    let (_, l) = get(&s, "/sdapi/v1/loras");
    assert_eq!(l[0]["name"], "ink");
    assert_eq!(get(&s, "/sdapi/v1/embeddings").1, json!({"loaded": {}, "skipped": {}}));
    assert_eq!(get(&s, "/sdapi/v1/scripts").1, json!({"txt2img": [], "img2img": []}));
    assert!(get(&s, "/sdapi/v1/upscalers").1.as_array().unwrap().iter().any(|u| u["name"] == "Lanczos"));
    // A1111's memory report: this process's resident set within the machine's memory; on the CPU no CUDA block.
    let (code, mem) = get(&s, "/sdapi/v1/memory");
    assert_eq!(code, 200);
    let (used, total) = (mem["ram"]["used"].as_f64().unwrap(), mem["ram"]["total"].as_f64().unwrap());
    assert!(used > 10e6 && used < total, "{mem}");
    assert_eq!(mem["ram"]["free"].as_f64().unwrap(), total - used);
    assert_eq!(mem["cuda"], json!({"error": "unavailable"}));
    let (_, o) = get(&s, "/sdapi/v1/options");
    assert_eq!(o["sd_model_checkpoint"], m[0]["title"]);
    let (_, oa) = get(&s, "/v1/models");
    assert_eq!(oa["data"].as_array().map(Vec::len), Some(2));

    // Switch models the A1111 way, and back for one request through override_settings.
    let (code, r) = post(&s, "/sdapi/v1/options", &json!({"sd_model_checkpoint": m[1]["title"]}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(get(&s, "/sdapi/v1/options").1["sd_model_checkpoint"], m[1]["title"]);
    let req = json!({"prompt": "a red square", "seed": 5, "steps": 4, "width": 32, "height": 32});
    let (_, r) = post(&s, "/sdapi/v1/txt2img", &req);
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "tiny-copy");
    let mut o = req.clone();
    o["override_settings"] = json!({"sd_model_checkpoint": "sd-tiny-shapes", "CLIP_stop_at_last_layers": 2});
    let (_, r) = post(&s, "/sdapi/v1/txt2img", &o);
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "sd-tiny-shapes");
    assert_eq!(info["clip_skip"], 2);
    assert!(info["infotexts"][0].as_str().unwrap().contains("Clip skip: 2"), "{info}");
    let (code, e) = post(&s, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "nope"}));
    assert_eq!(code, 404);
    assert!(e["detail"].as_str().unwrap().contains("tiny-copy"), "the error lists the models: {e}");

    // png-info reads back what the image carries.
    let (code, p) = post(&s, "/sdapi/v1/png-info", &json!({"image": r["images"][0]}));
    assert_eq!(code, 200, "{p}");
    assert!(p["info"].as_str().unwrap().contains("Seed: 5"), "{p}");
    assert_eq!(p["parameters"]["Seed"], "5");
    assert_eq!(p["parameters"]["Size-1"], "32");

    // LoRA names cannot leave the LoRA folder.
    for prompt in ["x <lora:../../etc/passwd:1>", "x <lora:/etc/passwd:1>", "x <lora:missing:1>"] {
        let (code, e) =
            post(&s, "/sdapi/v1/txt2img", &json!({"prompt": prompt, "width": 32, "height": 32, "steps": 2}));
        assert_eq!(code, 400, "{prompt}: {e}");
        assert!(e["detail"].as_str().unwrap().contains("LoRA"), "{e}");
    }

    let text = client().get(format!("{}/metrics", s.url)).send().unwrap().text().unwrap();
    for want in [
        "sd_jobs_total{outcome=\"done\"} 2",
        "sd_queue_depth 0",
        "sd_job_seconds_bucket",
        "sd_step_seconds_count",
        "sd_model_load_seconds",
        "sd_http_responses_total{class=\"4xx\"}",
    ] {
        assert!(text.contains(want), "metrics lack {want:?}:\n{text}");
    }
    let r = client().get(format!("{}/health", s.url)).send().unwrap();
    assert!(r.headers().get("x-request-id").is_some(), "responses carry a request id");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn openai_generations_and_edits() {
    let s = Server::start(&[]);
    let (code, r) = post(
        &s,
        "/v1/images/generations",
        &json!({"prompt": "a yellow circle", "n": 2, "size": "32x32", "response_format": "b64_json",
                "model": "sd-tiny-shapes", "seed": 11, "steps": 6, "quality": "standard", "user": "u1"}),
    );
    assert_eq!(code, 200, "{r}");
    assert!(r["created"].as_i64().unwrap() > 1_700_000_000);
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(pixels(data[0]["b64_json"].as_str().unwrap()).0, 32);
    // `url` responses point at the jobs API's image files.
    let (code, r) = post(
        &s,
        "/v1/images/generations",
        &json!({"prompt": "a red square", "size": "32x32", "response_format": "url", "steps": 4}),
    );
    assert_eq!(code, 200, "{r}");
    let url = r["data"][0]["url"].as_str().unwrap();
    let bytes = client().get(url).send().unwrap().bytes().unwrap();
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 32);
    // `size: auto` is the model's native size.
    let (_, r) = post(&s, "/v1/images/generations", &json!({"prompt": "a red square", "size": "auto", "steps": 2}));
    assert_eq!(pixels(r["data"][0]["b64_json"].as_str().unwrap()).0, 32);

    // Edits: an image and an OpenAI mask (transparent = repaint), as multipart.
    let mut png = Vec::new();
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 30, 30]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut mask = Vec::new();
    image::RgbaImage::from_fn(32, 32, |x, _| image::Rgba([0, 0, 0, if x < 16 { 0 } else { 255 }]))
        .write_to(&mut std::io::Cursor::new(&mut mask), image::ImageFormat::Png)
        .unwrap();
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png.clone()).file_name("in.png").mime_str("image/png").unwrap(),
        )
        .part(
            "mask",
            reqwest::blocking::multipart::Part::bytes(mask).file_name("mask.png").mime_str("image/png").unwrap(),
        )
        .text("prompt", "a blue circle")
        .text("seed", "3")
        .text("steps", "6")
        .text("response_format", "b64_json");
    let r = client().post(format!("{}/v1/images/edits", s.url)).multipart(form).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r: Value = r.json().unwrap();
    let (_, _, edited) = pixels(r["data"][0]["b64_json"].as_str().unwrap());
    // The kept half stays close to the input (inpainting re-encodes it through the VAE).
    let right: Vec<i32> =
        (0..32).flat_map(|y| (24..32).map(move |x| (y * 32 + x) * 3)).map(|i| edited[i as usize] as i32).collect();
    let mean_red = right.iter().sum::<i32>() as f64 / right.len() as f64;
    assert!(mean_red > 120.0, "the unmasked side should stay red-ish, mean red {mean_red}");

    let (code, e) = post(&s, "/v1/images/generations", &json!({"prompt": "x", "size": "33x32"}));
    assert_eq!(code, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["param"], "width");
    assert!(e["error"]["message"].as_str().unwrap().contains("multiple of 8"), "{e}");
    let (code, e) = post(&s, "/v1/images/generations", &json!({"prompt": "x", "model": "no-such-model"}));
    assert_eq!(code, 404, "{e}");
}

#[test]
fn taesd_previews_reach_progress_and_the_jobs_api() {
    // Real TAESD weights from the shared data folder (not committed here).
    // SD_TAESD_DIR overrides the location (a git worktree outside the workspace's parent).
    let taesd = std::env::var_os("SD_TAESD_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| server::root().join("../shared/data/taesd"));
    assert!(taesd.join("taesd_decoder.safetensors").is_file(), "missing {}: the shared data folder", taesd.display());
    let s = Server::start(&["--taesd", taesd.to_str().unwrap(), "--preview-every", "1"]);
    let (code, job) =
        post(&s, "/v1/jobs", &json!({"prompt": "a blue circle", "seed": 2, "steps": 150, "width": 128, "height": 128}));
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let preview = loop {
        let (_, p) = get(&s, "/sdapi/v1/progress");
        if let Some(img) = p["current_image"].as_str() {
            break img.to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no preview within 60 s: {p}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // TAESD decodes 8× the latent size: 128 px images have 64×64 latents in this 1/2-scale demo model.
    let img = image::load_from_memory(&b64(&preview)).expect("the preview is a PNG");
    assert_eq!((img.width(), img.height()), (512, 512));
    let (_, p) = get(&s, "/sdapi/v1/progress?skip_current_image=true");
    assert!(p["current_image"].is_null(), "skip_current_image leaves the preview out: {p}");
    let (_, v) = get(&s, &format!("/v1/jobs/{id}"));
    assert!(v["preview"].as_str().is_some_and(|p| !p.is_empty()), "the jobs API shows the preview: {}", v["status"]);
    post(&s, "/sdapi/v1/interrupt", &json!({}));
}

#[test]
fn hires_fix_through_a1111_gives_sd_generates_pixels() {
    let s = Server::start(&[]);
    let body = json!({"prompt": "a red square", "seed": 12, "steps": 6, "width": 32, "height": 32, "sampler_name": "Euler",
        "enable_hr": true, "hr_upscaler": "Lanczos", "hr_scale": 2, "hr_second_pass_steps": 8, "denoising_strength": 0.5,
        "hr_sampler_name": null, "hr_prompt": "", "hr_negative_prompt": "", "hr_checkpoint_name": null});
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let (w, h, px) = pixels(r["images"][0].as_str().unwrap());
    assert_eq!((w, h), (64, 64));
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    let infotext = info["infotexts"][0].as_str().unwrap();
    for want in
        ["Size: 32x32", "Denoising strength: 0.5", "Hires upscale: 2", "Hires steps: 8", "Hires upscaler: Lanczos"]
    {
        assert!(infotext.contains(want), "{want} missing: {infotext}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("{n}.png");
    sd_generate(&[
        "a red square",
        "--seed",
        "12",
        "--steps",
        "6",
        "-W",
        "32",
        "-H",
        "32",
        "--sampler",
        "Euler",
        "--hires-scale",
        "2",
        "--hires-steps",
        "8",
        "--hires-strength",
        "0.5",
        "-o",
        out.to_str().unwrap(),
    ]);
    let file = dir.path().join("000.png");
    assert_eq!(px, file_pixels(&file), "served hires pixels differ from sd generate's");
    assert_eq!(
        parameters_chunk(&b64(r["images"][0].as_str().unwrap())),
        parameters_chunk(&std::fs::read(&file).unwrap())
    );
}

/// `sd inspect --json FILE`: the report of a file the server sent.
fn inspect_json(bytes: &[u8], name: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(name);
    std::fs::write(&f, bytes).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["inspect", "--json"])
        .arg(&f)
        .env("SD_RS_CONFIG_DIR", dir.path().join("config"))
        .output()
        .unwrap();
    assert!(o.status.success(), "sd inspect: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()[0].clone()
}

/// A PNG signed by "another tool" (the c2pa crate used directly) whose creator sets `c2pa.ai_inference`.
fn signed_by_another_tool(inference: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = sd_provenance::credentials::Identity::local(dir.path()).unwrap();
    let key = std::fs::read(dir.path().join("c2pa/signer-key.pem")).unwrap();
    let def = json!({
        "claim_generator_info": [{"name": "a camera app", "version": "2.0"}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created",
                "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}},
            {"label": "c2pa.training-mining", "data": {"entries": {"c2pa.ai_inference": {"use": inference}}}},
        ],
    });
    let mut png = Vec::new();
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 90]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut b = c2pa::Builder::from_context(c2pa::Context::new()).with_definition(def.to_string().as_str()).unwrap();
    let signer = c2pa::create_signer::from_keys(id.chain_pem.as_bytes(), &key, id.alg, None).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    b.sign(signer.as_ref(), "image/png", &mut std::io::Cursor::new(png), &mut out).unwrap();
    out.into_inner()
}

#[test]
fn output_formats_content_credentials_and_creators_opt_outs() {
    let s = Server::start(&[]);
    // A1111 encodes its API images in the `samples_format` option, with the parameters in EXIF for JPEG/WebP.
    let (code, r) = post(&s, "/sdapi/v1/options", &json!({"samples_format": "jpg", "jpeg_quality": 85}));
    assert_eq!(code, 200, "{r}");
    let (_, o) = get(&s, "/sdapi/v1/options");
    assert_eq!((o["samples_format"].as_str(), o["jpeg_quality"].as_i64()), (Some("jpg"), Some(85)), "{o}");
    let body = merge(
        webuiapi_defaults(),
        json!({"prompt": "a red square", "seed": 7, "steps": 4, "width": 32, "height": 32, "sampler_name": "Euler"}),
    );
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let jpeg = b64(r["images"][0].as_str().unwrap());
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "a JPEG");
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    let (code, p) = post(&s, "/sdapi/v1/png-info", &json!({"image": r["images"][0]}));
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["info"], info["infotexts"][0], "PNG Info reads the EXIF parameters back");
    // The pixels `sd generate` writes to a .jpg at the same quality (signing changes no pixel).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.jpg");
    #[rustfmt::skip]
    sd_generate(&["a red square", "--seed", "7", "--steps", "4", "-W", "32", "-H", "32", "--sampler", "Euler",
        "--cfg-scale", "7", "--quality", "85", "--no-c2pa", "-o", file.to_str().unwrap()]);
    let served = image::load_from_memory(&jpeg).unwrap().to_rgb8().into_raw();
    assert_eq!(served, file_pixels(&file), "served JPEG pixels differ from sd generate's");
    // Signed Content Credentials, valid (the server's local CA is not a trust anchor here).
    let report = inspect_json(&jpeg, "served.jpg");
    assert_eq!(report["c2pa"]["state"], "Valid", "{report}");
    assert_eq!(report["c2pa"]["actions"], json!(["c2pa.created"]), "{report}");

    // OpenAI: `output_format` webp, and its `url` answer names the file with its extension and type.
    let (code, r) = post(
        &s,
        "/v1/images/generations",
        &json!({"prompt": "a blue circle", "size": "32x32", "steps": 3, "output_format": "webp",
                "response_format": "url"}),
    );
    assert_eq!(code, 200, "{r}");
    let url = r["data"][0]["url"].as_str().unwrap();
    assert!(url.ends_with("/images/0.webp"), "{url}");
    let resp = client().get(url).send().unwrap();
    assert_eq!(resp.headers()["content-type"], "image/webp");
    let webp = resp.bytes().unwrap().to_vec();
    assert_eq!((&webp[..4], &webp[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
    assert!(webp.windows(4).any(|w| w == b"VP8 "), "OpenAI's webp is lossy, at output_compression's quality");
    assert_eq!(inspect_json(&webp, "served.webp")["c2pa"]["state"], "Valid");
    let png_url = url.replace("0.webp", "0.png");
    assert_eq!(client().get(png_url).send().unwrap().status().as_u16(), 404, "the stored format only");

    // A1111's `webp_lossless` option: the pixels `sd generate --lossless` writes.
    let (code, r) = post(&s, "/sdapi/v1/options", &json!({"samples_format": "webp", "webp_lossless": true}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(get(&s, "/sdapi/v1/options").1["webp_lossless"], true);
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let lossless = b64(r["images"][0].as_str().unwrap());
    assert!(lossless.windows(4).any(|w| w == b"VP8L"), "webp_lossless gives VP8L");
    let file = dir.path().join("x.webp");
    #[rustfmt::skip]
    sd_generate(&["a red square", "--seed", "7", "--steps", "4", "-W", "32", "-H", "32", "--sampler", "Euler",
        "--cfg-scale", "7", "--lossless", "--no-c2pa", "-o", file.to_str().unwrap()]);
    assert_eq!(image::load_from_memory(&lossless).unwrap().to_rgb8().into_raw(), file_pixels(&file));
    let (code, r) = post(&s, "/sdapi/v1/options", &json!({"samples_format": "jpg", "webp_lossless": false}));
    assert_eq!(code, 200, "{r}");

    // img2img from an image whose creator reserved AI inference: 403 naming the reason; allowed: its manifest
    // becomes the output's parent ingredient.
    let img2img = |init: &[u8]| {
        let body = merge(
            webuiapi_defaults(),
            json!({"init_images": [base64::engine::general_purpose::STANDARD.encode(init)], "prompt": "a red square",
                   "seed": 1, "steps": 4, "width": 32, "height": 32, "denoising_strength": 0.5}),
        );
        post(&s, "/sdapi/v1/img2img", &body)
    };
    let (code, e) = img2img(&signed_by_another_tool("notAllowed"));
    assert_eq!(code, 403, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("c2pa.ai_inference: notAllowed"), "{e}");
    let (code, r) = img2img(&signed_by_another_tool("allowed"));
    assert_eq!(code, 200, "{r}");
    let report = inspect_json(&b64(r["images"][0].as_str().unwrap()), "edit.jpg");
    assert_eq!(report["c2pa"]["ingredients"][0], "init image (parentOf, with its own manifest)", "{report}");
    let (code, _) = get(&s, "/health");
    assert_eq!(code, 200);
}

#[test]
fn latent_hires_fix_with_its_own_sampler_and_prompt_matches_sd_generate() {
    let s = Server::start(&[]);
    let body = json!({"prompt": "a red square", "seed": 13, "steps": 6, "width": 32, "height": 32, "sampler_name": "Euler",
        "enable_hr": true, "hr_upscaler": "Latent (bicubic)", "hr_scale": 2, "hr_second_pass_steps": 8,
        "denoising_strength": 0.6, "hr_sampler_name": "Euler a", "hr_prompt": "a blue circle",
        "hr_negative_prompt": "", "hr_checkpoint_name": null});
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let (w, h, px) = pixels(r["images"][0].as_str().unwrap());
    assert_eq!((w, h), (64, 64));
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    let infotext = info["infotexts"][0].as_str().unwrap();
    for want in
        ["Sampler: Euler,", "Hires upscaler: Latent (bicubic)", "Hires sampler: Euler a", "Hires prompt: a blue circle"]
    {
        assert!(infotext.contains(want), "{want} missing: {infotext}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("{n}.png");
    sd_generate(&[
        "a red square",
        "--seed",
        "13",
        "--steps",
        "6",
        "-W",
        "32",
        "-H",
        "32",
        "--sampler",
        "Euler",
        "--hires-scale",
        "2",
        "--hires-steps",
        "8",
        "--hires-strength",
        "0.6",
        "--hires-upscaler",
        "Latent (bicubic)",
        "--hires-sampler",
        "Euler a",
        "--hires-prompt",
        "a blue circle",
        "-o",
        out.to_str().unwrap(),
    ]);
    let file = dir.path().join("000.png");
    assert_eq!(px, file_pixels(&file), "served latent-hires pixels differ from sd generate's");
    assert_eq!(
        parameters_chunk(&b64(r["images"][0].as_str().unwrap())),
        parameters_chunk(&std::fs::read(&file).unwrap())
    );
}

/// Step caching in the server: `sd serve --cache` is the default for requests, the A1111 option `sd_rs_step_cache`
/// (persistent or in `override_settings`) chooses per request, and either way the pixels and parameters are
/// `sd generate --cache`'s. A bad value is a 4xx naming the option; the server stays up.
#[test]
fn step_cache_default_and_per_request_give_sd_generates_pixels() {
    let s = Server::start(&["--cache", "deepcache:interval=2"]);
    let (code, opts) = get(&s, "/sdapi/v1/options");
    assert_eq!(code, 200, "{opts}");
    assert_eq!(opts["sd_rs_step_cache"], "deepcache:interval=2,branch=0");
    let body = |cache: Option<&str>| {
        let mut b = merge(
            webuiapi_defaults(),
            json!({"prompt": "a red square on a green background", "seed": 7, "steps": 6, "width": 32,
                   "height": 32, "cfg_scale": 5, "sampler_name": "Euler"}),
        );
        if let Some(c) = cache {
            b["override_settings"] = json!({"sd_rs_step_cache": c});
        }
        b
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, cache, flags) in [
        ("default", None, &["--cache", "deepcache:interval=2"][..]),
        ("override", Some("deepcache:interval=3"), &["--cache", "deepcache:interval=3"][..]),
        ("off", Some("off"), &[][..]),
    ] {
        let (code, r) = post(&s, "/sdapi/v1/txt2img", &body(cache));
        assert_eq!(code, 200, "{name}: {r}");
        let served = r["images"][0].as_str().expect("an image");
        let file = dir.path().join(format!("{name}.png"));
        let mut args =
            vec!["a red square on a green background", "--seed", "7", "--steps", "6", "-W", "32", "-H", "32"];
        args.extend(["--cfg-scale", "5", "--sampler", "Euler", "-o", file.to_str().unwrap()]);
        args.extend(flags);
        sd_generate(&args);
        assert_eq!(pixels(served).2, file_pixels(&file), "{name}: served pixels differ from sd generate's");
        let params = parameters_chunk(&b64(served));
        assert_eq!(params, parameters_chunk(&std::fs::read(&file).unwrap()), "{name}: parameters differ");
        assert_eq!(params.contains("Cache: deepcache"), cache != Some("off"), "{name}: {params}");
    }
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body(Some("deepcache:interval=1")));
    assert!((400..500).contains(&code), "{code} {r}");
    assert!(r.to_string().contains("sd_rs_step_cache"), "{r}");
    let (code, _) = get(&s, "/sdapi/v1/options");
    assert_eq!(code, 200, "the server stays up");
}
