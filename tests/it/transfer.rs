//! Export and import (API.md "Export, import and migration"): the file
//! format (header, records, trailer, mode 0600), round trips sled → file →
//! sled and sled → PostgreSQL → sled in which every user keeps `_id`,
//! fields and password, refusals that write nothing (a store with users, a
//! truncated or corrupted file), the audit log with `--with-audit`, the
//! online export `GET /api/admin/export` while other requests are served,
//! the tutorial's mongoexport (both shapes, invalid and colliding rows,
//! `--skip-invalid`), the hash upgrade and password reset of imported users.
//!
//! The commands run as the built binary (`gatehouse export`, `gatehouse
//! import`) on a `Store`: a data dir, plus a fresh PostgreSQL schema on the
//! PostgreSQL runs. Servers are the binary too, except for the online
//! export, which runs in-process on both stores (`store_test!`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::binary::run_to_exit;
use crate::mailsink::MailSink;
use crate::support::*;

/// `auth.secret` of every PostgreSQL store here (at least 32 bytes).
const SECRET: &str = "transfer-test-secret-transfer-test-secret";
const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "the admin's password";
/// The fields of the user object, which a user record carries unchanged.
const USER_FIELDS: [&str; 7] = [
    "_id",
    "name",
    "email",
    "role",
    "email_verified",
    "created_at",
    "updated_at",
];
/// The record types of the format; sessions, revoked tokens, mail tokens
/// and throttle counts have none.
const RECORD_TYPES: [&str; 4] = ["secret", "signing_keys", "user", "audit"];

// --- helpers ------------------------------------------------------------------

/// Where the binary keeps its users: a data dir of its own and, on
/// PostgreSQL, a fresh schema (with `auth.secret`, which it needs).
struct Store {
    dir: TempDir,
    url: Option<String>,
}

impl Store {
    fn sled() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temp dir"),
            url: None,
        }
    }

    async fn postgres() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temp dir"),
            url: Some(fresh_schema_url().await),
        }
    }

    /// An empty store of the test's backend (`store_test!`).
    async fn fresh() -> Store {
        match backend() {
            Backend::Sled => Store::sled(),
            Backend::Postgres => Store::postgres().await,
        }
    }

    /// The configuration naming this store, for the binary's environment.
    fn env(&self) -> Vec<(&str, &str)> {
        let mut env = vec![(
            "GATEHOUSE_DATA_DIR",
            self.dir.path().to_str().expect("UTF-8 temp path"),
        )];
        if let Some(url) = &self.url {
            env.push(("GATEHOUSE_STORE__URL", url.as_str()));
            env.push(("GATEHOUSE_AUTH__SECRET", SECRET));
        }
        env
    }

    /// Runs `gatehouse ARGS` on this store until it exits.
    fn run(&self, args: &[&str], stdin: &str) -> Run {
        let (status, stdout, stderr) = run_to_exit(args, &self.env(), stdin, self.dir.path());
        Run {
            what: format!("gatehouse {}", args.join(" ")),
            status,
            stdout,
            stderr,
        }
    }

    fn export(&self, out: &Path, with_audit: bool) -> Run {
        let out = out.to_str().expect("UTF-8 path");
        let mut args = vec!["export", "--out", out];
        if with_audit {
            args.push("--with-audit");
        }
        self.run(&args, "")
    }

    fn import(&self, file: &Path) -> Run {
        self.run(&["import", file.to_str().expect("UTF-8 path")], "")
    }

    fn import_mongo(&self, file: &Path, skip_invalid: bool) -> Run {
        let file = file.to_str().expect("UTF-8 path");
        let mut args = vec!["import", "--from", "mongoexport", file];
        if skip_invalid {
            args.push("--skip-invalid");
        }
        self.run(&args, "")
    }

    fn admin_create(&self, email: &str, name: &str, password: &str) {
        self.run(
            &[
                "admin",
                "create",
                "--email",
                email,
                "--name",
                name,
                "--password-stdin",
            ],
            &format!("{password}\n"),
        )
        .assert_success();
    }

    /// A server on this store (bcrypt cost 4 unless `extra` says otherwise).
    fn start(&self, extra: &[(&str, &str)]) -> Binary {
        let mut env = self.env();
        env.extend_from_slice(extra);
        Binary::start(self.dir.path(), &env)
    }
}

/// Stops a server gracefully, so that the commands may open its sled database.
#[track_caller]
fn stop(mut server: Binary) {
    let status = server
        .terminate()
        .expect("the server exits within the deadline after SIGTERM");
    assert!(status.success(), "graceful exit is 0, got {status}");
}

/// One finished command.
struct Run {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "`{}` failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Exit 1, ending in a `gatehouse: ` line, and no panic.
    #[track_caller]
    fn assert_refused(&self) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(1),
            "`{}` was not refused\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        let last = self.stderr.lines().rev().find(|l| !l.trim().is_empty());
        assert!(
            last.is_some_and(|l| l.starts_with("gatehouse: ")),
            "`{}`: stderr does not end in a \"gatehouse: \" line:\n{}",
            self.what,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    #[track_caller]
    fn assert_stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "`{}`: no {needle:?} in stdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "`{}`: no {needle:?} in stderr:\n{}",
            self.what,
            self.stderr
        );
        self
    }
}

/// Every `N` of `WORD N` in `text` (for "line 3: ..." and "element 2: ...");
/// with `colon`, only those followed by a colon.
fn numbered(text: &str, word: &str, colon: bool) -> BTreeSet<usize> {
    let needle = format!("{word} ");
    text.match_indices(&needle)
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric)
        })
        .filter_map(|(at, _)| {
            let rest = &text[at + needle.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let followed = rest[digits.len()..].starts_with(':');
            (!digits.is_empty() && (followed || !colon)).then(|| digits.parse().unwrap())
        })
        .collect()
}

fn write(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("file written");
    path
}

#[track_caller]
fn assert_mode_0600(path: &Path) {
    let mode = std::fs::metadata(path)
        .expect("the export exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode of {}: {mode:o}", path.display());
}

