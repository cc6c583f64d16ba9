//! Password hashing with bcrypt, on dedicated low-priority threads.
//!
//! bcrypt blocks a thread for tens to hundreds of milliseconds. Every hash and
//! verify runs on one of this module's own threads (one per core), never on an
//! async worker; requests wait for a free thread asynchronously, in a bounded
//! queue. The threads run at nice 2 and give the CPU back after every
//! bcrypt round, so a flood of logins can neither starve token-checked reads
//! of CPU nor hold it while one waits, and logins still get a quarter to a
//! third of the CPU when reads keep it busy. This module must never hash a
//! password longer than bcrypt reads (72 bytes): `verify` refuses one itself,
//! `hash` expects callers to have checked the input rules.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, OnceCell};

use super::user::MAX_PASSWORD_BYTES;
use super::yielding_bcrypt;
use crate::metrics::Metrics;

/// The cost a bcrypt hash was made with (`$2b$10$…` → 10, any of the
/// `$2a$`/`$2b$`/`$2x$`/`$2y$` variants); `None` for a string that is not one.
pub fn cost_of(hash: &str) -> Option<u32> {
    let rest = hash.strip_prefix("$2")?;
    let rest = rest.strip_prefix(['a', 'b', 'x', 'y'])?.strip_prefix('$')?;
    let (cost, rest) = rest.split_at_checked(2)?;
    if !rest.starts_with('$') || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cost.parse().ok()
}

/// Whether `hash` is a well-formed bcrypt hash this server can verify: 60
/// characters, a `$2a$`/`$2b$`/`$2x$`/`$2y$` prefix, a cost from 4 to 31,
/// canonical base64 salt and hash (the bcrypt crate's parser, which
/// `yielding_bcrypt::verify` uses too). What an import accepts as a password.
pub fn is_bcrypt_hash(hash: &str) -> bool {
    cost_of(hash).is_some_and(|cost| (4..=31).contains(&cost))
        && hash.parse::<bcrypt::HashParts>().is_ok()
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("the hashing threads are gone")]
    Closed,
    #[error("no system randomness for a salt or the dummy hash")]
    Randomness,
}

/// Jobs waiting for a hashing thread, at most; more callers wait to enqueue.
const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

pub struct PasswordHasher {
    cost: u32,
    /// Dropping the sender (with the hasher) ends the threads.
    jobs: mpsc::Sender<Job>,
    /// A hash of a random password at our cost, verified against when the
    /// email is unknown so that such a login takes as long as a wrong password.
    dummy_hash: OnceCell<String>,
    /// The queue depth and each job's time (`gatehouse_password_hash_*`).
    metrics: Metrics,
}

impl PasswordHasher {
    /// Starts one hashing thread per available core.
    pub fn new(cost: u32) -> PasswordHasher {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lower_thread_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(mut queue) => queue.blocking_recv(),
                            Err(_) => None,
                        };
                        match job {
                            Some(job) => job(),
                            None => break,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a hashing thread");
            }
        }
        PasswordHasher {
            cost,
            jobs,
            dummy_hash: OnceCell::new(),
            metrics: Metrics::off(),
        }
    }

    /// Whether `hash` was made with a lower cost than ours (`auth.bcrypt_cost`),
    /// so that a login with the right password should store a new one: an
    /// account imported or made under a lower cost gets the configured cost
    /// at its next login.
    pub fn needs_upgrade(&self, hash: &str) -> bool {
        cost_of(hash).is_some_and(|cost| cost < self.cost)
    }

    /// Records the queue depth and each hash's time in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> PasswordHasher {
        self.metrics = metrics;
        self
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let cost = self.cost;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| HashError::Randomness)?;
        self.run(move || yielding_bcrypt::hash(password.as_bytes(), cost, salt))
            .await?
            .map_err(HashError::from)
    }

    /// True only if `password` matches `hash`. With no hash (unknown user) or
    /// an over-long password it still spends one bcrypt verification, then
    /// answers false, so every failure costs the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let too_long = password.len() > MAX_PASSWORD_BYTES;
        let (hash, real) = match hash {
            Some(hash) if !too_long => (hash, true),
            _ => (self.dummy_hash().await?.to_string(), false),
        };
        match self
            .run(move || yielding_bcrypt::verify(password.as_bytes(), &hash))
            .await?
        {
            Ok(matched) => Ok(matched && real),
            // A malformed stored hash fails closed.
            Err(error) => {
                tracing::error!(%error, "stored password hash is unreadable");
                Ok(false)
            }
        }
    }

    /// Computes the dummy hash ahead of the first unknown-email login, so that
    /// login does not take twice as long as the others.
    pub async fn warm_up(&self) {
        if let Err(error) = self.dummy_hash().await {
            tracing::warn!(%error, "could not precompute the dummy hash");
        }
    }

    async fn dummy_hash(&self) -> Result<&str, HashError> {
        let hash = self
            .dummy_hash
            .get_or_try_init(|| async {
                let mut random = [0u8; 32];
                getrandom::fill(&mut random).map_err(|_| HashError::Randomness)?;
                let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
                self.hash(password).await
            })
            .await?;
        Ok(hash.as_str())
    }

    /// Runs `work` on a hashing thread and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = oneshot::channel();
        // In the queue depth from now until the job is done, skipped, or
        // dropped unsent.
        let queued = self.metrics.hash_job();
        let job: Job = Box::new(move || {
            // The request that asked is gone (its client hung up while the
            // job queued): spend no CPU on an answer nobody will read.
            if done.is_closed() {
                return;
            }
            let _ = done.send(queued.run(work));
        });
        self.jobs.send(job).await.map_err(|_| HashError::Closed)?;
        result.await.map_err(|_| HashError::Closed)
    }
}

