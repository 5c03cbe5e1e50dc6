//! `sd serve`'s web page in a real browser: headless Chromium, driven through chromedriver (WebDriver) by
//! fantoccini. The page is the server's only client written in JavaScript, so only a browser shows whether its
//! form, its job polling and its gallery work together: the test types the settings a user would, clicks Generate,
//! waits for the pictures and checks what the page shows.
//!
//! Chromium and chromedriver are Debian packages that `cargo xtask setup` installs (as root); without them the test
//! fails and says so, because a skipped browser test would read as a working page. With `SD_SCREENSHOT=PATH` the
//! final page is also written to PATH as a PNG (that is how `docs/sd-serve-web.png` is made).

use crate::server;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PROMPT: &str = "a yellow circle on a blue background";
const SEED: u64 = 42;
const BATCH: usize = 4;
/// The demo model draws 32×32 px pictures; 8 steps take well under a second each on one CPU thread.
const SIZE: u32 = 32;
const STEPS: u32 = 8;
/// From the click to the last picture on the page. The job itself takes seconds; the rest is slack for a loaded
/// 2-core CI machine.
const GENERATE_TIMEOUT: Duration = Duration::from_secs(60);

/// chromedriver in its own process group, so that dropping this ends it and the Chromium it started even when the
/// test panics half-way (a leftover browser would hold memory until the machine is recycled).
struct Driver {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Driver {
    fn start(logdir: &Path) -> Driver {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: run `cargo xtask setup` as root (it installs the Debian packages chromium and \
                 chromium-driver)"
            );
        }
        let port = server::free_port();
        let log = logdir.join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Driver { child, port, log };
        driver.wait_ready(Duration::from_secs(30));
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        let http = reqwest::blocking::Client::new();
        while t0.elapsed() < timeout {
            let ready = http
                .get(format!("{}/status", self.url()))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("chromedriver did not answer /status within {timeout:?}:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The negative id names the whole group: chromedriver and every Chromium process it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

#[test]
fn web_page_generates_and_shows_pictures_in_chromium() {
    let logs = tempfile::tempdir().expect("temp dir");
    let driver = Driver::start(logs.path());
    let srv = server::Server::start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let outcome = rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                // Root in a container: no sandbox; a small /dev/shm: use /tmp for shared memory.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1000,900"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .map_err(|e| format!("cannot open a Chromium session through chromedriver: {e}"))?;
        let result = drive_page(&client, &srv.url).await;
        // Close the session on success and failure alike, so Chromium exits before the driver is killed.
        let _ = client.close().await;
        result
    });
    drop(rt);
    if let Err(e) = outcome {
        panic!(
            "{e}\n--- sd serve log ---\n{}\n--- chromedriver log (tail) ---\n{}",
            srv.log(),
            tail(&driver.log(), 3000)
        );
    }
}

/// Everything the test does in the browser; an `Err` carries what went wrong in words.
async fn drive_page(client: &Client, base: &str) -> Result<(), String> {
    client.goto(&format!("{base}/")).await.map_err(|e| format!("cannot open {base}/: {e}"))?;
    let title = client.title().await.map_err(|e| e.to_string())?;
    if title != "sd-rs" {
        return Err(format!("page title {title:?}, expected \"sd-rs\""));
    }
    // The page fills the sampler and model lists from the API after loading; Generate before that would send an
    // empty model name.
    let lists = poll(
        client,
        GENERATE_TIMEOUT,
        "the sampler and model lists to fill",
        |v| v["models"].as_u64() > Some(0),
        JS_LISTS,
    )
    .await?;
    if lists["model"] != json!("sd-tiny-shapes") {
        return Err(format!("the model list does not select the served model: {lists}"));
    }

    type_into(client, "prompt", PROMPT).await?;
    type_into(client, "width", &SIZE.to_string()).await?;
    type_into(client, "height", &SIZE.to_string()).await?;
    type_into(client, "steps", &STEPS.to_string()).await?;
    type_into(client, "seed", &SEED.to_string()).await?;
    type_into(client, "batch_size", &BATCH.to_string()).await?;
    let sampler = client.find(Locator::Id("sampler")).await.map_err(|e| e.to_string())?;
    sampler.select_by_label("Euler a").await.map_err(|e| format!("no \"Euler a\" in the sampler list: {e}"))?;
    client
        .find(Locator::Id("generate"))
        .await
        .map_err(|e| e.to_string())?
        .click()
        .await
        .map_err(|e| format!("cannot click Generate: {e}"))?;

    let page = poll(
        client,
        GENERATE_TIMEOUT,
        "the pictures to appear",
        |v| v["error"] != json!("") || v["loaded"] == json!(BATCH),
        JS_RESULT,
    )
    .await?;
    if page["error"] != json!("") {
        return Err(format!("the page shows an error: {}", page["error"]));
    }
    let images = page["images"].as_array().cloned().unwrap_or_default();
    if images.len() != BATCH {
        return Err(format!("{} pictures in the gallery, expected {BATCH}: {page}", images.len()));
    }
    for img in &images {
        if img["w"] != json!(SIZE) || img["h"] != json!(SIZE) {
            return Err(format!(
                "a picture is {}×{} px, the demo model draws {SIZE}×{SIZE}: {page}",
                img["w"], img["h"]
            ));
        }
        let caption = img["caption"].as_str().unwrap_or_default();
        for part in [PROMPT, &format!("Steps: {STEPS}"), "Sampler: Euler a", &format!("Size: {SIZE}x{SIZE}")] {
            if !caption.contains(part) {
                return Err(format!("caption {caption:?} lacks {part:?}"));
            }
        }
    }
    if !images.iter().any(|i| i["caption"].as_str().is_some_and(|c| c.contains(&format!("Seed: {SEED},")))) {
        return Err(format!("no caption names seed {SEED}: {page}"));
    }
    let status = page["status"].as_str().unwrap_or_default();
    if !status.starts_with("done") || !status.contains(&format!("{BATCH} image(s)")) {
        return Err(format!("status line {status:?}, expected \"done · {BATCH} image(s) …\""));
    }
    if page["progress"] != json!(1.0) && page["progress"] != json!(1) {
        return Err(format!("progress bar at {} after the job finished", page["progress"]));
    }
    if page["generate_disabled"] != json!(false) {
        return Err("the Generate button stays disabled after the job".into());
    }

    let png = client.screenshot().await.map_err(|e| format!("screenshot: {e}"))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 1000 {
        return Err(format!("the screenshot is not a PNG ({} bytes)", png.len()));
    }
    if let Some(path) = std::env::var_os("SD_SCREENSHOT") {
        std::fs::write(&path, &png).map_err(|e| format!("cannot write {}: {e}", Path::new(&path).display()))?;
        eprintln!("screenshot ({} KB) written to {}", png.len() / 1024, Path::new(&path).display());
    }
    Ok(())
}

/// Replace a field's text by typing, as a user would (the page reads `.value` when the form is submitted).
async fn type_into(client: &Client, id: &str, text: &str) -> Result<(), String> {
    let el = client.find(Locator::Id(id)).await.map_err(|e| format!("no #{id} on the page: {e}"))?;
    el.clear().await.map_err(|e| format!("cannot clear #{id}: {e}"))?;
    el.send_keys(text).await.map_err(|e| format!("cannot type into #{id}: {e}"))?;
    let value = el.prop("value").await.map_err(|e| e.to_string())?;
    if value.as_deref() != Some(text) {
        return Err(format!("#{id} holds {value:?} after typing {text:?}"));
    }
    Ok(())
}

/// Run `script` every 200 ms until `done` accepts its value; the last value goes into the timeout error.
async fn poll(
    client: &Client,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
    script: &str,
) -> Result<Value, String> {
    let t0 = Instant::now();
    loop {
        let v =
            client.execute(script, vec![]).await.map_err(|e| format!("script failed while waiting for {what}: {e}"))?;
        if done(&v) {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}; the page: {v}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const JS_LISTS: &str = r#"
const $ = (id) => document.getElementById(id);
return { samplers: $("sampler").options.length, models: $("model").options.length, model: $("model").value,
         error: $("error").textContent };
"#;

/// What the page shows once a job ran: `loaded` counts the pictures the browser has decoded.
const JS_RESULT: &str = r##"
const $ = (id) => document.getElementById(id);
const imgs = [...document.querySelectorAll("#gallery img.result")];
return {
  images: imgs.map((i) => ({ w: i.naturalWidth, h: i.naturalHeight, caption: i.closest("figure").querySelector("figcaption").textContent })),
  loaded: imgs.filter((i) => i.complete && i.naturalWidth > 0).length,
  status: $("status").textContent,
  error: $("error").textContent,
  progress: $("bar").value,
  generate_disabled: $("generate").disabled,
};
"##;

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    &s[start..]
}
