//! Throttling: failed logins counted per (email, client address) and per
//! client address, and registrations and mail-sending requests per client
//! address, over a sliding
//! window, in bounded memory ([`LoginThrottle`], the sled store's); and the
//! keys under which a shared store counts the same things ([`SharedKeys`]).
//!
//! Each key keeps the times of at most `limit` recent failures, and each table
//! keeps at most a fixed number of keys, evicting the least recently used; so
//! memory stays bounded whatever emails or addresses an attacker sends. Keys
//! are keyed hashes of the email and address, never the strings themselves.
//!
//! An attempt is counted as a failure when it *starts* ([`LoginThrottle::begin`])
//! and forgiven when it succeeds, so a burst of concurrent guesses cannot slip
//! past the limit while their bcrypt verifications are still running.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use lru::LruCache;
use sha2::Sha256;

/// Most (email, address) pairs tracked at once (about 6 MB at most).
pub const ACCOUNT_KEYS: usize = 50_000;
/// Most client addresses tracked at once (about 5 MB at the default limit).
pub const ADDRESS_KEYS: usize = 10_000;

/// The configured limits (`limits.login_*`, `limits.registrations_per_address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub per_account: u32,
    pub per_address: u32,
    /// Registration requests per address per window, whatever their outcome.
    pub registrations: u32,
    /// `forgot` and `verify/request` requests per address per window.
    pub mail_requests: u32,
    pub window_secs: u64,
}

impl From<&crate::config::LimitSettings> for ThrottleLimits {
    fn from(limits: &crate::config::LimitSettings) -> Self {
        ThrottleLimits {
            per_account: limits.login_failures_per_account,
            per_address: limits.login_failures_per_address,
            registrations: limits.registrations_per_address,
            mail_requests: limits.mail_requests_per_address,
            window_secs: limits.login_window_secs,
        }
    }
}

/// The login must wait this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

pub struct LoginThrottle {
    tables: Mutex<Tables>,
    per_account: usize,
    per_address: usize,
    registrations: usize,
    mail_requests: usize,
    window_secs: u32,
    /// Failure times are seconds since this instant, stored as `u32`.
    epoch: Instant,
    /// Random per process, so nobody can aim hash collisions at a victim's key.
    hash_keys: std::collections::hash_map::RandomState,
}

struct Tables {
    accounts: LruCache<u64, VecDeque<u32>>,
    addresses: LruCache<u64, VecDeque<u32>>,
    /// Registration requests by address (a table of its own: registering
    /// and failing to log in are separate budgets).
    registrations: LruCache<u64, VecDeque<u32>>,
    /// Mail-sending requests by address.
    mail_requests: LruCache<u64, VecDeque<u32>>,
}

impl LoginThrottle {
    pub fn new(limits: ThrottleLimits) -> LoginThrottle {
        Self::with_capacity(limits, ACCOUNT_KEYS, ADDRESS_KEYS)
    }

    pub fn with_capacity(
        limits: ThrottleLimits,
        account_keys: usize,
        address_keys: usize,
    ) -> LoginThrottle {
        let ThrottleLimits {
            per_account,
            per_address,
            registrations,
            mail_requests,
            window_secs,
        } = limits;
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        LoginThrottle {
            tables: Mutex::new(Tables {
                accounts: LruCache::new(cap(account_keys)),
                addresses: LruCache::new(cap(address_keys)),
                registrations: LruCache::new(cap(address_keys)),
                mail_requests: LruCache::new(cap(address_keys)),
            }),
            per_account: per_account.max(1) as usize,
            per_address: per_address.max(1) as usize,
            registrations: registrations.max(1) as usize,
            mail_requests: mail_requests.max(1) as usize,
            window_secs: u32::try_from(window_secs).unwrap_or(u32::MAX),
            epoch: Instant::now(),
            hash_keys: Default::default(),
        }
    }

    /// Starts a login attempt: refused with the wait if either count is at its
    /// limit, otherwise counted as a failure until [`Self::succeeded`].
    pub fn begin(&self, email: &str, addr: IpAddr) -> Result<(), RetryAfter> {
        self.begin_at(email, addr, self.now())
    }

    /// The attempt begun for this pair succeeded: the pair's count is reset and
    /// the address is not charged for it.
    pub fn succeeded(&self, email: &str, addr: IpAddr) {
        let (account, address) = (self.account_key(email, addr), self.address_key(addr));
        let mut tables = self.lock();
        tables.accounts.pop(&account);
        if let Some(times) = tables.addresses.peek_mut(&address) {
            times.pop_back();
        }
    }

    /// Counts a registration request from `addr`: refused with the wait if
    /// the address is at its limit. Never forgiven, whatever the outcome.
    pub fn count_registration(&self, addr: IpAddr) -> Result<(), RetryAfter> {
        self.count_registration_at(addr, self.now())
    }

