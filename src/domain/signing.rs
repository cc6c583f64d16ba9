//! Signing keys: the algorithms `auth.algorithm` names, the asymmetric keys
//! gatehouse generates (Ed25519, P-256, RSA-2048) in the form the store keeps
//! them, their public JWKs (RFC 7517, named by their RFC 7638 thumbprint),
//! and the rotation rules of a key set (standby → current → previous →
//! retired).
//!
//! Pure: no store, no clock, no state. Private key bytes are only ever in a
//! [`StoredKey`], whose `Debug` leaves them out and which turns them into an
//! `EncodingKey`; nothing here logs them or puts them in a JWK.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What tokens are signed with (`auth.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SigningAlgorithm {
    /// A shared secret (`auth.secret`); nothing is published.
    #[default]
    HS256,
    /// Ed25519.
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    RS256,
}

impl SigningAlgorithm {
    pub fn jwt(self) -> Algorithm {
        match self {
            SigningAlgorithm::HS256 => Algorithm::HS256,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::RS256 => Algorithm::RS256,
        }
    }

    /// Its JOSE name (`"EdDSA"`), as in a token header and the JWKS.
    pub fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::HS256 => "HS256",
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::RS256 => "RS256",
        }
    }

    /// True for the algorithms whose keys gatehouse generates, keeps in the
    /// store and publishes.
    pub fn is_asymmetric(self) -> bool {
        self != SigningAlgorithm::HS256
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Signs new tokens (exactly one key of a set).
    Current,
    /// Published and accepted, not signing yet: verifiers' caches learn it
    /// before it signs.
    Standby,
    /// Signed tokens that may still be alive: accepted and published until
    /// `retires_at`.
    Previous,
}

/// Previous keys a set keeps at most (see [`KeySet::promoted`]).
pub const MAX_PREVIOUS_KEYS: usize = 8;

/// RSA modulus size of generated keys: the common JWT size (RFC 7518 asks
/// for at least 2048); signing cost grows with the cube of it.
pub const RSA_BITS: usize = 2048;

/// One key as the store keeps it. An asymmetric key holds its private key
/// (PKCS#8 DER for Ed25519 and P-256, PKCS#1 DER for RSA). An `HS256` entry
/// holds nothing: it stands for the configured `auth.secret` after a switch
/// to an asymmetric algorithm, so that tokens signed before the switch stay
/// accepted until `retires_at` (it is never published).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: SigningAlgorithm,
    pub state: KeyState,
    pub created_at: u64,
    pub retires_at: Option<u64>,
    #[serde(with = "private_bytes", default)]
    private_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no system randomness: {0}")]
    Randomness(String),
    #[error("key generation failed: {0}")]
    Generation(String),
    #[error("the stored key {kid} is unusable: {reason}")]
    Unusable { kid: String, reason: String },
}

