//! A headless Chromium for the console tests, driven through its own
//! chromedriver (WebDriver, via `fantoccini`) on a free port.
//!
//! Every `Browser` has its own driver, profile directory and process group;
//! dropping it (a panicking test included) kills the whole group and removes
//! the profile, so no browser outlives its test. The driver keeps the page's
//! console (`browser`) and network (`performance`: DevTools events) logs,
//! which `console_errors` and `requested_urls` read.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::env::env_or;

const STARTUP: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    /// Screenshots are named `<name>-<step>.png`.
    name: String,
    driver: Child,
    profile: PathBuf,
    /// Log entries read so far: the driver hands each out only once.
    console: Mutex<Vec<Value>>,
    performance: Mutex<Vec<Value>>,
}

/// `POST /session/{id}/se/log`: chromedriver's log endpoint.
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

/// `POST /session/{id}/goog/cdp/execute`: one DevTools command.
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "cmd": self.0, "params": self.1 }).to_string()),
        )
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, its page 1280×800.
    pub async fn start(name: &str) -> Browser {
        let chromium = env_or("CHROMIUM_BIN", "/usr/bin/chromium");
        let chromedriver = env_or("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let port = testkit::free_port().expect("a free port");
        let profile = std::env::temp_dir().join(format!(
            "workerrmq-browser-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so Drop can end the driver and every browser
            // process it started in one signal.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} ({e}); ./run.sh test installs chromium-driver")
            });
        let client = match connect(port, &chromium, &profile).await {
            Ok(client) => client,
            Err(message) => {
                kill_group(&mut driver);
                let _ = std::fs::remove_dir_all(&profile);
                panic!("{message}");
            }
        };
        let browser = Browser {
            client,
            name: name.to_owned(),
            driver,
            profile,
            console: Mutex::new(Vec::new()),
            performance: Mutex::new(Vec::new()),
        };
        // The page's own size, whatever the headless window's frame takes.
        browser.viewport(1280, 800, false).await;
        browser
    }

    /// Opens `url` and waits for the page to have loaded.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("running `{script}`: {e}"))
    }

    /// Polls `script` until it returns something other than `null`, `false`
    /// or `""`; returns that. Fails the test after `deadline`, saying `what`.
    pub async fn wait_for(&self, deadline: Duration, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(script).await;
            let falsy =
                matches!(&value, Value::Null | Value::Bool(false)) || value.as_str() == Some("");
            if !falsy {
                return value;
            }
            if started.elapsed() >= deadline {
                self.screenshot(&format!("failed-{}", slug(what))).await;
                panic!("{what}: not within {deadline:?} (last: {value})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the element `css` finds (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"));
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("typing into the field");
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
    }

    /// Saves `target/screenshots/<name>-<step>.png`.
    pub async fn screenshot(&self, step: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => {
                eprintln!("no screenshot for {step}: {e}");
                return;
            }
        };
        std::fs::create_dir_all(&dir).expect("target/screenshots");
        let path = dir.join(format!("{}-{step}.png", self.name));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Emulates a viewport (`Emulation.setDeviceMetricsOverride`).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
    }

    /// Emulates the system's colour scheme: `"light"` or `"dark"`.
    pub async fn color_scheme(&self, scheme: &str) {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await;
    }

    async fn cdp(&self, command: &'static str, params: Value) {
        self.client
            .issue_cmd(Cdp(command, params))
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
    }

    async fn drain(&self, kind: &'static str, into: &Mutex<Vec<Value>>) -> Vec<Value> {
        let fresh = self
            .client
            .issue_cmd(GetLog(kind))
            .await
            .unwrap_or_else(|e| panic!("reading the {kind} log: {e}"));
        let mut all = into.lock().unwrap();
        all.extend(fresh.as_array().cloned().unwrap_or_default());
        all.clone()
    }

    /// The console's SEVERE entries (script errors, `console.error`, failed
    /// loads), as `source: message`.
    pub async fn console_errors(&self) -> Vec<String> {
        self.drain("browser", &self.console)
            .await
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| format!("{}: {}", e["source"].as_str().unwrap_or("?"), e["message"]))
            .collect()
    }

    /// Every URL the page asked for (`Network.requestWillBeSent`).
    pub async fn requested_urls(&self) -> Vec<String> {
        self.drain("performance", &self.performance)
            .await
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .filter_map(|m| {
                m["message"]["params"]["request"]["url"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Ends the session; the browser and driver go with `Drop`.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

async fn connect(port: u16, chromium: &str, profile: &std::path::Path) -> Result<Client, String> {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,800",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--lang=en-US",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
        "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("an object literal")
    };
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            // The driver may not listen yet.
            Err(_) if started.elapsed() < STARTUP => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(format!(
                    "no browser session from chromedriver at {url}: {e}"
                ))
            }
        }
    }
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}

/// Kills the driver's process group (chromedriver and the Chromium it
/// started) and reaps the driver.
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
