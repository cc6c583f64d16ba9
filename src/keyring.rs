//! The life of the asymmetric signing keys (`auth.algorithm` = EdDSA, ES256
//! or RS256) over the store: the first key generated on first start, a new
//! current key when the configured algorithm changes, rotation by the admin,
//! retired keys removed, and every instance on one database following the
//! stored set (polled every [`FOLLOW_INTERVAL`], and looked up at once, at
//! most once a [`LOOKUP_SPACING`], when a token names a `kid` this instance
//! does not know).
//!
//! Every change is a compare-and-swap on the stored set's version: read,
//! decide, write if nobody wrote meanwhile, else read and decide again. So
//! two instances starting (or rotating) at once agree on one set. What signs
//! and verifies in this process is [`TokenKeys`], which this module feeds
//! with [`TokenKeys::install`]; it never sees a key's bytes itself.
//!
//! Under HS256 nothing here touches the store: keys are configuration.

use std::time::{Duration, Instant};

use crate::app::App;
use crate::domain::audit::{Action, Event, Origin};
use crate::domain::signing::{KeyError, KeySet, KeyState, SigningAlgorithm, StoredKey};
use crate::domain::token::{TokenKeys, LEEWAY_SECS};
use crate::domain::unix_now;
use crate::store::{Store, StoreError};

/// How often every instance reads the stored set: a rotation elsewhere is
/// followed within this (API.md asks for 10 s).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

/// Unknown-`kid` lookups are at least this far apart, so a flood of tokens
/// with made-up kids costs the store one read a second.
pub const LOOKUP_SPACING: Duration = Duration::from_secs(1);

/// A previous key is accepted this much longer than the token lifetime:
/// another instance may sign with it until it follows the promotion
/// ([`FOLLOW_INTERVAL`], plus a slow read), and verifiers allow
/// [`LEEWAY_SECS`] of clock skew.
pub const RETIREMENT_MARGIN_SECS: u64 = 2 * FOLLOW_INTERVAL.as_secs() + LEEWAY_SECS;

/// Compare-and-swap attempts before giving up: each lost race means another
/// instance changed the set, which is then read again.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the key set kept changing under this rotation; try again")]
    Contended,
    #[error("with HS256, rotate the key by configuration: move auth.secret to auth.previous_secrets and set a new auth.secret")]
    Symmetric,
}

/// The unknown-`kid` lookup's state: when the last one ran. Held across the
/// lookup, so concurrent requests with the same new `kid` wait for one read
/// and then find the key.
#[derive(Default)]
pub struct Lookups {
    last: tokio::sync::Mutex<Option<Instant>>,
    /// Store reads made for unknown kids, since start.
    reads: std::sync::atomic::AtomicU64,
}

