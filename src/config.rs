//! Configuration: built-in defaults, then `config.toml` (or the file named by
//! `--config`), then `GATEHOUSE_<SECTION>__<KEY>` environment variables, then
//! command-line flags; later sources win. The merged result is extracted with
//! figment and validated into [`Settings`] before the port is bound or the
//! database opened, so a bad value stops start-up with one line naming its key.
//!
//! This module owns the key names, their defaults and their rules. It must not
//! open the store or generate secrets: that is `app`'s job.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::domain::signing::SigningAlgorithm;

/// Prefix of the environment variables that configure gatehouse.
pub const ENV_PREFIX: &str = "GATEHOUSE_";

/// The config file read when `--config` is not given (silently skipped if absent).
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";

/// Everything gatehouse can be told, validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    /// Folder of the sled database and of the generated signing key.
    pub data_dir: PathBuf,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub store: StoreSettings,
    pub mail: MailSettings,
    pub cors: CorsSettings,
    pub audit: AuditSettings,
    pub metrics: MetricsSettings,
}

/// The audit log (`domain::audit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Events older than this are purged.
    pub retention_days: u64,
    /// At most this many `login_failed` (and, as many again,
    /// `login_throttled`) events are stored per minute of the clock; the
    /// rest are counted into the next stored one's `detail.suppressed`.
    pub max_failures_per_minute: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            retention_days: 90,
            max_failures_per_minute: 600,
        }
    }
}

/// The Prometheus metrics listener (`metrics`, `server::metrics_listener`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served, on a listener of its own, e.g.
    /// `127.0.0.1:9464` (port 0 picks a free port, logged). Unset (the
    /// default): no metrics are recorded or served.
    pub listen: Option<SocketAddr>,
}

/// CORS for browser apps on other origins (`http::cors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed to call (`https://app.example.com`), or `["*"]` for
    /// any. Empty (the default): no CORS headers at all.
    pub allowed_origins: Vec<String>,
    /// How long a browser may remember a preflight answer.
    pub max_age_secs: u64,
}