/// An export file, checked against the format as it is parsed: UTF-8 JSON
/// objects one a line with "\n" endings, the header, known record types,
/// and the trailer counting the records.
struct Export {
    lines: Vec<Value>,
}

impl Export {
    #[track_caller]
    fn parse(text: &str) -> Export {
        assert!(
            text.ends_with('\n') && !text.contains('\r'),
            "lines end in \\n"
        );
        let lines: Vec<Value> = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("line {}: not JSON ({e}): {line}", i + 1));
                assert!(value.is_object(), "line {}: not an object: {line}", i + 1);
                value
            })
            .collect();
        assert!(lines.len() >= 2, "a header and a trailer at least:\n{text}");
        let header = &lines[0];
        assert_eq!(header["format"], "gatehouse-export", "{header}");
        assert_eq!(header["version"], 1, "{header}");
        let exported_at = header["exported_at"].as_str().expect("exported_at");
        humantime::parse_rfc3339(exported_at).expect("exported_at is RFC 3339");
        let trailer = lines.last().unwrap();
        assert_eq!(
            trailer,
            &json!({"type": "end", "records": lines.len() - 2}),
            "the trailer counts the records"
        );
        let export = Export { lines };
        for record in export.records() {
            let kind = record["type"].as_str().unwrap_or_default();
            assert!(RECORD_TYPES.contains(&kind), "unknown record: {record}");
        }
        export
    }

    #[track_caller]
    fn read(path: &Path) -> (String, Export) {
        let text = std::fs::read_to_string(path).expect("the export is UTF-8");
        let export = Export::parse(&text);
        (text, export)
    }

    fn records(&self) -> &[Value] {
        &self.lines[1..self.lines.len() - 1]
    }

    fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.records()
            .iter()
            .filter(|r| r["type"] == kind)
            .collect()
    }

    fn users(&self) -> Vec<&Value> {
        self.of_type("user")
    }

    #[track_caller]
    fn user(&self, field: &str, value: &str) -> &Value {
        let found: Vec<&Value> = self
            .users()
            .into_iter()
            .filter(|u| u[field] == value)
            .collect();
        assert_eq!(found.len(), 1, "one user record with {field} {value}");
        found[0]
    }

    /// `exported_at` lies between the two times (to the second).
    #[track_caller]
    fn assert_exported_between(&self, before: SystemTime, after: SystemTime) {
        let at = humantime::parse_rfc3339(self.lines[0]["exported_at"].as_str().unwrap()).unwrap();
        let second = Duration::from_secs(1);
        assert!(
            at + second >= before && at <= after + second,
            "exported_at {} is not the time of the export",
            self.lines[0]["exported_at"]
        );
    }
}

/// A user record carries the user object's fields as the API showed them.
#[track_caller]
fn assert_same_user(record: &Value, user: &Value) {
    for field in USER_FIELDS {
        assert_eq!(record[field], user[field], "{field} of {user}");
    }
}

/// No token the source issued is in an export (sessions are not exported).
#[track_caller]
fn assert_no_tokens(text: &str, tokens: &[String]) {
    for token in tokens {
        for needle in needles(token) {
            assert!(
                memchr::memmem::find(text.as_bytes(), &needle).is_none(),
                "a token is in the export"
            );
        }
    }
}

async fn login(server: &Binary, email: &str, password: &str) -> Reply {
    server
        .request(Method::POST, "/api/auth/login")
        .json(json!({"email": email, "password": password}))
        .send()
        .await
}

/// A successful login's access token.
async fn token(server: &Binary, email: &str, password: &str) -> String {
    let reply = login(server, email, password).await;
    assert_eq!(reply.status, 200, "login {email}: {}", reply.text);
    reply.body["token"].as_str().expect("a token").to_string()
}

async fn get(server: &Binary, path: &str, token: &str) -> Reply {
    server.request(Method::GET, path).token(token).send().await
}

/// The admin's listing of every user (ordered by `_id`).
async fn all_users(server: &Binary, admin: &str) -> Vec<Value> {
    let reply = get(server, "/api/users?limit=1000", admin).await;
    reply.assert_ok(200);
    reply.body.as_array().expect("an array").clone()
}

/// The admin's listing of every audit event (newest first).
async fn all_events(server: &Binary, admin: &str) -> Vec<Value> {
    let reply = get(server, "/api/audit?limit=1000", admin).await;
    reply.assert_ok(200);
    assert!(reply.header("link").is_none(), "fewer than 1000 events");
    reply.body.as_array().expect("an array").clone()
}

/// `GET /api/admin/export{query}` on a binary server.
async fn export_over_http(server: &Binary, admin: &str, query: &str) -> Export {
    let reply = get(server, &format!("/api/admin/export{query}"), admin).await;
    reply.assert_ok(200);
    Export::parse(&reply.text)
}

/// What `seed` put in a store, as the API showed it.
struct Seeded {
    /// Every account's login email and password.
    accounts: Vec<(String, String)>,
    /// The admin's listing: every user object, ordered by `_id`.
    users: Vec<Value>,
    /// Access and refresh tokens the source issued.
    tokens: Vec<String>,
    /// The `kid` of the source's signing key.
    kid: String,
}

