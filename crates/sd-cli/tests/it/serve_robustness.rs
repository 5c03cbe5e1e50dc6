//! `sd serve` under bad input, authentication and shutdown: every malformed or absurd request gets a 4xx JSON error
//! that says what was expected, the server stays healthy afterwards, credentials are enforced when configured,
//! and SIGTERM stops it gracefully with exit status 0.

use crate::server;

use base64::Engine as _;
use sd_test_support::crc32;
use serde_json::{json, Value};
use server::Server;
use std::process::Command;
use std::time::Duration;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client")
}

fn merge(base: &Value, extra: Value) -> String {
    let mut b = base.clone();
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::new(w, h).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A tiny PNG whose (checksummed) header claims 100 000 × 100 000 pixels.
fn bomb() -> Vec<u8> {
    let mut p = png(1, 1);
    p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// CRC-32 (IEEE), so a forged PNG header still passes the decoder's checksum.

#[test]
fn bad_input_on_every_endpoint_gets_a_4xx_json_error_and_the_server_stays_healthy() {
    let s = Server::start(&["--max-body-mb", "1", "--max-steps", "50"]);
    let ok = json!({"prompt": "a red square", "steps": 2, "width": 32, "height": 32});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b.to_string()
    };
    let t2i = "/sdapi/v1/txt2img";
    let i2i = "/sdapi/v1/img2img";
    let good_png = b64(&png(32, 32));
    // (method, path, body, expected status, text the message must contain)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", t2i, "{not json".into(), 400, "malformed JSON"),
        ("POST", t2i, "".into(), 400, "empty"),
        ("POST", t2i, "[1, 2]".into(), 400, "JSON object"),
        ("POST", "/v1/jobs", "42".into(), 400, "JSON object"),
        ("POST", t2i, with("width", json!("wide")), 400, "width"),
        ("POST", t2i, with("width", json!(1e12)), 400, "width"),
        ("POST", t2i, with("width", json!(33)), 400, "multiple of 8"),
        ("POST", t2i, with("width", json!(-64)), 400, "width"),
        ("POST", t2i, with("width", json!(100_000)), 400, "pixels"),
        ("POST", t2i, with("steps", json!(-5)), 400, "steps"),
        ("POST", t2i, with("steps", json!(0)), 400, "steps"),
        ("POST", t2i, with("steps", json!(10_000)), 400, "--max-steps"),
        ("POST", t2i, with("batch_size", json!(1_000_000)), 400, "batch_size"),
        ("POST", t2i, with("n_iter", json!(0)), 400, "n_iter"),
        ("POST", t2i, with("n_iter", json!(1u64 << 40)), 400, "n_iter"),
        ("POST", t2i, with("cfg_scale", json!("x")), 400, "cfg_scale"),
        ("POST", t2i, with("cfg_scale", json!(1e300)), 400, "cfg_scale"),
        ("POST", t2i, with("seed", json!(-7)), 400, "seed"),
        ("POST", t2i, with("sampler_name", json!("Nope Sampler")), 400, "unknown sampler"),
        ("POST", t2i, with("sampler_name", json!("flow-euler")), 400, "is for flow-matching models"),
        ("POST", t2i, with("scheduler", json!("polyexponential")), 400, "scheduler"),
        ("POST", t2i, with("restore_faces", json!(true)), 422, "restore_faces"),
        ("POST", t2i, merge(&ok, json!({"enable_hr": true, "hr_upscaler": "R-ESRGAN 4x+"})), 422, "hr_upscaler"),
        ("POST", t2i, merge(&ok, json!({"enable_hr": true, "hr_upscaler": "Lanczos", "hr_scale": 64})), 400, "hires"),
        (
            "POST",
            t2i,
            merge(&ok, json!({"enable_hr": true, "hr_upscaler": "Lanczos", "hr_sampler_name": "Nope Sampler"})),
            400,
            "hr_sampler_name",
        ),
        ("POST", t2i, with("styles", json!(["cinematic"])), 422, "styles"),
        ("POST", t2i, with("script_name", json!("x/y/z plot")), 422, "script_name"),
        ("POST", t2i, with("alwayson_scripts", json!({"ADetailer": {"args": []}})), 422, "ADetailer"),
        ("POST", t2i, with("subseed_strength", json!(0.5)), 422, "subseed_strength"),
        ("POST", t2i, with("s_noise", json!(0.9)), 422, "s_noise"),
        (
            "POST",
            t2i,
            with("override_settings", json!({"CLIP_stop_at_last_layers": 99})),
            422,
            "CLIP_stop_at_last_layers",
        ),
        ("POST", t2i, with("override_settings", json!({"sd_model_checkpoint": "nope"})), 404, "unknown model"),
        ("POST", t2i, with("prompt", json!("a".repeat(30_000))), 400, "characters"),
        ("POST", t2i, with("prompt", json!("x <lora:../secret:1>")), 400, "LoRA"),
        ("POST", i2i, ok.to_string(), 400, "init_images"),
        ("POST", i2i, with("init_images", json!(["***not base64***"])), 400, "base64"),
        ("POST", i2i, with("init_images", json!([b64(b"GIF89a not an image")])), 400, "PNG, JPEG or WebP"),
        ("POST", i2i, with("init_images", json!([b64(&bomb())])), 413, "pixels"),
        ("POST", i2i, with("init_images", json!([b64(&png(32, 32)[..40])])), 400, "init_images"),
        ("POST", i2i, with("init_images", json!([good_png.clone(), good_png.clone()])), 422, "one image"),
        (
            "POST",
            i2i,
            json!({"init_images": [good_png.clone()], "denoising_strength": 0, "width": 32, "height": 32}).to_string(),
            400,
            "denoising_strength",
        ),
        ("POST", "/sdapi/v1/png-info", json!({"image": "AAAA"}).to_string(), 400, "image"),
        ("POST", "/sdapi/v1/png-info", json!({"nope": 1}).to_string(), 400, "image"),
        (
            "POST",
            "/sdapi/v1/options",
            json!({"CLIP_stop_at_last_layers": "two"}).to_string(),
            422,
            "CLIP_stop_at_last_layers",
        ),
        ("POST", "/sdapi/v1/options", json!({"sd_model_checkpoint": 5}).to_string(), 400, "string"),
        ("POST", "/sdapi/v1/options", json!({"samples_format": "gif"}).to_string(), 422, "\"jpg\""),
        ("POST", "/sdapi/v1/options", json!({"jpeg_quality": 0}).to_string(), 422, "1 to 100"),
        ("POST", "/sdapi/v1/options", json!({"webp_lossless": "yes"}).to_string(), 422, "true or false"),
        (
            "POST",
            "/v1/images/generations",
            json!({"prompt": "x", "output_format": "gif"}).to_string(),
            400,
            "output_format",
        ),
        (
            "POST",
            "/v1/images/generations",
            json!({"prompt": "x", "output_compression": 101}).to_string(),
            400,
            "output_compression",
        ),
        ("POST", "/v1/images/generations", json!({"size": "32x32"}).to_string(), 400, "prompt"),
        ("POST", "/v1/images/generations", json!({"prompt": "x", "size": "abc"}).to_string(), 400, "size"),
        ("POST", "/v1/images/generations", json!({"prompt": "x", "n": 100}).to_string(), 400, "`n`"),
        (
            "POST",
            "/v1/images/generations",
            json!({"prompt": "x", "response_format": "jpeg"}).to_string(),
            400,
            "response_format",
        ),
        (
            "POST",
            "/v1/images/generations",
            json!({"prompt": "x", "background": "transparent"}).to_string(),
            400,
            "transparent",
        ),
        ("POST", "/v1/images/edits", "garbage".into(), 400, "multipart"),
        ("POST", "/v1/jobs", json!({"type": "upscale"}).to_string(), 400, "type"),
        ("GET", "/v1/jobs/not-a-uuid", String::new(), 404, "UUID"),
        ("DELETE", "/v1/jobs/00000000-0000-4000-8000-000000000000", String::new(), 404, "no job"),
        ("GET", "/no/such/route", String::new(), 404, "no route"),
        ("DELETE", t2i, String::new(), 405, "method"),
        ("POST", t2i, format!("{{\"prompt\": \"{}\"}}", "x".repeat(2 << 20)), 413, "larger"),
    ];
    let c = client();
    for (method, path, body, want, needle) in &cases {
        let url = format!("{}{path}", s.url);
        let req = match *method {
            "GET" => c.get(&url),
            "DELETE" => c.delete(&url),
            _ => c.post(&url).header("content-type", "application/json").body(body.clone()),
        };
        let r = req.send().expect("request");
        let code = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        let shown: String = body.chars().take(120).collect();
        assert_eq!(code, *want, "{method} {path} {shown}: got {code} {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        let msg = v["error"]["message"].as_str().or(v["detail"].as_str()).unwrap_or_default();
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "{method} {path} {shown}: the message should mention {needle:?}: {text}"
        );
        if path.starts_with("/sdapi/") {
            assert!(v["error"].is_string() && v["errors"].is_string(), "A1111 error shape on {path}: {text}");
        } else {
            assert!(v["error"]["type"].is_string(), "OpenAI error shape on {path}: {text}");
        }
    }
    // Still healthy, and still generating (a new client: the server closes a connection whose body it refused).
    let c = client();
    assert_eq!(c.get(format!("{}/health", s.url)).send().unwrap().status().as_u16(), 200);
    let r: Value = c.post(format!("{}{t2i}", s.url)).json(&ok).send().unwrap().json().unwrap();
    assert_eq!(r["images"].as_array().map(Vec::len), Some(1));
    assert!(!s.log().contains("panicked"), "a request panicked:\n{}", s.log());
}