impl Default for CorsSettings {
    fn default() -> Self {
        CorsSettings {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// Mail over SMTP (password reset, email verification; `mail.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailSettings {
    /// `smtp://host:port` in the clear (a local relay or test sink),
    /// `smtp://host:587?tls=required` for STARTTLS, `smtps://user:pass@host:465`.
    /// Unset: no mail (mail routes answer 503). A secret: it may hold a
    /// password.
    pub smtp_url: Option<Secret>,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    /// The base of mail links, e.g. `https://auth.example.com`. Unset:
    /// `http://<server.host>:<bound port>` (127.0.0.1 for an unspecified host).
    pub public_url: Option<String>,
    /// Link templates: `{public_url}` and `{token}` are replaced.
    pub reset_url: String,
    pub verify_url: String,
    /// Replacements for the built-in templates (`reset.txt`, `verify.html`,
    /// `reset.subject`, …); a file that is not there keeps the built-in one.
    pub templates_dir: Option<PathBuf>,
    /// At most one mail of each kind per account in this many seconds.
    pub resend_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// A `postgres://` URL selects the PostgreSQL store, shared by every
    /// instance using it. Unset: sled in `data_dir`. A secret: it may hold a
    /// password.
    pub url: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: IpAddr,
    /// 0 picks a free port; the chosen address is logged.
    pub port: u16,
    /// Time a client has to send its headers, and separately its body.
    pub header_timeout_secs: u64,
    /// Open connections at most; one more gets an immediate 503.
    pub max_connections: usize,
    /// Header carrying the client address, set by a trusted proxy (e.g.
    /// `x-forwarded-for`). Unset means the TCP peer address is used.
    pub client_ip_header: Option<String>,
    /// A response the client does not read within this closes the connection,
    /// so clients that never read cannot hold connection slots.
    pub write_timeout_secs: u64,
    /// An idle keep-alive connection (no request in progress) is closed after
    /// this.
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// What access tokens are signed with: `HS256` (with `secret`), or
    /// `EdDSA`, `ES256`, `RS256` (keys generated and kept in the store,
    /// published at `/.well-known/jwks.json`).
    pub algorithm: SigningAlgorithm,
    /// HS256 key (and, under any algorithm, the key refresh tokens and the
    /// shared throttle counters are derived from). Unset means a generated
    /// key kept in `data_dir`.
    pub secret: Option<Secret>,
    /// Earlier HS256 keys: tokens (and refresh tokens) they signed are still
    /// accepted; they never sign.
    pub previous_secrets: Vec<Secret>,
    pub token_ttl_secs: u64,
    pub issuer: String,
    pub bcrypt_cost: u32,
    pub min_password_len: usize,
    pub allow_registration: bool,
    /// A session's absolute lifetime.
    pub session_ttl_secs: u64,
    /// A session ends after this long without a refresh.
    pub session_idle_secs: u64,
    /// Grace for a spent refresh token presented again (two tabs).
    pub refresh_reuse_secs: u64,
    /// How long a password-reset link works.
    pub reset_token_ttl_secs: u64,
    /// How long an email-verification link works.
    pub verify_token_ttl_secs: u64,
    /// Login with an unconfirmed address is refused (403) after a correct
    /// password. Needs `mail.smtp_url`, or nobody could confirm.
    pub require_verified_email: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    pub body_bytes: usize,
    pub login_failures_per_account: u32,
    pub login_failures_per_address: u32,
    pub login_window_secs: u64,
    /// Registration requests per client address per login window, whatever
    /// their outcome.
    pub registrations_per_address: u32,
    /// `forgot` and `verify/request` requests per client address per login
    /// window, for known and unknown addresses alike.
    pub mail_requests_per_address: u32,
}

/// A secret string whose `Debug` never shows its value, so settings can be
/// logged or printed in an error without leaking the key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings::default(),
            data_dir: PathBuf::from("./data"),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            store: StoreSettings::default(),
            mail: MailSettings::default(),
            cors: CorsSettings::default(),
            audit: AuditSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

impl Default for MailSettings {
    fn default() -> Self {
        MailSettings {
            smtp_url: None,
            from: "gatehouse <no-reply@localhost>".to_string(),
            public_url: None,
            reset_url: "{public_url}/reset-password#token={token}".to_string(),
            verify_url: "{public_url}/verify-email#token={token}".to_string(),
            templates_dir: None,
            resend_secs: 60,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 3000,
            header_timeout_secs: 10,
            max_connections: 1024,
            client_ip_header: None,
            write_timeout_secs: 10,
            idle_timeout_secs: 60,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            algorithm: SigningAlgorithm::HS256,
            secret: None,
            previous_secrets: Vec::new(),
            token_ttl_secs: 86_400,
            issuer: "gatehouse".to_string(),
            bcrypt_cost: 12,
            min_password_len: 8,
            allow_registration: true,
            session_ttl_secs: 2_592_000,
            session_idle_secs: 604_800,
            refresh_reuse_secs: 10,
            reset_token_ttl_secs: 1800,
            verify_token_ttl_secs: 86_400,
            require_verified_email: false,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            body_bytes: 65_536,
            login_failures_per_account: 5,
            login_failures_per_address: 100,
            login_window_secs: 900,
            registrations_per_address: 20,
            mail_requests_per_address: 20,
        }
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
}

/// Top-level keys an environment variable may set. Other `GATEHOUSE_*`
/// variables (say, a test suite's own) are not configuration and are ignored;
/// an unknown key *inside* a section is still refused.
const ENV_SECTIONS: &[&str] = &[
    "server", "auth", "limits", "data_dir", "store", "mail", "cors", "audit", "metrics",
];

impl Settings {
    /// Merges every source, then validates. The error is one line naming the
    /// offending key (or file).
    pub fn load(overrides: &Overrides) -> anyhow::Result<Settings> {
        Self::from_figment(Self::figment(overrides)?)
    }

    /// The merged sources, before extraction.
    pub fn figment(overrides: &Overrides) -> anyhow::Result<Figment> {
        let file = match &overrides.config_file {
            Some(path) => {
                if !path.is_file() {
                    bail!("config file {} does not exist", path.display());
                }
                path.clone()
            }
            None => PathBuf::from(DEFAULT_CONFIG_FILE),
        };
        let env = Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
            let section = key.as_str().split('.').next().unwrap_or_default();
            ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
        });
        let mut figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(&file))
            .merge(env);
        if let Some(host) = &overrides.host {
            figment = figment.merge(("server.host", host));
        }
        if let Some(port) = overrides.port {
            figment = figment.merge(("server.port", port));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(("data_dir", dir));
        }
        Ok(figment)
    }