/// Fills `store` through a server, then stops it: an admin (`admin
/// create`), a user an admin marked verified, one with a non-ASCII name,
/// one with an internationalized domain.
async fn seed(store: &Store) -> Seeded {
    store.admin_create(ADMIN_EMAIL, "Admin", ADMIN_PASSWORD);
    let server = store.start(&[]);
    let pair = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    pair.assert_ok(200);
    let admin = pair.body["token"].as_str().unwrap().to_string();
    let mut tokens = vec![
        admin.clone(),
        pair.body["refresh_token"].as_str().unwrap().to_string(),
    ];
    let mut accounts = vec![(ADMIN_EMAIL.to_string(), ADMIN_PASSWORD.to_string())];
    for (name, email, stored, password) in [
        (
            "Vera",
            "vera@example.com",
            "vera@example.com",
            "vera's password",
        ),
        (
            "Zoë Ångström 名前",
            "zoe@example.com",
            "zoe@example.com",
            "zoë's pässwörd",
        ),
        ("Jürgen", "Juergen@BÜCHER.de", "juergen@bücher.de", PASSWORD),
    ] {
        let reply = server
            .request(Method::POST, "/api/auth/register")
            .json(json!({"name": name, "email": email, "password": password}))
            .send()
            .await;
        reply.assert_ok(200);
        tokens.push(reply.body["token"].as_str().unwrap().to_string());
        tokens.push(reply.body["refresh_token"].as_str().unwrap().to_string());
        accounts.push((stored.to_string(), password.to_string()));
    }
    let users = all_users(&server, &admin).await;
    let vera = users
        .iter()
        .find(|u| u["email"] == "vera@example.com")
        .expect("Vera is listed")["_id"]
        .as_str()
        .unwrap()
        .to_string();
    let patched = server
        .request(Method::PATCH, &format!("/api/users/{vera}"))
        .token(&admin)
        .json(json!({"email_verified": true}))
        .send()
        .await;
    patched.assert_ok(200);
    assert_eq!(patched.body["email_verified"], true, "{}", patched.text);

    let users = all_users(&server, &admin).await;
    assert_eq!(users.len(), 4, "{users:#?}");
    for (email, _) in &accounts {
        assert!(users.iter().any(|u| &u["email"] == email), "{email} listed");
    }
    assert!(users.iter().any(|u| u["name"] == "Zoë Ångström 名前"));
    assert!(users.iter().any(|u| u["role"] == "admin"));
    for user in &users {
        let one = get(
            &server,
            &format!("/api/users/{}", user["_id"].as_str().unwrap()),
            &admin,
        )
        .await;
        one.assert_ok(200);
        assert_eq!(&one.body, user);
    }
    let kid = jwt_part(&admin, 0)["kid"]
        .as_str()
        .expect("a kid")
        .to_string();
    stop(server);
    Seeded {
        accounts,
        users,
        tokens,
        kid,
    }
}

/// Every seeded user is in `export` with its fields and a hash of its password.
#[track_caller]
fn assert_users_exported(export: &Export, seeded: &Seeded) {
    assert_eq!(export.users().len(), seeded.users.len());
    for user in &seeded.users {
        let record = export.user("_id", user["_id"].as_str().unwrap());
        assert_same_user(record, user);
        let (_, password) = seeded
            .accounts
            .iter()
            .find(|(email, _)| user["email"] == email.as_str())
            .expect("an account");
        let hash = record["password_hash"].as_str().expect("a password_hash");
        assert!(
            hash.starts_with("$2") && bcrypt::verify(password, hash).unwrap_or(false),
            "the hash of {}'s password",
            user["email"]
        );
        assert!(record["password_version"].is_u64(), "{record}");
    }
}

/// Starts a server on `store` and checks it holds exactly the seeded
/// users: each logs in with its old password (and not with another), and
/// the admin sees the same user objects. Returns the server and the
/// admin's token.
async fn assert_copy(store: &Store, seeded: &Seeded) -> (Binary, String) {
    let server = store.start(&[]);
    for (email, password) in &seeded.accounts {
        let reply = login(&server, email, password).await;
        assert_eq!(reply.status, 200, "{email}, old password: {}", reply.text);
        login(&server, email, "not the password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(all_users(&server, &admin).await, seeded.users);
    for user in &seeded.users {
        let one = get(
            &server,
            &format!("/api/users/{}", user["_id"].as_str().unwrap()),
            &admin,
        )
        .await;
        one.assert_ok(200);
        assert_eq!(&one.body, user);
    }
    (server, admin)
}

// --- mongoexport ------------------------------------------------------------

/// A user of the tutorial's MongoDB.
struct Mongo {
    oid: &'static str,
    name: &'static str,
    /// As the tutorial stored it (not normalized).
    email: &'static str,
    /// As gatehouse stores it.
    normalized: &'static str,
    password: &'static str,
    version: bcrypt::Version,
}

const MONGO_USERS: [Mongo; 3] = [
    Mongo {
        oid: "5f1d7c2e9b1e8a3d4c2b1a09",
        name: "Alice",
        email: "  Alice@Example.COM ",
        normalized: "alice@example.com",
        password: "alice's old password",
        version: bcrypt::Version::TwoA,
    },
    Mongo {
        oid: "60a7b2c3d4e5f60718293a4b",
        name: "Bob",
        email: "BOB@example.com",
        normalized: "bob@example.com",
        password: "bob's old password",
        version: bcrypt::Version::TwoB,
    },
    Mongo {
        oid: "4e9f0c1d2b3a495867768594",
        name: "Zoë",
        email: "zoe@EXAMPLE.org  ",
        normalized: "zoe@example.org",
        password: "zoë's old pässword",
        version: bcrypt::Version::TwoY,
    },
];

/// A bcrypt hash at cost 4 in the given variant (`$2a$`, `$2b$`, `$2y$`).
fn mongo_hash(password: &str, version: bcrypt::Version) -> String {
    bcrypt::hash_with_result(password, 4)
        .expect("hashed")
        .format_for_version(version)
}

/// A document as `mongoexport --collection users` writes it.
fn mongo_doc(oid: &str, name: &str, email: &str, hash: &str) -> Value {
    json!({"_id": {"$oid": oid}, "name": name, "email": email, "password": hash, "__v": 0})
}

impl Mongo {
    fn doc(&self) -> Value {
        mongo_doc(
            self.oid,
            self.name,
            self.email,
            &mongo_hash(self.password, self.version.clone()),
        )
    }
}

/// mongoexport's default shape: one document a line.
fn json_lines(docs: &[Value]) -> String {
    docs.iter().map(|d| format!("{d}\n")).collect()
}

/// `mongoexport --jsonArray`, pretty-printed, after blank space.
fn json_array(docs: &[Value]) -> String {
    format!(
        "\n  {}\n",
        serde_json::to_string_pretty(docs).expect("JSON")
    )
}

/// The time in an ObjectId (its first 4 bytes, big-endian seconds), as RFC 3339.
fn oid_time(oid: &str) -> String {
    let seconds = u32::from_str_radix(&oid[..8], 16).expect("hex");
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds.into())).to_string()
}

