//! Sessions and their refresh tokens: what a session is, when it is alive,
//! and how refresh tokens are made, recognized and classified on use.
//!
//! A session starts at register, login or password change and ends when it
//! is logged out, revoked, reused, expired (absolute or idle), or when its
//! user's password changes (a session remembers the password version it was
//! created under, so a change ends every earlier session in the same write
//! that changes the password, without touching them).
//!
//! **Refresh tokens are derived, not stored.** A token names its session and
//! its place in the session's chain (`generation`, bumped by every rotation)
//! and carries a 256-bit HMAC-SHA256 tag over both under [`RefreshKeys`], a
//! key derived from the signing secret (kept outside the store). So:
//! - the store holds only the SHA-256 hash of the current token (to compare),
//!   never its text, and a copy of the database cannot mint or replay one;
//! - during the reuse window the server can hand out the session's current
//!   token again to a second tab presenting the one just spent, on any
//!   instance, by deriving it (API.md asks for exactly that);
//! - a spent token of any age is *recognized* as one of the session's own
//!   (its tag verifies, its generation is behind), which is what reuse
//!   detection needs, while made-up text (say, a known `sid` with a random
//!   tail) is only "unknown" and cannot end anyone's session.
//!
//! This module decides; `store/` keeps sessions and makes rotation atomic;
//! `api/sessions.rs` speaks HTTP. Nothing here does IO.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::user::Timestamp;
use crate::config::AuthSettings;

/// Spent tokens whose reuse window a session remembers, at most: more
/// rotations than this within one window are no second tab, and an older
/// token presented then is treated as reuse.
pub const REMEMBERED_SPENDS: usize = 16;

/// The longest `user_agent` kept, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// A session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// A UUIDv7, lowercase and hyphenated: the `sid` claim. Time-ordered,
    /// so sessions started in one second still list newest first.
    pub id: String,
    pub user_id: String,
    pub created_at: u64,
    /// The last refresh (`created_at` until the first).
    pub last_used_at: u64,
    /// `created_at` + `auth.session_ttl_secs`: the absolute end.
    pub expires_at: u64,
    pub user_agent: String,
    pub ip: String,
    /// The user's password version when the session started: a password
    /// change ends every session created under an earlier one.
    pub password_version: u64,
    /// The current refresh token's place in the chain.
    pub generation: u64,
    /// When each of the last few tokens was spent, oldest first: the last
    /// entry is when generation − 1 was spent (and `generation` made), the
    /// one before it generation − 2's, and so on. Each spent token has a
    /// reuse window of its own, counted from its rotation; entries whose
    /// window has closed are dropped at the next rotation, and at most
    /// [`REMEMBERED_SPENDS`] are kept.
    #[serde(default)]
    pub spent_at: Vec<u64>,
    /// SHA-256 of the current refresh token.
    #[serde(with = "hex_bytes")]
    pub refresh_hash: [u8; 32],
}

/// The session settings (`auth.session_*`, `auth.refresh_reuse_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub ttl_secs: u64,
    pub idle_secs: u64,
    pub reuse_secs: u64,
}

impl From<&AuthSettings> for SessionPolicy {
    fn from(auth: &AuthSettings) -> SessionPolicy {
        SessionPolicy {
            ttl_secs: auth.session_ttl_secs,
            idle_secs: auth.session_idle_secs,
            reuse_secs: auth.refresh_reuse_secs,
        }
    }
}

impl Session {
    /// A new session of `user_id`, with its first refresh token.
    pub fn start(
        keys: &RefreshKeys,
        policy: &SessionPolicy,
        user_id: &str,
        password_version: u64,
        client: Client,
        now: u64,
    ) -> (Session, String) {
        let id = Uuid::now_v7();
        let token = keys.token(id, 0);
        let session = Session {
            id: id.hyphenated().to_string(),
            user_id: user_id.to_string(),
            created_at: now,
            last_used_at: now,
            expires_at: now.saturating_add(policy.ttl_secs),
            user_agent: client.user_agent,
            ip: client.ip,
            password_version,
            generation: 0,
            spent_at: Vec::new(),
            refresh_hash: hash_token(&token),
        };
        (session, token)
    }

    /// Whether the session is alive at `now` for a user whose password
    /// version is `password_version`: neither past its absolute end, nor
    /// idle too long, nor from before a password change. (Sessions ended
    /// any other way are deleted.)
    pub fn is_alive(&self, policy: &SessionPolicy, password_version: u64, now: u64) -> bool {
        now < self.expires_at
            && now < self.last_used_at.saturating_add(policy.idle_secs)
            && self.password_version == password_version
    }

