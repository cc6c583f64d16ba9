//! Access tokens: HS256 JWTs with the tutorial's claims plus the standard ones.
//!
//! Every token names its key in the header's `kid` (a keyed hash of the
//! secret, never the secret). The verifier picks the key by `kid` among the
//! signing secret and `auth.previous_secrets` (accepted, never used to
//! sign), so a secret can be rotated without logging everyone out; a token
//! with an unknown `kid` is refused, and nothing else in the header (`jku`,
//! `jwk`, `x5u`) is ever used to find a key. Tokens from before `kid`
//! existed are tried against each of these HS256 keys.
//!
//! Verification pins HS256, requires `exp`, `iss` and `sub`, checks `nbf` when
//! present, refuses tokens issued in the future, and allows only a few seconds
//! of clock leeway. It says nothing about revocation or the user's existence:
//! the token check in `http::auth` does that against the store.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::user::User;

/// Clock skew we tolerate between the issuing and the verifying machine.
pub const LEEWAY_SECS: u64 = 5;

/// Tokens longer than this are refused before any parsing: ours are ~350 bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user's `_id`.
    pub sub: String,
    /// The user's `_id` again: the tutorial's clients read `id`.
    pub id: String,
    pub iat: u64,
    pub exp: u64,
    /// Random and unique per token; the key of a logout's revocation.
    pub jti: String,
    pub iss: String,
    /// The user's password version at issue time (see `User::password_version`).
    pub pwv: u64,
    /// The session the token belongs to. Tokens issued before sessions
    /// existed have none, and keep their old check until they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Why a token was refused. Clients only ever see one answer; this goes to the
/// debug log.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token expired")]
    Expired,
    #[error("no key has the token's kid")]
    UnknownKey,
    #[error("{0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

pub struct TokenKeys {
    encoding: EncodingKey,
    /// The signing key's `kid`.
    kid: String,
    /// Every key tokens are accepted under, by `kid`: the signing key first,
    /// then the previous secrets.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
    issuer: String,
    ttl_secs: u64,
    /// Tokens that passed the full check recently, by their exact text. A
    /// repeat of the same bytes skips the signature check and the parsing,
    /// which are most of a token check's cost; its expiry is still checked
    /// every time (the only verdict that changes with time: `nbf` and `iat`
    /// only become more valid). Bounded, least recently used out.
    verified: Mutex<LruCache<String, Arc<Claims>>>,
}

/// Tokens remembered as verified (about 2 MB at most).
const VERIFIED_CACHE: usize = 4096;

impl TokenKeys {
    /// `secret` must be non-empty (config enforces 32 bytes or more).
    pub fn new(secret: &[u8], issuer: &str, ttl_secs: u64) -> anyhow::Result<TokenKeys> {
        TokenKeys::with_previous(secret, &[], issuer, ttl_secs)
    }