// --- tests --------------------------------------------------------------------

/// sled → file → sled: the file is 0600 with the header, a user record per
/// user (fields as the API showed them, a hash of the password), the
/// generated secret, no token, and the trailer; export refuses to run
/// beside a server or to overwrite; the import restores every user with
/// `_id`, fields and password, and the secret.
#[tokio::test]
async fn sled_to_file_to_sled_keeps_every_user_and_password() {
    let files = tempfile::tempdir().unwrap();
    let source = Store::sled();
    let seeded = seed(&source).await;
    let out = files.path().join("users.jsonl");

    // While a server has the database open, export points to the route.
    let server = source.start(&[]);
    source
        .export(&out, false)
        .assert_refused()
        .assert_stderr_has("/api/admin/export");
    assert!(!out.exists(), "a refused export left a file");
    stop(server);

    let before = SystemTime::now();
    source
        .export(&out, false)
        .assert_success()
        .assert_stdout_has("exported 4 users")
        .assert_stdout_has(out.to_str().unwrap());
    let after = SystemTime::now();
    assert_mode_0600(&out);
    let (text, export) = Export::read(&out);
    export.assert_exported_between(before, after);
    assert_users_exported(&export, &seeded);
    assert!(export.of_type("audit").is_empty(), "audit only on request");
    assert_no_tokens(&text, &seeded.tokens);
    // The generated secret (its encoding is checked last).
    let secrets = export.of_type("secret");
    assert_eq!(secrets.len(), 1, "the generated secret is exported");
    assert_eq!(secrets[0]["algorithm"], "HS256");

    // Export never overwrites.
    source.export(&out, false).assert_refused();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);

    let target = Store::sled();
    target
        .import(&out)
        .assert_success()
        .assert_stdout_has("imported 4 users");
    let (server, admin) = assert_copy(&target, &seeded).await;
    // The target signs with the source's generated key.
    assert_eq!(jwt_part(&admin, 0)["kid"], seeded.kid.as_str());
    stop(server);

    // The secret record holds the key as its file does: hex.
    let file = std::fs::read_to_string(source.dir.path().join("secret.key")).unwrap();
    assert_eq!(
        secrets[0]["key"].as_str().expect("a key"),
        file.trim(),
        "the generated key"
    );
}