    /// The session after rotating to the next refresh token at `now`, and
    /// that token.
    pub fn rotated(
        &self,
        keys: &RefreshKeys,
        policy: &SessionPolicy,
        now: u64,
    ) -> Result<(Session, String), ParseError> {
        let id = Uuid::try_parse(&self.id).map_err(|_| ParseError)?;
        let generation = self.generation + 1;
        let token = keys.token(id, generation);
        let mut spent_at: Vec<u64> = self
            .spent_at
            .iter()
            .copied()
            .filter(|&at| now <= at.saturating_add(policy.reuse_secs))
            .collect();
        spent_at.push(now);
        let excess = spent_at.len().saturating_sub(REMEMBERED_SPENDS);
        spent_at.drain(..excess);
        let next = Session {
            generation,
            spent_at,
            last_used_at: now,
            refresh_hash: hash_token(&token),
            ..self.clone()
        };
        Ok((next, token))
    }

    /// What presenting a refresh token means for this (alive) session at
    /// `now`: a spent one within `policy.reuse_secs` of its own rotation is
    /// `JustSpent`, however many rotations came after it in that time.
    pub fn classify(
        &self,
        presented: &PresentedToken,
        policy: &SessionPolicy,
        now: u64,
    ) -> Presentation {
        if presented.generation < self.generation {
            // How many rotations ago it was spent: 1 for the last one.
            let back = self.generation - presented.generation;
            let spent_at = usize::try_from(back)
                .ok()
                .and_then(|back| self.spent_at.len().checked_sub(back))
                .map(|i| self.spent_at[i]);
            match spent_at {
                Some(at) if now <= at.saturating_add(policy.reuse_secs) => Presentation::JustSpent,
                _ => Presentation::Reused,
            }
        } else if presented.generation == self.generation && presented.hash == self.refresh_hash {
            Presentation::Current
        } else {
            // Ahead of the chain, or the current generation with another
            // hash: not a token this session issued as it now stands (a
            // database restored from an older copy, say). Refused, but not
            // treated as reuse.
            Presentation::Unknown
        }
    }

    /// The session's current refresh token, derived again.
    pub fn current_token(&self, keys: &RefreshKeys) -> Result<String, ParseError> {
        let id = Uuid::try_parse(&self.id).map_err(|_| ParseError)?;
        Ok(keys.token(id, self.generation))
    }

    /// The listing item (`current`: the caller's own session).
    pub fn view(&self, current: bool) -> SessionView<'_> {
        SessionView {
            id: &self.id,
            created_at: Timestamp(self.created_at),
            last_used_at: Timestamp(self.last_used_at),
            expires_at: Timestamp(self.expires_at),
            user_agent: &self.user_agent,
            ip: &self.ip,
            current,
        }
    }
}

/// What a refresh token presented for an alive session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presentation {
    /// The current token: rotate.
    Current,
    /// The one spent by the last rotation, within the reuse window (a second
    /// tab): answer the current token again.
    JustSpent,
    /// An older token, or the last one after the window: end the session.
    Reused,
    /// Not a token of this session as it stands.
    Unknown,
}

/// The client a session was started by, as the listing shows it.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub user_agent: String,
    pub ip: String,
}

impl Client {
    /// `user_agent` cut to [`MAX_USER_AGENT_CHARS`] characters, control
    /// characters removed (it is shown to users and written to databases).
    pub fn new(user_agent: &str, ip: String) -> Client {
        Client {
            user_agent: user_agent
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_USER_AGENT_CHARS)
                .collect(),
            ip,
        }
    }
}

/// The session listing item of the contract.
#[derive(Debug, Serialize)]
pub struct SessionView<'s> {
    pub id: &'s str,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub user_agent: &'s str,
    pub ip: &'s str,
    pub current: bool,
}

/// A refresh token whose tag verified: which session and generation it
/// names, and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken {
    pub session_id: String,
    pub generation: u64,
    pub hash: [u8; 32],
}

/// Not a refresh token we issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError;

/// The refresh-token keys, derived from the signing secret (which makes new
/// tokens) and from `auth.previous_secrets` (whose tokens are still taken,
/// so rotating the secret does not end every session).
#[derive(Clone)]
pub struct RefreshKeys {
    mac: Hmac<Sha256>,
    previous: Vec<Hmac<Sha256>>,
}

