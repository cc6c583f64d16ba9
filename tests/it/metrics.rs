//! The Prometheus metrics (`metrics.listen`): counters move as requests are
//! made, route labels are the route table's patterns (never a raw path or
//! id), histogram counts match the request counts, the main port has no
//! `/metrics`, metrics are off by default; the page passes `promtool check
//! metrics`, and a real Prometheus scrapes it. Both stores.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package
//! (`.ci/run` installs it). Without them those tests say NOT RUN, unless
//! `CI` is set: then they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse::Settings;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

/// How long a test waits for something asynchronous (a mail sent, a
/// Prometheus scrape) before failing.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// A test server with metrics on (a port 0 address of their own), and the
/// base URL of its metrics listener.
async fn start_with(configure: impl FnOnce(&mut Settings)) -> (TestServer, String) {
    let server = TestServer::start_with(|s| {
        s.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        configure(s);
    })
    .await;
    // `serve` binds the listener as it starts, in its own task.
    let deadline = Instant::now() + DEADLINE;
    let address = loop {
        if let Some(address) = server.app.metrics.listening_on() {
            break address;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics listener never bound"
        );
        tokio::time::sleep(POLL).await;
    };
    (server, format!("http://{address}"))
}

/// The metrics page, read as a scraper does.
async fn scrape(metrics: &str) -> Page {
    let reply = reqwest::get(format!("{metrics}/metrics"))
        .await
        .expect("the metrics listener answers");
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Page(reply.text().await.expect("the page"))
}

/// A scraped page, and the samples in it.
struct Page(String);

impl Page {
    /// The value of the sample whose name and labels are exactly `series`.
    fn value(&self, series: &str) -> Option<f64> {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().expect("a number"))
    }

    /// [`Page::value`], 0 for a series not on the page (a combination of
    /// labels that never happened).
    fn count(&self, series: &str) -> f64 {
        self.value(series).unwrap_or(0.0)
    }

    /// The sum of the samples whose line starts with `prefix`.
    fn sum(&self, prefix: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The route labels of `gatehouse_http_request_duration_seconds`.
    fn timed_routes(&self) -> Vec<String> {
        self.0
            .lines()
            .filter_map(|line| {
                line.strip_prefix("gatehouse_http_request_duration_seconds_count{route=\"")?
                    .split_once('"')
                    .map(|(route, _)| route.to_string())
            })
            .collect()
    }
}

fn logins(outcome: &str) -> String {
    format!("gatehouse_logins_total{{outcome=\"{outcome}\"}}")
}

fn ended(reason: &str) -> String {
    format!("gatehouse_sessions_ended_total{{reason=\"{reason}\"}}")
}

fn refreshes(outcome: &str) -> String {
    format!("gatehouse_refreshes_total{{outcome=\"{outcome}\"}}")
}

fn requests(route: &str, method: &str, status: u16) -> String {
    format!("gatehouse_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}")
}

async fn login_attempt(server: &TestServer, email: &str, password: &str) -> Reply {
    server
        .post("/api/auth/login")
        .json(json!({"email": email, "password": password}))
        .send()
        .await
}

async fn refresh(server: &TestServer, refresh_token: &str) -> Reply {
    server
        .post("/api/auth/refresh")
        .json(json!({"refresh_token": refresh_token}))
        .send()
        .await
}

