//! The data dir on a real, small filesystem: a full disk (the server exits
//! rather than serve a write it could not make durable; a full disk never
//! leaves a partial signing key), the modes of the files gatehouse creates,
//! and revocations kept through the verifier's clock leeway across restarts.
//!
//! The full-disk tests mount a tmpfs of a few MiB, which needs root: without
//! it they print "NOT RUN" (and fail when `CI` is set, so CI cannot skip them
//! silently). Every mount is undone by a guard, also when a test panics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};

use crate::binary::{call, register, try_login, wait_until_exit};
use crate::support::*;

/// How long the server may take to exit once a write has failed.
const FATAL_EXIT_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_full_disk_stops_the_server_and_no_refused_write_survives() {
    let Some(fs) = Tmpfs::mount("a_full_disk_stops_the_server", "4m") else {
        return;
    };
    let data = fs.path().join("data");
    let client = http_client();
    let many_registrations = [("GATEHOUSE_LIMITS__REGISTRATIONS_PER_ADDRESS", "1000")];
    let mut server = Binary::start(&data, &many_registrations);
    let early = "early@example.com";
    let token = register(&client, &server.base, "Early", early, PASSWORD).await;
    let (status, body) = call(
        &client,
        reqwest::Method::GET,
        format!("{}/api/auth/me", server.base),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["_id"].as_str().expect("_id").to_string();

    let filler = fill(fs.path());
    // A write may still fit in a page the database file already has, so
    // write until one is refused; each one answered 2xx must survive.
    let mut acknowledged = vec![early.to_string()];
    let mut refused = None;
    for i in 0..500 {
        let email = format!("late{i}@example.com");
        let status = try_call(
            &client,
            reqwest::Method::POST,
            format!("{}/api/auth/register", server.base),
            None,
            json!({"name": "Late", "email": email, "password": PASSWORD}),
        )
        .await;
        match status {
            Some(200) => acknowledged.push(email),
            other => {
                refused = Some((email, other));
                break;
            }
        }
        // A PATCH is a write too (and one that must not be half-applied).
        let status = try_call(
            &client,
            reqwest::Method::PATCH,
            format!("{}/api/users/{id}", server.base),
            Some(&token),
            json!({"name": format!("Renamed {i}")}),
        )
        .await;
        if !matches!(status, Some(200)) {
            refused = Some((format!("PATCH {i}"), status));
            break;
        }
    }
    let (what, status) = refused.expect("a write was refused on the full disk");
    assert!(
        !status.is_some_and(|s| (200..300).contains(&s)),
        "{what}: {status:?}"
    );
    let exit = wait_until_exit(&mut server.child, FATAL_EXIT_DEADLINE).unwrap_or_else(|| {
        panic!(
            "the server still runs {FATAL_EXIT_DEADLINE:?} after a write failed ({what}: {status:?}); log:\n{}",
            server.drain_lines().join("\n")
        )
    });
    assert!(!exit.success(), "a failed write exits non-zero, got {exit}");
    assert_eq!(
        exit.code(),
        Some(gatehouse::store::sled::EXIT_STORE_FAILED),
        "the store failure's own exit code"
    );
    let log = server.drain_lines().join("\n");
    let fatal: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains(" ERROR gatehouse::store::sled: a write to the database failed")
        })
        .collect();
    assert_eq!(
        fatal.len(),
        1,
        "one clear error line before the exit:\n{log}"
    );
    assert!(
        fatal[0].ends_with("exit_code=74") && fatal[0].as_bytes()[26] == b'Z',
        "the log's own line shape (time with microseconds, level, target): {}",
        fatal[0]
    );
    assert!(!log.contains(PASSWORD), "the log holds no password:\n{log}");
    drop(server);

    std::fs::remove_file(&filler).expect("filler removed");
    let server = Binary::start(&data, &many_registrations);
    for email in &acknowledged {
        let (status, body) = try_login(&client, &server.base, email, PASSWORD).await;
        assert_eq!(status, 200, "acknowledged {email} survives: {body}");
    }
    if what.starts_with("late") {
        let (status, body) = try_login(&client, &server.base, &what, PASSWORD).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_credentials")),
            "the refused registration of {what} must not exist: {body}"
        );
    }
}

#[tokio::test]
async fn a_full_disk_leaves_no_partial_signing_key() {
    let Some(fs) = Tmpfs::mount("a_full_disk_leaves_no_partial_signing_key", "1m") else {
        return;
    };
    let data = fs.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let filler = fill(fs.path());
    // No auth.secret: the key is generated into the full data dir.
    let cwd = tempfile::tempdir().unwrap();
    let args = [
        "--port",
        "0",
        "--data-dir",
        data.to_str().expect("UTF-8 path"),
    ];
    let (status, _, stderr) = crate::binary::run_to_exit(&args, &[], "", cwd.path());
    assert!(!status.success(), "start-up on a full disk fails: {stderr}");
    assert!(
        stderr.contains("secret.key"),
        "the error names the key file: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&data)
        .expect("data dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "no key and no temporary file left behind: {left:?}"
    );

    std::fs::remove_file(&filler).expect("filler removed");
    let client = http_client();
    let server = Binary::start(&data, &[]);
    register(
        &client,
        &server.base,
        "Keyed",
        "keyed@example.com",
        PASSWORD,
    )
    .await;
}

#[tokio::test]
async fn the_data_dir_and_its_files_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    assert!(!data.exists());
    let client = http_client();
    let mut server = Binary::start(&data, &[]);
    register(
        &client,
        &server.base,
        "Private",
        "private@example.com",
        PASSWORD,
    )
    .await;
    let exit = server.terminate().expect("the server exits after SIGTERM");
    assert!(exit.success(), "{exit}");
    let wrong = wrong_modes(&data);
    assert!(
        wrong.is_empty(),
        "directories must be 0700 and files 0600:\n{}",
        wrong.join("\n")
    );
}

