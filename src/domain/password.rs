//! Password hashing with bcrypt, off the async worker threads.
//!
//! bcrypt blocks a thread for tens to hundreds of milliseconds, so every hash
//! and verify runs on tokio's blocking pool behind a semaphore with one permit
//! per core: a flood of logins queues here instead of starving token-checked
//! reads on the async workers. This module must never see a password longer
//! than bcrypt reads (72 bytes): `verify` refuses one itself, `hash` expects
//! callers to have checked the input rules.

use std::sync::Arc;

use tokio::sync::{OnceCell, Semaphore};

use super::user::MAX_PASSWORD_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("the hashing task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the hasher is shut down")]
    Closed,
}

pub struct PasswordHasher {
    cost: u32,
    /// One permit per concurrent hash: more would only make each slower.
    permits: Arc<Semaphore>,
    /// A hash of a random password at our cost, verified against when the
    /// email is unknown so that such a login takes as long as a wrong password.
    dummy_hash: OnceCell<String>,
}

impl PasswordHasher {
    pub fn new(cost: u32) -> PasswordHasher {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        PasswordHasher {
            cost,
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash: OnceCell::new(),
        }
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let cost = self.cost;
        self.run_blocking(move || bcrypt::hash(password, cost))
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
        let matched = self
            .run_blocking(move || bcrypt::verify(password, &hash))
            .await?;
        match matched {
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
                getrandom::fill(&mut random).map_err(|_| HashError::Closed)?;
                let password = format!("{:x?}", random);
                let cost = self.cost;
                self.run_blocking(move || bcrypt::hash(&password[..MAX_PASSWORD_BYTES], cost))
                    .await?
                    .map_err(HashError::from)
            })
            .await?;
        Ok(hash.as_str())
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        let result = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