store_test! {
/// Every counter moves with the requests that should move it, and only by
/// as much; route labels are patterns.
async fn counters_move_as_requests_are_made() {
    let (server, metrics) = start_with(|s| {
        s.limits.login_failures_per_account = 3;
        s.auth.refresh_reuse_secs = 0;
    })
    .await;
    let start = scrape(&metrics).await;
    for outcome in ["success", "failure", "throttled", "unverified"] {
        assert_eq!(start.value(&logins(outcome)), Some(0.0), "{outcome}");
    }
    assert_eq!(start.value("gatehouse_registrations_total"), Some(0.0));

    // Three registrations.
    let ana = server.register("Ana", "ana@example.com").await;
    let ben = server.register("Ben", "ben@example.com").await;
    let cai = server.register("Cai", "cai@example.com").await;

    // Route labels: the pattern, never the id.
    for _ in 0..2 {
        server
            .get(&format!("/api/users/{}", ana.id))
            .token(&ana.token)
            .send()
            .await
            .assert_ok(200);
    }
    server
        .delete(&format!("/api/users/{}", ben.id))
        .token(&ana.token)
        .send()
        .await
        .assert_error(403, "forbidden");
    server.get("/api/no-such-thing").send().await.assert_error(404, "not_found");
    // The API's port has no /metrics: the usual 404.
    server.get("/metrics").send().await.assert_error(404, "not_found");

    // Logins: two successes; failures by wrong password, unknown email and
    // wrong current_password; three more for one address, then throttled.
    let ana_login = server.login_pair("ana@example.com", PASSWORD).await;
    login_attempt(&server, "ana@example.com", "wrong password")
        .await
        .assert_error(401, "invalid_credentials");
    login_attempt(&server, "nobody@example.com", PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    for _ in 0..3 {
        login_attempt(&server, "dan@example.com", PASSWORD)
            .await
            .assert_error(401, "invalid_credentials");
    }
    login_attempt(&server, "dan@example.com", PASSWORD)
        .await
        .assert_error(429, "too_many_attempts");
    let cai_login = server.login("cai@example.com", PASSWORD).await;
    server
        .post("/api/auth/password")
        .token(&cai_login)
        .json(json!({"current_password": "wrong password", "new_password": "a new password"}))
        .send()
        .await
        .assert_error(403, "wrong_password");

    // Sessions: Ana logs her second session out and revokes her first;
    // Cai's password change ends both of his.
    server
        .post("/api/auth/logout")
        .token(ana_login["token"].as_str().unwrap())
        .send()
        .await
        .assert_ok(200);
    let ana_first = jwt_part(&ana.token, 1)["sid"].as_str().unwrap().to_string();
    server
        .delete(&format!("/api/auth/sessions/{ana_first}"))
        .token(&ana.token)
        .send()
        .await
        .assert_ok(200);
    server
        .post("/api/auth/password")
        .token(&cai_login)
        .json(json!({"current_password": PASSWORD, "new_password": "a new password"}))
        .send()
        .await
        .assert_ok(200);

    // Refreshes: one made-up token (refused), one rotation (granted), then
    // the spent token again once its window has passed (reused), which ends
    // Ben's session. Inside the window it is granted again.
    refresh(&server, "not-a-refresh-token").await.assert_error(401, "invalid_refresh_token");
    let ben_pair = server.login_pair("ben@example.com", PASSWORD).await;
    let spent = ben_pair["refresh_token"].as_str().unwrap();
    refresh(&server, spent).await.assert_ok(200);
    let mut granted = 1.0;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = refresh(&server, spent).await;
        if reply.status != 200 {
            reply.assert_error(401, "invalid_refresh_token");
            break;
        }
        granted += 1.0;
        assert!(Instant::now() < deadline, "the reuse window never closed");
        tokio::time::sleep(POLL).await;
    }

    let page = scrape(&metrics).await;
    assert_eq!(page.value("gatehouse_registrations_total"), Some(3.0));
    // Ana's, Ben's and Cai's logins (the password change's new session is
    // no login).
    assert_eq!(page.value(&logins("success")), Some(3.0), "{}", page.0);
    assert_eq!(page.value(&logins("failure")), Some(6.0));
    assert_eq!(page.value(&logins("throttled")), Some(1.0));
    assert_eq!(page.value(&logins("unverified")), Some(0.0));
    assert_eq!(page.value(&refreshes("refused")), Some(1.0));
    assert_eq!(page.value(&refreshes("granted")), Some(granted));
    assert_eq!(page.value(&refreshes("reused")), Some(1.0));
    assert_eq!(page.value(&ended("logout")), Some(1.0));
    assert_eq!(page.value(&ended("revoked")), Some(1.0));
    assert_eq!(page.value(&ended("password_change")), Some(2.0));
    assert_eq!(page.value(&ended("reuse")), Some(1.0));
    assert_eq!(page.value(&ended("reset")), Some(0.0));

    assert_eq!(page.count(&requests("/api/users/{id}", "GET", 200)), 2.0);
    assert_eq!(page.count(&requests("/api/users/{id}", "DELETE", 403)), 1.0);
    assert_eq!(page.count(&requests("/api/auth/register", "POST", 200)), 3.0);
    assert_eq!(page.count(&requests("/api/auth/login", "POST", 200)), 3.0);
    assert_eq!(page.count(&requests("/api/auth/login", "POST", 401)), 5.0);
    assert_eq!(page.count(&requests("/api/auth/login", "POST", 429)), 1.0);
    assert_eq!(page.count(&requests("/api/auth/password", "POST", 403)), 1.0);
    assert_eq!(page.count(&requests("/api/auth/sessions/{id}", "DELETE", 200)), 1.0);
    // Each register() reads /me once.
    assert_eq!(page.count(&requests("/api/auth/me", "GET", 200)), 3.0);
    assert_eq!(page.count(&requests("unmatched", "GET", 404)), 2.0);
    for raw in [&ana.id, &ben.id, &cai.id, &ana_first, "/api/no-such-thing", "/metrics\""] {
        assert!(!page.0.contains(raw), "{raw} is on the page");
    }
    // Every route with requests has its histogram, whose count is its
    // requests', whatever their method and status.
    let routes = page.timed_routes();
    assert!(routes.len() >= 8, "{routes:?}");
    for route in &routes {
        let counted = page.sum(&format!("gatehouse_http_requests_total{{route=\"{route}\","));
        let timed = page
            .value(&format!("gatehouse_http_request_duration_seconds_count{{route=\"{route}\"}}"))
            .unwrap();
        assert_eq!(timed, counted, "{route}");
        let inf = page
            .value(&format!(
                "gatehouse_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}}"
            ))
            .unwrap();
        assert_eq!(inf, counted, "{route}");
    }
    // Every hash and verification ran on the hashing threads, timed: three
    // registrations, eight logins that checked a password (not the
    // throttled one), two current_password checks and the new password,
    // and the dummy hash unknown emails are checked against.
    assert_eq!(
        page.value("gatehouse_password_hash_duration_seconds_count"),
        Some(15.0)
    );
    assert_eq!(page.value("gatehouse_password_hash_queue_depth"), Some(0.0));
}
}

