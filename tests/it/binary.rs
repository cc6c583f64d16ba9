//! The built binary as a child process: restarts on one data dir, `kill -9`
//! durability (of users, logouts and key rotations), the generated secret, bad configuration, `admin create`,
//! graceful shutdown and the request log.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{json, Value};

use crate::support::*;

/// How long a command that should exit (start-up failure, `admin create`) may run.
pub(crate) const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// Status and JSON body (or the text as a JSON string) of one request.
pub(crate) async fn call(
    client: &Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.header("x-access-token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body read");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub(crate) async fn register(
    client: &Client,
    base: &str,
    name: &str,
    email: &str,
    password: &str,
) -> String {
    let (status, body) = call(
        client,
        reqwest::Method::POST,
        format!("{base}/api/auth/register"),
        None,
        Some(json!({"name": name, "email": email, "password": password})),
    )
    .await;
    assert_eq!(status, 200, "register {email}: {body}");
    assert_eq!(body["auth"], true, "{body}");
    body["token"].as_str().expect("token").to_string()
}

/// The login's status and body.
pub(crate) async fn try_login(
    client: &Client,
    base: &str,
    email: &str,
    password: &str,
) -> (u16, Value) {
    call(
        client,
        reqwest::Method::POST,
        format!("{base}/api/auth/login"),
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn login(client: &Client, base: &str, email: &str, password: &str) -> String {
    let (status, body) = try_login(client, base, email, password).await;
    assert_eq!(status, 200, "login {email}: {body}");
    body["token"].as_str().expect("token").to_string()
}

async fn me(client: &Client, base: &str, token: &str) -> (u16, Value) {
    call(
        client,
        reqwest::Method::GET,
        format!("{base}/api/auth/me"),
        Some(token),
        None,
    )
    .await
}

#[track_caller]
fn assert_invalid_token(status: u16, body: &Value) {
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
}

#[track_caller]
fn assert_exited_ok(status: Option<ExitStatus>) {
    let status = status.expect("the server exits within the deadline after SIGTERM");
    assert!(status.success(), "graceful exit is 0, got {status}");
}

/// Runs the binary until it exits (killing it after `EXIT_DEADLINE`, so a
/// command that wrongly starts serving fails the test instead of hanging it).
/// Unlike `run_binary`, the caller's `env` wins over the bcrypt cost 4 default,
/// inherited `GATEHOUSE_*` variables are removed, and the working directory is
/// `cwd` (so no stray `config.toml` is read).
pub(crate) fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    cwd: &Path,
) -> (ExitStatus, String, String) {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") {
            command.env_remove(key);
        }
    }
    command.env("GATEHOUSE_AUTH__BCRYPT_COST", "4");
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("binary starts");
    // The binary may exit before reading its standard input: ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let Some(status) = wait_until_exit(&mut child, EXIT_DEADLINE) else {
        let stderr = err_reader.join().unwrap_or_default();
        panic!(
            "`gatehouse {}` did not exit within {EXIT_DEADLINE:?}; stderr:\n{stderr}",
            args.join(" ")
        );
    };
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    (status, stdout, stderr)
}

