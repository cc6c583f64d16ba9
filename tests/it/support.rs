//! Test support: a real gatehouse server on port 0 with a temporary data dir
//! and bcrypt cost 4 (in-process, or the built binary as a child process),
//! and a small request DSL over a real HTTP client.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::config::Secret;
use gatehouse::{App, Settings};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "correct horse";

/// The store a test server runs on. Tests written with `store_test!` run once
/// on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// The PostgreSQL server the tests may use: `GATEHOUSE_TEST_DATABASE_URL`
/// (`.ci/run` sets it). Each test gets a schema of its own in it.
pub fn test_database_url() -> Option<String> {
    std::env::var("GATEHOUSE_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Runs a test body with every server it starts on `backend`. Without a test
/// database the PostgreSQL run says plainly that it did not run.
pub async fn on_backend(backend: Backend, test: &str, body: impl std::future::Future<Output = ()>) {
    if backend == Backend::Postgres && test_database_url().is_none() {
        not_run(&format!("{test} on PostgreSQL"));
        return;
    }
    BACKEND.scope(backend, body).await;
}

/// Says, past the test harness's output capture, that a test did not run for
/// lack of a test database; under CI (`CI` set, as CI services set it) that
/// is a failure, never a silent pass.
#[track_caller]
pub fn not_run(test: &str) {
    use std::io::Write;
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test}: CI is set but GATEHOUSE_TEST_DATABASE_URL is not: the PostgreSQL tests must run");
    }
    let _ = writeln!(
        std::io::stderr(),
        "NOT RUN: {test}: GATEHOUSE_TEST_DATABASE_URL is not set"
    );
}

/// The store of the test being run (`store_test!`), sled outside one: for
/// tests that start the binary themselves.
pub fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sled)
}

/// A fresh, empty schema in the test database, and a store URL that uses it.
pub async fn fresh_schema_url() -> String {
    let base = test_database_url().expect("GATEHOUSE_TEST_DATABASE_URL is set");
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("the test database answers");
    let connection = tokio::spawn(connection);
    let schema = format!("gh_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("schema created");
    drop(client);
    let _ = connection.await;
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}")
}

/// Settings every test server starts from.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings {
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    settings.server.port = 0;
    settings.auth.bcrypt_cost = 4;
    // Tests register many users from one address; the tests of the
    // registration limit set their own.
    settings.limits.registrations_per_address = 100_000;
    settings.auth.secret = Some(Secret::new("test-secret-test-secret-test-secret!"));
    settings
}