/// Version byte, session id, generation, tag.
const TOKEN_BYTES: usize = 1 + 16 + 8 + 32;
/// base64url without padding of [`TOKEN_BYTES`].
pub const TOKEN_CHARS: usize = (TOKEN_BYTES * 4).div_ceil(3);
const TOKEN_VERSION: u8 = 1;

impl RefreshKeys {
    pub fn new(secret: &[u8]) -> RefreshKeys {
        RefreshKeys::with_previous(secret, &[])
    }

    pub fn with_previous(secret: &[u8], previous: &[&[u8]]) -> RefreshKeys {
        // A key of its own, so that no refresh tag is ever a MAC that also
        // means something elsewhere (the signing key signs JWTs; the
        // throttle's keys name counters).
        let derive = |secret: &[u8]| {
            let derived = keyed(secret)
                .chain_update(b"gatehouse refresh tokens v1")
                .finalize()
                .into_bytes();
            keyed(&derived)
        };
        RefreshKeys {
            mac: derive(secret),
            previous: previous.iter().map(|s| derive(s)).collect(),
        }
    }

    fn tag(&self, body: &[u8]) -> Hmac<Sha256> {
        self.mac.clone().chain_update(body)
    }

    /// The token of `session`'s `generation`: URL-safe text, the same on
    /// every instance holding the same secret.
    fn token(&self, session: Uuid, generation: u64) -> String {
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[0] = TOKEN_VERSION;
        bytes[1..17].copy_from_slice(session.as_bytes());
        bytes[17..25].copy_from_slice(&generation.to_be_bytes());
        let tag = self.tag(&bytes[..25]).finalize().into_bytes();
        bytes[25..].copy_from_slice(&tag);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The session and generation `text` names, if it is a token made with
    /// this key (the tag is compared in constant time). Anything else, of
    /// any length, is a `ParseError`, decided before any store is asked.
    pub fn parse(&self, text: &str) -> Result<PresentedToken, ParseError> {
        if text.len() != TOKEN_CHARS {
            return Err(ParseError);
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(text, &mut bytes)
            .map_err(|_| ParseError)?;
        if decoded != TOKEN_BYTES || bytes[0] != TOKEN_VERSION {
            return Err(ParseError);
        }
        let body = &bytes[..25];
        let tagged = |mac: &Hmac<Sha256>| {
            mac.clone()
                .chain_update(body)
                .verify_slice(&bytes[25..])
                .is_ok()
        };
        if !tagged(&self.mac) && !self.previous.iter().any(tagged) {
            return Err(ParseError);
        }
        let session = Uuid::from_slice(&bytes[1..17]).map_err(|_| ParseError)?;
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&bytes[17..25]);
        Ok(PresentedToken {
            session_id: session.hyphenated().to_string(),
            generation: u64::from_be_bytes(generation),
            hash: hash_token(text),
        })
    }
}

/// What the store keeps of a refresh token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// `[u8; 32]` as lowercase hex in JSON records.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(64);
        for byte in bytes {
            text.push_str(&format!("{byte:02x}"));
        }
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut bytes = [0u8; 32];
        if text.len() != 64 {
            return Err(serde::de::Error::custom("a hash is 64 hex digits"));
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| serde::de::Error::custom("a hash is 64 hex digits"))?;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SessionPolicy = SessionPolicy {
        ttl_secs: 1000,
        idle_secs: 100,
        reuse_secs: 10,
    };

    fn start(keys: &RefreshKeys) -> (Session, String) {
        Session::start(
            keys,
            &POLICY,
            "u",
            3,
            Client::new("ua", "1.2.3.4".into()),
            50,
        )
    }