impl StoredKey {
    /// A new key of `alg` (asymmetric only), in `state`. RSA takes a good
    /// fraction of a second: call it off the async workers.
    pub fn generate(
        alg: SigningAlgorithm,
        state: KeyState,
        now: u64,
    ) -> Result<StoredKey, KeyError> {
        let private_der = match alg {
            SigningAlgorithm::HS256 => {
                return Err(KeyError::Generation("HS256 keys are configured".into()))
            }
            SigningAlgorithm::EdDSA => ed25519_pkcs8(&random::<32>()?),
            SigningAlgorithm::ES256 => p256_pkcs8()?,
            SigningAlgorithm::RS256 => rsa_pkcs1()?,
        };
        let mut key = StoredKey {
            kid: String::new(),
            alg,
            state,
            created_at: now,
            retires_at: None,
            private_der,
        };
        key.kid = key
            .public_jwk_without_kid()?
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Generation(e.to_string()))?;
        Ok(key)
    }

    /// The entry that keeps `auth.secret`'s tokens accepted after a switch to
    /// an asymmetric algorithm (see the type's doc).
    pub fn hs256_until(kid: String, now: u64, retires_at: u64) -> StoredKey {
        StoredKey {
            kid,
            alg: SigningAlgorithm::HS256,
            state: KeyState::Previous,
            created_at: now,
            retires_at: Some(retires_at),
            private_der: Zeroizing::new(Vec::new()),
        }
    }

    /// The key that signs; an HS256 entry holds none.
    pub fn encoding_key(&self) -> Result<EncodingKey, KeyError> {
        match self.alg {
            SigningAlgorithm::EdDSA => Ok(EncodingKey::from_ed_der(&self.private_der)),
            SigningAlgorithm::ES256 => Ok(EncodingKey::from_ec_der(&self.private_der)),
            SigningAlgorithm::RS256 => Ok(EncodingKey::from_rsa_der(&self.private_der)),
            SigningAlgorithm::HS256 => Err(self.unusable("an HS256 entry holds no key")),
        }
    }

    /// The public JWK: `kty`, the curve or modulus members, `kid`, `alg`,
    /// `use: "sig"`. Never a private member.
    pub fn public_jwk(&self) -> Result<Jwk, KeyError> {
        let mut jwk = self.public_jwk_without_kid()?;
        jwk.common.key_id = Some(self.kid.clone());
        Ok(jwk)
    }

    /// The key tokens are verified with: built from the public JWK alone,
    /// as any other verifier would.
    pub fn decoding_key(&self) -> Result<DecodingKey, KeyError> {
        DecodingKey::from_jwk(&self.public_jwk()?).map_err(|e| self.unusable(e))
    }

    fn public_jwk_without_kid(&self) -> Result<Jwk, KeyError> {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key()?, self.alg.jwt())
            .map_err(|e| self.unusable(e))?;
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(jwk)
    }

    fn unusable(&self, reason: impl std::fmt::Display) -> KeyError {
        KeyError::Unusable {
            kid: self.kid.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The stored key set: every key and the version it was written at (each
/// write is a compare-and-set on the version, so instances sharing a
/// database never overwrite each other's rotation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySet {
    pub version: u64,
    pub keys: Vec<StoredKey>,
}

impl KeySet {
    pub fn current(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.state == KeyState::Current)
    }

    pub fn standby(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.state == KeyState::Standby)
    }

    /// Keys still accepted at `now` (previous keys before their retirement).
    pub fn live(&self, now: u64) -> impl Iterator<Item = &StoredKey> {
        self.keys
            .iter()
            .filter(move |k| k.retires_at.is_none_or(|at| now < at))
    }

    /// True if a key has retired and can be removed from the store.
    pub fn has_retired(&self, now: u64) -> bool {
        self.live(now).count() != self.keys.len()
    }

    /// The same set without the retired keys.
    pub fn without_retired(&self, now: u64) -> Vec<StoredKey> {
        self.live(now).cloned().collect()
    }

    /// The set with `standby` added as the standby key (none before).
    pub fn with_standby(&self, standby: StoredKey, now: u64) -> Vec<StoredKey> {
        let mut keys = self.without_retired(now);
        keys.push(StoredKey {
            state: KeyState::Standby,
            ..standby
        });
        keys
    }

    /// The set with `next` made current: the current key (and a standby key
    /// other than `next`) become previous keys that retire at
    /// `now + ttl_secs`, when every token they signed has expired. Beyond
    /// [`MAX_PREVIOUS_KEYS`], the previous keys that retire first are dropped
    /// at once (their tokens then fail and their clients refresh), so that
    /// rotating again and again cannot grow the set, the JWKS and the
    /// verifier without bound.
    pub fn promoted(&self, next: StoredKey, now: u64, ttl_secs: u64) -> Vec<StoredKey> {
        let mut keys: Vec<StoredKey> = self
            .without_retired(now)
            .into_iter()
            .filter(|k| k.kid != next.kid)
            .map(|k| match k.state {
                KeyState::Current | KeyState::Standby => StoredKey {
                    state: KeyState::Previous,
                    retires_at: Some(now + ttl_secs),
                    ..k
                },
                KeyState::Previous => k,
            })
            .collect();
        // Latest retirement first: the previous keys to keep lead.
        keys.sort_by_key(|k| std::cmp::Reverse(k.retires_at));
        let mut previous = 0;
        keys.retain(|k| {
            previous += usize::from(k.state == KeyState::Previous);
            k.state != KeyState::Previous || previous <= MAX_PREVIOUS_KEYS
        });
        keys.insert(
            0,
            StoredKey {
                state: KeyState::Current,
                retires_at: None,
                ..next
            },
        );
        keys
    }
}

/// Ed25519 private key as PKCS#8 v1 (RFC 8410 §7): the fixed 16-byte prefix,
/// then the 32-byte seed. This form is what jsonwebtoken reads both to sign
/// and to derive the public JWK.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&PREFIX);
    der.extend_from_slice(seed);
    der
}

fn p256_pkcs8() -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use p256::pkcs8::EncodePrivateKey;
    // A random 32-byte string is a valid scalar except with probability
    // about 2^-32; draw again in that case.
    loop {
        let bytes = Zeroizing::new(random::<32>()?);
        if let Ok(secret) = p256::SecretKey::from_slice(bytes.as_slice()) {
            let der = secret
                .to_pkcs8_der()
                .map_err(|e| KeyError::Generation(e.to_string()))?;
            return Ok(Zeroizing::new(der.as_bytes().to_vec()));
        }
    }
}

