//! Mail tokens: what a password-reset or verification link carries, and the
//! record a store keeps of the last one of each kind sent to a user.
//!
//! A token is `base64url(kind ‖ user id ‖ 32 random bytes)`: 256 bits from
//! the OS, and the bytes before them say whose record to look at, so no index
//! by token is needed. The user id is the 16 bytes of a UUID (66 characters
//! in all), or, for a user imported from MongoDB, the 12 bytes of its
//! ObjectId, marked by [`OBJECT_ID`] in the kind byte (60 characters). The store keeps only SHA-256 of the token. One record
//! per (user, kind): a newer mail replaces the older token (supersession),
//! using one clears its hash (single use), and the record remembers the
//! address and password version it was issued under, so an email change
//! voids a pending token and a password change voids a reset token. The
//! record outlives its use for `sent_at`, which the resend limit counts from.
//!
//! This module decides what a token is and when a record accepts one. It must
//! not talk to a store or a mail server.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::user::{is_user_id, User};

/// What a mail token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailTokenKind {
    Reset,
    Verify,
}

impl MailTokenKind {
    /// The token's first byte, and the kind's number in the stores.
    pub fn code(self) -> u8 {
        match self {
            MailTokenKind::Reset => 1,
            MailTokenKind::Verify => 2,
        }
    }
}

const RANDOM_BYTES: usize = 32;
/// Set in the kind byte when the user id is an ObjectId (12 bytes).
const OBJECT_ID: u8 = 0x10;

/// A user id as the token carries it: its bytes, and the kind byte's mark.
fn id_bytes(id: &str) -> Option<(Vec<u8>, u8)> {
    if !is_user_id(id) {
        return None;
    }
    if id.len() == 24 {
        let bytes = (0..12)
            .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        return Some((bytes, OBJECT_ID));
    }
    Some((Uuid::try_parse(id).ok()?.as_bytes().to_vec(), 0))
}

/// The last token of one kind sent to one user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingToken {
    /// The address the mail went to; the token works only while it is the
    /// account's address.
    pub email: String,
    /// SHA-256 of the token; `None` once it was used.
    pub token_hash: Option<[u8; 32]>,
    /// The user's password version when it was issued (a reset token is
    /// void after any password change).
    pub password_version: u64,
    pub sent_at: u64,
    pub expires_at: u64,
}

impl fmt::Debug for PendingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingToken")
            .field("sent_at", &self.sent_at)
            .field("expires_at", &self.expires_at)
            .field("used", &self.token_hash.is_none())
            .finish_non_exhaustive()
    }
}

/// A token as a client presented it, parsed: whose record, and its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedMailToken {
    pub kind: MailTokenKind,
    pub user_id: String,
    pub hash: [u8; 32],
}

impl fmt::Debug for PresentedMailToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedMailToken")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A new token of `kind` for `user`, valid `ttl_secs` from `now`: its text
/// (for the mail only) and the record to store.
pub fn issue(
    kind: MailTokenKind,
    user: &User,
    now: u64,
    ttl_secs: u64,
) -> Result<(String, PendingToken), getrandom::Error> {
    // Every stored id has one of the two shapes (the stores refuse others).
    let (id, mark) = id_bytes(&user.id).unwrap_or((vec![0; 16], 0));
    let mut bytes = Vec::with_capacity(1 + id.len() + RANDOM_BYTES);
    bytes.push(kind.code() | mark);
    bytes.extend_from_slice(&id);
    let start = bytes.len();
    bytes.resize(start + RANDOM_BYTES, 0);
    getrandom::fill(&mut bytes[start..])?;
    let text = URL_SAFE_NO_PAD.encode(&bytes);
    let record = PendingToken {
        email: user.email.clone(),
        token_hash: Some(hash(&text)),
        password_version: user.password_version,
        sent_at: now,
        expires_at: now.saturating_add(ttl_secs),
    };
    Ok((text, record))
}

/// Parses a presented token expected to be of `kind`; `None` for anything
/// that is not one (wrong length, alphabet or kind).
pub fn parse(text: &str, kind: MailTokenKind) -> Option<PresentedMailToken> {
    // Base64 without padding of 1 + 16 + 32 bytes (66 characters) or of
    // 1 + 12 + 32 (60).
    let (mark, id_len) = match text.len() {
        66 => (0, 16),
        60 => (OBJECT_ID, 12),
        _ => return None,
    };
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    if bytes.len() != 1 + id_len + RANDOM_BYTES || bytes[0] != kind.code() | mark {
        return None;
    }
    let id = &bytes[1..1 + id_len];
    let user_id = if id_len == 16 {
        Uuid::from_slice(id).ok()?.hyphenated().to_string()
    } else {
        id.iter().map(|b| format!("{b:02x}")).collect()
    };
    Some(PresentedMailToken {
        kind,
        user_id,
        hash: hash(text),
    })
}

fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl PendingToken {
    /// Whether `presented` is this record's unused, unexpired token, for
    /// `user` as it is now: same address, and (for a reset) same password.
    pub fn accepts(&self, presented: &PresentedMailToken, user: &User, now: u64) -> bool {
        let Some(stored) = &self.token_hash else {
            return false;
        };
        // Compared without an early exit: the time says nothing of how much
        // of a guess was right.
        let same = stored
            .iter()
            .zip(presented.hash.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
        same && now < self.expires_at
            && self.email == user.email
            && (presented.kind != MailTokenKind::Reset
                || self.password_version == user.password_version)
    }

    /// Whether a new mail of this kind must wait: one was sent less than
    /// `resend_secs` ago.
    pub fn holds_resend(&self, now: u64, resend_secs: u64) -> bool {
        now < self.sent_at.saturating_add(resend_secs)
    }

    /// This record after its token was used: no token, the rest kept.
    pub fn used(&self) -> PendingToken {
        PendingToken {
            token_hash: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::Role;

    fn user() -> User {
        User::new(
            "Zoë".into(),
            "zoe@example.com".into(),
            Role::User,
            "$2b$04$hash".into(),
            1_000,
        )
    }

    #[test]
    fn a_token_is_accepted_once_for_its_address_password_and_time() {
        let mut user = user();
        let (text, record) = issue(MailTokenKind::Reset, &user, 1_000, 1_800).unwrap();
        assert_eq!(text.len(), 66);
        let presented = parse(&text, MailTokenKind::Reset).unwrap();
        assert_eq!(presented.user_id, user.id);
        assert!(record.accepts(&presented, &user, 1_000));
        assert!(record.accepts(&presented, &user, 2_799));
        assert!(!record.accepts(&presented, &user, 2_800), "expired");
        assert!(!record.used().accepts(&presented, &user, 1_000), "used");
        // Another token of the same user: the hash differs.
        let (other, _) = issue(MailTokenKind::Reset, &user, 1_000, 1_800).unwrap();
        assert_ne!(other, text);
        assert!(!record.accepts(&parse(&other, MailTokenKind::Reset).unwrap(), &user, 1_000));
        // Not the kind asked for.
        assert!(parse(&text, MailTokenKind::Verify).is_none());
        // The address changed, or (for a reset) the password.
        user.password_version += 1;
        assert!(!record.accepts(&presented, &user, 1_000));
        user.password_version -= 1;
        user.email = "zoe.new@example.com".into();
        assert!(!record.accepts(&presented, &user, 1_000));
    }

    #[test]
    fn a_token_names_an_imported_object_id_user_too() {
        let mut user = user();
        user.id = "5f1d7c2e9b1e8a3d4c2b1a09".into();
        for kind in [MailTokenKind::Reset, MailTokenKind::Verify] {
            let (text, record) = issue(kind, &user, 1_000, 60).unwrap();
            assert_eq!(text.len(), 60);
            let presented = parse(&text, kind).unwrap();
            assert_eq!(presented.user_id, user.id);
            assert!(record.accepts(&presented, &user, 1_000));
            let other = if kind == MailTokenKind::Reset {
                MailTokenKind::Verify
            } else {
                MailTokenKind::Reset
            };
            assert!(parse(&text, other).is_none());
        }
        // A UUID user's token with its mark flipped is no token.
        let (text, _) = issue(MailTokenKind::Reset, &super::tests::user(), 0, 60).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        bytes[0] |= OBJECT_ID;
        assert!(parse(&URL_SAFE_NO_PAD.encode(&bytes), MailTokenKind::Reset).is_none());
    }

    #[test]
    fn a_verification_token_outlives_a_password_change_but_not_an_email_change() {
        let mut user = user();
        let (text, record) = issue(MailTokenKind::Verify, &user, 1_000, 60).unwrap();
        let presented = parse(&text, MailTokenKind::Verify).unwrap();
        user.password_version += 1;
        assert!(record.accepts(&presented, &user, 1_000));
        user.email = "else@example.com".into();
        assert!(!record.accepts(&presented, &user, 1_000));
    }

    #[test]
    fn malformed_tokens_are_not_tokens_and_nothing_secret_is_debugged() {
        for text in ["", "abc", &"A".repeat(66), &"A".repeat(67), &"=".repeat(66)] {
            assert!(parse(text, MailTokenKind::Reset).is_none(), "{text}");
        }
        let (text, record) = issue(MailTokenKind::Reset, &user(), 0, 60).unwrap();
        let presented = parse(&text, MailTokenKind::Reset).unwrap();
        for debug in [format!("{record:?}"), format!("{presented:?}")] {
            assert!(!debug.contains(&text) && !debug.contains("hash"), "{debug}");
        }
        assert!(record.holds_resend(59, 60) && !record.holds_resend(60, 60));
    }
}