/// A server running inside the test's runtime.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(dir.path());
        if BACKEND.try_with(|b| *b) == Ok(Backend::Postgres) {
            settings.store.url = Some(Secret::new(fresh_schema_url().await));
        }
        configure(&mut settings);
        let mut server = Self::start_settings(settings).await;
        server._dir = Some(dir);
        server
    }

    /// Starts on the given settings (the caller owns the data dir).
    pub async fn start_settings(settings: Settings) -> TestServer {
        settings.validate().expect("valid test settings");
        // sled releases a database's lock when its last handle (and its
        // flusher thread) is gone, which can lag a just-stopped server in this
        // process by a moment: poll for it, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let app = loop {
            match App::open(settings.clone()).await {
                Ok(app) => break Arc::new(app),
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("app opens: {error:#}"),
            }
        };
        let listener = gatehouse::server::bind(&app).await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gatehouse::server::serve(listener, app.clone(), async {
            let _ = stopped.await;
        }));
        TestServer {
            base,
            client: reqwest::Client::new(),
            app,
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: None,
        }
    }

    /// Graceful shutdown; returns what `serve` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// `IP:PORT`, for raw TCP clients.
    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> Req {
        Req {
            builder: self.client.request(method, self.url(path)),
        }
    }

    pub fn get(&self, path: &str) -> Req {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Req {
        self.request(Method::POST, path)
    }

    pub fn patch(&self, path: &str) -> Req {
        self.request(Method::PATCH, path)
    }

    pub fn put(&self, path: &str) -> Req {
        self.request(Method::PUT, path)
    }

    pub fn delete(&self, path: &str) -> Req {
        self.request(Method::DELETE, path)
    }

    /// Registers a user and returns it with its token.
    pub async fn register(&self, name: &str, email: &str) -> TestUser {
        let reply = self
            .post("/api/auth/register")
            .json(json!({"name": name, "email": email, "password": PASSWORD}))
            .send()
            .await;
        assert_eq!(reply.status, 200, "register {email}: {}", reply.body);
        let token = reply.body["token"].as_str().expect("token").to_string();
        let me = self.get("/api/auth/me").token(&token).send().await;
        assert_eq!(me.status, 200, "{}", me.body);
        TestUser {
            id: me.body["_id"].as_str().unwrap().to_string(),
            email: me.body["email"].as_str().unwrap().to_string(),
            token,
        }
    }

    /// Creates an admin the way `gatehouse admin create` does, then logs in.
    pub async fn admin(&self) -> TestUser {
        let email = "admin@example.com";
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        let (user, _) = self
            .app
            .store
            .upsert_admin(
                "Admin".into(),
                email.into(),
                hash,
                gatehouse::domain::unix_now(),
            )
            .await
            .expect("admin created");
        TestUser {
            id: user.id,
            email: email.into(),
            token: self.login(email, PASSWORD).await,
        }
    }

    /// Logs in and returns the whole answer (the token pair).
    pub async fn login_pair(&self, email: &str, password: &str) -> Value {
        let reply = self
            .post("/api/auth/login")
            .json(json!({"email": email, "password": password}))
            .send()
            .await;
        assert_eq!(reply.status, 200, "login {email}: {}", reply.body);
        reply.body
    }

    /// A token as servers issued before sessions existed (no `sid`), signed
    /// with this server's key.
    pub async fn token_without_session(&self, user_id: &str) -> String {
        let user = self
            .app
            .store
            .user_by_id(user_id)
            .await
            .expect("store answers")
            .expect("the user exists");
        let (token, claims) = self
            .app
            .tokens
            .issue(&user, None, gatehouse::domain::unix_now())
            .expect("signed");
        assert!(claims.sid.is_none());
        token
    }

    /// `GET /api/auth/me` with `token`.
    pub async fn me(&self, token: &str) -> Reply {
        self.get("/api/auth/me").token(token).send().await
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        self.login_pair(email, password).await["token"]
            .as_str()
            .expect("a token")
            .to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub struct TestUser {
    pub id: String,
    pub email: String,
    pub token: String,
}

/// A request being built.
pub struct Req {
    builder: reqwest::RequestBuilder,
}

impl Req {
    pub fn token(self, token: &str) -> Self {
        self.header("x-access-token", token)
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.builder = self.builder.json(&body);
        self
    }

    /// A form body from `name=value` pairs (encoded here).
    pub fn form(self, pairs: &[(&str, &str)]) -> Self {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.raw(
            "application/x-www-form-urlencoded",
            body.join("&").into_bytes(),
        )
    }

    pub fn raw(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.builder = self.builder.header("content-type", content_type).body(body);
        self
    }

    pub async fn send(self) -> Reply {
        let response = self.builder.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Reply {
            status,
            headers,
            text,
            body,
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON (a JSON string holding the text if it is not JSON).
    pub body: Value,
}

impl Reply {
    /// Asserts an error reply of the contract: status, code, JSON content type,
    /// and a non-empty message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.body["error"].as_str()),
            (status, Some(code)),
            "body: {}",
            self.text
        );
        assert!(!self.body["message"].as_str().unwrap_or_default().is_empty());
        assert_eq!(self.header("content-type"), Some("application/json"));
        self
    }

    #[track_caller]
    pub fn assert_ok(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The built binary, as a child process.
pub struct Binary {
    pub child: Child,
    pub base: String,
    lines: mpsc::Receiver<String>,
}

pub const BINARY: &str = env!("CARGO_BIN_EXE_gatehouse");

impl Binary {
    /// Starts `gatehouse --port 0 --data-dir DIR` with bcrypt cost 4 and waits
    /// (with a deadline) for it to log its address.
    pub fn start(data_dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Binary {
        let mut command = Command::new(BINARY);
        command
            .args(["--port", "0", "--data-dir"])
            .arg(data_dir)
            .env("GATEHOUSE_AUTH__BCRYPT_COST", "4")
            // As in `test_settings`: tests register many users from loopback.
            .env("GATEHOUSE_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut binary = Binary {
            child,
            base: String::new(),
            lines,
        };
        binary.base = format!("http://{}", binary.wait_for_address("gatehouse listening"));
        binary
    }

    /// The `address=IP:PORT` of the first log line containing `needle`
    /// (waiting for it, with a deadline).
    pub fn wait_for_address(&mut self, needle: &str) -> String {
        let line = self
            .wait_for_line(needle, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no {needle:?} line with an address in the log"));
        line.split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in the log line")
            .to_string()
    }

    /// A request to this server, on a client of its own (the process may be
    /// killed and restarted between requests).
    pub fn request(&self, method: Method, path: &str) -> Req {
        Req {
            builder: reqwest::Client::new().request(method, format!("{}{}", self.base, path)),
        }
    }

    /// Reads log lines until one contains `needle`, or the deadline passes.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every log line received so far (and until the pipe is drained).
    pub fn drain_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (with a deadline) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for start-up failures and `admin create`).
pub fn run_binary(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .args(args)
        .envs(env.iter().copied())
        .env("GATEHOUSE_AUTH__BCRYPT_COST", "4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    let output = child.wait_with_output().expect("binary exits");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// True if the server closes the connection (EOF or reset) before `within`;
/// anything it sends first (such as a 408) is read and dropped.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    // Large reads: a connection whose client starts reading may first
    // deliver megabytes of answers it had backed up (network.rs's stalled
    // readers) before the close; 1 KiB reads of a debug server under load
    // took longer than the deadline.
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Reads one response's head and body (up to a deadline) as text.
pub async fn read_response(stream: &mut TcpStream) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => {
                received.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&received);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if length.is_some_and(|n| body.len() >= n) {
                        break;
                    }
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Part `index` of a JWT (0: the header, 1: the claims) as JSON, read
/// without verifying anything.
pub fn jwt_part(token: &str, index: usize) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(index).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("a JSON object")
}

/// The ways a token (refresh or mail) could be stored in the clear: its
/// text, its bytes if it is base64url, and those bytes in hex (as
/// PostgreSQL prints a `bytea`).
pub fn needles(token: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut needles = vec![token.as_bytes().to_vec()];
    if let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) {
        if bytes.len() >= 16 {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            needles.push(hex.into_bytes());
            needles.push(bytes);
        }
    }
    needles
}

/// The files under `dir` holding any of `needles`, and whether any holds
/// `marker` (a proof that the search reads the store's data).
pub fn files_holding(
    dir: &std::path::Path,
    needles: &[Vec<u8>],
    marker: &[u8],
) -> (Vec<String>, bool) {
    let mut found = Vec::new();
    let mut marked = false;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                pending.push(entry.expect("entry").path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).expect("a readable file");
        marked |= memchr::memmem::find(&bytes, marker).is_some();
        if needles
            .iter()
            .any(|n| memchr::memmem::find(&bytes, n).is_some())
        {
            found.push(path.display().to_string());
        }
    }
    (found, marked)
}

/// The rows of every table in the store's schema (as `t::text`) holding any
/// of `needles`, and whether any holds `marker`.
pub async fn rows_holding(url: &str, needles: &[Vec<u8>], marker: &[u8]) -> (Vec<String>, bool) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the test database answers");
    let connection = tokio::spawn(connection);
    let tables = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema()",
            &[],
        )
        .await
        .expect("tables listed");
    assert!(!tables.is_empty(), "the schema has tables");
    let mut found = Vec::new();
    let mut marked = false;
    for table in tables {
        let table: String = table.get(0);
        let rows = client
            .query(&format!("SELECT t::text FROM \"{table}\" t"), &[])
            .await
            .expect("rows read");
        for row in rows {
            let text: String = row.get(0);
            let bytes = text.as_bytes();
            marked |= memchr::memmem::find(bytes, marker).is_some();
            if needles
                .iter()
                .any(|n| memchr::memmem::find(bytes, n).is_some())
            {
                found.push(format!("{table}: {text}"));
            }
        }
    }
    drop(client);
    let _ = connection.await;
    (found, marked)
}
