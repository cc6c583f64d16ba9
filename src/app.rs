//! [`App`]: the one piece of shared state: validated settings, the store (which
//! also keeps the login and registration throttles), the token keys (with
//! the stored asymmetric key set loaded, see `keyring`) and refresh-token
//! keys, the session policy, the password hasher, the metrics and the request
//! log. It is built once at start-up and passed explicitly (as `Arc<App>`)
//! to whatever needs it; there is no global state.
//!
//! This module also owns the data dir (created 0700; one the operator made
//! keeps its mode, with a warning if others may enter it) and the generated
//! signing key: when `auth.secret` is unset, a random 32-byte key is created
//! in `data_dir` (mode 0600) on first start and reused afterwards.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};

use crate::config::Settings;
use crate::domain::password::PasswordHasher;
use crate::domain::session::{RefreshKeys, SessionPolicy};
use crate::domain::token::TokenKeys;
use crate::http::cors::CorsPolicy;
use crate::keyring;
use crate::log::RequestLog;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct App {
    pub settings: Settings,
    pub store: Store,
    pub tokens: TokenKeys,
    /// When a token with an unknown `kid` last made us read the key set.
    pub key_lookups: keyring::Lookups,
    /// The refresh-token key, derived from the signing secret.
    pub refresh_keys: RefreshKeys,
    /// `auth.session_*` and `auth.refresh_reuse_secs`.
    pub sessions: SessionPolicy,
    pub passwords: PasswordHasher,
    /// The mail worker's queue and the links; `None` without `mail.smtp_url`.
    pub mailer: Option<Mailer>,
    /// The allowed origins; `None` when CORS is off (the default).
    pub cors: Option<CorsPolicy>,
    /// Where the Prometheus series are recorded; records nothing without
    /// `metrics.listen` (the default).
    pub metrics: Metrics,
    /// Where the server writes its per-request lines (`log::init` makes the
    /// fast one; the default goes through `tracing`).
    pub request_log: RequestLog,
}

impl App {
    /// Opens the data dir, the store and the signing key. Errors name the
    /// file or key at fault.
    pub async fn open(settings: Settings) -> anyhow::Result<App> {
        // The route table's patterns label the request series.
        let routes: Vec<&'static str> = crate::api::routes::ROUTES.iter().map(|r| r.path).collect();
        let metrics = Metrics::new(&settings.metrics, &routes);
        // First: a broken mail template stops start-up before anything is
        // written.
        let mailer = Mailer::start(&settings, &metrics)?;
        prepare_data_dir(&settings.data_dir)?;
        let secret = match &settings.auth.secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => load_or_create_key(&settings.secret_file())?,
        };
        let store = open_store(&settings, metrics.clone()).await?;
        let previous: Vec<&[u8]> = settings
            .auth
            .previous_secrets
            .iter()
            .map(|s| s.expose().as_bytes())
            .collect();
        let tokens = TokenKeys::with_previous(
            &secret,
            &previous,
            settings.auth.algorithm,
            &settings.auth.issuer,
            settings.auth.token_ttl_secs,
        )
        .context("auth.secret: unusable signing key")?;
        keyring::start(&store, &tokens)
            .await
            .context("auth.algorithm: cannot load or create the signing keys")?;
        Ok(App {
            mailer,
            cors: CorsPolicy::from_settings(&settings.cors),
            key_lookups: keyring::Lookups::default(),
            refresh_keys: RefreshKeys::with_previous(&secret, &previous),
            sessions: SessionPolicy::from(&settings.auth),
            passwords: PasswordHasher::new(settings.auth.bcrypt_cost).with_metrics(metrics.clone()),
            metrics,
            store,
            tokens,
            settings,
            request_log: RequestLog::default(),
        })
    }
}

/// The mode of a data dir gatehouse creates: it holds the signing key and
/// the password hashes, so only the owner may enter it.
const DATA_DIR_MODE: u32 = 0o700;