/// Waits for the child's exit; past the deadline it is killed and `None` returned.
pub(crate) fn wait_until_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `gatehouse admin create` on `data_dir` (it reads its password from stdin,
/// so support's `run_binary` cannot hang on a prompt).
fn admin_create(
    data_dir: &Path,
    email: &str,
    name: &str,
    password_line: &str,
) -> (ExitStatus, String, String) {
    let dir = data_dir.to_str().expect("UTF-8 temp path");
    run_binary(
        &[
            "admin",
            "create",
            "--email",
            email,
            "--name",
            name,
            "--password-stdin",
            "--data-dir",
            dir,
        ],
        &[],
        password_line,
    )
}

/// Every log line until (and including) one containing `needle`, polling with
/// a deadline (the pipe reader may lag behind the process's exit).
fn lines_until(binary: &mut Binary, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    loop {
        lines.extend(binary.drain_lines());
        if lines.iter().any(|line| line.contains(needle)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within {within:?}; got:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_restart_keeps_users_tokens_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let mut first = Binary::start(dir.path(), &[]);
    let token = register(&client, &first.base, "Mike", "mike@example.com", PASSWORD).await;
    let (status, body) = me(&client, &first.base, &token).await;
    assert_eq!(status, 200, "{body}");
    let id = body["_id"].as_str().expect("_id").to_string();
    let logged_out = login(&client, &first.base, "mike@example.com", PASSWORD).await;
    assert_eq!(me(&client, &first.base, &logged_out).await.0, 200);
    let (status, body) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/auth/logout", first.base),
        Some(&logged_out),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = me(&client, &first.base, &logged_out).await;
    assert_invalid_token(status, &body);
    assert_exited_ok(first.terminate());

    let second = Binary::start(dir.path(), &[]);
    // The token issued before the restart still works, for the same user.
    let (status, body) = me(&client, &second.base, &token).await;
    assert_eq!(status, 200, "a pre-restart token: {body}");
    assert_eq!(body["_id"], id.as_str(), "{body}");
    assert_eq!(body["email"], "mike@example.com", "{body}");
    // The user is still there: login works and the email is still taken.
    let fresh = login(&client, &second.base, "mike@example.com", PASSWORD).await;
    assert_eq!(
        me(&client, &second.base, &fresh).await.1["_id"],
        id.as_str()
    );
    let (status, body) =
        try_login(&client, &second.base, "mike@example.com", "wrong password").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_credentials")),
        "{body}"
    );
    let (status, body) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/auth/register", second.base),
        None,
        Some(json!({"name": "Other", "email": "MIKE@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("email_taken")),
        "{body}"
    );
    // The logout before the restart still holds.
    let (status, body) = me(&client, &second.base, &logged_out).await;
    assert_invalid_token(status, &body);
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    const USERS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let email = |i: usize| format!("user{i}@example.com");

    // Phase 1: concurrent registrations, then kill -9 right after the last 200.
    let mut first = Binary::start(dir.path(), &[]);
    let registrations = (0..USERS).map(|i| {
        let client = client.clone();
        let base = first.base.clone();
        let email = email(i);
        tokio::spawn(async move {
            register(&client, &base, &format!("User {i}"), &email, PASSWORD).await
        })
    });
    let mut tokens = Vec::new();
    for registration in registrations.collect::<Vec<_>>() {
        tokens.push(registration.await.expect("registration task"));
    }
    first.kill9();

    let mut second = Binary::start(dir.path(), &[]);
    let logins = (0..USERS).map(|i| {
        let client = client.clone();
        let base = second.base.clone();
        let email = email(i);
        tokio::spawn(async move { try_login(&client, &base, &email, PASSWORD).await })
    });
    let mut lost = Vec::new();
    for (i, result) in logins.collect::<Vec<_>>().into_iter().enumerate() {
        let (status, body) = result.await.expect("login task");
        if status != 200 {
            lost.push(format!("{}: {status} {body}", email(i)));
        }
    }
    assert!(lost.is_empty(), "registrations lost by kill -9: {lost:#?}");

    // Phase 2: a name change and a logout acknowledged right before kill -9.
    let (status, body) = me(&client, &second.base, &tokens[0]).await;
    assert_eq!(status, 200, "{body}");
    let id = body["_id"].as_str().expect("_id").to_string();
    assert_eq!(me(&client, &second.base, &tokens[1]).await.0, 200);
    let patch = call(
        &client,
        reqwest::Method::PATCH,
        format!("{}/api/users/{id}", second.base),
        Some(&tokens[0]),
        Some(json!({"name": "Renamed Before Crash"})),
    );
    let logout = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/auth/logout", second.base),
        Some(&tokens[1]),
        None,
    );
    let ((patch_status, patch_body), (logout_status, logout_body)) = tokio::join!(patch, logout);
    second.kill9();
    assert_eq!(patch_status, 200, "{patch_body}");
    assert_eq!(patch_body["name"], "Renamed Before Crash", "{patch_body}");
    assert_eq!(logout_status, 200, "{logout_body}");

    let third = Binary::start(dir.path(), &[]);
    let (status, body) = me(&client, &third.base, &tokens[0]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["name"], "Renamed Before Crash",
        "the PATCH was lost: {body}"
    );
    let (status, body) = me(&client, &third.base, &tokens[1]).await;
    assert_invalid_token(status, &body);
    // A token nobody logged out still works, so the 401 above is the revocation.
    let (status, body) = me(&client, &third.base, &tokens[2]).await;
    assert_eq!(status, 200, "{body}");
}

/// A key rotation acknowledged with 200 survives `kill -9`: after the
/// restart the promoted key signs and the key it replaced still verifies.
#[tokio::test]
async fn an_acknowledged_key_rotation_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let (status, _, stderr) = admin_create(dir.path(), "keys@example.com", "Keys", "adminpass1\n");
    assert!(status.success(), "admin create: {stderr}");
    let eddsa = [("GATEHOUSE_AUTH__ALGORITHM", "EdDSA")];
    let mut first = Binary::start(dir.path(), &eddsa);
    let old_token = login(&client, &first.base, "keys@example.com", "adminpass1").await;
    let (status, listing) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/admin/keys/rotate", first.base),
        Some(&old_token),
        Some(json!({})),
    )
    .await;
    first.kill9();
    assert_eq!(status, 200, "{listing}");
    let promoted = listing[0]["kid"]
        .as_str()
        .expect("a current kid")
        .to_string();
    assert_eq!(listing[0]["state"], "current");

    let second = Binary::start(dir.path(), &eddsa);
    let token = login(&client, &second.base, "keys@example.com", "adminpass1").await;
    assert_eq!(
        jwt_part(&token, 0)["kid"],
        promoted.as_str(),
        "the promoted key signs"
    );
    let (status, body) = me(&client, &second.base, &old_token).await;
    assert_eq!(status, 200, "the replaced key still verifies: {body}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_generated_secret_is_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let key_file = dir.path().join("secret.key");
    assert!(!key_file.exists());
    let mut first = Binary::start(dir.path(), &[]);
    let metadata = std::fs::metadata(&key_file).expect("secret.key created on first start");
    assert!(metadata.is_file());
    assert_eq!(
        metadata.permissions().mode() & 0o777,
        0o600,
        "secret.key mode"
    );
    let key = std::fs::read(&key_file).unwrap();
    assert!(
        key.len() >= 32,
        "a key of at least 32 bytes, got {}",
        key.len()
    );
    let token = register(&client, &first.base, "Keyed", "keyed@example.com", PASSWORD).await;
    assert_exited_ok(first.terminate());

    let mut second = Binary::start(dir.path(), &[]);
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        key,
        "the key is reused, not regenerated"
    );
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, body) = me(&client, &second.base, &token).await;
    assert_eq!(status, 200, "a token signed before the restart: {body}");
    assert_exited_ok(second.terminate());

    // Another data dir gets its own random key.
    let other = tempfile::tempdir().unwrap();
    let _third = Binary::start(other.path(), &[]);
    let other_key = std::fs::read(other.path().join("secret.key")).expect("a second key");
    assert_ne!(other_key, key, "generated keys are random");
}

