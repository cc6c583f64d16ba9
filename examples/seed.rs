//! Fills a gatehouse data dir with N users, fast, for the load benchmark's
//! memory, disk and cold-start scenarios (`bench/run.sh`).
//!
//! Usage: `seed DATA_DIR COUNT [COST]` (COST: bcrypt cost, default 10).
//!
//! Users are `seed-<i>@bench.example`, named `Seed <i>`, role `user`, all with
//! the password `benchmark-password`, hashed once at COST and reused (hashing
//! 100,000 passwords would take hours and measures nothing here). Inserts go
//! through `Store::insert_user`, as the server's do (one transaction and one
//! flush each), from 64 concurrent tasks so that concurrent flushes are shared.
//! Run it while no server holds the data dir. With GATEHOUSE_STORE__URL set
//! it seeds that PostgreSQL database instead. It opens only the database: the
//! signing key is left for the server to create.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use gatehouse::domain::unix_now;
use gatehouse::domain::user::{Role, User};
use gatehouse::store::Store;

/// The password of every seeded user.
const PASSWORD: &str = "benchmark-password";
/// Concurrent inserting tasks.
const TASKS: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(data_dir), Some(count)) = (args.next(), args.next()) else {
        bail!("usage: seed DATA_DIR COUNT [COST]");
    };
    let data_dir = PathBuf::from(data_dir);
    let count: usize = count.parse().context("COUNT must be a number")?;
    let cost: u32 = match args.next() {
        Some(cost) => cost.parse().context("COST must be a number")?,
        None => 10,
    };

    let started = Instant::now();
    let hash = bcrypt::hash(PASSWORD, cost).context("hashing the seed password")?;
    // The store the server would use: sled in DATA_DIR, or PostgreSQL when
    // GATEHOUSE_STORE__URL (or a config file) says so.
    let settings = gatehouse::Settings::load(&gatehouse::config::Overrides {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    })?;
    let store = Store::open(&settings)
        .await
        .with_context(|| format!("opening the {} store", data_dir.display()))?;
    let next = Arc::new(AtomicUsize::new(0));
    let now = unix_now();
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let (store, next, hash) = (store.clone(), next.clone(), hash.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let user = User::new(
                    format!("Seed {i}"),
                    format!("seed-{i}@bench.example"),
                    Role::User,
                    hash.clone(),
                    now,
                );
                store
                    .insert_user(user)
                    .await
                    .with_context(|| format!("inserting user {i}"))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    store.flush().await?;
    let elapsed = started.elapsed();
    println!(
        "seeded {count} users into {} in {:.2} s ({:.0} users/s)",
        data_dir.display(),
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