/// The nice value of hashing threads. Under full CPU contention the kernel
/// shares a core by weight: 655 for nice 2 against 1024 for a nice-0 async
/// worker, so while token-checked reads saturate the core, logins still get
/// a guaranteed share of it, and reads the larger rest. Measured (cost 10,
/// one core, /me with 64 connections flooded by 16 connections of logins, 4 s
/// windows against /me alone just before; issue 13): nice 10 left logins
/// 1.0/s (0.06 × the one-core ceiling of 16/s) for /me at 0.95 × alone;
/// nice 4: 3.0-3.25 logins/s, /me 0.79-0.83 ×; **nice 2: 4.25 logins/s
/// (0.27 ×), /me 0.74-0.77 ×, its p99 at most 1.44 × alone**; nice 1: 5.0
/// logins/s, /me 0.66-0.69 ×, p99 up to 2.93 ×. With no contention, hashing
/// gets the whole core. The reads' tail latency is the other half: see
/// [`HASHING_SLICE_NANOS`] and `yielding_bcrypt`.
pub const HASHING_NICE: i32 = 2;

/// The CPU slice hashing threads ask for: the shortest Linux (6.12 and
/// later, whose EEVDF scheduler honours a per-thread slice) allows. The
/// kernel checks it only at ticks (4 ms) and wakeups, so on its own it did
/// not shorten a hashing run (`perf sched timehist`: 3.95 ms runs); what it
/// does is keep the thread's share once the hashing loop yields after every
/// round: each `sched_yield` moves the thread's virtual deadline one slice
/// later, and with the default slice a yielding nice-10 thread got 0.8-1.3%
/// of a saturated core instead of 6.5-6.8% (4 s flood windows, CPU time from
/// /proc). Older kernels ignore it; the yields alone still bound the reads'
/// wait.
pub const HASHING_SLICE_NANOS: u64 = 100_000;

/// Whether a thread at nice `current` is lowered to [`HASHING_NICE`]:
/// only if that is lower priority than it has (a process started with a
/// higher nice value keeps it).
fn should_lower(current: i32) -> bool {
    current < HASHING_NICE
}