/// Every entry under `dir` (and `dir` itself) whose mode is not 0700 for a
/// directory or 0600 for a file, as "mode path".
fn wrong_modes(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut wrong = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = metadata.permissions().mode() & 0o777;
        let expected = if metadata.is_dir() { 0o700 } else { 0o600 };
        if mode != expected {
            wrong.push(format!("{mode:o} {}", path.display()));
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    wrong.sort();
    wrong
}

store_test! {
/// The verifier accepts a token until `exp` + `LEEWAY_SECS`, so its
/// revocation must outlive `exp` by as much, also when the purge that runs at
/// start-up comes right after a restart. (Revocations by `jti` are what
/// tokens from before sessions rely on; a token with a session dies with
/// it, which the purge only makes surer.)
async fn a_revoked_token_stays_revoked_in_the_leeway_after_a_restart() {
    use gatehouse::domain::token::LEEWAY_SECS;
    use gatehouse::domain::unix_now;

    let dir = tempfile::tempdir().unwrap();
    let mut settings = None;
    let server = TestServer::start_with(|s| {
        s.auth.token_ttl_secs = 2;
        // The restarted server must find the same database.
        s.data_dir = dir.path().to_path_buf();
        settings = Some(s.clone());
    })
    .await;
    let settings = settings.expect("settings seen");
    let mut user = server.register("Leeway", "leeway@example.com").await;
    user.token = server.token_without_session(&user.id).await;
    let (jti, exp) = jti_and_exp(&user.token);
    server
        .post("/api/auth/logout")
        .token(&user.token)
        .send()
        .await
        .assert_ok(200);
    server
        .get("/api/auth/me")
        .token(&user.token)
        .send()
        .await
        .assert_error(401, "invalid_token");
    server.stop().await.expect("graceful stop");

    // Past `exp`, still inside the leeway.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unix_now() <= exp {
        assert!(std::time::Instant::now() < deadline, "the clock passes exp");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = TestServer::start_settings(settings).await;
    // What the server does at start and every 10 minutes, run here so that
    // the check below surely comes after it.
    server
        .app
        .store
        .purge_expired(unix_now(), &server.app.sessions)
        .await
        .expect("purge");
    let reply = server.get("/api/auth/me").token(&user.token).send().await;
    assert!(
        unix_now() <= exp + LEEWAY_SECS,
        "the check ran inside the leeway (slow machine? exp {exp}, now {})",
        unix_now()
    );
    reply.assert_error(401, "invalid_token");
    assert!(server.app.store.is_revoked(&jti).await.unwrap());

    // Once the leeway has passed too, the revocation is purged.
    server
        .app
        .store
        .purge_expired(exp + LEEWAY_SECS + 1, &server.app.sessions)
        .await
        .expect("purge");
    assert!(!server.app.store.is_revoked(&jti).await.unwrap());
    server.stop().await.expect("graceful stop");
}
}

/// The `jti` and `exp` claims of a token, read without verifying it.
fn jti_and_exp(token: &str) -> (String, u64) {
    let claims = jwt_part(token, 1);
    (
        claims["jti"].as_str().expect("jti").to_string(),
        claims["exp"].as_u64().expect("exp"),
    )
}

/// A client that gives up on a request the server never answers.
fn http_client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// The status of one request, or `None` if no answer came (the server
/// exited).
async fn try_call(
    client: &Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Option<u16> {
    let mut request = client.request(method, url).json(&body);
    if let Some(token) = token {
        request = request.header("x-access-token", token);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    // The body may be cut off by the exit: only the status counts.
    let _ = response.bytes().await;
    Some(status)
}

/// Fills the filesystem holding `dir` with one file, until the disk is full;
/// returns that file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler created");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(error) = file.write_all(&chunk) {
            assert_eq!(
                error.raw_os_error(),
                Some(libc::ENOSPC),
                "filling the disk: {error}"
            );
            return path;
        }
    }
}

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped
/// (also while a failed test unwinds).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax, e.g. "4m"). Without root:
    /// `None` after saying "NOT RUN", or a panic when `CI` is set.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} mounts a tmpfs and must run as root in CI"
            );
            let _ = writeln!(
                std::io::stderr(),
                "NOT RUN: {test}: mounting a tmpfs needs root"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount a tmpfs on {:?}", dir.path());
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a process still holding a file in it cannot keep it
        // mounted; the temporary directory is removed after this.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