    #[test]
    fn tokens_name_their_session_and_generation_and_nothing_else_parses() {
        let keys = RefreshKeys::new(b"secret secret secret secret secret");
        let (session, token) = start(&keys);
        assert_eq!(token.len(), TOKEN_CHARS);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let presented = keys.parse(&token).unwrap();
        assert_eq!(presented.session_id, session.id);
        assert_eq!(presented.generation, 0);
        assert_eq!(presented.hash, session.refresh_hash);
        let other = RefreshKeys::new(b"another secret another secret 1234");
        assert_eq!(other.parse(&token), Err(ParseError), "another key's tag");
        let rotated = RefreshKeys::with_previous(
            b"another secret another secret 1234",
            &[b"secret secret secret secret secret"],
        );
        assert_eq!(
            rotated.parse(&token).unwrap().session_id,
            session.id,
            "a previous secret's"
        );
        assert_ne!(rotated.token(Uuid::nil(), 0), keys.token(Uuid::nil(), 0));
        let mut forged = token.clone().into_bytes();
        forged[30] = if forged[30] == b'A' { b'B' } else { b'A' };
        assert!(keys.parse(std::str::from_utf8(&forged).unwrap()).is_err());
        for bad in [
            "",
            "x",
            &"A".repeat(TOKEN_CHARS),
            &"é".repeat(40),
            &token[1..],
        ] {
            assert_eq!(keys.parse(bad), Err(ParseError), "{bad:?}");
        }
    }

    #[test]
    fn rotation_and_the_reuse_window() {
        let keys = RefreshKeys::new(b"secret secret secret secret secret");
        let (s0, t0) = start(&keys);
        let p0 = keys.parse(&t0).unwrap();
        assert_eq!(s0.classify(&p0, &POLICY, 60), Presentation::Current);
        let (s1, t1) = s0.rotated(&keys, &POLICY, 60).unwrap();
        let p1 = keys.parse(&t1).unwrap();
        assert_eq!(p1.generation, 1);
        assert_eq!(s1.current_token(&keys).unwrap(), t1);
        assert_eq!(s1.classify(&p1, &POLICY, 61), Presentation::Current);
        assert_eq!(s1.classify(&p0, &POLICY, 70), Presentation::JustSpent);
        assert_eq!(s1.classify(&p0, &POLICY, 71), Presentation::Reused);
        // Each spent token's window is its own: after a second rotation,
        // generation 0 (spent at 60) is still just spent until 70, and
        // generation 1 (spent at 65) until 75.
        let (s2, _) = s1.rotated(&keys, &POLICY, 65).unwrap();
        assert_eq!(s2.spent_at, [60, 65]);
        assert_eq!(s2.classify(&p0, &POLICY, 70), Presentation::JustSpent);
        assert_eq!(s2.classify(&p0, &POLICY, 71), Presentation::Reused);
        assert_eq!(s2.classify(&p1, &POLICY, 75), Presentation::JustSpent);
        assert_eq!(s2.classify(&p1, &POLICY, 76), Presentation::Reused);
        assert_eq!(s0.classify(&p1, &POLICY, 65), Presentation::Unknown);
        // Closed windows are forgotten at the next rotation, and at most
        // REMEMBERED_SPENDS are kept.
        let (s3, _) = s2.rotated(&keys, &POLICY, 74).unwrap();
        assert_eq!(s3.spent_at, [65, 74]);
        assert_eq!(s3.classify(&p0, &POLICY, 74), Presentation::Reused);
        let mut s = s3;
        for _ in 0..20 {
            s = s.rotated(&keys, &POLICY, 80).unwrap().0;
        }
        assert_eq!(s.spent_at.len(), REMEMBERED_SPENDS);
        assert_eq!(s.classify(&p1, &POLICY, 80), Presentation::Reused);
    }

    #[test]
    fn sessions_end_at_their_absolute_and_idle_limits_and_on_password_change() {
        let keys = RefreshKeys::new(b"secret secret secret secret secret");
        let (s, _) = start(&keys);
        assert!(s.is_alive(&POLICY, 3, 149));
        assert!(!s.is_alive(&POLICY, 3, 150), "idle");
        assert!(!s.is_alive(&POLICY, 4, 60), "password changed");
        let (s, _) = s.rotated(&keys, &POLICY, 140).unwrap();
        assert!(s.is_alive(&POLICY, 3, 239));
        let late = Session {
            last_used_at: 1040,
            ..s
        };
        assert!(!late.is_alive(&POLICY, 3, 1050), "absolute");
    }

    #[test]
    fn records_round_trip_and_user_agents_are_bounded() {
        let keys = RefreshKeys::new(b"secret secret secret secret secret");
        let (s, _) = start(&keys);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), s);
        let client = Client::new(&format!("a\u{7}b{}", "x".repeat(500)), String::new());
        assert_eq!(client.user_agent.chars().count(), MAX_USER_AGENT_CHARS);
        assert!(client.user_agent.starts_with("abx"));
    }
}