    /// Counts a mail-sending request (`forgot`, `verify/request`) from
    /// `addr`, for known and unknown addresses alike: refused with the wait
    /// if the address is at its limit.
    pub fn count_mail_request(&self, addr: IpAddr) -> Result<(), RetryAfter> {
        let key = self.hash_keys.hash_one((3u8, addr));
        let now = self.now();
        let mut tables = self.lock();
        let table = &mut tables.mail_requests;
        if let Some(seconds) = wait(table, key, self.mail_requests, now, self.window_secs) {
            return Err(RetryAfter(seconds));
        }
        record(table, key, self.mail_requests, now);
        Ok(())
    }

    /// Keys tracked in (accounts, addresses); bounded by the capacities.
    pub fn len(&self) -> (usize, usize) {
        let tables = self.lock();
        (tables.accounts.len(), tables.addresses.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    fn begin_at(&self, email: &str, addr: IpAddr, now: u32) -> Result<(), RetryAfter> {
        let (account, address) = (self.account_key(email, addr), self.address_key(addr));
        let window = self.window_secs;
        let mut tables = self.lock();
        let Tables {
            accounts,
            addresses,
            ..
        } = &mut *tables;
        let account_wait = wait(accounts, account, self.per_account, now, window);
        let address_wait = wait(addresses, address, self.per_address, now, window);
        if let Some(seconds) = account_wait.max(address_wait) {
            return Err(RetryAfter(seconds));
        }
        record(accounts, account, self.per_account, now);
        record(addresses, address, self.per_address, now);
        Ok(())
    }

    fn count_registration_at(&self, addr: IpAddr, now: u32) -> Result<(), RetryAfter> {
        let key = self.hash_keys.hash_one((2u8, addr));
        let mut tables = self.lock();
        let table = &mut tables.registrations;
        if let Some(seconds) = wait(table, key, self.registrations, now, self.window_secs) {
            return Err(RetryAfter(seconds));
        }
        record(table, key, self.registrations, now);
        Ok(())
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // The tables hold counters only; a panic elsewhere cannot leave them
        // in a state worse than slightly wrong counts.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn account_key(&self, email: &str, addr: IpAddr) -> u64 {
        self.hash_keys.hash_one((0u8, email, addr))
    }

    fn address_key(&self, addr: IpAddr) -> u64 {
        self.hash_keys.hash_one((1u8, addr))
    }
}

/// The keys under which a store shared by several instances (PostgreSQL)
/// counts attempts: HMAC-SHA256 under a key derived from `auth.secret`.
///
/// Every instance sharing the database shares that secret, so all compute the
/// same key for the same (email, address); a key is 32 bytes whatever the
/// email's length (no index refuses it); and the table holds neither emails
/// nor addresses, nor anything a reader without the secret can test guesses
/// against.
#[derive(Clone)]
pub struct SharedKeys {
    mac: Hmac<Sha256>,
}

/// A shared counter's key.
pub type SharedKey = [u8; 32];

impl SharedKeys {
    pub fn new(secret: &[u8]) -> SharedKeys {
        // A key of its own rather than the signing secret itself, so that no
        // throttle key is ever a MAC that also means something elsewhere.
        let derived: SharedKey = keyed(secret)
            .chain_update(b"gatehouse throttle keys v1")
            .finalize()
            .into_bytes()
            .into();
        SharedKeys {
            mac: keyed(&derived),
        }
    }

    /// The key of failed logins for `email` from `addr`.
    pub fn account(&self, email: &str, addr: IpAddr) -> SharedKey {
        self.key(b"account", addr, email.as_bytes())
    }

    /// The key of failed logins from `addr`, whatever the email.
    pub fn address(&self, addr: IpAddr) -> SharedKey {
        self.key(b"address", addr, b"")
    }

    /// The key of registration requests from `addr`.
    pub fn registrations(&self, addr: IpAddr) -> SharedKey {
        self.key(b"registrations", addr, b"")
    }

    /// The key of mail-sending requests from `addr`.
    pub fn mail_requests(&self, addr: IpAddr) -> SharedKey {
        self.key(b"mail_requests", addr, b"")
    }

    fn key(&self, kind: &[u8], addr: IpAddr, rest: &[u8]) -> SharedKey {
        // Unambiguous without escaping: the kind ends at its NUL, the address
        // has a fixed length per family, and the email is whatever follows.
        let mut mac = self.mac.clone();
        mac.update(kind);
        mac.update(&[0]);
        match addr {
            IpAddr::V4(v4) => {
                mac.update(&[4]);
                mac.update(&v4.octets());
            }
            IpAddr::V6(v6) => {
                mac.update(&[6]);
                mac.update(&v6.octets());
            }
        }
        mac.update(rest);
        mac.finalize().into_bytes().into()
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (a long one is hashed first): this
    // cannot fail, and it runs once, at start-up.
    Hmac::new_from_slice(key).expect("HMAC accepts a key of any length")
}

/// Drops failures older than the window; if `limit` remain, the seconds until
/// the oldest leaves it.
fn wait(
    table: &mut LruCache<u64, VecDeque<u32>>,
    key: u64,
    limit: usize,
    now: u32,
    window: u32,
) -> Option<u64> {
    let times = table.peek_mut(&key)?;
    while times
        .front()
        .is_some_and(|&t| now.saturating_sub(t) >= window)
    {
        times.pop_front();
    }
    if times.is_empty() {
        table.pop(&key);
        return None;
    }
    if times.len() < limit {
        return None;
    }
    let oldest = times.front().copied().unwrap_or(now);
    Some(u64::from((oldest + window).saturating_sub(now).max(1)))
}

fn record(table: &mut LruCache<u64, VecDeque<u32>>, key: u64, limit: usize, now: u32) {
    let times = table.get_or_insert_mut(key, || VecDeque::with_capacity(limit.min(16)));
    times.push_back(now);
    while times.len() > limit {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_account: u32, per_address: u32, window_secs: u64) -> ThrottleLimits {
        ThrottleLimits {
            per_account,
            per_address,
            registrations: 3,
            mail_requests: 3,
            window_secs,
        }
    }

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_limit_blocks_until_the_oldest_failure_leaves_the_window() {
        let t = LoginThrottle::new(limits(3, 100, 60));
        for now in [0, 10, 20] {
            assert_eq!(t.begin_at("a@x.io", ADDR, now), Ok(()));
        }
        assert_eq!(t.begin_at("a@x.io", ADDR, 21), Err(RetryAfter(39)));
        // Other emails and other addresses are not affected.
        assert_eq!(t.begin_at("b@x.io", ADDR, 21), Ok(()));
        assert_eq!(t.begin_at("a@x.io", OTHER, 21), Ok(()));
        assert_eq!(t.begin_at("a@x.io", ADDR, 59), Err(RetryAfter(1)));
        assert_eq!(t.begin_at("a@x.io", ADDR, 60), Ok(()));
    }

    #[test]
    fn success_resets_the_account_and_does_not_charge_the_address() {
        let t = LoginThrottle::new(limits(2, 3, 60));
        t.begin_at("a@x.io", ADDR, 0).unwrap();
        t.begin_at("a@x.io", ADDR, 0).unwrap();
        t.succeeded("a@x.io", ADDR);
        t.begin_at("a@x.io", ADDR, 1).unwrap();
        t.begin_at("b@x.io", ADDR, 1).unwrap();
        // Address count: 2 failures + 1 in flight = 3 → the next is refused.
        assert!(t.begin_at("c@x.io", ADDR, 1).is_err());
    }

    #[test]
    fn the_address_limit_spans_emails() {
        let t = LoginThrottle::new(limits(5, 4, 60));
        for i in 0..4 {
            t.begin_at(&format!("{i}@x.io"), ADDR, 0).unwrap();
        }
        assert_eq!(t.begin_at("new@x.io", ADDR, 0), Err(RetryAfter(60)));
    }

    #[test]
    fn memory_stays_bounded_whatever_emails_arrive() {
        let t = LoginThrottle::with_capacity(limits(5, 1_000_000, 900), 1_000, 50);
        for i in 0..100_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(i));
            let _ = t.begin_at(&format!("victim{i}@example.com"), addr, 0);
        }
        assert_eq!(t.len(), (1_000, 50));
        // Each key holds at most `limit` times, however many failures it saw.
        for _ in 0..1_000 {
            let _ = t.begin_at("one@example.com", ADDR, 0);
        }
        let tables = t.lock();
        assert!(tables.accounts.iter().all(|(_, times)| times.len() <= 5));
    }

    #[test]
    fn registrations_are_counted_per_address_whatever_their_outcome() {
        let t = LoginThrottle::new(limits(5, 100, 60));
        for now in [0, 1, 2] {
            assert_eq!(t.count_registration_at(ADDR, now), Ok(()));
        }
        assert_eq!(t.count_registration_at(ADDR, 3), Err(RetryAfter(57)));
        assert_eq!(t.count_registration_at(OTHER, 3), Ok(()));
        // Logins from the address are a separate budget.
        assert_eq!(t.begin_at("a@x.io", ADDR, 3), Ok(()));
        assert_eq!(t.count_registration_at(ADDR, 60), Ok(()));
    }

    #[test]
    fn shared_keys_agree_across_instances_and_differ_by_secret_and_kind() {
        let secret = b"a-secret-of-more-than-thirty-two-bytes";
        let (one, two) = (SharedKeys::new(secret), SharedKeys::new(secret));
        let long = "x".repeat(10_000) + "@example.com";
        assert_eq!(one.account(&long, ADDR), two.account(&long, ADDR));
        assert_ne!(one.account("a@x.io", ADDR), one.account("a@x.io", OTHER));
        assert_ne!(one.address(ADDR), one.registrations(ADDR));
        assert_ne!(one.address(ADDR), one.account("", ADDR));
        let other = SharedKeys::new(b"another-secret-of-more-than-32-bytes!!");
        assert_ne!(one.address(ADDR), other.address(ADDR));
    }
}