store_test! {
/// The unverified login and the mail counters, with a mail server that
/// first accepts and then refuses.
async fn unverified_logins_and_mails_are_counted() {
    let sink = crate::mailsink::MailSink::start().await;
    let url = sink.smtp_url();
    let (server, metrics) = start_with(move |s| {
        s.mail.smtp_url = Some(gatehouse::config::Secret::new(url));
        s.auth.require_verified_email = true;
    })
    .await;
    server
        .post("/api/auth/register")
        .json(json!({"name": "Eve", "email": "eve@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_ok(202);
    sink.wait_for("eve@example.com", 1).await;
    let sent = r#"gatehouse_mail_sent_total{kind="verify",outcome="sent"}"#;
    eventually(&metrics, sent, 1.0).await;
    login_attempt(&server, "eve@example.com", PASSWORD)
        .await
        .assert_error(403, "email_not_verified");

    sink.set_mode(crate::mailsink::Mode::Refuse);
    server
        .post("/api/auth/password/forgot")
        .json(json!({"email": "eve@example.com"}))
        .send()
        .await
        .assert_ok(202);
    let failed = r#"gatehouse_mail_sent_total{kind="reset",outcome="failed"}"#;
    eventually(&metrics, failed, 1.0).await;

    let page = scrape(&metrics).await;
    assert_eq!(page.value(&logins("unverified")), Some(1.0));
    assert_eq!(page.value(&logins("success")), Some(0.0));
    assert_eq!(page.value("gatehouse_registrations_total"), Some(1.0));
    assert_eq!(page.value(sent), Some(1.0));
    assert_eq!(
        page.value(r#"gatehouse_mail_sent_total{kind="reset",outcome="sent"}"#),
        Some(0.0)
    );
    assert_eq!(
        page.value(r#"gatehouse_mail_sent_total{kind="verify",outcome="dropped"}"#),
        Some(0.0)
    );
}
}

/// Polls the page until `series` reads `expected` (mails are counted by
/// the worker, after the answer).
async fn eventually(metrics: &str, series: &str, expected: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = scrape(metrics).await.value(series);
        if value == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value:?}, never {expected}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let server = TestServer::start().await;
    assert_eq!(server.app.settings.metrics.listen, None);
    assert!(!server.app.metrics.is_on());
    server.register("Off", "off@example.com").await;
    assert_eq!(server.app.metrics.listening_on(), None);
    assert_eq!(server.app.metrics.encode(), None);
    server
        .get("/metrics")
        .send()
        .await
        .assert_error(404, "not_found");
}

store_test! {
/// The page is what Prometheus's own checker accepts.
async fn the_page_passes_promtool_check_metrics() {
    let Some(promtool) = tool("promtool", "the_page_passes_promtool_check_metrics") else {
        return;
    };
    let (server, metrics) = start_with(|_| {}).await;
    let user = server.register("Pat", "pat@example.com").await;
    login_attempt(&server, "pat@example.com", "wrong password").await;
    server.get(&format!("/api/users/{}", user.id)).token(&user.token).send().await;
    server.get("/nowhere").send().await;
    let page = scrape(&metrics).await;
    for family in [
        "gatehouse_http_requests_total",
        "gatehouse_http_request_duration_seconds",
        "gatehouse_logins_total",
        "gatehouse_registrations_total",
        "gatehouse_refreshes_total",
        "gatehouse_sessions_ended_total",
        "gatehouse_mail_sent_total",
        "gatehouse_password_hash_queue_depth",
        "gatehouse_password_hash_duration_seconds",
        "gatehouse_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(page.0.contains(&format!("# TYPE {family} ")), "{family} missing:\n{}", page.0);
    }
    let build = format!("gatehouse_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(page.value(&build), Some(1.0));
    assert!(page.value("process_resident_memory_bytes").unwrap() > 1e6);
    assert!(page.value("process_open_fds").unwrap() >= 3.0);

    let checked = promtool_check(&promtool, &page.0);
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        page.0
    );
    // And a broken page fails it, so the check is real.
    let broken = promtool_check(&promtool, "# TYPE x counter\nx{le=\"1\" 1\n");
    assert!(!broken.status.success());
}
}

/// `promtool check metrics` on `page`.
fn promtool_check(promtool: &Path, page: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    check.wait_with_output().expect("promtool ends")
}

store_test! {
/// A real Prometheus, scraping the listener every second, reports the
/// target up and the login counter through its HTTP API.
async fn a_real_prometheus_scrapes_the_listener() {
    let Some(binary) = tool("prometheus", "a_real_prometheus_scrapes_the_listener") else {
        return;
    };
    let (server, metrics) = start_with(|_| {}).await;
    server.register("Pru", "pru@example.com").await;
    server.login("pru@example.com", PASSWORD).await;
    let target = metrics.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&binary, &target);

    let up = prometheus
        .eventually("the target up", "/api/v1/targets", |answer| {
            answer["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|t| t["labels"]["job"] == "gatehouse")
                .filter(|t| t["health"] == "up")
                .cloned()
        })
        .await;
    assert_eq!(up["scrapeUrl"], format!("{metrics}/metrics"));
    let query = "/api/v1/query?query=gatehouse_logins_total";
    let sample = prometheus
        .eventually("a gatehouse_logins_total sample", query, |answer| {
            answer["data"]["result"]
                .as_array()?
                .iter()
                .find(|r| r["metric"]["outcome"] == "success")
                .cloned()
        })
        .await;
    assert_eq!(sample["metric"]["job"], "gatehouse");
    assert_eq!(sample["value"][1], "1", "{sample}");
}
}

/// A Prometheus server on a free port, scraping `target` every second; killed
/// when dropped.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Polls `path` on Prometheus's API until `found` finds something in
    /// its answer; fails with Prometheus's log past the deadline or if it
    /// exits.
    async fn eventually(
        &self,
        what: &str,
        path: &str,
        found: impl Fn(&Value) -> Option<Value>,
    ) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut last = Value::Null;
        loop {
            if let Ok(reply) = self.http.get(format!("{}{path}", self.base)).send().await {
                if let Ok(answer) = reply.json::<Value>().await {
                    if let Some(found) = found(&answer) {
                        return found;
                    }
                    last = answer;
                }
            }
            let log = || {
                std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
            };
            assert!(
                Instant::now() < deadline,
                "Prometheus never showed {what}; last answer {last}; its log:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `name` on `PATH`, or `None` (reported as NOT RUN) where it is
/// not installed and `CI` is not set.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("{test}: CI is set but {name} is not installed (Debian's prometheus package)");
        }
        eprintln!("NOT RUN: {test}: no {name} on PATH (Debian's prometheus package)");
    }
    found
}

#[tokio::test]
async fn the_listener_is_bounded_and_stops_with_the_server() {
    let (server, metrics) = start_with(|s| s.server.idle_timeout_secs = 600).await;
    let address = metrics.trim_start_matches("http://").to_string();
    // A keep-alive scraper, then the cap's worth of idle connections.
    let mut scraper = TcpStream::connect(&address).await.unwrap();
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut scraper)
        .await
        .starts_with("HTTP/1.1 200 OK"));
    let mut idle = Vec::new();
    for _ in 1..16 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    // One more than 16 is closed unanswered.
    let mut excess = TcpStream::connect(&address).await.unwrap();
    excess
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut excess, Duration::from_secs(5)).await);
    // A slot freed is a slot again.
    drop(idle.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut again = TcpStream::connect(&address).await.unwrap();
        again
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
            .await
            .unwrap();
        if read_response(&mut again)
            .await
            .starts_with("HTTP/1.1 200 OK")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never served");
        tokio::time::sleep(POLL).await;
    }

    server.stop().await.unwrap();
    assert!(closed_within(&mut scraper, Duration::from_secs(5)).await);
    assert!(
        TcpStream::connect(&address).await.is_err(),
        "still listening"
    );
}

