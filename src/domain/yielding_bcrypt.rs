//! bcrypt hashing and verification that give the CPU back between rounds.
//!
//! The `bcrypt` crate runs a whole hash (tens of milliseconds at cost 10) in
//! one call. The kernel takes the CPU back from a running thread only at a
//! scheduler tick (4 ms on this project's machines) unless something wakes on
//! that CPU, so a low-priority hashing thread that got the CPU kept it for up
//! to a tick while token checks queued behind it (measured with
//! `perf sched timehist`: 3.95 ms runs). Here the expensive key-expansion loop
//! is our own, over the `blowfish` primitives the `bcrypt` crate itself uses,
//! and it calls `sched_yield` after every round (50-65 µs of work), so a waiting
//! request gets the CPU within a round.
//!
//! What this module owns: the bcrypt rounds and the `$2b$` string format,
//! which unit tests check byte for byte against the `bcrypt` crate. It must
//! not change a hash's meaning: a hash made here verifies with any bcrypt,
//! and any `$2a$`/`$2b$`/`$2x$`/`$2y$` hash verifies here. Length rules
//! (refusing passwords over 72 bytes) belong to the caller, as with `bcrypt`.

use base64::Engine;
use bcrypt::{BcryptError, HashParts, BASE_64};
use blowfish::Blowfish;
use zeroize::Zeroize;

/// bcrypt reads at most this many bytes of a password (with its trailing NUL).
const MAX_KEY_BYTES: usize = 72;
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;

/// The `$2b$` hash of `password` with `salt` at `cost`: the same string as
/// `bcrypt::hash_with_salt(..).format_for_version(Version::TwoB)`.
pub fn hash(password: &[u8], cost: u32, salt: [u8; 16]) -> Result<String, BcryptError> {
    let output = raw_hash(password, cost, &salt)?;
    let mut encoded = format!("$2b${cost:02}$");
    BASE_64.encode_string(salt, &mut encoded);
    BASE_64.encode_string(&output[..23], &mut encoded);
    Ok(encoded)
}

/// True if `password` hashes to `hash` (any bcrypt version prefix); an error
/// if `hash` is not a well-formed bcrypt hash.
pub fn verify(password: &[u8], hash: &str) -> Result<bool, BcryptError> {
    // The `bcrypt` crate's own parser: 60 ASCII bytes, a known prefix,
    // canonical base64 for the salt and the hash.
    let parts: HashParts = hash.parse()?;
    let output = raw_hash(password, parts.get_cost(), &parts.get_salt_raw())?;
    let mut computed = [0u8; 31];
    BASE_64
        .encode_slice(&output[..23], &mut computed)
        .map_err(|_| BcryptError::InvalidHash("hash encoding failed"))?;
    // Constant time: the comparison must not tell how many bytes matched.
    let stored = &hash.as_bytes()[29..];
    let difference = computed
        .iter()
        .zip(stored)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(difference == 0 && stored.len() == computed.len())
}

