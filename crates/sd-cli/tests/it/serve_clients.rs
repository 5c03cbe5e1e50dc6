//! `sd serve` against the real client libraries its compatibility claims are about: `webuiapi` (the usual Python
//! client of the AUTOMATIC1111 API) and `openai` (the official OpenAI SDK), at the versions pinned in
//! `scripts/clients/requirements.txt`. Hand-written HTTP in the other tests checks the documented shapes; this one
//! checks that the libraries people actually use parse what the server sends (info JSON, error bodies, PNGs, auth).
//!
//! The checks live in `scripts/clients/check_clients.py`; the virtualenv `target/clients` comes from
//! `cargo xtask setup`. A missing virtualenv fails the test: a skipped compatibility check would read as a pass.

use crate::server;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "sk-test-key-123";

/// The number of checks in `check_clients.py`: a check lost there (renamed out of its list, say) fails here.
const CHECKS: usize = 14;

/// The whole script runs about 15 tiny generations; minutes means a hang, not a slow machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn webuiapi_and_openai_clients_work_unchanged() {
    let root = server::root();
    let python = root.join("target/clients/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it creates the API clients virtualenv from \
         scripts/clients/requirements.txt)",
        python.display()
    );
    let script = root.join("scripts/clients/check_clients.py");
    let srv = server::Server::start(&["--api-key", API_KEY]);
    // IP-Adapter units run on the tiny SD1 fixture model, for which the fixture adapters are made.
    let fixtures = sd_test_support::fixtures();
    let ip_models = fixtures.join("ip_adapter/models");
    let ip_srv = server::Server::start_with_model(
        &fixtures.join("models/sd1"),
        &["--controlnet-dir", ip_models.to_str().unwrap(), "--safety", "off"],
    );
    let picture = fixtures.join("ip_adapter/picture.png");

    let logs = tempfile::tempdir().expect("temp dir");
    let (status, output) = run_with_timeout(
        Command::new(&python)
            .arg(&script)
            .arg(&srv.url)
            .args(["--api-key", API_KEY, "--model", "sd-tiny-shapes", "--ip-url", &ip_srv.url, "--ip-picture"])
            .arg(&picture),
        logs.path(),
        SCRIPT_TIMEOUT,
    );
    assert!(
        status == Some(0),
        "check_clients.py {} (exit {status:?}):\n{output}\n--- sd serve log ---\n{}\n--- IP-Adapter server log ---\n{}",
        if status.is_none() { "timed out" } else { "failed" },
        srv.log(),
        ip_srv.log()
    );
    // Exit 0 alone could also mean a script that ran nothing: the summary must count every check as passed.
    let summary = output.lines().find(|l| l.starts_with("check_clients: ")).unwrap_or_default();
    assert!(summary.contains(" passed, 0 failed"), "no passing summary line in:\n{output}");
    let passed: usize = summary["check_clients: ".len()..].split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert_eq!(passed, CHECKS, "check_clients.py ran {passed} checks, expected {CHECKS}:\n{output}");
    assert_eq!(output.lines().filter(|l| l.starts_with("ok   ")).count(), passed, "{output}");
}

/// Run `cmd` with stdout and stderr in one file under `dir`; `None` as the status when it ran past `timeout`
/// (it is killed then).
fn run_with_timeout(cmd: &mut Command, dir: &Path, timeout: Duration) -> (Option<i32>, String) {
    let log_path = dir.join("output.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let err = log.try_clone().expect("log file");
    let mut child = cmd
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start the clients' python");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python") {
            break Some(s.code().unwrap_or(-1));
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&log_path).unwrap_or_default())
}