/// The listener answers `/metrics` alone: `HEAD` (headers only, the
/// connection still usable), 405 for other methods, 404 for other paths.
#[tokio::test]
async fn the_listener_answers_only_its_page() {
    let (_server, metrics) = start_with(|_| {}).await;
    let client = reqwest::Client::new();
    let post = client
        .post(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    for path in ["/", "/api/auth/me", "/metrics/x"] {
        let other = client.get(format!("{metrics}{path}")).send().await.unwrap();
        assert_eq!(other.status(), 404, "{path}");
        let body: Value = other.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
    let address = metrics.trim_start_matches("http://");
    let mut connection = TcpStream::connect(address).await.unwrap();
    connection
        .write_all(b"HEAD /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut connection).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    connection
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    // Had the HEAD answer carried a body, this would read it instead.
    let page = read_response(&mut connection).await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("\ngatehouse_build_info{"), "{page}");
}

/// Reads one answer's head (to its blank line), with a deadline.
async fn read_head(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + DEADLINE;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => panic!(
                "the head ended early ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).expect("an ASCII head")
}

/// The binary logs the metrics address after the API's (so the first
/// "listening" line names the API), serves it, and stops cleanly.
#[tokio::test]
async fn the_binary_logs_and_serves_its_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut binary = Binary::start(dir.path(), &[("GATEHOUSE_METRICS__LISTEN", "127.0.0.1:0")]);
    let address = binary.wait_for_address("metrics listening");
    assert_ne!(format!("http://{address}"), binary.base);
    binary
        .request(reqwest::Method::GET, "/api")
        .send()
        .await
        .assert_ok(200);
    let page = scrape(&format!("http://{address}")).await;
    assert_eq!(page.count(&requests("/api", "GET", 200)), 1.0);
    assert!(page.value("process_cpu_seconds_total").is_some());
    assert!(binary.terminate().expect("it exits").success());
}

store_test! {
/// Sessions ended by a user's deletion, by the cap on a user's sessions,
/// by a reused refresh token (once, however many present it) and by the
/// purge are counted under their reasons, and the store's operations are
/// timed by name.
async fn deletions_purges_and_store_operations_are_counted() {
    let (server, metrics) = start_with(|_| {}).await;
    let ann = server.register("Ann", "ann@example.com").await;
    // 1 + 101 sessions: the two oldest make way (100 a user at most).
    let mut newest = String::new();
    for _ in 0..101 {
        newest = server.login("ann@example.com", PASSWORD).await;
    }
    let page = scrape(&metrics).await;
    assert_eq!(page.value(&ended("evicted")), Some(2.0), "{}", page.0);
    // Ann's hundred sessions end with her account.
    server
        .delete(&format!("/api/users/{}", ann.id))
        .token(&newest)
        .send()
        .await
        .assert_ok(200);
    let page = scrape(&metrics).await;
    assert_eq!(page.value(&ended("user_deleted")), Some(100.0), "{}", page.0);
    assert_eq!(page.value(&ended("expired")), Some(0.0));

    // A refresh token 17 rotations old (past the 16 spend times a session
    // keeps) presented twice at once: one session ended, counted once.
    server.register("Cat", "cat@example.com").await;
    let cat = server.login_pair("cat@example.com", PASSWORD).await;
    let first = cat["refresh_token"].as_str().unwrap().to_string();
    let mut current = first.clone();
    for _ in 0..17 {
        let reply = refresh(&server, &current).await;
        reply.assert_ok(200);
        current = reply.body["refresh_token"].as_str().unwrap().to_string();
    }
    let (one, two) = tokio::join!(refresh(&server, &first), refresh(&server, &first));
    one.assert_error(401, "invalid_refresh_token");
    two.assert_error(401, "invalid_refresh_token");
    let page = scrape(&metrics).await;
    assert_eq!(page.value(&ended("reuse")), Some(1.0), "{}", page.0);

    // Sessions outliving their absolute end: the purge ends them.
    let _bob = server.register("Bob", "bob@example.com").await;
    server.login("bob@example.com", PASSWORD).await;
    let policy = server.app.sessions;
    let later = gatehouse::domain::unix_now() + policy.ttl_secs + 1;
    server.app.store.purge_expired(later, &policy).await.unwrap();
    let page = scrape(&metrics).await;
    // Bob's two and Cat's first (her second ended by the reuse).
    assert_eq!(page.value(&ended("expired")), Some(3.0), "{}", page.0);
    for op in ["insert_user", "insert_session", "session_and_user", "delete_user", "purge_expired"] {
        let timed = page
            .value(&format!("gatehouse_store_operation_duration_seconds_count{{op=\"{op}\"}}"))
            .unwrap_or(0.0);
        assert!(timed >= 1.0, "{op} was not timed: {}", page.0);
    }
    assert!(page.0.contains("gatehouse_store_operation_duration_seconds_bucket{op=\"insert_user\",le=\"+Inf\"}"));
}
}