    pub fn from_figment(figment: Figment) -> anyhow::Result<Settings> {
        let settings: Settings = figment.extract().map_err(|error| {
            // figment lists every error; the first one, with its key and
            // source, is the line an operator needs.
            let first = error.into_iter().next();
            match first {
                Some(e) => anyhow!("invalid configuration: {e}"),
                None => anyhow!("invalid configuration"),
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rules serde cannot express. Each error names its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        fn check(ok: bool, key: &str, rule: &str) -> anyhow::Result<()> {
            if ok {
                Ok(())
            } else {
                Err(anyhow!("invalid configuration: {key} {rule}"))
            }
        }
        let s = &self.server;
        check(
            (1..=3600).contains(&s.header_timeout_secs),
            "server.header_timeout_secs",
            "must be between 1 and 3600",
        )?;
        check(
            (1..=1_000_000).contains(&s.max_connections),
            "server.max_connections",
            "must be between 1 and 1000000",
        )?;
        check(
            (1..=3600).contains(&s.write_timeout_secs),
            "server.write_timeout_secs",
            "must be between 1 and 3600",
        )?;
        check(
            (1..=86_400).contains(&s.idle_timeout_secs),
            "server.idle_timeout_secs",
            "must be between 1 and 86400",
        )?;
        if let Some(header) = &s.client_ip_header {
            check(
                hyper::header::HeaderName::from_bytes(header.as_bytes()).is_ok(),
                "server.client_ip_header",
                "must be a valid HTTP header name",
            )?;
        }
        check(
            !self.data_dir.as_os_str().is_empty(),
            "data_dir",
            "must not be empty",
        )?;
        let a = &self.auth;
        if let Some(secret) = &a.secret {
            check(
                secret.expose().len() >= 32,
                "auth.secret",
                "must be at least 32 bytes long",
            )?;
        }
        for previous in &a.previous_secrets {
            check(
                previous.expose().len() >= 32,
                "auth.previous_secrets",
                "must hold keys of at least 32 bytes each",
            )?;
            check(
                a.secret
                    .as_ref()
                    .is_none_or(|s| s.expose() != previous.expose()),
                "auth.previous_secrets",
                "must not repeat auth.secret",
            )?;
        }
        check(
            a.previous_secrets.len() <= 16,
            "auth.previous_secrets",
            "must hold at most 16 keys",
        )?;
        check(
            (1..=31_536_000).contains(&a.token_ttl_secs),
            "auth.token_ttl_secs",
            "must be between 1 and 31536000 (one year)",
        )?;
        check(
            !a.issuer.trim().is_empty(),
            "auth.issuer",
            "must not be empty",
        )?;
        check(
            (4..=31).contains(&a.bcrypt_cost),
            "auth.bcrypt_cost",
            "must be between 4 and 31",
        )?;
        check(
            (1..=72).contains(&a.min_password_len),
            "auth.min_password_len",
            "must be between 1 and 72",
        )?;
        check(
            (1..=315_360_000).contains(&a.session_ttl_secs),
            "auth.session_ttl_secs",
            "must be between 1 and 315360000 (ten years)",
        )?;
        check(
            (1..=315_360_000).contains(&a.session_idle_secs),
            "auth.session_idle_secs",
            "must be between 1 and 315360000 (ten years)",
        )?;
        check(
            a.refresh_reuse_secs <= 300,
            "auth.refresh_reuse_secs",
            "must be between 0 and 300",
        )?;
        if let Some(url) = &self.store.url {
            let url = url.expose();
            check(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "store.url",
                "must be a postgres:// URL",
            )?;
            check(
                url.parse::<tokio_postgres::Config>().is_ok(),
                "store.url",
                "is not a valid PostgreSQL URL",
            )?;
            // A key generated in one instance's data_dir would make its
            // tokens fail on every other instance sharing the database.
            check(
                self.auth.secret.is_some(),
                "auth.secret",
                "must be set when store.url is: every instance sharing the database must sign with the same key",
            )?;
        }
        let l = &self.limits;
        check(
            (1024..=64 * 1024 * 1024).contains(&l.body_bytes),
            "limits.body_bytes",
            "must be between 1024 and 67108864",
        )?;
        check(
            l.login_failures_per_account >= 1,
            "limits.login_failures_per_account",
            "must be at least 1",
        )?;
        check(
            (1..=10_000).contains(&l.login_failures_per_address),
            "limits.login_failures_per_address",
            "must be between 1 and 10000",
        )?;
        check(
            (1..=86_400).contains(&l.login_window_secs),
            "limits.login_window_secs",
            "must be between 1 and 86400",
        )?;
        check(
            (1..=100_000).contains(&l.registrations_per_address),
            "limits.registrations_per_address",
            "must be between 1 and 100000",
        )?;
        check(
            l.login_failures_per_account <= 10_000,
            "limits.login_failures_per_account",
            "must be at most 10000",
        )?;
        check(
            (1..=100_000).contains(&l.mail_requests_per_address),
            "limits.mail_requests_per_address",
            "must be between 1 and 100000",
        )?;
        check(
            (1..=604_800).contains(&a.reset_token_ttl_secs),
            "auth.reset_token_ttl_secs",
            "must be between 1 and 604800 (a week)",
        )?;
        check(
            (1..=2_592_000).contains(&a.verify_token_ttl_secs),
            "auth.verify_token_ttl_secs",
            "must be between 1 and 2592000 (30 days)",
        )?;
        for origin in &self.cors.allowed_origins {
            if let Err(rule) = check_origin(origin) {
                return Err(anyhow!(
                    "invalid configuration: cors.allowed_origins {rule}"
                ));
            }
        }
        check(
            self.cors.max_age_secs <= 86_400,
            "cors.max_age_secs",
            "must be between 0 and 86400",
        )?;
        check(
            (1..=36_500).contains(&self.audit.retention_days),
            "audit.retention_days",
            "must be between 1 and 36500",
        )?;
        check(
            (1..=1_000_000).contains(&self.audit.max_failures_per_minute),
            "audit.max_failures_per_minute",
            "must be between 1 and 1000000",
        )?;
        if let Some(listen) = self.metrics.listen {
            // The API's port must not serve the metrics, nor the two fight
            // over one address (port 0 picks a free port each).
            check(
                listen.port() == 0 || listen != SocketAddr::new(s.host, s.port),
                "metrics.listen",
                "must differ from server.host and server.port",
            )?;
        }
        self.validate_mail()
    }

    fn validate_mail(&self) -> anyhow::Result<()> {
        let m = &self.mail;
        let fail = |key: &str, rule: &str| Err(anyhow!("invalid configuration: {key} {rule}"));
        if let Some(url) = &m.smtp_url {
            if let Err(reason) = check_smtp_url(url.expose()) {
                return fail("mail.smtp_url", &reason);
            }
        } else if self.auth.require_verified_email {
            return fail(
                "auth.require_verified_email",
                "needs mail.smtp_url: without mail nobody could confirm an address",
            );
        }
        if m.from.parse::<lettre::message::Mailbox>().is_err() {
            return fail("mail.from", "must be an address or `Name <address>`");
        }
        if let Some(public_url) = &m.public_url {
            if let Err(reason) = check_public_url(public_url) {
                return fail("mail.public_url", &reason);
            }
        }
        for (key, template) in [
            ("mail.reset_url", &m.reset_url),
            ("mail.verify_url", &m.verify_url),
        ] {
            if !template.contains("{token}") {
                return fail(key, "must contain {token}");
            }
        }
        if m.resend_secs > 86_400 {
            return fail("mail.resend_secs", "must be between 0 and 86400");
        }
        Ok(())
    }

    /// Where the generated signing key lives when `auth.secret` is unset.
    pub fn secret_file(&self) -> PathBuf {
        self.data_dir.join("secret.key")
    }

    pub fn database_dir(&self) -> PathBuf {
        database_dir(&self.data_dir)
    }
}

/// `mail.smtp_url`'s rule: a URL lettre can build a transport from.
pub fn check_smtp_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
        return Err("must be an smtp:// or smtps:// URL".into());
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
        .map(|_| ())
        .map_err(|_| "is not a valid SMTP URL".into())
}

/// `mail.public_url`'s rule: an http(s) URL; a trailing `/` is dropped.
pub fn check_public_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.contains(['#', '?', ' ']) || rest.chars().any(char::is_control) {
        return Err("must be a base URL (scheme, host, optional port and path)".into());
    }
    Ok(())
}

/// `cors.allowed_origins`' rule for one entry: `*` alone, or
/// `scheme://host[:port]` with nothing after.
pub fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must hold origins such as https://app.example.com, or \"*\"")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest.contains(['/', '?', '#', ' ', '*', '@'])
        || rest.chars().any(char::is_control)
    {
        return Err("must hold origins (scheme://host[:port], no path), or \"*\"");
    }
    Ok(())
}

