//! Start `sd serve` on a free loopback port for a test, and stop it when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The self-trained demo model (32×32 px): every server test runs on it.
pub fn tiny_model() -> PathBuf {
    root().join("models/sd-tiny-shapes")
}

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub stderr_log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Server {
    /// `sd serve --model <tiny> --port 0 <extra>`; waits until `/ready` answers 200.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_model(&tiny_model(), extra)
    }

    pub fn start_with_model(model: &Path, extra: &[&str]) -> Server {
        let logdir = tempfile::tempdir().expect("temp dir");
        let stderr_log = logdir.path().join("stderr.log");
        let err = std::fs::File::create(&stderr_log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sd"))
            .args(["serve", "--model"])
            .arg(model)
            .args(["--port", "0", "--dtype", "f32", "--threads", "1"])
            .args(extra)
            .env("SD_LOG", "info")
            // each server its own C2PA signing identity, away from the user's
            .env("SD_RS_CONFIG_DIR", logdir.path().join("config"))
            .env_remove("SD_C2PA_CERT")
            .env_remove("SD_C2PA_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start sd serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let url = match line.trim().strip_prefix("sd serve: listening on ") {
            Some(u) => u.to_string(),
            None => {
                let _ = child.kill();
                panic!(
                    "sd serve did not start: {line:?}\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        let server = Server { child, url, stderr_log, _logdir: logdir };
        server.wait_ready(Duration::from_secs(60));
        server
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        let client = reqwest::blocking::Client::new();
        while t0.elapsed() < timeout {
            if let Ok(r) = client.get(format!("{}/ready", self.url)).send() {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sd serve was not ready within {timeout:?}:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("sd serve did not exit within {timeout:?} of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