    /// Signs with `secret`; also accepts tokens signed with `previous`.
    pub fn with_previous(
        secret: &[u8],
        previous: &[&[u8]],
        issuer: &str,
        ttl_secs: u64,
    ) -> anyhow::Result<TokenKeys> {
        let mut decoding = Vec::with_capacity(1 + previous.len());
        for key in std::iter::once(secret).chain(previous.iter().copied()) {
            decoding.push((key_id(key), DecodingKey::from_secret(key)?));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(secret)?,
            kid: key_id(secret),
            decoding,
            validation,
            issuer: issuer.to_string(),
            ttl_secs,
            verified: Mutex::new(LruCache::new(
                NonZeroUsize::new(VERIFIED_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// Seconds an issued token lives (`auth.token_ttl_secs`).
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A token for `user` in `session` (`None` only for tests of tokens
    /// from before sessions).
    pub fn issue(
        &self,
        user: &User,
        session: Option<&str>,
        now: u64,
    ) -> Result<(String, Claims), TokenError> {
        let claims = Claims {
            sub: user.id.clone(),
            id: user.id.clone(),
            iat: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iss: self.issuer.clone(),
            pwv: user.password_version,
            sid: session.map(str::to_string),
        };
        let header = Header {
            kid: Some(self.kid.clone()),
            ..Header::new(Algorithm::HS256)
        };
        let token = encode(&header, &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// The token's claims, shared with the cache of verified tokens.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Claims>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        if let Some(claims) = self.cache().get(token) {
            if claims.exp + LEEWAY_SECS < now {
                return Err(TokenError::Expired);
            }
            return Ok(Arc::clone(claims));
        }
        let claims = match decode_header(token)?.kid {
            Some(kid) => {
                let (_, key) = self
                    .decoding
                    .iter()
                    .find(|(id, _)| *id == kid)
                    .ok_or(TokenError::UnknownKey)?;
                decode::<Claims>(token, key, &self.validation)?.claims
            }
            // Issued before tokens named their key: any of ours (all HS256).
            None => {
                let mut verdict = Err(TokenError::UnknownKey);
                for (_, key) in &self.decoding {
                    verdict = decode::<Claims>(token, key, &self.validation)
                        .map(|data| data.claims)
                        .map_err(TokenError::from);
                    if verdict.is_ok() {
                        break;
                    }
                }
                verdict?
            }
        };
        if claims.iat > now + LEEWAY_SECS {
            return Err(TokenError::IssuedInFuture);
        }
        let claims = Arc::new(claims);
        self.cache().put(token.to_string(), Arc::clone(&claims));
        Ok(claims)
    }

    /// The signing key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Every accepted key's `kid`, the signing key's first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.decoding.iter().map(|(kid, _)| kid.as_str())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<Claims>>> {
        // A cache only: a panic elsewhere cannot leave it worse than stale,
        // and every entry in it did verify.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A secret's `kid`: 16 URL-safe characters of a keyed hash of it, which
/// names the key without revealing anything of it.
pub fn key_id(secret: &[u8]) -> String {
    use base64::Engine;
    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .expect("HMAC accepts any key length")
        .chain_update(b"gatehouse key id v1")
        .finalize()
        .into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::Role;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32], "gatehouse", 3600).unwrap()
    }

    fn user() -> User {
        User::new(
            "M".into(),
            "m@example.com".into(),
            Role::User,
            "h".into(),
            0,
        )
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let (token, claims) = keys().issue(&user(), None, 1_000).unwrap();
        // `verify` checks `exp` against the real clock, so issue near now.
        let now = crate::domain::unix_now();
        let (token2, _) = keys().issue(&user(), None, now).unwrap();
        let verified = keys().verify(&token2, now).unwrap();
        assert_eq!(verified.sub, verified.id);
        assert_eq!(verified.exp, now + 3600);
        assert_eq!(verified.iss, "gatehouse");
        assert!(keys().verify(&token, now).is_err(), "expired long ago");
        assert_ne!(claims.jti, verified.jti);
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let now = crate::domain::unix_now();
        let keys = TokenKeys::new(&[7u8; 32], "gatehouse", 60).unwrap();
        let (token, _) = keys.issue(&user(), None, now).unwrap();
        assert!(keys.verify(&token, now).is_ok());
        assert!(keys.verify(&token, now + 10).is_ok(), "from the cache");
        assert!(matches!(
            keys.verify(&token, now + 60 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        ));
        // A different text (one byte changed) is checked in full.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(keys.verify(&forged, now).is_err());
    }

    #[test]
    fn tokens_name_their_key_and_previous_secrets_still_verify() {
        let now = crate::domain::unix_now();
        let old = keys();
        let (old_token, _) = old.issue(&user(), None, now).unwrap();
        let header = decode_header(&old_token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(old.kid()));
        assert_eq!(old.kid().len(), 16);
        let rotated =
            TokenKeys::with_previous(&[9u8; 32], &[&[7u8; 32]], "gatehouse", 3600).unwrap();
        assert_ne!(rotated.kid(), old.kid());
        assert!(rotated.verify(&old_token, now).is_ok(), "a previous secret");
        let (new_token, _) = rotated.issue(&user(), None, now).unwrap();
        assert_eq!(
            decode_header(&new_token).unwrap().kid.as_deref(),
            Some(rotated.kid())
        );
        assert!(old.verify(&new_token, now).is_err(), "not the old key's");
        let dropped = TokenKeys::new(&[9u8; 32], "gatehouse", 3600).unwrap();
        assert!(matches!(
            dropped.verify(&old_token, now),
            Err(TokenError::UnknownKey)
        ));
    }

    #[test]
    fn other_keys_issuers_and_future_tokens_fail() {
        let now = crate::domain::unix_now();
        let (token, _) = keys().issue(&user(), None, now).unwrap();
        let other_key = TokenKeys::new(&[8u8; 32], "gatehouse", 3600).unwrap();
        assert!(other_key.verify(&token, now).is_err());
        let other_issuer = TokenKeys::new(&[7u8; 32], "someone-else", 3600).unwrap();
        assert!(other_issuer.verify(&token, now).is_err());
        let (future, _) = keys().issue(&user(), None, now + 60).unwrap();
        assert!(matches!(
            keys().verify(&future, now),
            Err(TokenError::IssuedInFuture)
        ));
        assert!(matches!(
            keys().verify(&"a".repeat(MAX_TOKEN_BYTES + 1), now),
            Err(TokenError::TooLong)
        ));
    }
}
