//! The rules of the product, free of IO frameworks: users and their input
//! rules, password hashing, tokens and their signing keys, sessions and
//! refresh tokens, login throttling, timestamps as text.
//!
//! Nothing here names hyper or sled; status codes belong to `http`, storage to
//! `store`.

pub mod audit;
pub mod mail_token;
pub mod password;
pub mod session;
pub mod signing;
pub mod throttle;
pub mod time;
pub mod token;
pub mod user;
mod yielding_bcrypt;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch: the clock of every timestamp we store or sign.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