#[test]
fn credentials_are_required_when_configured() {
    let s = Server::start(&["--api-key", "key-12345678", "--api-auth", "alice:wonder,bob:builder"]);
    let c = client();
    let req = json!({"prompt": "a red square", "steps": 2, "width": 32, "height": 32});
    let post = |auth: Option<(&str, &str)>, path: &str| {
        let mut r = c.post(format!("{}{path}", s.url)).json(&req);
        if let Some((kind, v)) = auth {
            r = match kind {
                "bearer" => r.bearer_auth(v),
                _ => {
                    let (u, p) = v.split_once(':').unwrap();
                    r.basic_auth(u, Some(p))
                }
            };
        }
        let r = r.send().unwrap();
        let code = r.status().as_u16();
        (code, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (code, e) = post(None, "/sdapi/v1/txt2img");
    assert_eq!(code, 401);
    assert_eq!(e["error"], "Unauthorized", "A1111 shape: {e}");
    let (code, e) = post(None, "/v1/images/generations");
    assert_eq!(code, 401);
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    assert_eq!(post(Some(("bearer", "wrong-key-000")), "/sdapi/v1/txt2img").0, 401);
    assert_eq!(post(Some(("basic", "alice:wrong")), "/sdapi/v1/txt2img").0, 401);
    assert_eq!(post(Some(("bearer", "key-12345678")), "/sdapi/v1/txt2img").0, 200);
    assert_eq!(post(Some(("basic", "bob:builder")), "/sdapi/v1/txt2img").0, 200);
    assert_eq!(post(Some(("basic", "anyone:key-12345678")), "/sdapi/v1/txt2img").0, 200);
    assert_eq!(c.get(format!("{}/sdapi/v1/sd-models", s.url)).send().unwrap().status().as_u16(), 401);
    assert_eq!(c.get(format!("{}/metrics", s.url)).send().unwrap().status().as_u16(), 401);
    assert_eq!(
        c.get(format!("{}/v1/jobs/00000000-0000-4000-8000-000000000000", s.url)).send().unwrap().status().as_u16(),
        401
    );
    // An OpenAI `url` response is fetched without credentials (the random job id in it is the capability).
    let r: Value = c
        .post(format!("{}/v1/images/generations", s.url))
        .bearer_auth("key-12345678")
        .json(&json!({"prompt": "a red square", "size": "32x32", "steps": 2, "response_format": "url"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let img = c.get(r["data"][0]["url"].as_str().unwrap()).send().unwrap();
    assert_eq!(img.status().as_u16(), 200);
    assert_eq!(img.headers()["content-type"], "image/png");
    // Probes and the page itself stay open.
    assert_eq!(c.get(format!("{}/health", s.url)).send().unwrap().status().as_u16(), 200);
    assert_eq!(c.get(format!("{}/ready", s.url)).send().unwrap().status().as_u16(), 200);
    assert_eq!(c.get(&s.url).send().unwrap().status().as_u16(), 200);
}

#[test]
fn a_network_address_without_authentication_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["serve", "--model"])
        .arg(server::tiny_model())
        .args(["--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication") && err.contains("--api-key"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["serve", "--model"])
        .arg(server::tiny_model())
        .args(["--api-key", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn sigterm_interrupts_the_running_job_after_the_deadline_and_exits_zero() {
    let mut s = Server::start(&["--shutdown-timeout", "1"]);
    let url = s.url.clone();
    let long = json!({"prompt": "a blue circle", "seed": 1, "steps": 150, "width": 128, "height": 128});
    let b = long.clone();
    let waiter = std::thread::spawn(move || {
        let r = client().post(format!("{url}/sdapi/v1/txt2img")).json(&b).send().expect("request");
        (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null))
    });
    let t0 = std::time::Instant::now();
    loop {
        let p: Value = client().get(format!("{}/sdapi/v1/progress", s.url)).send().unwrap().json().unwrap();
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second job waits behind the running one; shutdown cancels it.
    let queued: Value = client().post(format!("{}/v1/jobs", s.url)).json(&long).send().unwrap().json().unwrap();
    assert_eq!(queued["status"], "queued");
    let status = s.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0:\n{}", s.log());
    let (code, r) = waiter.join().unwrap();
    assert_eq!(code, 200, "the running request still gets its (interrupted) result: {r}");
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["interrupted"], true);
    let log = s.log();
    assert!(log.contains("shutting down") && log.contains("interrupted"), "{log}");
}
