//! Several gatehouse instances on one PostgreSQL database share users,
//! revocations and login throttling; a lost database is a bounded 503 and
//! the service recovers when it returns. Tests that need the database say so
//! plainly (and pass) when `GATEHOUSE_TEST_DATABASE_URL` is unset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::config::Secret;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::*;
use crate::throttle::{concurrent_wrong_guesses, count, registration};

/// Two servers (separate data dirs, same secret) on one fresh schema; `None`
/// when there is no test database.
pub(crate) async fn two_instances(
    test: &str,
    configure: impl Fn(&mut gatehouse::Settings),
) -> Option<(TestServer, TestServer, Vec<tempfile::TempDir>)> {
    if test_database_url().is_none() {
        not_run(test);
        return None;
    }
    let url = fresh_schema_url().await;
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut servers = Vec::new();
    for dir in &dirs {
        let mut settings = test_settings(dir.path());
        settings.store.url = Some(Secret::new(url.clone()));
        configure(&mut settings);
        servers.push(TestServer::start_settings(settings).await);
    }
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    Some((a, b, dirs))
}

#[tokio::test]
async fn register_on_one_log_in_on_the_other() {
    let Some((a, b, _dirs)) = two_instances("register_on_one_log_in_on_the_other", |_| {}).await
    else {
        return;
    };
    let user = a.register("Shared", "shared@example.com").await;
    let token = b.login("SHARED@example.com", PASSWORD).await;
    let me = b.me(&user.token).await;
    me.assert_ok(200);
    assert_eq!(me.body["_id"], user.id.as_str());
    a.me(&token).await.assert_ok(200);
    // The email is taken on both.
    b.post("/api/auth/register")
        .json(json!({"name": "X", "email": "shared@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(409, "email_taken");
}

#[tokio::test]
async fn logout_and_password_changes_revoke_on_every_instance() {
    let Some((a, b, _dirs)) = two_instances(
        "logout_and_password_changes_revoke_on_every_instance",
        |_| {},
    )
    .await
    else {
        return;
    };
    let user = a.register("Moving", "moving@example.com").await;
    let second = a.login("moving@example.com", PASSWORD).await;
    // Logged out on B: refused on A.
    b.post("/api/auth/logout")
        .token(&user.token)
        .send()
        .await
        .assert_ok(200);
    a.me(&user.token).await.assert_error(401, "invalid_token");
    // Password changed on A: the older token fails on B.
    a.patch(&format!("/api/users/{}", user.id))
        .token(&second)
        .json(json!({"password": "a new password", "current_password": PASSWORD}))
        .send()
        .await
        .assert_ok(200);
    b.me(&second).await.assert_error(401, "invalid_token");
    b.login("moving@example.com", "a new password").await;
}

#[tokio::test]
async fn failed_logins_spread_over_instances_are_throttled() {
    let Some((a, b, _dirs)) =
        two_instances("failed_logins_spread_over_instances_are_throttled", |s| {
            s.limits.login_failures_per_account = 4;
        })
        .await
    else {
        return;
    };
    a.register("Target", "target@example.com").await;
    for server in [&a, &b, &a, &b] {
        server
            .post("/api/auth/login")
            .json(json!({"email": "target@example.com", "password": "wrong password"}))
            .send()
            .await
            .assert_error(401, "invalid_credentials");
    }
    for server in [&a, &b] {
        let reply = server
            .post("/api/auth/login")
            .json(json!({"email": "target@example.com", "password": PASSWORD}))
            .send()
            .await;
        reply.assert_error(429, "too_many_attempts");
        assert!(reply.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    }
}

#[tokio::test]
async fn concurrent_registrations_over_two_instances_yield_one_200() {
    let Some((a, b, _dirs)) = two_instances(
        "concurrent_registrations_over_two_instances_yield_one_200",
        |s| s.limits.registrations_per_address = 1_000,
    )
    .await
    else {
        return;
    };
    let attempts = (0..50).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        let email = if i % 3 == 0 {
            "race@example.com"
        } else {
            "Race@EXAMPLE.com"
        };
        server
            .post("/api/auth/register")
            .json(json!({"name": format!("racer {i}"), "email": email, "password": PASSWORD}))
            .send()
    });
    let handles: Vec<_> = attempts.map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap().status);
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let conflicts = statuses.iter().filter(|&&s| s == 409).count();
    assert_eq!((ok, conflicts), (1, 49), "{statuses:?}");
}

#[tokio::test]
async fn concurrent_wrong_guesses_over_two_instances_get_at_most_the_limit() {
    let Some((a, b, _dirs)) = two_instances(
        "concurrent_wrong_guesses_over_two_instances_get_at_most_the_limit",
        |s| s.limits.login_failures_per_account = 5,
    )
    .await
    else {
        return;
    };
    a.register("Target", "target@example.com").await;
    let statuses = concurrent_wrong_guesses(&[&a, &b], "target@example.com", 30).await;
    assert!(count(&statuses, 401) <= 5, "{statuses:?}");
    assert_eq!(
        count(&statuses, 401) + count(&statuses, 429),
        30,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_registration_limit_is_shared_by_instances() {
    let Some((a, b, _dirs)) = two_instances("the_registration_limit_is_shared_by_instances", |s| {
        s.limits.registrations_per_address = 3;
    })
    .await
    else {
        return;
    };
    a.register("One", "one@example.com").await;
    b.register("Two", "two@example.com").await;
    a.register("Three", "three@example.com").await;
    let reply = b
        .post("/api/auth/register")
        .json(registration("four@example.com"))
        .send()
        .await;
    reply.assert_error(429, "too_many_attempts");
    assert!(reply.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
}

#[tokio::test]
async fn a_read_only_database_answers_reads_and_refuses_writes() {
    if test_database_url().is_none() {
        not_run("a_read_only_database_answers_reads_and_refuses_writes");
        return;
    }
    let url = fresh_schema_url().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.store.url = Some(Secret::new(url.clone()));
    let writer = TestServer::start_settings(settings).await;
    let user = writer.register("Reader", "reader@example.com").await;
    writer.stop().await.unwrap();

    // The same schema, every transaction read-only, as on a hot standby: the
    // option joins the search_path one in the URL's single `options`.
    assert!(url.contains("options=-csearch_path%3D") && !url.ends_with('&'));
    let read_only = format!("{url}%20-cdefault_transaction_read_only%3Don");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.store.url = Some(Secret::new(read_only));
    let server = TestServer::start_settings(settings).await;
    server.me(&user.token).await.assert_ok(200);
    server
        .post("/api/auth/register")
        .json(registration("writer@example.com"))
        .send()
        .await
        .assert_error(503, "store_unavailable");
    server
        .post("/api/auth/login")
        .json(json!({"email": "reader@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(503, "store_unavailable");
    let health = server.get("/healthz").send().await;
    assert_eq!(health.status, 503, "{}", health.text);
}

/// Prepared statements live on their connection: when PostgreSQL ends every
/// connection of the server between two requests (`pg_terminate_backend`),
/// the next requests succeed on new connections (preparing again) or answer
/// a 503, never a 500, and the server is back to 200 at once after.
#[tokio::test]
async fn requests_survive_the_database_ending_the_servers_connections() {
    if test_database_url().is_none() {
        not_run("requests_survive_the_database_ending_the_servers_connections");
        return;
    }
    // A name of its own, so that only this server's connections are ended
    // (other tests' servers share the database).
    let name = format!("gh_terminated_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}&application_name={name}", fresh_schema_url().await);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.store.url = Some(Secret::new(url));
    let server = TestServer::start_settings(settings).await;
    let user = server.register("Ended", "ended@example.com").await;
    // Warm every statement the requests below use.
    server.me(&user.token).await.assert_ok(200);
    let rename = |name: &str| {
        server
            .patch(&format!("/api/users/{}", user.id))
            .token(&user.token)
            .json(json!({ "name": name }))
            .send()
    };
    rename("Before").await.assert_ok(200);

    let (admin, connection) =
        tokio_postgres::connect(&test_database_url().unwrap(), tokio_postgres::NoTls)
            .await
            .expect("the test database answers");
    let connection = tokio::spawn(connection);
    for round in 0..3 {
        let ended: i64 = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1) AS ended",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            ended >= 1,
            "round {round}: no connection of the server to end"
        );
        for reply in [
            server.me(&user.token).await,
            rename(&format!("Round {round}")).await,
            server
                .post("/api/auth/login")
                .json(json!({"email": "ended@example.com", "password": PASSWORD}))
                .send()
                .await,
        ] {
            assert!(
                reply.status == 200 || reply.status == 503,
                "round {round}: {} {}",
                reply.status,
                reply.text
            );
            if reply.status == 503 {
                assert_eq!(reply.body["error"], "store_unavailable", "{}", reply.text);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = server.me(&user.token).await;
            if reply.status == 200 {
                break;
            }
            assert_eq!(reply.status, 503, "{}", reply.text);
            assert!(
                Instant::now() < deadline,
                "still {} after 10 s",
                reply.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(admin);
    let _ = connection.await;
}

#[tokio::test]
async fn instances_starting_at_once_all_migrate() {
    if test_database_url().is_none() {
        not_run("instances_starting_at_once_all_migrate");
        return;
    }
    let url = fresh_schema_url().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let opening = dirs.iter().map(|dir| {
        let mut settings = test_settings(dir.path());
        settings.store.url = Some(Secret::new(url.clone()));
        tokio::spawn(async move { gatehouse::App::open(settings).await.map(|_| ()) })
    });
    let opening: Vec<_> = opening.collect();
    for open in opening {
        open.await.unwrap().expect("every instance starts");
    }
}

#[test]
fn an_unreachable_database_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let (status, _, stderr) = run_binary(
        &["--port", "0", "--data-dir", dir.path().to_str().unwrap()],
        &[
            (
                "GATEHOUSE_STORE__URL",
                "postgres://gatehouse@127.0.0.1:1/none",
            ),
            (
                "GATEHOUSE_AUTH__SECRET",
                "a-secret-of-more-than-thirty-two-bytes",
            ),
        ],
        "",
    );
    assert!(!status.success());
    assert!(stderr.contains("store.url"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

/// A TCP relay to the test database that can drop every connection and refuse
/// new ones, then come back: the database "lost" and "returned".
struct Relay {
    address: String,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // Dropped: the connection is refused in effect.
                }
                let (target, cut) = (target.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Relay { address, up, cut }
    }

    fn lose(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_lost_database_is_a_bounded_503_and_recovers() {
    let Some(base) = test_database_url() else {
        not_run("a_lost_database_is_a_bounded_503_and_recovers");
        return;
    };
    let schema_url = fresh_schema_url().await;
    let parsed: tokio_postgres::Config = base.parse().unwrap();
    let host = match &parsed.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".to_string(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let relay = Relay::start(format!("{host}:{port}")).await;
    // The same database and schema, through the relay.
    let through_relay = schema_url.replacen(&format!("{host}:{port}"), &relay.address, 1);
    assert_ne!(
        through_relay, schema_url,
        "the URL names host:port explicitly"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.store.url = Some(Secret::new(through_relay));
    let server = TestServer::start_settings(settings).await;
    let user = server.register("Fragile", "fragile@example.com").await;

    relay.lose();
    let started = Instant::now();
    let me = server.me(&user.token).await;
    me.assert_error(503, "store_unavailable");
    let health = server.get("/healthz").send().await;
    assert_eq!(health.status, 503, "{}", health.text);
    server
        .post("/api/auth/login")
        .json(json!({"email": "fragile@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(503, "store_unavailable");
    // Bounded: each answer came within the store's operation timeout.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = server.get("/healthz").send().await;
        if health.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", health.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.me(&user.token).await.assert_ok(200);
}

/// A mail token is the store's, not an instance's: a link mailed by one
/// instance works on the other, once.
#[tokio::test]
async fn a_reset_link_from_one_instance_works_on_the_other_once() {
    let sink = crate::mailsink::MailSink::start().await;
    let url = sink.smtp_url();
    let Some((a, b, _dirs)) = two_instances(
        "a_reset_link_from_one_instance_works_on_the_other_once",
        |s| {
            s.mail.smtp_url = Some(gatehouse::config::Secret::new(url.clone()));
        },
    )
    .await
    else {
        return;
    };
    a.register("Ina", "ina@example.com").await;
    a.post("/api/auth/password/forgot")
        .json(json!({"email": "ina@example.com"}))
        .send()
        .await
        .assert_ok(202);
    let token = sink
        .nth_with("ina@example.com", "/reset-password#token=", 1)
        .await
        .token();
    let reset = |server: &TestServer| {
        server
            .post("/api/auth/password/reset")
            .json(json!({"token": token, "password": "a password from b"}))
            .send()
    };
    reset(&b).await.assert_ok(200);
    reset(&a).await.assert_error(400, "invalid_reset_token");
    a.login("ina@example.com", "a password from b").await;
}
