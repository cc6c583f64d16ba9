//! Fills a gatehouse data dir with N users, and optionally S sessions for
//! each, fast, for the load benchmark's memory, disk and cold-start
//! scenarios (`bench/run.sh`).
//!
//! Usage: `seed DATA_DIR COUNT [COST [SESSIONS]]` (COST: bcrypt cost,
//! default 10; SESSIONS: sessions per user, default 0).
//!
//! Users are `seed-<i>@bench.example`, named `Seed <i>`, role `user`, all with
//! the password `benchmark-password`, hashed once at COST and reused (hashing
//! 100,000 passwords would take hours and measures nothing here). A user that
//! is already there is kept as it is, so a second run over the same data dir
//! with SESSIONS adds sessions to the users of the first. Inserts go
//! through `Store::insert_user` and `Store::insert_session`, as the server's
//! do (one transaction and one flush each), from 64 concurrent tasks so that
//! concurrent flushes are shared. Sessions are made by `Session::start` with
//! the server's own refresh-token key and session policy (`App::open`, the
//! same settings), as a login makes them: alive, and their refresh tokens
//! (which are not kept) would be valid. Run it while no server holds the data
//! dir. With GATEHOUSE_STORE__URL set it seeds that PostgreSQL database
//! instead. With no `auth.secret`, the signing key is created in DATA_DIR as
//! the server would create it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use gatehouse::domain::session::{Client, Session};
use gatehouse::domain::unix_now;
use gatehouse::domain::user::{Role, User};
use gatehouse::App;

/// The password of every seeded user.
const PASSWORD: &str = "benchmark-password";
/// Concurrent inserting tasks.
const TASKS: usize = 64;
/// The `User-Agent` of seeded sessions, as a session listing shows it.
const USER_AGENT: &str = "gatehouse-seed";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(data_dir), Some(count)) = (args.next(), args.next()) else {
        bail!("usage: seed DATA_DIR COUNT [COST [SESSIONS]]");
    };
    let data_dir = PathBuf::from(data_dir);
    let count: usize = count.parse().context("COUNT must be a number")?;
    let cost: u32 = match args.next() {
        Some(cost) => cost.parse().context("COST must be a number")?,
        None => 10,
    };
    let sessions: usize = match args.next() {
        Some(sessions) => sessions.parse().context("SESSIONS must be a number")?,
        None => 0,
    };

    let started = Instant::now();
    let hash = bcrypt::hash(PASSWORD, cost).context("hashing the seed password")?;
    // What the server would open: sled in DATA_DIR, or PostgreSQL when
    // GATEHOUSE_STORE__URL (or a config file) says so; the same signing
    // secret, so the same refresh-token key.
    let settings = gatehouse::Settings::load(&gatehouse::config::Overrides {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    })?;
    let app = Arc::new(
        App::open(settings)
            .await
            .with_context(|| format!("opening {}", data_dir.display()))?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let inserted = Arc::new(AtomicUsize::new(0));
    let now = unix_now();
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let (app, next, inserted, hash) =
            (app.clone(), next.clone(), inserted.clone(), hash.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let email = format!("seed-{i}@bench.example");
                let user = match app.store.user_by_email(&email).await? {
                    Some(user) => user,
                    None => {
                        let user =
                            User::new(format!("Seed {i}"), email, Role::User, hash.clone(), now);
                        inserted.fetch_add(1, Ordering::Relaxed);
                        app.store
                            .insert_user(user, Vec::new())
                            .await
                            .with_context(|| format!("inserting user {i}"))?
                    }
                };
                for s in 0..sessions {
                    let (session, _refresh_token) = Session::start(
                        &app.refresh_keys,
                        &app.sessions,
                        &user.id,
                        user.password_version,
                        Client::new(USER_AGENT, "127.0.0.1".into()),
                        now,
                    );
                    app.store
                        .insert_session(session, Vec::new())
                        .await
                        .with_context(|| format!("inserting session {s} of user {i}"))?;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    app.store.flush().await?;
    let elapsed = started.elapsed();
    let inserted = inserted.load(Ordering::Relaxed);
    let writes = inserted + count * sessions;
    println!(
        "seeded {inserted} users ({} were there) and {} sessions into {} in {:.2} s \
         ({:.0} writes/s)",
        count - inserted,
        count * sessions,
        data_dir.display(),
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
