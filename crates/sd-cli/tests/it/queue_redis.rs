//! Scale-out on a real `redis-server` (Debian package, installed by `cargo xtask setup`) started on a free loopback
//! port: `sd serve --queue` front ends and `sd worker` processes. What the deployment README promises is checked
//! here: a killed worker's job is reclaimed and every job completes exactly once with `sd generate`'s pixels; work
//! queued before any worker exists waits for one; a restarted front end still answers; Redis restarted with AOF
//! loses no accepted job; a job failing on every worker is dead-lettered; cancel reaches the worker.

use crate::server;

use base64::Engine as _;
use serde_json::{json, Value};
use server::Server;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
    aof: bool,
}

impl Redis {
    pub(crate) fn start(dir: &Path, aof: bool) -> Redis {
        let port = server::free_port();
        let child = spawn_redis(dir, port, aof);
        let r = Redis { child, port, dir: dir.to_path_buf(), aof };
        r.wait_up();
        r
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_up(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => {
                panic!("redis-cli is missing ({e}): run `cargo xtask setup` as root (Debian package redis-tools)")
            }
        }
    }

    /// Stop (SIGTERM: with AOF, Redis writes everything first) and start again on the same port and folder.
    fn restart(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        self.child = spawn_redis(&self.dir, self.port, self.aof);
        self.wait_up();
    }
}

fn spawn_redis(dir: &Path, port: u16, aof: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if aof {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start redis-server ({e}): run `cargo xtask setup` as root"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(redis: &Redis, name: &str, dir: &Path, extra: &[&str]) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sd"))
            .args(["worker", "--queue", &redis.url(), "--name", name, "--model"])
            .arg(server::tiny_model())
            .args(["--dtype", "f32", "--threads", "1", "--visibility-timeout", "2"])
            .args(extra)
            .env("SD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start sd worker");
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn submit(s: &Server, body: &Value) -> String {
    let r = client().post(format!("{}/v1/jobs", s.url)).json(body).send().unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string()
}

fn job(s: &Server, id: &str) -> Value {
    client().get(format!("{}/v1/jobs/{id}", s.url)).send().unwrap().json().unwrap()
}

fn wait_final(s: &Server, id: &str, timeout: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let v = job(s, id);
        if matches!(v["status"].as_str(), Some("done" | "failed" | "cancelled")) {
            return v;
        }
        assert!(t0.elapsed() < timeout, "job {id} did not finish within {timeout:?}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pixels(png_b64: &str) -> Vec<u8> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(png_b64).unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8().into_raw()
}

fn body(seed: u64, steps: u32) -> Value {
    json!({"prompt": "a green triangle", "seed": seed, "steps": steps, "width": 32, "height": 32})
}

#[test]
fn twenty_jobs_two_workers_one_killed_mid_job_all_complete_once_with_sd_generates_images() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), false);
    let front = Server::start(&["--queue", &redis.url()]);
    let mut w1 = Worker::start(&redis, "w1", dir.path(), &[]);
    let w2 = Worker::start(&redis, "w2", dir.path(), &[]);
    let steps = 30;
    let ids: Vec<String> = (0..20).map(|i| submit(&front, &body(500 + i, steps))).collect();

    // Kill w1 with SIGKILL while it runs a job.
    let t0 = Instant::now();
    let victim = loop {
        let running = ids.iter().find(|id| {
            let v = job(&front, id);
            v["status"] == "running" && v["worker"] == "w1" && v["step"].as_u64().unwrap_or(0) >= 1
        });
        if let Some(id) = running {
            break id.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "w1 never ran a job:\n{}", w1.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();

    let dir_ref = dir.path().join("ref");
    std::fs::create_dir_all(&dir_ref).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "a green triangle", "--model"])
        .arg(server::tiny_model())
        .args(["--dtype", "f32", "--threads", "1", "-q", "--seed", "500", "--steps", &steps.to_string()])
        .args(["-W", "32", "-H", "32", "--sampler", "Euler", "--batch-count", "20", "-o"])
        .arg(dir_ref.join("{n}.png"))
        .status()
        .unwrap();
    assert!(status.success());

    for (i, id) in ids.iter().enumerate() {
        let v = wait_final(&front, id, Duration::from_secs(180));
        assert_eq!(v["status"], "done", "job {i}: {v}\nw2:\n{}", w2.log());
        let images = v["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "job {i}");
        let want = image::open(dir_ref.join(format!("{i:03}.png"))).unwrap().to_rgb8().into_raw();
        assert_eq!(pixels(images[0].as_str().unwrap()), want, "job {i}: pixels differ from sd generate's");
    }
    let v = job(&front, &victim);
    assert_eq!(v["worker"], "w2", "the killed worker's job was reclaimed by w2: {v}");
    assert!(w2.log().contains("reclaimed a job"), "{}", w2.log());
    // Exactly once: 20 results written in all (a duplicate write would count twice), nothing pending or dead.
    let counts = redis.cli(&["HVALS", "sd:worker_jobs"]);
    let total: u64 = counts.lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum();
    assert_eq!(total, 20, "results stored: {counts}");
    assert_eq!(redis.cli(&["XLEN", "sd:dead"]).trim(), "0");
    let pending = redis.cli(&["XPENDING", "sd:jobs", "sd-workers"]);
    assert_eq!(pending.lines().next().map(str::trim), Some("0"), "nothing left pending: {pending}");
    let metrics = client().get(format!("{}/metrics", front.url)).send().unwrap().text().unwrap();
    assert!(metrics.contains("sd_worker_jobs{worker=\"w2\"}"), "{metrics}");
    assert!(metrics.contains("sd_redis_queue_lag 0"), "{metrics}");
}