/// bcrypt's 24 raw output bytes (the encoded hash keeps 23), with the
/// password NUL-terminated and cut at 72 bytes as every bcrypt does.
fn raw_hash(password: &[u8], cost: u32, salt: &[u8; 16]) -> Result<[u8; 24], BcryptError> {
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        return Err(BcryptError::CostNotAllowed(cost));
    }
    let copied = password.len().min(MAX_KEY_BYTES);
    let mut key = [0u8; MAX_KEY_BYTES];
    key[..copied].copy_from_slice(&password[..copied]);
    let used = (copied + 1).min(MAX_KEY_BYTES);

    let mut state = Blowfish::bc_init_state();
    state.salted_expand_key(salt, &key[..used]);
    for _ in 0..1u64 << cost {
        state.bc_expand_key(&key[..used]);
        state.bc_expand_key(salt);
        // Cheap when nothing else waits for this CPU (a syscall that
        // returns at once); otherwise the waiting thread runs now, not at
        // the next tick.
        std::thread::yield_now();
    }
    key.zeroize();

    // "OrpheanBeholderScryDoubt", encrypted 64 times.
    let mut text: [u32; 6] = [
        0x4f72_7068,
        0x6561_6e42,
        0x6568_6f6c,
        0x6465_7253,
        0x6372_7944,
        0x6f75_6274,
    ];
    let mut output = [0u8; 24];
    for pair in 0..3 {
        let (left, right) = (pair * 2, pair * 2 + 1);
        for _ in 0..64 {
            [text[left], text[right]] = state.bc_encrypt([text[left], text[right]]);
        }
        output[left * 4..left * 4 + 4].copy_from_slice(&text[left].to_be_bytes());
        output[right * 4..right * 4 + 4].copy_from_slice(&text[right].to_be_bytes());
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords() -> Vec<Vec<u8>> {
        vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"correct horse battery staple".to_vec(),
            "pässwörd ✓ 密码".as_bytes().to_vec(),
            vec![b'x'; 71],
            vec![b'y'; 72],
            vec![b'z'; 100],
            (0u8..=255).collect(),
        ]
    }

    #[test]
    fn hashes_are_the_bcrypt_crates_byte_for_byte() {
        for (i, password) in passwords().iter().enumerate() {
            for cost in [4, 5] {
                let salt: [u8; 16] = std::array::from_fn(|j| (i * 31 + j * 7 + cost) as u8);
                let ours = hash(password, cost as u32, salt).unwrap();
                let theirs = bcrypt::hash_with_salt(password, cost as u32, salt)
                    .unwrap()
                    .format_for_version(bcrypt::Version::TwoB);
                assert_eq!(ours, theirs, "password {i}, cost {cost}");
            }
        }
    }

    #[test]
    fn verifies_the_bcrypt_crates_hashes_and_rejects_others() {
        for password in passwords() {
            let theirs = bcrypt::hash(&password, 4).unwrap();
            assert!(verify(&password, &theirs).unwrap());
            let mut wrong = password.clone();
            wrong.push(b'!');
            // Beyond 72 bytes a longer password is the same key (the caller
            // refuses those); below, it must not match.
            if password.len() < 71 {
                assert!(!verify(&wrong, &theirs).unwrap());
            }
            // Every version prefix means the same algorithm here.
            for prefix in ["$2a$", "$2y$", "$2x$"] {
                let relabelled = format!("{prefix}{}", &theirs[4..]);
                assert!(verify(&password, &relabelled).unwrap());
            }
        }
    }

    #[test]
    fn known_vector_verifies() {
        // From OpenBSD's bcrypt tests (jBCrypt's TestBCrypt.java).
        let hash = "$2a$06$DCq7YPn5Rq63x1Lad4cll.TV4S6ytwfsfvkgY8jIucDrjc8deX1s.";
        assert!(verify(b"", hash).unwrap());
        assert!(!verify(b"x", hash).unwrap());
    }

    #[test]
    fn a_hash_that_differs_in_its_last_character_does_not_verify() {
        let good = hash(b"secret", 4, [7; 16]).unwrap();
        let mut bad = good.clone();
        let last = bad.pop().unwrap();
        // '.' and 'O' both end in the two padding bits 00, so the result
        // stays canonical base64 and reaches the comparison.
        bad.push(if last == '.' { 'O' } else { '.' });
        assert!(verify(b"secret", &good).unwrap());
        assert!(!verify(b"secret", &bad).unwrap());
    }

    /// Involuntary context switches of the calling thread so far.
    #[cfg(target_os = "linux")]
    fn involuntary_switches() -> i64 {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        usage.ru_nivcsw
    }

    #[cfg(target_os = "linux")]
    fn pin_to_cpu(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it
        // for any CPU the kernel reported; sched_setaffinity reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_waiting_for_the_cpu_gets_it_between_rounds() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Barrier};
        // SAFETY: no arguments; returns the CPU this thread runs on.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap();
        pin_to_cpu(cpu);
        // A thread that always wants this CPU.
        let stop = Arc::new(AtomicBool::new(false));
        let pinned = Arc::new(Barrier::new(2));
        let spinner = {
            let (stop, pinned) = (stop.clone(), pinned.clone());
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                pinned.wait();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        pinned.wait();
        let before = involuntary_switches();
        let cost = 8;
        raw_hash(b"password", cost, &[1; 16]).unwrap();
        let switches = involuntary_switches() - before;
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        // A yield that hands the CPU over counts as an involuntary switch:
        // 95-101 of the 256 rounds ended in one (after the others, the
        // spinner was not yet due to run again). Without the yields the
        // hash lost the CPU only at ticks: 7-8 times.
        let rounds = 1i64 << cost;
        assert!(
            switches >= rounds / 8,
            "{switches} switches in {rounds} rounds"
        );
    }

    #[test]
    fn malformed_hashes_and_costs_are_errors() {
        assert!(verify(b"x", "not a hash").is_err());
        assert!(verify(b"x", &"$2b$04$".repeat(9)[..60]).is_err());
        let cost_99 = hash(b"x", 4, [0; 16]).unwrap().replacen("$04$", "$99$", 1);
        assert!(verify(b"x", &cost_99).is_err());
        assert!(hash(b"x", 3, [0; 16]).is_err());
        assert!(hash(b"x", 32, [0; 16]).is_err());
    }
}