impl Lookups {
    /// How many times an unknown `kid` made this instance read the key set.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Loads the stored key set into `tokens`, first making sure it has a
/// current key of the configured algorithm: one is generated when there is
/// no set yet (with an entry that keeps `auth.secret`'s tokens valid until
/// they expire, for a switch from HS256) or when the current key is of
/// another algorithm (which becomes a previous key). Does nothing under
/// HS256.
pub async fn start(store: &Store, tokens: &TokenKeys) -> Result<(), KeyringError> {
    let algorithm = tokens.algorithm();
    if !algorithm.is_asymmetric() {
        return Ok(());
    }
    // Each write is read back on the next pass, so the last pass only reads.
    for attempt in 0..=ATTEMPTS {
        let stored = store.signing_keys().await?;
        let now = unix_now();
        if let Some(set) = &stored {
            if set.current().is_some_and(|k| k.alg == algorithm) {
                tokens.install(set, now)?;
                tracing::info!(
                    alg = algorithm.name(),
                    kid = set.current().map(|k| k.kid.as_str()).unwrap_or_default(),
                    "signing key loaded"
                );
                return Ok(());
            }
        }
        if attempt == ATTEMPTS {
            break;
        }
        let next = generate(algorithm, KeyState::Current).await?;
        let retires_at = now + tokens.ttl_secs() + RETIREMENT_MARGIN_SECS;
        let (expected, keys) = match &stored {
            None => (
                None,
                vec![
                    next,
                    StoredKey::hs256_until(tokens.secret_kid().to_string(), now, retires_at),
                ],
            ),
            Some(set) => (
                Some(set.version),
                promoted(set, next, now, tokens.ttl_secs()),
            ),
        };
        if store.swap_signing_keys(expected, keys, Vec::new()).await? {
            tracing::info!(alg = algorithm.name(), "generated a new signing key pair");
        }
    }
    Err(KeyringError::Contended)
}

/// `POST /api/admin/keys/rotate`: with `standby`, adds a standby key
/// (published, not signing; an existing standby key is kept as it is);
/// without, makes the standby key (or a new one) current, the old current
/// key a previous one. Installed here at once; other instances follow.
///
/// Recorded as `key_rotated` (by `origin`'s admin), with the new key's kid.
pub async fn rotate(app: &App, standby: bool, origin: &Origin) -> Result<(), KeyringError> {
    let algorithm = app.tokens.algorithm();
    if !algorithm.is_asymmetric() {
        return Err(KeyringError::Symmetric);
    }
    for _ in 0..ATTEMPTS {
        let set = app.store.signing_keys().await?.unwrap_or_default();
        let expected = (set.version > 0).then_some(set.version);
        let kid;
        let keys = if standby {
            if set.standby().is_some() {
                app.tokens.install(&set, unix_now())?;
                return Ok(());
            }
            let fresh = generate(algorithm, KeyState::Standby).await?;
            kid = fresh.kid.clone();
            set.with_standby(fresh, unix_now())
        } else {
            let next = match set.standby() {
                Some(key) if key.alg == algorithm => key.clone(),
                _ => generate(algorithm, KeyState::Current).await?,
            };
            kid = next.kid.clone();
            promoted(&set, next, unix_now(), app.tokens.ttl_secs())
        };
        let event = Event::new(Action::KeyRotated, None, origin, unix_now())
            .with("kid", kid)
            .with("standby", standby)
            .with("algorithm", algorithm.name());
        if app
            .store
            .swap_signing_keys(expected, keys, vec![event])
            .await?
        {
            let set = app.store.signing_keys().await?.unwrap_or_default();
            app.tokens.install(&set, unix_now())?;
            let current = set.current().map(|k| k.kid.as_str()).unwrap_or_default();
            tracing::info!(standby, current, "signing keys rotated");
            return Ok(());
        }
    }
    Err(KeyringError::Contended)
}

/// A token named `kid`, which this instance does not know: reads the stored
/// set (at most once per [`LOOKUP_SPACING`]) in case another instance just
/// rotated. True if `kid` is known now.
pub async fn look_up(app: &App, kid: &str) -> bool {
    if !app.tokens.algorithm().is_asymmetric() || kid.is_empty() {
        return false;
    }
    let mut last = app.key_lookups.last.lock().await;
    if app.tokens.knows(kid, unix_now()) {
        return true; // read by the lookup this one waited for
    }
    if last.is_some_and(|at| at.elapsed() < LOOKUP_SPACING) {
        return false;
    }
    *last = Some(Instant::now());
    app.key_lookups
        .reads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match follow_once(app).await {
        Ok(()) => app.tokens.knows(kid, unix_now()),
        Err(error) => {
            tracing::warn!(%error, "reading the signing keys failed");
            false
        }
    }
}

/// Runs for the life of the server (asymmetric algorithms only): follows
/// the stored set, and removes retired keys from it.
pub async fn follow(app: std::sync::Arc<App>) {
    if !app.tokens.algorithm().is_asymmetric() {
        return;
    }
    let mut interval = tokio::time::interval(FOLLOW_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = follow_once(&app).await {
            tracing::warn!(%error, "following the signing keys failed");
        }
    }
}

/// Reads the stored set, drops retired keys from it (any instance may; the
/// swap makes it once), and installs it.
async fn follow_once(app: &App) -> Result<(), KeyringError> {
    let Some(mut set) = app.store.signing_keys().await? else {
        return Ok(());
    };
    let now = unix_now();
    if set.has_retired(now)
        && app
            .store
            .swap_signing_keys(Some(set.version), set.without_retired(now), Vec::new())
            .await?
    {
        tracing::info!("retired signing keys removed");
        set = app.store.signing_keys().await?.unwrap_or(set);
    }
    if app.tokens.install(&set, now)? {
        tracing::info!(version = set.version, "signing keys changed");
    }
    Ok(())
}

/// `set` with `next` current and the old current key retiring once every
/// token it signed has expired ([`RETIREMENT_MARGIN_SECS`] included).
fn promoted(set: &KeySet, next: StoredKey, now: u64, ttl_secs: u64) -> Vec<StoredKey> {
    set.promoted(next, now, ttl_secs + RETIREMENT_MARGIN_SECS)
}

/// A new key, generated on the blocking pool (RSA takes a while).
async fn generate(algorithm: SigningAlgorithm, state: KeyState) -> Result<StoredKey, KeyringError> {
    let now = unix_now();
    tokio::task::spawn_blocking(move || StoredKey::generate(algorithm, state, now))
        .await
        .map_err(StoreError::from)?
        .map_err(KeyringError::from)
}