#[test]
fn queued_work_waits_for_a_later_worker_a_restarted_front_end_answers_and_cancel_reaches_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), false);
    let mut front = Server::start(&["--queue", &redis.url()]);
    let ids: Vec<String> = (0..3).map(|i| submit(&front, &body(40 + i, 6))).collect();
    std::thread::sleep(Duration::from_millis(300));
    for id in &ids {
        assert_eq!(job(&front, id)["status"], "queued");
    }
    let metrics = client().get(format!("{}/metrics", front.url)).send().unwrap().text().unwrap();
    assert!(metrics.contains("sd_redis_queue_lag 3"), "{metrics}");

    // The front end is stateless: another one answers for the same jobs.
    assert_eq!(front.terminate(Duration::from_secs(30)).code(), Some(0));
    let front = Server::start(&["--queue", &redis.url()]);
    assert_eq!(job(&front, &ids[0])["status"], "queued");
    let worker = Worker::start(&redis, "late", dir.path(), &[]);
    for id in &ids {
        let v = wait_final(&front, id, Duration::from_secs(120));
        assert_eq!(v["status"], "done", "{v}\n{}", worker.log());
        assert_eq!(v["worker"], "late");
    }
    // A synchronous A1111 call through the queue, with progress seen from the front end, then a cancel.
    let long = json!({"prompt": "a blue circle", "seed": 1, "steps": 150, "width": 128, "height": 128});
    let id = submit(&front, &long);
    let t0 = Instant::now();
    loop {
        let p: Value = client().get(format!("{}/sdapi/v1/progress", front.url)).send().unwrap().json().unwrap();
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(p["current_task"], id.as_str());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress from the worker: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r: Value = client().delete(format!("{}/v1/jobs/{id}", front.url)).send().unwrap().json().unwrap();
    assert_eq!(r["status"], "running", "cancel of a running job is passed to its worker: {r}");
    let v = wait_final(&front, &id, Duration::from_secs(30));
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["step"].as_u64().unwrap() < 150, "the worker stopped early: {v}");
    let r: Value =
        client().post(format!("{}/sdapi/v1/txt2img", front.url)).json(&body(77, 6)).send().unwrap().json().unwrap();
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([77]));
}