/// Extra arguments, extra environment, and what stderr must name.
type BadConfig<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_configuration_stops_start_up_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let unknown_key = dir.path().join("unknown-key.toml");
    std::fs::write(&unknown_key, "[server]\nprot = 1\n").unwrap();
    let wrong_type = dir.path().join("wrong-type.toml");
    std::fs::write(&wrong_type, "[server]\nheader_timeout_secs = \"ten\"\n").unwrap();
    let (unknown_key, wrong_type) = (unknown_key.to_str().unwrap(), wrong_type.to_str().unwrap());
    // A reset template that lost its link.
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("reset.html"), "<p>Hello {name}</p>").unwrap();
    let templates = templates.to_str().unwrap();
    let port0 = ["--port", "0", "--data-dir", data];

    // (extra args, env, what stderr must name)
    let cases: Vec<BadConfig> = vec![
        (
            port0.to_vec(),
            vec![("GATEHOUSE_AUTH__BCRYPT_COST", "3")],
            "auth.bcrypt_cost",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_AUTH__BCRYPT_COST", "32")],
            "auth.bcrypt_cost",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_AUTH__SECRET", "short")],
            "auth.secret",
        ),
        // No --port flag here: the flag would win over the variable.
        (
            vec!["--data-dir", data],
            vec![("GATEHOUSE_SERVER__PORT", "abc")],
            "port",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_SERVER__HOST", "not-an-ip")],
            "host",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_LIMITS__BODY_BYTES", "0")],
            "limits.body_bytes",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_AUTH__TOKEN_TTL_SECS", "0")],
            "auth.token_ttl_secs",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_SERVER__PROT", "1")],
            "prot",
        ),
        (
            [&port0[..], &["--config", unknown_key]].concat(),
            vec![],
            "prot",
        ),
        (
            [&port0[..], &["--config", wrong_type]].concat(),
            vec![],
            "header_timeout_secs",
        ),
        (
            [&port0[..], &["--config", "/nonexistent.toml"]].concat(),
            vec![],
            "/nonexistent.toml",
        ),
        (
            port0.to_vec(),
            vec![
                ("GATEHOUSE_MAIL__SMTP_URL", "smtp://127.0.0.1:1"),
                ("GATEHOUSE_MAIL__TEMPLATES_DIR", templates),
            ],
            "reset.html",
        ),
        (
            port0.to_vec(),
            vec![("GATEHOUSE_AUTH__REQUIRE_VERIFIED_EMAIL", "true")],
            "auth.require_verified_email",
        ),
    ];
    for (args, env, key) in &cases {
        let what = format!("args {args:?}, env {env:?}");
        let (status, stdout, stderr) = run_to_exit(args, env, "", dir.path());
        assert!(
            !status.success(),
            "{what}: exit {status}; stderr:\n{stderr}"
        );
        assert!(
            stderr.to_lowercase().contains(&key.to_lowercase()),
            "{what}: stderr does not name {key:?}:\n{stderr}"
        );
        assert!(
            !stderr.contains("listening") && !stdout.contains("listening"),
            "{what}: it bound the port:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{what}: a panic, not a clear line:\n{stderr}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: one line on stderr, got:\n{stderr}");
        assert!(
            !data_dir.join("db").exists(),
            "{what}: the database was opened"
        );
    }
}