/// sled → file → PostgreSQL (`store.url` and `auth.secret` set for the
/// import and the server): every user, field and password; then
/// PostgreSQL → file (while serving, without the configured secret) → sled.
#[tokio::test]
async fn sled_to_postgres_and_back_keeps_every_user_and_password() {
    if test_database_url().is_none() {
        not_run("sled_to_postgres_and_back_keeps_every_user_and_password");
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let source = Store::sled();
    let seeded = seed(&source).await;
    let from_sled = files.path().join("from-sled.jsonl");
    source.export(&from_sled, false).assert_success();

    let postgres = Store::postgres().await;
    postgres
        .import(&from_sled)
        .assert_success()
        .assert_stdout_has("imported 4 users");
    let (server, _) = assert_copy(&postgres, &seeded).await;

    // PostgreSQL exports while it serves.
    let from_postgres = files.path().join("from-postgres.jsonl");
    let before = SystemTime::now();
    postgres
        .export(&from_postgres, false)
        .assert_success()
        .assert_stdout_has("exported 4 users");
    let after = SystemTime::now();
    stop(server);
    assert_mode_0600(&from_postgres);
    let (text, export) = Export::read(&from_postgres);
    export.assert_exported_between(before, after);
    assert_users_exported(&export, &seeded);
    assert!(
        export.of_type("secret").is_empty(),
        "a configured secret stays out"
    );
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    assert!(!text.contains(SECRET) && !text.contains(&encoded));
    assert_no_tokens(&text, &seeded.tokens);

    let sled = Store::sled();
    sled.import(&from_postgres)
        .assert_success()
        .assert_stdout_has("imported 4 users");
    let (server, _) = assert_copy(&sled, &seeded).await;
    stop(server);
}

store_test! {
/// An import (native or mongoexport) into a store that has users is
/// refused, saying so, and changes nothing: the users, their passwords
/// and the listing stay; the file's users do not log in.
async fn an_import_into_a_store_with_users_is_refused_and_writes_nothing() {
    let files = tempfile::tempdir().unwrap();
    let source = Store::sled();
    source.admin_create("imp1@example.com", "Imp One", "imported password");
    source.admin_create("imp2@example.com", "Imp Two", "imported password");
    let file = files.path().join("users.jsonl");
    source.export(&file, false).assert_success();
    let mongo = write(&files, "mongo.json", &json_lines(&[MONGO_USERS[0].doc()]));

    let target = Store::fresh().await;
    target.admin_create(ADMIN_EMAIL, "Admin", ADMIN_PASSWORD);
    target.admin_create("second@example.com", "Second", "second password");
    let server = target.start(&[]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let users = all_users(&server, &admin).await;
    assert_eq!(users.len(), 2);
    stop(server);

    for refused in [
        target.import(&file),
        target.import_mongo(&mongo, false),
        target.import_mongo(&mongo, true),
    ] {
        refused
            .assert_refused()
            .assert_stderr_has("has 2 user")
            .assert_stderr_has("empty store");
    }

    let server = target.start(&[]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(all_users(&server, &admin).await, users, "the store changed");
    token(&server, "second@example.com", "second password").await;
    login(&server, "imp1@example.com", "imported password")
        .await
        .assert_error(401, "invalid_credentials");
    login(&server, MONGO_USERS[0].normalized, MONGO_USERS[0].password)
        .await
        .assert_error(401, "invalid_credentials");
    stop(server);
}
}

store_test! {
/// A truncated file (no trailer, a wrong count, cut inside a user line,
/// something after the trailer) or a corrupted one (not JSON, an invalid
/// email, version 2, a mongoexport file without `--from`) is refused,
/// naming the line, and writes nothing: the intact file then imports into
/// the same store (which must have no users) and its users log in.
async fn a_truncated_or_corrupted_file_is_refused_by_line_and_writes_nothing() {
    let files = tempfile::tempdir().unwrap();
    let source = Store::fresh().await;
    source.admin_create("first@example.com", "First", "first password");
    source.admin_create("second@example.com", "Second", "second password");
    let good = files.path().join("good.jsonl");
    source.export(&good, false).assert_success();
    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    // The first user record (1-based line `u + 1`).
    let u = lines
        .iter()
        .position(|l| serde_json::from_str::<Value>(l).unwrap()["type"] == "user")
        .expect("a user line");
    let joined = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let replaced = |at: usize, with: &str| {
        let mut copy = lines.clone();
        copy[at] = with;
        joined(&copy)
    };
    let mut user: Value = serde_json::from_str(lines[u]).unwrap();
    user["email"] = json!("not-an-email");
    let invalid_email = user.to_string();
    let mut header: Value = serde_json::from_str(lines[0]).unwrap();
    header["version"] = json!(2);
    let version_2 = header.to_string();
    let wrong_count = json!({"type": "end", "records": n - 1}).to_string();
    let half = (0..=lines[u].len() / 2)
        .rev()
        .find(|&i| lines[u].is_char_boundary(i))
        .unwrap();
    let cut = format!("{}{}", joined(&lines[..u]), &lines[u][..half]);
    let after_trailer = format!("{text}{}\n", lines[u]);

    // (what, contents, the line to name; None: any line)
    let cases: Vec<(&str, String, Option<usize>)> = vec![
        ("no trailer", joined(&lines[..n - 1]), None),
        ("a wrong count", replaced(n - 1, &wrong_count), None),
        ("cut inside a user line", cut, Some(u + 1)),
        ("a line after the trailer", after_trailer, Some(n + 1)),
        (
            "a line that is not JSON",
            replaced(u, r#"{"type":"user", oops"#),
            Some(u + 1),
        ),
        ("an invalid email", replaced(u, &invalid_email), Some(u + 1)),
        ("version 2", replaced(0, &version_2), Some(1)),
        (
            "a mongoexport file",
            json_lines(&[MONGO_USERS[0].doc()]),
            Some(1),
        ),
    ];
    let target = Store::fresh().await;
    for (i, (what, contents, line)) in cases.into_iter().enumerate() {
        let file = write(&files, &format!("bad-{i}.jsonl"), &contents);
        let run = target.import(&file);
        run.assert_refused();
        let named = numbered(&run.stderr, "line", false);
        match line {
            Some(line) => assert!(
                named.contains(&line),
                "{what}: line {line} not named:\n{}",
                run.stderr
            ),
            None => assert!(!named.is_empty(), "{what}: no line named:\n{}", run.stderr),
        }
    }

    // Nothing was written: the store still has no users.
    target
        .import(&good)
        .assert_success()
        .assert_stdout_has("imported 2 users");
    let server = target.start(&[]);
    token(&server, "first@example.com", "first password").await;
    token(&server, "second@example.com", "second password").await;
    stop(server);
}
}

store_test! {
/// `--with-audit` exports every audit event and the import restores them:
/// the target's `GET /api/audit` shows the source's events, same ids, same
/// content, same order; without it no event is exported or restored.
async fn with_audit_the_audit_log_is_exported_and_restored() {
    let files = tempfile::tempdir().unwrap();
    let source = Store::fresh().await;
    source.admin_create(ADMIN_EMAIL, "Admin", ADMIN_PASSWORD);
    let server = source.start(&[]);
    let ann = server
        .request(Method::POST, "/api/auth/register")
        .header("user-agent", "TransferTest/1.0")
        .json(json!({"name": "Ann", "email": "ann@example.com", "password": PASSWORD}))
        .send()
        .await;
    ann.assert_ok(200);
    login(&server, "ann@example.com", "wrong password")
        .await
        .assert_error(401, "invalid_credentials");
    let ann_token = token(&server, "ann@example.com", PASSWORD).await;
    server
        .request(Method::POST, "/api/auth/logout")
        .token(&ann_token)
        .send()
        .await
        .assert_ok(200);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let events = all_events(&server, &admin).await;
    for action in ["register", "login_failed", "login", "logout"] {
        assert!(
            events.iter().any(|e| e["action"] == action),
            "no {action} event: {events:#?}"
        );
    }
    stop(server);

    let with = files.path().join("with-audit.jsonl");
    source
        .export(&with, true)
        .assert_success()
        .assert_stdout_has("exported 2 users")
        .assert_stdout_has(&format!("{} audit events", events.len()));
    let (_, export) = Export::read(&with);
    let records = export.of_type("audit");
    assert_eq!(records.len(), events.len(), "every event, once");
    for event in &events {
        let id = event["id"].as_str().expect("an id");
        let record = records
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("event {id} not exported"));
        for field in [
            "action",
            "user_id",
            "actor_id",
            "ip",
            "user_agent",
            "detail",
        ] {
            assert_eq!(record[field], event[field], "{field} of {event}");
        }
    }
    let without = files.path().join("without-audit.jsonl");
    source.export(&without, false).assert_success();
    let (_, export) = Export::read(&without);
    assert!(export.of_type("audit").is_empty(), "audit only on request");

    let restored = Store::fresh().await;
    restored
        .import(&with)
        .assert_success()
        .assert_stdout_has("imported 2 users");
    let server = restored.start(&[]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let kept: Vec<Value> = all_events(&server, &admin)
        .await
        .into_iter()
        .filter(|e| e["id"].as_str().is_some_and(|id| ids.contains(id)))
        .collect();
    assert_eq!(
        kept, events,
        "the source's events, as they were, newest first"
    );
    stop(server);

    let bare = Store::fresh().await;
    bare.import(&without).assert_success();
    let server = bare.start(&[]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let found: Vec<Value> = all_events(&server, &admin)
        .await
        .into_iter()
        .filter(|e| e["id"].as_str().is_some_and(|id| ids.contains(id)))
        .collect();
    assert!(
        found.is_empty(),
        "events restored without --with-audit: {found:#?}"
    );
    stop(server);
}
}

store_test! {
/// `GET /api/admin/export` while registrations go on: 200 ndjson, no-store,
/// an attachment, chunked; the format with a valid trailer; every user
/// registered before the request, each once, all real users; no configured
/// secret; audit lines only with `?with_audit=true`; 401, 403 and 400 for
/// an unknown parameter. The body imports into a fresh store, where its
/// users log in.
async fn the_online_export_streams_every_user_while_serving() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Early", "early@example.com").await;

    // Registrations in a loop, beside the export.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let registered = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (client, base) = (server.client.clone(), server.base.clone());
        let (stop_writing, registered) = (stop_writing.clone(), registered.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                if stop_writing.load(Ordering::SeqCst) {
                    break;
                }
                let email = format!("writer{i}@example.com");
                let reply = client
                    .post(format!("{base}/api/auth/register"))
                    .json(&json!({"name": format!("Writer {i}"), "email": email, "password": PASSWORD}))
                    .send()
                    .await
                    .expect("request sent");
                assert_eq!(reply.status(), 200, "registration {i}");
                registered.lock().unwrap().push(email);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while registered.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the writer registers nobody");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before: Vec<String> = registered.lock().unwrap().clone();
    let reply = server
        .get("/api/admin/export")
        .token(&admin.token)
        .send()
        .await;
    stop_writing.store(true, Ordering::SeqCst);
    writer.await.expect("the writer");

    reply.assert_ok(200);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        reply.header("content-disposition"),
        Some(r#"attachment; filename="gatehouse-export.jsonl""#)
    );
    assert_eq!(
        reply.header("transfer-encoding"),
        Some("chunked"),
        "streamed"
    );
    let export = Export::parse(&reply.text);
    assert!(export.of_type("audit").is_empty(), "audit only on request");
    assert!(
        export.of_type("secret").is_empty(),
        "a configured secret stays out"
    );
    let exported: Vec<&str> = export
        .users()
        .iter()
        .map(|u| u["_id"].as_str().expect("an _id"))
        .collect();
    let unique: BTreeSet<&str> = exported.iter().copied().collect();
    assert_eq!(unique.len(), exported.len(), "a user exported twice");
    for email in before
        .iter()
        .map(String::as_str)
        .chain([admin.email.as_str(), "early@example.com"])
    {
        let record = export.user("email", email);
        assert!(bcrypt::verify(PASSWORD, record["password_hash"].as_str().unwrap()).unwrap());
    }
    let listed = server
        .get("/api/users?limit=1000")
        .token(&admin.token)
        .send()
        .await;
    listed.assert_ok(200);
    for user in export.users() {
        let same = listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["_id"] == user["_id"]);
        assert_same_user(user, same.unwrap_or_else(|| panic!("not a user: {user}")));
    }

    let audited = server
        .get("/api/admin/export?with_audit=true")
        .token(&admin.token)
        .send()
        .await;
    audited.assert_ok(200);
    let audit = Export::parse(&audited.text);
    let events = audit.of_type("audit");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "register" && e["user_id"] == user.id.as_str()),
        "no register event for {}",
        user.id
    );

    server
        .get("/api/admin/export")
        .send()
        .await
        .assert_error(401, "missing_token");
    server
        .get("/api/admin/export")
        .token(&user.token)
        .send()
        .await
        .assert_error(403, "forbidden");
    server
        .get("/api/admin/export?shape=csv")
        .token(&admin.token)
        .send()
        .await
        .assert_error(400, "invalid_input");

    let files = tempfile::tempdir().unwrap();
    let body = write(&files, "online.jsonl", &reply.text);
    let target = Store::fresh().await;
    target
        .import(&body)
        .assert_success()
        .assert_stdout_has(&format!("imported {} users", exported.len()));
    let copy = target.start(&[]);
    token(&copy, "early@example.com", PASSWORD).await;
    token(&copy, &before[0], PASSWORD).await;
    let admin_token = token(&copy, &admin.email, PASSWORD).await;
    let me = get(&copy, "/api/auth/me", &admin_token).await;
    assert_eq!(
        (me.body["_id"].as_str(), me.body["role"].as_str()),
        (Some(admin.id.as_str()), Some("admin"))
    );
    stop(copy);
}
}

store_test! {
/// The tutorial's users from mongoexport, as JSON lines and as a JSON
/// array: `$2a$`, `$2b$` and `$2y$` hashes log in with the old passwords;
/// `_id` is the ObjectId's hex, the email normalized, role `user`,
/// unverified, created (and updated) at the ObjectId's time; "__v" ignored.
async fn mongoexport_users_keep_their_ids_and_passwords() {
    let files = tempfile::tempdir().unwrap();
    let docs: Vec<Value> = MONGO_USERS.iter().map(Mongo::doc).collect();
    for (shape, contents) in [("lines", json_lines(&docs)), ("array", json_array(&docs))] {
        let file = write(&files, &format!("users-{shape}.json"), &contents);
        let target = Store::fresh().await;
        target
            .import_mongo(&file, false)
            .assert_success()
            .assert_stdout_has("imported 3 users");
        let server = target.start(&[]);
        for user in &MONGO_USERS {
            login(&server, user.normalized, "not the password")
                .await
                .assert_error(401, "invalid_credentials");
            let token = token(&server, user.normalized, user.password).await;
            let me = get(&server, "/api/auth/me", &token).await;
            me.assert_ok(200);
            let time = oid_time(user.oid);
            assert_eq!(
                me.body,
                json!({
                    "_id": user.oid, "name": user.name, "email": user.normalized,
                    "role": "user", "email_verified": false,
                    "created_at": time, "updated_at": time,
                }),
                "{shape}"
            );
        }
        stop(server);
    }
}
}

store_test! {
/// Invalid mongo rows (bad or missing `_id`, no name, a bad email, a
/// password that is not a bcrypt hash) and colliding ones (emails alike
/// after normalization, a repeated `_id`: every row of each) are all
/// listed by line (by element for an array) and nothing is imported;
/// with `--skip-invalid` they are listed and skipped, and the rest imported.
async fn invalid_and_colliding_mongo_rows_are_listed_and_refused_unless_skipped() {
    let files = tempfile::tempdir().unwrap();
    let hash = |password: &str| mongo_hash(password, bcrypt::Version::TwoA);
    let good = |oid: &str, email: &str| mongo_doc(oid, "Good", email, &hash(email));
    let docs = vec![
        good("5f1d7c2e9b1e8a3d4c2b1a01", "g1@example.com"),
        mongo_doc(
            "not-an-object-id",
            "Bad Id",
            "badid@example.com",
            &hash("x"),
        ),
        json!({"_id": {"$oid": "5f1d7c2e9b1e8a3d4c2b1a03"}, "email": "noname@example.com", "password": hash("x")}),
        mongo_doc(
            "5f1d7c2e9b1e8a3d4c2b1a04",
            "Bad Email",
            "not-an-email",
            &hash("x"),
        ),
        mongo_doc(
            "5f1d7c2e9b1e8a3d4c2b1a05",
            "Plain",
            "plain@example.com",
            "a plain text password",
        ),
        mongo_doc(
            "5f1d7c2e9b1e8a3d4c2b1a06",
            "Dup One",
            "Dup@Example.com",
            &hash("dup"),
        ),
        good("5f1d7c2e9b1e8a3d4c2b1a07", "g2@example.com"),
        mongo_doc(
            "5f1d7c2e9b1e8a3d4c2b1a08",
            "Dup Two",
            " dup@example.com ",
            &hash("dup"),
        ),
        good("5f1d7c2e9b1e8a3d4c2b1a09", "x1@example.com"),
        good("5f1d7c2e9b1e8a3d4c2b1a09", "x2@example.com"),
        good("5f1d7c2e9b1e8a3d4c2b1a11", "g3@example.com"),
        json!({"name": "No Id", "email": "noid@example.com", "password": hash("x")}),
        mongo_doc(
            "5f1d7c2e9b1e8a3d4c2b1a13",
            "Short Hash",
            "short@example.com",
            "$2b$04$tooshort",
        ),
    ];
    // 1-based rows that must be listed.
    let bad: BTreeSet<usize> = [2, 3, 4, 5, 6, 8, 9, 10, 12, 13].into();
    let zero_based: BTreeSet<usize> = bad.iter().map(|n| n - 1).collect();
    for (shape, contents, word) in [
        ("lines", json_lines(&docs), "line"),
        ("array", json_array(&docs), "element"),
    ] {
        let file = write(&files, &format!("rows-{shape}.json"), &contents);
        // The element numbering may start at 0 or 1, as long as it is one of them.
        let listed_right = |stderr: &str| {
            let listed = numbered(stderr, word, true);
            listed == bad || (word == "element" && listed == zero_based)
        };
        let target = Store::fresh().await;
        let refused = target.import_mongo(&file, false);
        refused.assert_refused();
        assert!(
            listed_right(&refused.stderr),
            "{shape}: rows listed:\n{}",
            refused.stderr
        );

        // Nothing was imported: the store still has no users.
        let skipped = target.import_mongo(&file, true);
        skipped
            .assert_success()
            .assert_stdout_has(&format!("imported 3 users, skipped {}", bad.len()));
        assert!(
            listed_right(&skipped.stderr),
            "{shape}: rows listed:\n{}",
            skipped.stderr
        );

        let server = target.start(&[]);
        for email in ["g1@example.com", "g2@example.com", "g3@example.com"] {
            token(&server, email, email).await;
        }
        for (email, password) in [
            ("dup@example.com", "dup"),
            ("x1@example.com", "x1@example.com"),
            ("x2@example.com", "x2@example.com"),
            ("noname@example.com", "x"),
            ("badid@example.com", "x"),
            ("noid@example.com", "x"),
        ] {
            login(&server, email, password)
                .await
                .assert_error(401, "invalid_credentials");
        }
        stop(server);
    }
}
}

store_test! {
/// An imported `$2a$` hash at cost 4, on a server at cost 5: a failed
/// login leaves it as it was, a successful one stores a `$2b$05$` hash of
/// the same password (seen in the online export), which logs in.
async fn an_imported_hash_is_upgraded_by_a_successful_login() {
    let files = tempfile::tempdir().unwrap();
    let hana = "hana's old password";
    let hash = mongo_hash(hana, bcrypt::Version::TwoA);
    let oid = "5f1d7c2e9b1e8a3d4c2b1aff";
    let file = write(
        &files,
        "hana.json",
        &json_lines(&[mongo_doc(oid, "Hana", "hana@example.com", &hash)]),
    );
    let target = Store::fresh().await;
    target.import_mongo(&file, false).assert_success();
    target.admin_create(ADMIN_EMAIL, "Admin", ADMIN_PASSWORD);
    let server = target.start(&[("GATEHOUSE_AUTH__BCRYPT_COST", "5")]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let stored = || async {
        let export = export_over_http(&server, &admin, "").await;
        let hash = export.user("_id", oid)["password_hash"]
            .as_str()
            .expect("a hash");
        hash.to_string()
    };
    assert_eq!(stored().await, hash, "imported as it was");

    login(&server, "hana@example.com", "not her password")
        .await
        .assert_error(401, "invalid_credentials");
    assert_eq!(stored().await, hash, "a failed login upgrades nothing");

    token(&server, "hana@example.com", hana).await;
    let upgraded = stored().await;
    assert!(upgraded.starts_with("$2b$05$"), "{upgraded}");
    assert!(bcrypt::verify(hana, &upgraded).unwrap());
    let again = token(&server, "hana@example.com", hana).await;
    assert_eq!(get(&server, "/api/auth/me", &again).await.body["_id"], oid);
    stop(server);
}
}

store_test! {
/// An imported mongo user (whose id is no UUID) resets a forgotten
/// password through the mail link, then logs in with the new one only.
async fn an_imported_mongo_user_resets_a_forgotten_password() {
    let sink = MailSink::start().await;
    let files = tempfile::tempdir().unwrap();
    let user = &MONGO_USERS[0];
    let file = write(&files, "alice.json", &json_lines(&[user.doc()]));
    let target = Store::fresh().await;
    target.import_mongo(&file, false).assert_success();
    let url = sink.smtp_url();
    let server = target.start(&[("GATEHOUSE_MAIL__SMTP_URL", url.as_str())]);

    server
        .request(Method::POST, "/api/auth/password/forgot")
        .json(json!({"email": user.normalized}))
        .send()
        .await
        .assert_ok(202);
    let mail = sink
        .nth_with(user.normalized, "/reset-password#token=", 1)
        .await;
    let new_password = "alice's new password";
    let reset = server
        .request(Method::POST, "/api/auth/password/reset")
        .json(json!({"token": mail.token(), "password": new_password}))
        .send()
        .await;
    reset.assert_ok(200);
    let me = get(
        &server,
        "/api/auth/me",
        reset.body["token"].as_str().expect("a token"),
    )
    .await;
    me.assert_ok(200);
    assert_eq!(me.body["_id"], user.oid);
    assert_eq!(
        me.body["email_verified"], true,
        "a reset proves the address"
    );
    login(&server, user.normalized, user.password)
        .await
        .assert_error(401, "invalid_credentials");
    token(&server, user.normalized, new_password).await;
    stop(server);
}
}

/// A store of `count` users imported from a generated mongoexport file (one
/// hash for all: `many-<i>@example.com`, password "many users' password"),
/// plus the admin; the ObjectIds follow file order, so the last user has
/// the greatest `_id`.
async fn many_users(count: usize) -> Store {
    let files = tempfile::tempdir().unwrap();
    let hash = mongo_hash("many users' password", bcrypt::Version::TwoB);
    let docs: Vec<Value> = (0..count)
        .map(|i| {
            let oid = format!("5f1d7c2e{i:016x}");
            mongo_doc(&oid, "Many", &format!("many-{i}@example.com"), &hash)
        })
        .collect();
    let file = write(&files, "many.json", &json_lines(&docs));
    let store = Store::fresh().await;
    store
        .import_mongo(&file, false)
        .assert_success()
        .assert_stdout_has(&format!("imported {count} users"));
    store.admin_create(ADMIN_EMAIL, "Admin", ADMIN_PASSWORD);
    store
}

store_test! {
/// An export whose client goes away after the first chunk ends, and gives
/// back what it held: twenty abandoned exports (more than the PostgreSQL
/// pool's 16 connections) and twenty HEADs later, logins and a whole export
/// still work at once.
async fn an_abandoned_export_ends_and_holds_nothing() {
    let store = many_users(1500).await;
    let server = store.start(&[]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/admin/export?with_audit=true", server.base);
    for _ in 0..20 {
        let mut response = client
            .get(&url)
            .header("x-access-token", &admin)
            .send()
            .await
            .expect("the export starts");
        assert_eq!(response.status(), 200);
        assert!(response.chunk().await.expect("a first chunk").is_some());
        drop(response);
        let head = client
            .head(&url)
            .header("x-access-token", &admin)
            .send()
            .await
            .expect("HEAD answers");
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-type"],
            "application/x-ndjson",
            "HEAD has the GET's headers"
        );
    }
    let started = std::time::Instant::now();
    token(&server, "many-7@example.com", "many users' password").await;
    let export = export_over_http(&server, &admin, "").await;
    assert_eq!(export.users().len(), 1501);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the store answered at once, not after a pool timeout"
    );
    stop(server);
}
}

store_test! {
/// While an export is being read, an address moves from one user to
/// another: the first imported user (in the export's first page) takes a
/// new address, then the last one (in its last page) takes the old one. The
/// file is still one state of the store: no address twice, and it imports.
async fn an_online_export_is_one_state_of_the_store() {
    let store = many_users(3000).await;
    let server = store.start(&[]);
    let admin = token(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let listed = all_users(&server, &admin).await;
    let id_of = |email: &str| {
        listed
            .iter()
            .find(|u| u["email"] == email)
            .and_then(|u| u["_id"].as_str())
            .expect("a listed user")
            .to_string()
    };
    let (first, last) = (id_of("many-0@example.com"), "5f1d7c2e0000000000000bb7");
    let mut response = reqwest::Client::new()
        .get(format!("{}/api/admin/export", server.base))
        .header("x-access-token", &admin)
        .send()
        .await
        .expect("the export starts");
    assert_eq!(response.status(), 200);
    let mut body = response
        .chunk()
        .await
        .expect("a first chunk")
        .expect("not empty")
        .to_vec();
    // The first user's page is out; the last user's is still to be read.
    for (id, email) in [(first.as_str(), "moved@example.com"), (last, "many-0@example.com")] {
        server
            .request(Method::PATCH, &format!("/api/users/{id}"))
            .token(&admin)
            .json(json!({ "email": email }))
            .send()
            .await
            .assert_ok(200);
    }
    while let Some(chunk) = response.chunk().await.expect("the rest") {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).expect("UTF-8");
    let export = Export::parse(&text);
    let mut emails: Vec<&str> = export
        .users()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    let all = emails.len();
    emails.sort_unstable();
    emails.dedup();
    assert_eq!(emails.len(), all, "an address twice in one export");
    stop(server);

    let files = tempfile::tempdir().unwrap();
    let file = write(&files, "online.jsonl", &text);
    Store::fresh()
        .await
        .import(&file)
        .assert_success()
        .assert_stdout_has("imported 3001 users");
}
}

/// A file of which no row can be imported (here `mongoexport --pretty`'s
/// multi-line documents, read as lines) is refused even with
/// `--skip-invalid`, rather than "imported 0 users".
#[tokio::test]
async fn a_mongo_file_with_no_importable_row_is_refused_even_when_skipping() {
    let files = tempfile::tempdir().unwrap();
    let docs: Vec<String> = MONGO_USERS
        .iter()
        .map(|user| serde_json::to_string_pretty(&user.doc()).expect("JSON"))
        .collect();
    let file = write(&files, "pretty.json", &docs.join("\n"));
    let target = Store::sled();
    target
        .import_mongo(&file, true)
        .assert_refused()
        .assert_stderr_has("none of its")
        .assert_stderr_has("nothing was imported");
    let server = target.start(&[]);
    login(&server, MONGO_USERS[0].normalized, MONGO_USERS[0].password)
        .await
        .assert_error(401, "invalid_credentials");
    stop(server);
}
