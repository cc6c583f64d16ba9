//! Access tokens: JWTs with the tutorial's claims plus the standard ones,
//! signed with HS256 (`auth.secret`) or, under `auth.algorithm`, with the
//! current key of the asymmetric key set (`domain::signing`, kept in the
//! store and followed by `keyring`).
//!
//! Every token names its key in the header's `kid`. The verifier picks the
//! key by `kid` and accepts only that key's own algorithm (so an HS256 token
//! "signed" with a public key's bytes, or `alg: none`, is refused); a token
//! with an unknown `kid` is refused, and nothing else in the header (`jku`,
//! `jwk`, `x5u`) is ever used to find a key. Accepted are: the signing key,
//! a standby key, previous keys until they retire, and the HS256 keys of
//! `auth.previous_secrets` (never used to sign). Tokens from before `kid`
//! existed are tried against each accepted HS256 key.
//!
//! Verification requires `exp`, `iss` and `sub`, checks `nbf` when present,
//! refuses tokens issued in the future, and allows only a few seconds of
//! clock leeway. It says nothing about revocation or the user's existence:
//! the token check in `http::auth` does that against the store.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, RwLock};

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::signing::{KeyError, KeySet, KeyState, SigningAlgorithm};
use super::time::Rfc3339;
use super::user::User;

/// Clock skew we tolerate between the issuing and the verifying machine.
pub const LEEWAY_SECS: u64 = 5;

/// Tokens longer than this are refused before any parsing: ours are ~350
/// bytes (~500 under RS256).
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
    /// No accepted key has this `kid` (empty for a token without one).
    #[error("no key has the token's kid")]
    UnknownKey(String),
    #[error("{0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// How a key appears in `GET /api/admin/keys`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: &'static str,
    pub state: KeyState,
    /// RFC 3339, as every time in the API.
    pub created_at: Option<String>,
    pub retires_at: Option<String>,
}

pub struct TokenKeys {
    algorithm: SigningAlgorithm,
    /// `auth.secret`'s key: signs under HS256.
    secret: Verifier,
    secret_signer: Arc<Signer>,
    /// `auth.previous_secrets`: accepted, never signing.
    previous_secrets: Vec<Verifier>,
    /// What signs and what is accepted now. Replaced whole (under HS256
    /// never) when the stored key set changes.
    active: RwLock<Arc<Active>>,
    issuer: String,
    ttl_secs: u64,
    /// Tokens that passed the full check recently, by their exact text. A
    /// repeat of the same bytes skips the signature check and the parsing,
    /// which are most of a token check's cost; its expiry (and its key's
    /// retirement) is still checked every time (the only verdicts that change
    /// with time: `nbf` and `iat` only become more valid). Bounded, least
    /// recently used out; emptied when the key set changes.
    verified: Mutex<LruCache<String, Verified>>,
}

#[derive(Clone)]
struct Verified {
    claims: Arc<Claims>,
    /// When the key that signed it stops being accepted.
    retires_at: Option<u64>,
}

struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
}

#[derive(Clone)]
struct Verifier {
    kid: String,
    key: DecodingKey,
    /// Pinned to the key's own algorithm.
    validation: Validation,
    retires_at: Option<u64>,
}

struct Active {
    /// The stored set's version (0 under HS256).
    version: u64,
    signer: Arc<Signer>,
    /// Signing key first.
    verifiers: Vec<Verifier>,
    listing: Vec<KeyInfo>,
    /// `GET /.well-known/jwks.json`'s body.
    jwks: Arc<Vec<u8>>,
}

/// Tokens remembered as verified (about 2 MB at most).
const VERIFIED_CACHE: usize = 4096;

impl TokenKeys {
    /// HS256 with `secret` alone (tests and benchmarks). `secret` must be
    /// non-empty (config enforces 32 bytes or more).
    pub fn new(secret: &[u8], issuer: &str, ttl_secs: u64) -> anyhow::Result<TokenKeys> {
        TokenKeys::with_previous(secret, &[], SigningAlgorithm::HS256, issuer, ttl_secs)
    }