/// Creates `data_dir` (and any missing parent) with mode 0700. One that
/// exists is the operator's: its mode is left as it is, with a warning if
/// other users may enter it (the files inside are 0600 all the same).
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format_args!("{mode:o}"),
                    "data_dir is open to other users; chmod 700 it"
                );
            }
            Ok(())
        }
        Ok(_) => bail!("data_dir: {} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(dir)
            .with_context(|| format!("data_dir: cannot create {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("data_dir: cannot read {}", dir.display())),
    }
}

/// Opens the configured store, with an error naming the setting at fault.
pub async fn open_store(settings: &Settings, metrics: Metrics) -> anyhow::Result<Store> {
    name_store_error(settings, Store::open(settings, metrics).await)
}

/// [`open_store`] for an export: a PostgreSQL schema that is due a migration
/// is an error, not migrated (see `Store::open_current`).
pub async fn open_store_unchanged(settings: &Settings) -> anyhow::Result<Store> {
    name_store_error(settings, Store::open_current(settings).await)
}

fn name_store_error(
    settings: &Settings,
    store: Result<Store, crate::store::StoreError>,
) -> anyhow::Result<Store> {
    if settings.store.url.is_some() {
        store.context("store.url: cannot use the PostgreSQL database")
    } else {
        let dir = settings.database_dir();
        store.with_context(|| {
            format!(
                "data_dir: cannot open the database in {} (is another gatehouse using it?)",
                dir.display()
            )
        })
    }
}

/// The generated HS256 secret, hex-encoded as its file holds it, when the
/// key is one (no `auth.secret`, no `store.url`) and it exists: what an
/// export carries. A configured secret is never exported.
pub fn generated_secret(settings: &Settings) -> anyhow::Result<Option<String>> {
    if settings.auth.secret.is_some() || settings.store.url.is_some() {
        return Ok(None);
    }
    let path = settings.secret_file();
    match fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => {
            let hex = text.trim();
            decode_hex(hex)
                .with_context(|| format!("{}: not a hex-encoded key", path.display()))?;
            Ok(Some(hex.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Makes `hex` (an imported generated secret) the key of `data_dir`,
/// replacing any, atomically as a new key is stored. Only for a sled store
/// without `auth.secret`: false (nothing written) otherwise.
pub fn store_generated_secret(settings: &Settings, hex: &str) -> anyhow::Result<bool> {
    if settings.auth.secret.is_some() || settings.store.url.is_some() {
        return Ok(false);
    }
    let key = decode_hex(hex).filter(|key| key.len() >= GENERATED_KEY_BYTES);
    if key.is_none() {
        bail!(
            "the imported secret is not a hex-encoded key of {GENERATED_KEY_BYTES} bytes or more"
        );
    }
    prepare_data_dir(&settings.data_dir)?;
    let path = settings.secret_file();
    store_key(&path, hex)
        .with_context(|| format!("{}: cannot store the imported key", path.display()))?;
    Ok(true)
}

/// Creates `data_dir` if it is missing (mode 0700), as a server start
/// would: for the command line's writers.
pub fn prepare_data_dir_for(settings: &Settings) -> anyhow::Result<()> {
    prepare_data_dir(&settings.data_dir)
}

/// Bytes in a generated signing key.
const GENERATED_KEY_BYTES: usize = 32;

/// The key in `path`, or a new one stored there. An empty file holds no key
/// any token was signed with (earlier versions left one when the disk was
/// full), so it is replaced, with a warning; anything else that is not a
/// key is an error naming the file, as tokens may have been signed with
/// what it held.
fn load_or_create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => {
            tracing::warn!(
                path = %path.display(),
                "the signing key file is empty (left by a full disk or a crash); generating a new key"
            );
            create_key(path)
        }
        Ok(text) => {
            let key = decode_hex(text.trim())
                .with_context(|| format!("{}: not a hex-encoded key", path.display()))?;
            if key.len() < GENERATED_KEY_BYTES {
                bail!(
                    "{}: the key is shorter than {GENERATED_KEY_BYTES} bytes",
                    path.display()
                );
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Generates a key and stores it in `path` atomically: written and synced
/// to a temporary file (0600) in the same folder, renamed over `path`, and
/// the folder synced, so `path` holds a whole key or nothing, whatever a
/// crash or a full disk interrupts. A failed attempt removes its temporary
/// file.
fn create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0u8; GENERATED_KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    store_key(path, &hex)
        .with_context(|| format!("{}: cannot store a new signing key", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new secret (auth.secret)");
    Ok(key)
}

/// Writes `hex` as the key in `path` through a temporary file renamed into
/// place (removed if that fails), so `path` holds a whole key or its old one.
fn store_key(path: &Path, hex: &str) -> std::io::Result<()> {
    let temporary = temporary_key_path(path);
    let stored = write_then_rename(&temporary, path, hex.as_bytes());
    if stored.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    stored
}

/// `secret.key.tmp` beside `secret.key`.
fn temporary_key_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_then_rename(temporary: &Path, path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // A temporary file left by a crash held no key anyone used.
    match fs::remove_file(temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_FILE_MODE)
        .open(temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temporary, path)?;
    // The rename is durable once the folder's entry is.
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    fs::File::open(folder.unwrap_or(Path::new(".")))?.sync_all()
}

/// The generated key file's mode: the owner reads it, nobody else.
const KEY_FILE_MODE: u32 = 0o600;

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(first.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_key(&path).unwrap(), first);
    }

    #[test]
    fn an_empty_key_file_is_replaced_by_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        // What an earlier version left when the disk was full.
        fs::write(&path, "").unwrap();
        let key = load_or_create_key(&path).unwrap();
        assert_eq!(key.len(), GENERATED_KEY_BYTES);
        assert_eq!(load_or_create_key(&path).unwrap(), key, "stored and reused");
    }

    #[test]
    fn creating_a_key_leaves_only_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        load_or_create_key(&path).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret.key"]);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        fs::write(&path, "abcd").unwrap();
        assert!(load_or_create_key(&path).is_err());
        fs::write(&path, "not hex at all").unwrap();
        assert!(load_or_create_key(&path).is_err());
    }
}
