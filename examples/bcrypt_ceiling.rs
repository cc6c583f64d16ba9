//! The load benchmark's ceiling for logins and registrations: how many bcrypt
//! verifications one thread does per second at a given cost. `bench/run.sh`
//! runs it pinned to the server's CPU (`taskset -c 0`), so the number is what
//! one core can hash, whatever the server does around it.
//!
//! Usage: `bcrypt_ceiling [COST] [SECONDS]` (defaults 10 and 3). Prints the
//! verifications per second alone on stdout, details on stderr.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cost: u32 = match args.next() {
        Some(cost) => cost.parse().context("COST must be a number")?,
        None => 10,
    };
    let seconds: f64 = match args.next() {
        Some(seconds) => seconds.parse().context("SECONDS must be a number")?,
        None => 3.0,
    };
    let budget = Duration::from_secs_f64(seconds);
    let password = "benchmark-password";
    let hash = bcrypt::hash(password, cost).context("hashing")?;

    let started = Instant::now();
    let mut verified: u64 = 0;
    // At least two, so even a high cost gives a rate rather than one sample.
    while verified < 2 || started.elapsed() < budget {
        ensure!(
            bcrypt::verify(password, &hash)?,
            "verify refused its own hash"
        );
        verified += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("bcrypt cost {cost}: {verified} verifications in {elapsed:.2} s on one thread");
    println!("{:.2}", verified as f64 / elapsed);
    Ok(())
}