#[test]
fn redis_restarted_with_aof_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path(), true);
    let front = Server::start(&["--queue", &redis.url()]);
    let ids: Vec<String> = (0..4).map(|i| submit(&front, &body(60 + i, 6))).collect();
    redis.restart();
    let worker = Worker::start(&redis, "after-restart", dir.path(), &[]);
    for id in &ids {
        // The front end's connection reconnects by itself after the restart.
        let t0 = Instant::now();
        let v = loop {
            let r = client().get(format!("{}/v1/jobs/{id}", front.url)).send().unwrap();
            if r.status().is_success() {
                let v: Value = r.json().unwrap();
                if v["status"] == "done" {
                    break v;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "job {id} lost after the restart:\n{}", worker.log());
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(v["images"].as_array().map(Vec::len), Some(1));
    }
}

#[test]
fn a_job_failing_on_every_worker_is_dead_lettered_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), false);
    let front = Server::start(&["--queue", &redis.url()]);
    // The workers refuse what the front end accepts: every attempt fails.
    let policy = dir.path().join("policy.txt");
    std::fs::write(&policy, "poison\n").unwrap();
    let p = policy.to_str().unwrap();
    let _w1 = Worker::start(&redis, "p1", dir.path(), &["--policy", p, "--max-attempts", "3"]);
    let _w2 = Worker::start(&redis, "p2", dir.path(), &["--policy", p, "--max-attempts", "3"]);
    let bad = submit(&front, &json!({"prompt": "a poison pill", "steps": 4, "width": 32, "height": 32}));
    let good = submit(&front, &body(3, 4));
    let v = wait_final(&front, &bad, Duration::from_secs(120));
    assert_eq!(v["status"], "failed", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("failed 3 time(s)") && err.contains("refused by policy"), "{err}");
    assert_eq!(redis.cli(&["XLEN", "sd:dead"]).trim(), "1");
    assert!(redis.cli(&["XRANGE", "sd:dead", "-", "+"]).contains(&bad));
    assert_eq!(wait_final(&front, &good, Duration::from_secs(60))["status"], "done");
    // The synchronous APIs report the failure as an error naming the cause.
    let r = client()
        .post(format!("{}/sdapi/v1/txt2img", front.url))
        .json(&json!({"prompt": "more poison", "steps": 2, "width": 32, "height": 32}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("refused by policy"));
}

#[test]
fn without_persistence_a_redis_restart_loses_queued_jobs_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path(), false);
    let front = Server::start(&["--queue", &redis.url()]);
    let id = submit(&front, &body(1, 4));
    redis.restart();
    // The front end reconnects; the job is gone, and asking for it is an honest 404, not a hang.
    let t0 = Instant::now();
    loop {
        let r = client().get(format!("{}/v1/jobs/{id}", front.url)).send().unwrap();
        if r.status().as_u16() == 404 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "expected 404 after the restart, got {}", r.status());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sd worker --cache` is the step caching of queued jobs that do not choose, as `sd serve --cache` is for the
/// server's own; a job's A1111 option `sd_rs_step_cache` (in `override_settings`) overrides it. Either way the
/// pixels and the `Cache:` parameter are
/// `sd generate --cache`'s for the same seed.
#[test]
fn worker_cache_flag_is_the_default_of_queued_jobs_and_a_job_can_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), false);
    let front = Server::start(&["--queue", &redis.url()]);
    let w = Worker::start(&redis, "cached", dir.path(), &["--cache", "deepcache:interval=2"]);
    let steps = 8;
    for (name, job_cache, flags) in [
        ("worker default", None, &["--cache", "deepcache:interval=2"][..]),
        ("job override", Some("deepcache:interval=3"), &["--cache", "deepcache:interval=3"][..]),
        ("job off", Some("off"), &[][..]),
    ] {
        let mut b = body(41, steps);
        if let Some(c) = job_cache {
            b["override_settings"] = json!({"sd_rs_step_cache": c});
        }
        let id = submit(&front, &b);
        let v = wait_final(&front, &id, Duration::from_secs(120));
        assert_eq!(v["status"], "done", "{name}: {v}\n{}", w.log());
        let out = dir.path().join(format!("{}.png", name.replace(' ', "_")));
        let status = Command::new(env!("CARGO_BIN_EXE_sd"))
            .args(["generate", "a green triangle", "--model"])
            .arg(server::tiny_model())
            .args(["--dtype", "f32", "--threads", "1", "-q", "--seed", "41", "--steps", &steps.to_string()])
            .args(["-W", "32", "-H", "32", "--sampler", "Euler", "-o"])
            .arg(&out)
            .args(flags)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: sd generate failed");
        let served = v["images"][0].as_str().unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(served).unwrap();
        let params = |png: &[u8]| sd_provenance::inspect::inspect_bytes("png", png).unwrap().parameters_raw.unwrap();
        let served_params = params(&png);
        assert_eq!(served_params, params(&std::fs::read(&out).unwrap()), "{name}: parameters differ");
        assert_eq!(served_params.contains("Cache: deepcache"), job_cache != Some("off"), "{name}: {served_params}");
        let want = image::open(&out).unwrap().to_rgb8().into_raw();
        assert!(pixels(served) == want, "{name}: pixels differ from sd generate's");
    }
}