    /// Signs with `secret` under HS256; also accepts tokens signed with
    /// `previous`. Under an asymmetric `algorithm` nothing signs until
    /// [`TokenKeys::install`] is given the stored key set.
    pub fn with_previous(
        secret: &[u8],
        previous: &[&[u8]],
        algorithm: SigningAlgorithm,
        issuer: &str,
        ttl_secs: u64,
    ) -> anyhow::Result<TokenKeys> {
        let hs256 = |key: &[u8]| -> anyhow::Result<Verifier> {
            Ok(Verifier {
                kid: key_id(key),
                key: DecodingKey::from_secret(key)?,
                validation: validation(Algorithm::HS256, issuer),
                retires_at: None,
            })
        };
        let secret_verifier = hs256(secret)?;
        let previous_secrets = previous
            .iter()
            .map(|key| hs256(key))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let secret_signer = Arc::new(Signer {
            kid: secret_verifier.kid.clone(),
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret)?,
        });
        let mut verifiers = vec![secret_verifier.clone()];
        verifiers.extend(previous_secrets.iter().cloned());
        let listing = verifiers
            .iter()
            .enumerate()
            .map(|(i, v)| hs256_info(&v.kid, i == 0))
            .collect();
        let active = Active {
            version: 0,
            signer: Arc::clone(&secret_signer),
            verifiers,
            listing,
            jwks: Arc::new(br#"{"keys":[]}"#.to_vec()),
        };
        Ok(TokenKeys {
            algorithm,
            secret: secret_verifier,
            secret_signer,
            previous_secrets,
            active: RwLock::new(Arc::new(active)),
            issuer: issuer.to_string(),
            ttl_secs,
            verified: Mutex::new(LruCache::new(
                NonZeroUsize::new(VERIFIED_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// `auth.algorithm`.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// Seconds an issued token lives (`auth.token_ttl_secs`).
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// `auth.secret`'s `kid`.
    pub fn secret_kid(&self) -> &str {
        &self.secret.kid
    }

    /// Makes `set` (the stored asymmetric key set) what signs and what is
    /// accepted, unless it is already, and nothing in it retired since.
    /// Returns whether anything changed. Under HS256 it does nothing.
    pub fn install(&self, set: &KeySet, now: u64) -> Result<bool, KeyError> {
        if !self.algorithm.is_asymmetric() {
            return Ok(false);
        }
        let before = self.active();
        let retired = before
            .verifiers
            .iter()
            .any(|v| v.retires_at.is_some_and(|at| at <= now));
        if before.version == set.version && !retired {
            return Ok(false);
        }
        let current = set.current().ok_or_else(|| KeyError::Unusable {
            kid: String::new(),
            reason: "the stored key set has no current key".into(),
        })?;
        let signer = Arc::new(Signer {
            kid: current.kid.clone(),
            alg: current.alg.jwt(),
            key: current.encoding_key()?,
        });
        let mut verifiers = Vec::new();
        let mut listing = Vec::new();
        let mut jwks = Vec::new();
        // Current, standby, then previous keys, the last retired first: the
        // listing's order, and the current key is where most tokens look.
        let mut live: Vec<_> = set.live(now).collect();
        live.sort_by_key(|k| {
            let rank = match k.state {
                KeyState::Current => 0,
                KeyState::Standby => 1,
                KeyState::Previous => 2,
            };
            (rank, std::cmp::Reverse(k.retires_at))
        });
        for key in live {
            if key.alg.is_asymmetric() {
                verifiers.push(Verifier {
                    kid: key.kid.clone(),
                    key: key.decoding_key()?,
                    validation: validation(key.alg.jwt(), &self.issuer),
                    retires_at: key.retires_at,
                });
                jwks.push(key.public_jwk()?);
            } else if key.kid == self.secret.kid {
                // auth.secret's tokens from before the switch to `algorithm`.
                verifiers.push(Verifier {
                    retires_at: key.retires_at,
                    ..self.secret.clone()
                });
            } else {
                // Another secret's: this instance cannot check its tokens.
                continue;
            }
            listing.push(KeyInfo {
                kid: key.kid.clone(),
                alg: key.alg.name(),
                state: key.state,
                created_at: Some(Rfc3339::from_unix(key.created_at).to_string()),
                retires_at: key.retires_at.map(|at| Rfc3339::from_unix(at).to_string()),
            });
        }
        for previous in &self.previous_secrets {
            if verifiers.iter().all(|v| v.kid != previous.kid) {
                verifiers.push(previous.clone());
                listing.push(hs256_info(&previous.kid, false));
            }
        }
        let jwks = serde_json::to_vec(&jsonwebtoken::jwk::JwkSet { keys: jwks })
            .map_err(|e| KeyError::Generation(e.to_string()))?;
        let active = Arc::new(Active {
            version: set.version,
            signer,
            verifiers,
            listing,
            jwks: Arc::new(jwks),
        });
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = active;
        // Claims verified under a key that left the set must be checked again.
        self.cache().clear();
        Ok(true)
    }

    /// The installed key set's version (0 under HS256 or before the first).
    pub fn version(&self) -> u64 {
        self.active().version
    }

    /// True if a key with `kid` is accepted now.
    pub fn knows(&self, kid: &str, now: u64) -> bool {
        self.active()
            .verifiers
            .iter()
            .any(|v| v.kid == kid && v.retires_at.is_none_or(|at| now < at))
    }

    /// The public keys as an RFC 7517 JWK set (`{"keys": []}` under HS256).
    pub fn jwks(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.active().jwks)
    }

    /// Every accepted key, by `kid`, never its bytes: the signing key first.
    pub fn listing(&self) -> Vec<KeyInfo> {
        self.active().listing.clone()
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
        let signer = if self.algorithm.is_asymmetric() {
            Arc::clone(&self.active().signer)
        } else {
            Arc::clone(&self.secret_signer)
        };
        let header = Header {
            kid: Some(signer.kid.clone()),
            ..Header::new(signer.alg)
        };
        let token = encode(&header, &claims, &signer.key)?;
        Ok((token, claims))
    }

    /// The token's claims, shared with the cache of verified tokens.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Claims>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        if let Some(known) = self.cache().get(token) {
            if known.claims.exp + LEEWAY_SECS < now {
                return Err(TokenError::Expired);
            }
            if known.retires_at.is_some_and(|at| at <= now) {
                return Err(TokenError::UnknownKey(String::new()));
            }
            return Ok(Arc::clone(&known.claims));
        }
        let active = self.active();
        let accepted = |v: &&Verifier| v.retires_at.is_none_or(|at| now < at);
        let (claims, retires_at) = match decode_header(token)?.kid {
            Some(kid) => {
                let verifier = active
                    .verifiers
                    .iter()
                    .filter(accepted)
                    .find(|v| v.kid == kid)
                    .ok_or(TokenError::UnknownKey(kid))?;
                let claims = decode::<Claims>(token, &verifier.key, &verifier.validation)?.claims;
                (claims, verifier.retires_at)
            }
            // Issued before tokens named their key: any accepted HS256 key
            // (the validation refuses any other algorithm).
            None => {
                let mut verdict = Err(TokenError::UnknownKey(String::new()));
                let hs256 = active
                    .verifiers
                    .iter()
                    .filter(accepted)
                    .filter(|v| v.validation.algorithms == [Algorithm::HS256]);
                for verifier in hs256 {
                    verdict = decode::<Claims>(token, &verifier.key, &verifier.validation)
                        .map(|data| (data.claims, verifier.retires_at))
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
        let verified = Verified {
            claims: Arc::clone(&claims),
            retires_at,
        };
        self.cache().put(token.to_string(), verified);
        Ok(claims)
    }

    fn active(&self) -> Arc<Active> {
        // Replaced whole under the lock: a panic elsewhere cannot leave it
        // half-written.
        Arc::clone(&self.active.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Verified>> {
        // A cache only: a panic elsewhere cannot leave it worse than stale,
        // and every entry in it did verify.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every token must satisfy, under `alg` only.
fn validation(alg: Algorithm, issuer: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation.set_issuer(&[issuer]);
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.leeway = LEEWAY_SECS;
    validation
}

/// A configured secret in the listing: when it was made is not known, and it
/// retires when the operator drops it.
fn hs256_info(kid: &str, signing: bool) -> KeyInfo {
    KeyInfo {
        kid: kid.to_string(),
        alg: "HS256",
        state: if signing {
            KeyState::Current
        } else {
            KeyState::Previous
        },
        created_at: None,
        retires_at: None,
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
        assert_eq!(header.kid.as_deref(), Some(old.secret_kid()));
        assert_eq!(old.secret_kid().len(), 16);
        let rotated = TokenKeys::with_previous(
            &[9u8; 32],
            &[&[7u8; 32]],
            SigningAlgorithm::HS256,
            "gatehouse",
            3600,
        )
        .unwrap();
        assert_ne!(rotated.secret_kid(), old.secret_kid());
        assert!(rotated.verify(&old_token, now).is_ok(), "a previous secret");
        let (new_token, _) = rotated.issue(&user(), None, now).unwrap();
        assert_eq!(
            decode_header(&new_token).unwrap().kid.as_deref(),
            Some(rotated.secret_kid())
        );
        assert!(old.verify(&new_token, now).is_err(), "not the old key's");
        let dropped = TokenKeys::new(&[9u8; 32], "gatehouse", 3600).unwrap();
        assert!(matches!(
            dropped.verify(&old_token, now),
            Err(TokenError::UnknownKey(_))
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

    fn asymmetric(alg: SigningAlgorithm, set: &KeySet, now: u64) -> TokenKeys {
        let keys = TokenKeys::with_previous(&[7u8; 32], &[], alg, "gatehouse", 3600).unwrap();
        assert!(keys.install(set, now).unwrap());
        keys
    }

    /// The verifier takes the key by `kid` and only with that key's
    /// algorithm: the same key's public bytes used as an HS256 secret, a
    /// token naming the key but signed otherwise, and a retired key all fail.
    #[test]
    fn asymmetric_keys_are_pinned_to_their_algorithm_and_retire() {
        use crate::domain::signing::StoredKey;
        let now = crate::domain::unix_now();
        let current = StoredKey::generate(SigningAlgorithm::EdDSA, KeyState::Current, now).unwrap();
        let set = KeySet {
            version: 1,
            keys: vec![current.clone()],
        };
        let keys = asymmetric(SigningAlgorithm::EdDSA, &set, now);
        let (token, _) = keys.issue(&user(), None, now).unwrap();
        let header = decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(current.kid.as_str()));
        assert!(keys.verify(&token, now).is_ok());

        // Algorithm confusion: HS256 keyed with the public key's bytes
        // (the JWK's `x`, decoded), under the real key's kid.
        let jwk = serde_json::to_value(current.public_jwk().unwrap()).unwrap();
        let public = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwk["x"].as_str().unwrap(),
        )
        .unwrap();
        let claims = keys.verify(&token, now).unwrap();
        let confused = encode(
            &Header {
                kid: Some(current.kid.clone()),
                ..Header::new(Algorithm::HS256)
            },
            &*claims,
            &EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();
        assert!(keys.verify(&confused, now).is_err());

        // Rotated: the old key verifies until it retires.
        let next = StoredKey::generate(SigningAlgorithm::EdDSA, KeyState::Standby, now).unwrap();
        let rotated = KeySet {
            version: 2,
            keys: set.promoted(next.clone(), now, 60),
        };
        assert!(keys.install(&rotated, now).unwrap());
        assert!(!keys.install(&rotated, now).unwrap(), "already installed");
        let (new_token, _) = keys.issue(&user(), None, now).unwrap();
        assert_eq!(
            decode_header(&new_token).unwrap().kid.as_deref(),
            Some(next.kid.as_str())
        );
        assert!(keys.verify(&token, now + 59).is_ok(), "previous key");
        assert!(keys.knows(&current.kid, now + 59));
        assert!(!keys.knows(&current.kid, now + 60));
        assert!(matches!(
            keys.verify(&token, now + 60),
            Err(TokenError::UnknownKey(_))
        ));
        assert!(keys.install(&rotated, now + 60).unwrap(), "a key retired");
        let jwks: serde_json::Value = serde_json::from_slice(&keys.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(jwks["keys"][0]["kid"], next.kid.as_str());
    }
}
