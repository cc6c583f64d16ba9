//! A headless Chromium driven over the W3C WebDriver protocol, for the tests
//! of the HTML pages: chromedriver started on a free port, one browser
//! session per [`Browser`], and the few commands the tests need (open a URL,
//! find an element, type, click, read text). Plain JSON over HTTP with the
//! tests' own reqwest client, so no WebDriver crate is needed.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them a test is reported as not run, unless `CI` is set:
//! then it fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's Chromium goes with chromedriver.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A headless browser, or `None` (reported) where none is installed and
    /// `CI` is not set.
    pub async fn start(test: &str) -> Option<Browser> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("{test}: CI is set but chromium / chromium-driver are not installed");
            }
            eprintln!("NOT RUN: {test}: no {CHROMEDRIVER} or {CHROMIUM}");
            return None;
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let created = browser
            .command(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--no-first-run"]
                    }
                }}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Some(browser)
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let reply: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver answers JSON");
        reply["value"].clone()
    }

    async fn session_command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await
    }

    pub async fn open(&self, url: &str) {
        self.session_command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The address bar's URL now.
    pub async fn url(&self) -> String {
        self.session_command(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element matching `css`, waiting (deadline 10 s) for it.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .session_command(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}: {found}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element matching `css` once it is displayed (deadline 10 s):
    /// a page's script may show it after loading.
    pub async fn find_displayed(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let element = self.find(css).await;
            let displayed = self
                .session_command(
                    reqwest::Method::GET,
                    &format!("/element/{element}/displayed"),
                    Value::Null,
                )
                .await;
            if displayed == Value::Bool(true) {
                return element;
            }
            assert!(Instant::now() < deadline, "{css} is never displayed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url` as a new page load, even when only its fragment differs
    /// from the current one's (which would not load the page again).
    pub async fn load(&self, url: &str) {
        self.open("about:blank").await;
        self.open(url).await;
    }

    /// Types `text` into the element matching `css`, as a person would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find_displayed(css).await;
        let reply = self
            .session_command(
                reqwest::Method::POST,
                &format!("/element/{element}/value"),
                json!({ "text": text }),
            )
            .await;
        assert!(reply.is_null(), "typing into {css}: {reply}");
    }

    pub async fn click(&self, css: &str) {
        let element = self.find_displayed(css).await;
        let reply = self
            .session_command(
                reqwest::Method::POST,
                &format!("/element/{element}/click"),
                json!({}),
            )
            .await;
        assert!(reply.is_null(), "clicking {css}: {reply}");
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.session_command(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Polls (deadline 10 s) until the text of `css` contains `expected`;
    /// returns it.
    pub async fn wait_for_text(&self, css: &str, expected: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text(css).await;
            if text.contains(expected) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} says {text:?}, never {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