#[tokio::test]
async fn admin_create_makes_and_promotes_admins_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = Client::new();

    // A new admin.
    let (status, stdout, stderr) = admin_create(&data, "boss@example.com", "Boss", "adminpass1\n");
    assert!(
        status.success(),
        "admin create: {status}\n{stdout}\n{stderr}"
    );

    // Refused inputs: a short password, a bad email. Nothing is created.
    let (status, _, stderr) = admin_create(&data, "short@example.com", "Short", "short\n");
    assert!(!status.success(), "a short password was accepted");
    assert!(stderr.to_lowercase().contains("password"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (status, _, stderr) = admin_create(&data, "not-an-email", "Bad", "adminpass1\n");
    assert!(!status.success(), "a bad email was accepted");
    assert!(stderr.to_lowercase().contains("email"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut server = Binary::start(&data, &[]);
    let base = server.base.clone();
    let admin_token = login(&client, &base, "boss@example.com", "adminpass1").await;
    let (status, body) = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/users"),
        Some(&admin_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "GET /api/users as the new admin: {body}");
    assert!(
        body.as_array().is_some_and(|users| users.len() == 1),
        "{body}"
    );
    let (status, body) = me(&client, &base, &admin_token).await;
    assert_eq!(
        (status, body["role"].as_str()),
        (200, Some("admin")),
        "{body}"
    );
    let (status, body) = try_login(&client, &base, "short@example.com", "short").await;
    assert_eq!(status, 401, "the refused admin was created: {body}");

    // A normal user, registered over HTTP.
    let old_token = register(&client, &base, "Norm", "norm@example.com", PASSWORD).await;
    let (status, body) = me(&client, &base, &old_token).await;
    assert_eq!(
        (status, body["role"].as_str()),
        (200, Some("user")),
        "{body}"
    );
    let norm_id = body["_id"].as_str().unwrap().to_string();
    let (status, body) = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/users"),
        Some(&old_token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    // While the server runs, the database is locked: admin create fails.
    let (status, stdout, stderr) =
        admin_create(&data, "norm@example.com", "Norm", "newpassword9\n");
    assert!(
        !status.success(),
        "admin create ran beside a live server:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("database") || stderr.to_lowercase().contains("lock"),
        "no clear message: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // ... and changed nothing.
    assert_eq!(me(&client, &base, &old_token).await.1["role"], "user");
    assert_exited_ok(server.terminate());

    // Stopped: it makes the user admin with the new password.
    let (status, stdout, stderr) =
        admin_create(&data, "NORM@example.com", "Norm", "newpassword9\n");
    assert!(status.success(), "promote: {status}\n{stdout}\n{stderr}");

    let server = Binary::start(&data, &[]);
    let base = server.base.clone();
    let (status, body) = try_login(&client, &base, "norm@example.com", PASSWORD).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_credentials")),
        "old password: {body}"
    );
    let (status, body) = me(&client, &base, &old_token).await;
    assert_invalid_token(status, &body);
    let new_token = login(&client, &base, "norm@example.com", "newpassword9").await;
    let (status, body) = me(&client, &base, &new_token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["_id"],
        norm_id.as_str(),
        "the same user, not a new one: {body}"
    );
    assert_eq!(body["role"], "admin", "{body}");
    let (status, body) = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/users"),
        Some(&new_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "GET /api/users as the promoted admin: {body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    // The first admin is untouched.
    login(&client, &base, "boss@example.com", "adminpass1").await;
}

#[tokio::test]
async fn sigterm_stops_an_idle_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let mut server = Binary::start(dir.path(), &[]);
    let (status, body) = call(
        &client,
        reqwest::Method::GET,
        format!("{}/healthz", server.base),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The client keeps its keep-alive connection open and idle: shutdown must
    // not wait on it.
    let started = Instant::now();
    assert_exited_ok(server.terminate());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow shutdown: {:?}",
        started.elapsed()
    );
    lines_until(&mut server, "stopped", Duration::from_secs(10));
    // The port is closed.
    let refused = Client::new()
        .get(format!("{}/api", server.base))
        .send()
        .await;
    assert!(refused.is_err(), "still answering after exit: {refused:?}");
}

/// Once it has logged its address, the server is up: a SIGTERM from then on is
/// a graceful stop, never the default "killed by signal". The signal is sent
/// by a shell that is already waiting for the line (a `kill` spawned after the
/// line arrives comes milliseconds late and would hide a late signal handler),
/// in several rounds, as such a race is lost only some of the time.
#[test]
fn sigterm_right_after_the_listening_line_is_graceful() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BINARY)
            .args(["--port", "0", "--data-dir"])
            .arg(dir.path())
            .current_dir(dir.path())
            .env("GATEHOUSE_AUTH__BCRYPT_COST", "4")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let mut trigger = Command::new("sh")
            .args(["-c", "read _ && kill -TERM \"$0\"", &child.id().to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut trigger_stdin = trigger.stdin.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut log = String::new();
            let mut triggered = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !triggered && line.contains("gatehouse listening") {
                    triggered = trigger_stdin.write_all(b"go\n").is_ok();
                }
                log.push_str(&line);
                log.push('\n');
            }
            (triggered, log)
        });
        let status = wait_until_exit(&mut child, Duration::from_secs(20));
        let (triggered, log) = reader.join().expect("log reader");
        let _ = trigger.wait();
        assert!(triggered, "round {round}: never logged its address:\n{log}");
        let status =
            status.unwrap_or_else(|| panic!("round {round}: no exit after SIGTERM:\n{log}"));
        assert!(
            status.success(),
            "round {round}: SIGTERM right after \"gatehouse listening\" gave {status}, \
             not a graceful exit 0; log:\n{log}"
        );
        assert!(
            log.contains("stopped"),
            "round {round}: no \"stopped\" line:\n{log}"
        );
    }
}