/// Lowers the calling thread's priority to [`HASHING_NICE`] (never raises
/// it: a process started with a higher nice value keeps it) and asks for a
/// [`HASHING_SLICE_NANOS`] slice. Neither needs privilege.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain values; on Linux, PRIO_PROCESS with pid 0 acts on
        // the calling thread only. (-1 is also a valid nice value, but then
        // it is below HASHING_NICE anyway.)
        let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        if !should_lower(current) {
            return;
        }
        let attributes = libc::sched_attr {
            size: std::mem::size_of::<libc::sched_attr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: HASHING_NICE,
            sched_priority: 0,
            sched_runtime: HASHING_SLICE_NANOS,
            sched_deadline: 0,
            sched_period: 0,
        };
        // SAFETY: sched_setattr(2) on the calling thread (tid 0) reads the
        // struct, which outlives the call; its size field is its real size.
        let with_slice = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                0,
                &attributes as *const libc::sched_attr,
                0,
            )
        } == 0;
        // Kernels without sched_setattr: the nice value alone.
        // SAFETY: as for getpriority above.
        let lowered =
            with_slice || unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICE) } == 0;
        if !lowered {
            tracing::warn!("cannot lower the priority of a hashing thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashs_cost_is_read_from_any_variant() {
        let salt_and_hash = "DCq7YPn5Rq63x1Lad4cll.TV4S6ytwfsfvkgY8jIucDrjc8deX1s.";
        for variant in ["2a", "2b", "2x", "2y"] {
            assert_eq!(cost_of(&format!("${variant}$06${salt_and_hash}")), Some(6));
        }
        assert_eq!(cost_of(&format!("$2b$12${salt_and_hash}")), Some(12));
        for not_one in [
            "", "$2b$", "$2b$1$x", "$2c$10$x", "$1$10$x", "$2b$1a$x", "plain",
        ] {
            assert_eq!(cost_of(not_one), None, "{not_one}");
        }
        let hasher = PasswordHasher::new(10);
        assert!(hasher.needs_upgrade(&format!("$2a$04${salt_and_hash}")));
        assert!(!hasher.needs_upgrade(&format!("$2b$10${salt_and_hash}")));
        assert!(!hasher.needs_upgrade(&format!("$2b$12${salt_and_hash}")));
        assert!(!hasher.needs_upgrade("not a hash"));
    }

    #[test]
    fn well_formed_hashes_are_told_from_other_strings() {
        let salt_and_hash = "DCq7YPn5Rq63x1Lad4cll.TV4S6ytwfsfvkgY8jIucDrjc8deX1s.";
        for variant in ["2a", "2b", "2x", "2y"] {
            assert!(is_bcrypt_hash(&format!("${variant}$06${salt_and_hash}")));
        }
        for not_one in [
            format!("$2b$03${salt_and_hash}"),
            format!("$2b$32${salt_and_hash}"),
            format!("$2b$06${salt_and_hash}x"),
            format!("$2b$06${}", &salt_and_hash[1..]),
            format!("$2b$06${}", salt_and_hash.replace('.', "!")),
            "secret123".into(),
            String::new(),
        ] {
            assert!(!is_bcrypt_hash(&not_one), "{not_one}");
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_failures_are_false() {
        let hasher = PasswordHasher::new(4);
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$2"));
        assert!(hasher
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!hasher
            .verify("wrong horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!hasher.verify("correct horse".into(), None).await.unwrap());
        assert!(!hasher
            .verify("x".into(), Some("not a hash".into()))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn abandoned_jobs_are_skipped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hasher = Arc::new(PasswordHasher::new(4));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Occupy every hashing thread until released.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocked = Arc::new(Mutex::new(blocked));
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut holders = Vec::new();
        for _ in 0..threads {
            let (hasher, blocked, started) = (hasher.clone(), blocked.clone(), started.clone());
            holders.push(tokio::spawn(async move {
                hasher
                    .run(move || {
                        let _ = started.send(());
                        let _ = blocked.lock().map(|b| b.recv());
                    })
                    .await
            }));
        }
        for _ in 0..threads {
            running.recv().await.unwrap();
        }
        // Queue jobs whose callers then give up.
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..8 {
            let ran = ran.clone();
            let abandoned = hasher.run(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), abandoned).await;
        }
        for _ in 0..threads {
            release.send(()).unwrap();
        }
        for holder in holders {
            holder.await.unwrap().unwrap();
        }
        // A job queued after the abandoned ones has run, so they were reached.
        hasher.run(|| ()).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_over_long_password_never_matches_its_truncation() {
        let hasher = PasswordHasher::new(4);
        let seventy_two = "a".repeat(72);
        let hash = hasher.hash(seventy_two.clone()).await.unwrap();
        assert!(hasher
            .verify(seventy_two.clone(), Some(hash.clone()))
            .await
            .unwrap());
        // bcrypt alone would accept this: it reads only the first 72 bytes.
        let longer = format!("{seventy_two}b");
        assert!(!hasher.verify(longer, Some(hash)).await.unwrap());
    }

    #[test]
    fn only_a_higher_priority_is_lowered() {
        assert!(should_lower(-5));
        assert!(should_lower(0));
        assert!(should_lower(HASHING_NICE - 1));
        assert!(!should_lower(HASHING_NICE));
        assert!(!should_lower(19));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_at_a_lower_priority() {
        // SAFETY: reads the calling thread's nice value; no pointers.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = nice();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Start this thread at nice 0 where allowed (root, or a test run
            // at nice 0 already), so the test can see the change even when
            // the test runner itself runs at nice 10 or more.
            // SAFETY: as above; acts on the calling thread only.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
            let start = nice();
            lower_thread_priority();
            let _ = sender.send((start, nice()));
        });
        let (start, lowered) = receiver.recv().unwrap();
        assert_eq!(lowered, start.max(HASHING_NICE), "started at {start}");
        if start >= HASHING_NICE {
            eprintln!("note: ran at nice {start}; only `should_lower` was checked");
        }
        // Only the hashing thread was lowered, not this one.
        assert_eq!(nice(), before);
    }
}