fn rsa_pkcs1() -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS)
        .map_err(|e| KeyError::Generation(e.to_string()))?;
    let der = key
        .to_pkcs1_der()
        .map_err(|e| KeyError::Generation(e.to_string()))?;
    Ok(Zeroizing::new(der.as_bytes().to_vec()))
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Randomness(e.to_string()))?;
    Ok(bytes)
}

/// Private key bytes as standard base64 in the stored record.
mod private_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        bytes: &Zeroizing<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Zeroizing::new(STANDARD.encode(bytes.as_slice())))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        STANDARD
            .decode(text.as_bytes())
            .map(Zeroizing::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, encode, Header, Validation};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    /// Each algorithm's key signs, and its public JWK alone verifies; the
    /// JWK has only public members; the kid is the thumbprint; the key
    /// survives its stored form.
    #[test]
    fn generated_keys_sign_and_their_public_jwk_verifies() {
        for alg in [
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::ES256,
            SigningAlgorithm::RS256,
        ] {
            let key = StoredKey::generate(alg, KeyState::Current, 10).unwrap();
            let stored = serde_json::to_string(&key).unwrap();
            let key: StoredKey = serde_json::from_str(&stored).unwrap();
            let claims = Claims {
                sub: "u".into(),
                exp: u64::MAX / 2,
            };
            let header = Header {
                kid: Some(key.kid.clone()),
                ..Header::new(alg.jwt())
            };
            let token = encode(&header, &claims, &key.encoding_key().unwrap()).unwrap();
            let jwk = serde_json::to_value(key.public_jwk().unwrap()).unwrap();
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(jwk.get(private).is_none(), "{alg:?}: {private} in {jwk}");
            }
            assert_eq!(jwk["kid"], key.kid.as_str());
            assert_eq!(jwk["alg"], alg.name());
            assert_eq!(jwk["use"], "sig");
            let parsed: Jwk = serde_json::from_value(jwk).unwrap();
            assert_eq!(
                parsed.thumbprint(ThumbprintHash::SHA256).unwrap(),
                key.kid,
                "the kid is the RFC 7638 thumbprint"
            );
            let verified = decode::<Claims>(
                &token,
                &DecodingKey::from_jwk(&parsed).unwrap(),
                &Validation::new(alg.jwt()),
            )
            .unwrap();
            assert_eq!(verified.claims, claims);
            assert!(!format!("{key:?}").contains("private"), "Debug hides it");
        }
    }

    #[test]
    fn promotion_retires_the_current_key_after_the_token_lifetime() {
        let now = 1_000;
        let current = StoredKey::generate(SigningAlgorithm::EdDSA, KeyState::Current, 0).unwrap();
        let set = KeySet {
            version: 1,
            keys: vec![current.clone()],
        };
        let standby = StoredKey::generate(SigningAlgorithm::EdDSA, KeyState::Standby, now).unwrap();
        let set = KeySet {
            version: 2,
            keys: set.with_standby(standby.clone(), now),
        };
        assert_eq!(set.current().unwrap().kid, current.kid);
        assert_eq!(set.standby().unwrap().kid, standby.kid);
        let promoted = KeySet {
            version: 3,
            keys: set.promoted(set.standby().unwrap().clone(), now + 5, 60),
        };
        assert_eq!(promoted.current().unwrap().kid, standby.kid);
        assert!(promoted.standby().is_none());
        let old = promoted.keys.iter().find(|k| k.kid == current.kid).unwrap();
        assert_eq!(old.state, KeyState::Previous);
        assert_eq!(old.retires_at, Some(now + 65));
        assert_eq!(promoted.live(now + 64).count(), 2);
        assert_eq!(promoted.live(now + 65).count(), 1);
        assert!(promoted.has_retired(now + 65));
        assert_eq!(promoted.without_retired(now + 65).len(), 1);
    }

    #[test]
    fn rotating_again_and_again_keeps_a_bounded_set() {
        let mut set = KeySet::default();
        let mut kids = Vec::new();
        for i in 0..20 {
            let next = StoredKey::generate(SigningAlgorithm::EdDSA, KeyState::Current, i).unwrap();
            kids.push(next.kid.clone());
            set = KeySet {
                version: i + 1,
                keys: set.promoted(next, i, 1000),
            };
        }
        assert_eq!(set.keys.len(), 1 + MAX_PREVIOUS_KEYS);
        assert_eq!(set.current().unwrap().kid, kids[19]);
        // The most recently demoted keys are the ones kept.
        for kid in &kids[19 - MAX_PREVIOUS_KEYS..19] {
            assert!(set.keys.iter().any(|k| &k.kid == kid));
        }
    }
}