#[tokio::test]
async fn the_request_log_has_one_line_per_request_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let password = "s3cret-Passw0rd-in-log-test";
    let mut server = Binary::start(dir.path(), &[]);
    let base = server.base.clone();
    let token = register(&client, &base, "Logger", "logger@example.com", password).await;
    let login_token = login(&client, &base, "logger@example.com", password).await;
    assert_eq!(me(&client, &base, &login_token).await.0, 200);
    let (status, _) = try_login(&client, &base, "logger@example.com", "wrong-password-xyz").await;
    assert_eq!(status, 401);
    // A token in the query string must not reach the log either.
    let (status, _) = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/auth/me?token={token}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_exited_ok(server.terminate());
    let lines = lines_until(&mut server, "stopped", Duration::from_secs(10));
    let all = lines.join("\n");

    let requests: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("request") && line.contains("path="))
        .collect();
    let expected = [
        ("POST", "/api/auth/register", 200),
        ("POST", "/api/auth/login", 200),
        ("GET", "/api/auth/me", 200),
        ("POST", "/api/auth/login", 401),
        ("GET", "/api/auth/me", 401),
    ];
    assert_eq!(
        requests.len(),
        expected.len(),
        "one line per request:\n{all}"
    );
    for (line, (method, path, status)) in requests.iter().zip(expected) {
        for field in [
            format!("method={method}"),
            format!("path={path}"),
            format!("status={status}"),
        ] {
            assert!(
                line.split_whitespace().any(|word| word == field),
                "{field} missing in request line: {line}"
            );
        }
    }
    for secret in [password, "wrong-password-xyz", &token, &login_token, "$2"] {
        assert!(!all.contains(secret), "the log contains {secret:?}:\n{all}");
    }
}

/// `gatehouse --version` prints the name and the crate's version, and
/// exits 0 without reading any config or data dir.
#[test]
fn version_prints_the_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_binary(
        &[
            "--version",
            "--data-dir",
            &dir.path().join("never").display().to_string(),
        ],
        &[("GATEHOUSE_SERVER__PORT", "not a port")],
        "",
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(!dir.path().join("never").exists(), "no data dir made");
}