/// The sled folder inside a data dir (shared with `admin create`).
pub fn database_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

#[cfg(test)]
// figment's `Jail` closures return its large error type; that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail, overrides: Overrides) -> anyhow::Result<Settings> {
        let _ = jail;
        Settings::load(&overrides)
    }

    #[test]
    fn defaults_match_the_contract() {
        Jail::expect_with(|jail| {
            let s = load_in(jail, Overrides::default()).unwrap();
            assert_eq!(s.server.port, 3000);
            assert_eq!(s.server.host.to_string(), "127.0.0.1");
            assert_eq!(s.auth.bcrypt_cost, 12);
            assert_eq!(s.auth.token_ttl_secs, 86_400);
            assert_eq!(s.limits.body_bytes, 65_536);
            assert!(s.auth.secret.is_none());
            assert_eq!(s.auth.reset_token_ttl_secs, 1800);
            assert_eq!(s.auth.verify_token_ttl_secs, 86_400);
            assert!(!s.auth.require_verified_email);
            assert!(s.mail.smtp_url.is_none());
            assert_eq!(s.mail.from, "gatehouse <no-reply@localhost>");
            assert_eq!(
                s.mail.reset_url,
                "{public_url}/reset-password#token={token}"
            );
            assert_eq!(s.mail.verify_url, "{public_url}/verify-email#token={token}");
            assert_eq!(s.mail.resend_secs, 60);
            assert_eq!(s.limits.mail_requests_per_address, 20);
            assert_eq!(s.metrics.listen, None, "metrics are off by default");
            Ok(())
        });
    }

    #[test]
    fn later_sources_win() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "config.toml",
                "data_dir = \"/from/file\"\n[server]\nport = 4000\nheader_timeout_secs = 3\n",
            )?;
            jail.set_env("GATEHOUSE_SERVER__PORT", "5000");
            jail.set_env("GATEHOUSE_AUTH__BCRYPT_COST", "4");
            jail.set_env("GATEHOUSE_TEST_DATABASE_URL", "not config");
            let s = load_in(jail, Overrides::default()).unwrap();
            assert_eq!(s.server.port, 5000);
            assert_eq!(s.server.header_timeout_secs, 3);
            assert_eq!(s.auth.bcrypt_cost, 4);
            assert_eq!(s.data_dir, PathBuf::from("/from/file"));
            let flags = Overrides {
                port: Some(6000),
                data_dir: Some("/from/flag".into()),
                ..Overrides::default()
            };
            let s = load_in(jail, flags).unwrap();
            assert_eq!(s.server.port, 6000);
            assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("GATEHOUSE_AUTH__BCRYPT_COST", "3", "auth.bcrypt_cost"),
            ("GATEHOUSE_AUTH__SECRET", "too short", "auth.secret"),
            ("GATEHOUSE_SERVER__PORT", "eighty", "port"),
            ("GATEHOUSE_SERVER__HOST", "not an ip", "host"),
            ("GATEHOUSE_LIMITS__BODY_BYTES", "0", "limits.body_bytes"),
            ("GATEHOUSE_SERVER__PROT", "1", "prot"),
            ("GATEHOUSE_STORE__URL", "mysql://localhost/x", "store.url"),
            (
                "GATEHOUSE_MAIL__SMTP_URL",
                "http://mail.example.com",
                "mail.smtp_url",
            ),
            ("GATEHOUSE_MAIL__FROM", "not an address", "mail.from"),
            (
                "GATEHOUSE_MAIL__PUBLIC_URL",
                "auth.example.com",
                "mail.public_url",
            ),
            (
                "GATEHOUSE_MAIL__RESET_URL",
                "https://x.example/reset",
                "mail.reset_url",
            ),
            (
                "GATEHOUSE_MAIL__VERIFY_URL",
                "{public_url}/v",
                "mail.verify_url",
            ),
            ("GATEHOUSE_MAIL__RESEND_SECS", "86401", "mail.resend_secs"),
            (
                "GATEHOUSE_AUTH__REQUIRE_VERIFIED_EMAIL",
                "true",
                "auth.require_verified_email",
            ),
            (
                "GATEHOUSE_AUTH__RESET_TOKEN_TTL_SECS",
                "604801",
                "auth.reset_token_ttl_secs",
            ),
            (
                "GATEHOUSE_AUTH__VERIFY_TOKEN_TTL_SECS",
                "0",
                "auth.verify_token_ttl_secs",
            ),
            (
                "GATEHOUSE_CORS__ALLOWED_ORIGINS",
                "[\"app.example.com\"]",
                "cors.allowed_origins",
            ),
            (
                "GATEHOUSE_CORS__ALLOWED_ORIGINS",
                "[\"https://app.example.com/path\"]",
                "cors.allowed_origins",
            ),
            ("GATEHOUSE_CORS__MAX_AGE_SECS", "86401", "cors.max_age_secs"),
            ("GATEHOUSE_METRICS__LISTEN", "localhost", "metrics.listen"),
            (
                "GATEHOUSE_METRICS__LISTEN",
                "127.0.0.1:3000",
                "metrics.listen",
            ),
            (
                "GATEHOUSE_AUDIT__RETENTION_DAYS",
                "0",
                "audit.retention_days",
            ),
            (
                "GATEHOUSE_AUDIT__MAX_FAILURES_PER_MINUTE",
                "0",
                "audit.max_failures_per_minute",
            ),
            (
                "GATEHOUSE_LIMITS__MAIL_REQUESTS_PER_ADDRESS",
                "0",
                "limits.mail_requests_per_address",
            ),
        ];
        for (var, value, key) in cases {
            Jail::expect_with(|jail| {
                jail.set_env(var, value);
                let error = load_in(jail, Overrides::default()).unwrap_err().to_string();
                assert!(error.to_lowercase().contains(key), "{var}={value}: {error}");
                assert!(!error.contains('\n'), "one line: {error}");
                Ok(())
            });
        }
    }

    #[test]
    fn cors_origins_come_from_the_environment_as_a_toml_list() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "GATEHOUSE_CORS__ALLOWED_ORIGINS",
                "[\"https://app.example\", \"http://localhost:5173\"]",
            );
            let s = load_in(jail, Overrides::default()).unwrap();
            assert_eq!(
                s.cors.allowed_origins,
                ["https://app.example", "http://localhost:5173"]
            );
            assert_eq!(s.cors.max_age_secs, 600);
            Ok(())
        });
    }

    #[test]
    fn the_shipped_config_file_holds_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
        let shipped = Settings::from_figment(Figment::from(Toml::file_exact(path))).unwrap();
        assert_eq!(
            serde_json::to_value(&shipped).unwrap(),
            serde_json::to_value(Settings::default()).unwrap()
        );
    }

    #[test]
    fn every_config_section_is_reachable_from_the_environment() {
        // A section missing from ENV_SECTIONS would be silently ignored when
        // set through GATEHOUSE_<SECTION>__<KEY>.
        let defaults = serde_json::to_value(Settings::default()).unwrap();
        let mut sections: Vec<&str> = defaults
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed = ENV_SECTIONS.to_vec();
        sections.sort_unstable();
        listed.sort_unstable();
        assert_eq!(
            sections, listed,
            "ENV_SECTIONS must list every top-level key"
        );
        // And each is actually read: set one key per section through the
        // environment and see it arrive.
        Jail::expect_with(|jail| {
            jail.set_env("GATEHOUSE_SERVER__IDLE_TIMEOUT_SECS", "7");
            jail.set_env("GATEHOUSE_AUTH__ISSUER", "from-env");
            jail.set_env("GATEHOUSE_LIMITS__REGISTRATIONS_PER_ADDRESS", "3");
            jail.set_env("GATEHOUSE_DATA_DIR", "/from/env");
            jail.set_env("GATEHOUSE_STORE__URL", "postgres://u@localhost/x");
            jail.set_env("GATEHOUSE_AUTH__SECRET", "x".repeat(40));
            jail.set_env("GATEHOUSE_METRICS__LISTEN", "127.0.0.1:9464");
            let s = load_in(jail, Overrides::default()).unwrap();
            assert_eq!(
                s.metrics.listen,
                Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
            );
            assert_eq!(s.server.idle_timeout_secs, 7);
            assert_eq!(s.auth.issuer, "from-env");
            assert_eq!(s.limits.registrations_per_address, 3);
            assert_eq!(s.data_dir, PathBuf::from("/from/env"));
            assert!(s.store.url.is_some());
            Ok(())
        });
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("a".repeat(40));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn a_missing_config_file_named_by_flag_is_an_error() {
        let overrides = Overrides {
            config_file: Some("/nonexistent/gatehouse.toml".into()),
            ..Overrides::default()
        };
        let error = Settings::load(&overrides).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/gatehouse.toml"), "{error}");
    }
}
