//! The store: users by id and by email, atomic create / update / delete with
//! the email uniqueness rule, sessions and the rotation of their refresh
//! tokens, token revocation and login-failure counting, the signing key set
//! (compare-and-swap), behind one type with two implementations:
//!
//! - [`sled::SledStore`] (the default): an embedded database in `data_dir`,
//!   with login failures and registrations counted in this process's memory;
//! - [`postgres::PgStore`] (when `store.url` is a `postgres://` URL): tables
//!   shared by every gatehouse instance on that database, login failures and
//!   registrations included (under keyed hashes, [`SharedKeys`]).
//!
//! [`Store`] holds an enum over the two rather than a trait object: the set
//! is closed, dispatch is static, and every method's contract is written
//! once, here; each public method is timed into the metrics
//! (`gatehouse_store_operation_duration_seconds{op}`). Every write returns
//! only once it is durable, with the audit events of its change (see
//! `domain::audit`) in the same write.

pub mod filter;
pub mod postgres;
pub mod record;
pub mod sled;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Settings;
use crate::domain::audit::{self, Action, Event, FailureBudget, FullMinute, Origin};
use crate::domain::mail_token::{MailTokenKind, PendingToken, PresentedMailToken};
use crate::domain::session::{Presentation, PresentedToken, RefreshKeys, Session, SessionPolicy};
use crate::domain::signing::{KeySet, StoredKey};
use crate::domain::throttle::{LoginThrottle, RetryAfter, SharedKeys, ThrottleLimits};
use crate::domain::token::LEEWAY_SECS;
pub use crate::domain::user::UserPatch;
use crate::domain::user::{Role, User};
use crate::metrics::{Metrics, SessionEnd, StoreOp};

pub use self::postgres::{Counter, PgStore};
pub use self::sled::SledStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the email belongs to another user")]
    EmailTaken,
    #[error("no such user")]
    NotFound,
    /// The change would leave no admin (demoting or deleting the last one).
    #[error("the last admin cannot be demoted or deleted")]
    LastAdmin,
    #[error("database error: {0}")]
    Database(#[from] ::sled::Error),
    /// The database cannot be reached or did not answer in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the storage task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The requests counted per client address, whatever their outcome.
#[derive(Clone, Copy)]
enum PerAddress {
    Registrations,
    MailRequests,
}

/// The outcome of presenting a refresh token ([`Store::refresh`]).
#[derive(Debug)]
pub enum Refresh {
    /// The token was current and is now spent: `refresh_token` is its
    /// successor. Or it was spent moments ago (within the reuse window):
    /// `refresh_token` is the session's current one, again.
    Granted {
        session: Session,
        user: Arc<User>,
        refresh_token: String,
    },
    /// A spent token came back after the window: the session has ended;
    /// `ended` if by this presentation (a racing one, or a logout, may
    /// have ended it first).
    Reused { session: Session, ended: bool },
    /// Not a token of a live session (unknown, ended, expired, its user
    /// deleted or its password changed).
    Refused,
}

/// Sessions a user keeps at most; a new one beyond ends the oldest.
pub const MAX_SESSIONS_PER_USER: usize = 100;

/// Attempts of a rotation that keeps losing races, before giving up: each
/// loss means another rotation won, after which the token is no longer
/// current and the next attempt decides without a write.
const ROTATION_ATTEMPTS: usize = 4;

/// A login attempt counted as a failure until [`Store::login_succeeded`].
#[derive(Debug)]
pub struct LoginAttempt {
    email: String,
    client: IpAddr,
    id: uuid::Uuid,
}

/// One page of an export ([`Store::export`]), in the order the file lists
/// them: the key set, then users by id, then audit events.
#[derive(Debug)]
pub enum ExportPage {
    Keys(KeySet),
    Users(Vec<User>),
    Events(Vec<Event>),
}

/// Records read from an export page at a time: a page of users is about
/// 150 KB of JSON, and at most a few pages are in memory at once.
pub const EXPORT_PAGE: usize = 500;

/// What an import writes ([`Store::import`]): all of it, or nothing.
#[derive(Debug, Default)]
pub struct Import {
    pub users: Vec<User>,
    pub keys: Option<KeySet>,
    pub events: Vec<Event>,
}

/// The store the server uses: one of the two backends, and the metrics its
/// operations are timed into (`gatehouse_store_operation_duration_seconds`).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    metrics: Metrics,
}

/// The two stores; [`Store`] times each operation around them.
#[derive(Clone)]
enum Backend {
    Sled {
        db: SledStore,
        throttle: Arc<LoginThrottle>,
        /// The per-minute budgets of `login_failed` and `login_throttled`
        /// events (this process is the only one writing the database).
        budgets: Arc<[FailureBudget; 2]>,
    },
    Postgres {
        db: PgStore,
        limits: ThrottleLimits,
        /// Derived from `auth.secret`, which every instance shares.
        keys: SharedKeys,
        /// `audit.max_failures_per_minute`, counted in the database.
        failures_per_minute: u64,
        /// What this instance knows of the shared budgets of
        /// `login_failed` and `login_throttled`.
        full_minutes: Arc<[FullMinute; 2]>,
    },
}

impl Store {
    /// Opens the store `settings` select: PostgreSQL if `store.url` is set
    /// (connecting and migrating), else sled in `data_dir`.
    /// Its operations are timed into `metrics` (nothing is, when off).
    pub async fn open(settings: &Settings, metrics: Metrics) -> Result<Store, StoreError> {
        Store::open_with(settings, metrics, true).await
    }

    /// [`Store::open`] without changing a PostgreSQL schema: an error if a
    /// migration is due (for an export, which may run beside instances of
    /// the version before).
    pub async fn open_current(settings: &Settings) -> Result<Store, StoreError> {
        Store::open_with(settings, Metrics::off(), false).await
    }

    async fn open_with(
        settings: &Settings,
        metrics: Metrics,
        migrate: bool,
    ) -> Result<Store, StoreError> {
        let limits = ThrottleLimits::from(&settings.limits);
        let failures_per_minute = settings.audit.max_failures_per_minute;
        let backend = match &settings.store.url {
            Some(url) => {
                // Settings validation requires the secret with store.url.
                let secret =
                    settings.auth.secret.as_ref().ok_or_else(|| {
                        StoreError::Unavailable("store.url needs auth.secret".into())
                    })?;
                Backend::Postgres {
                    db: PgStore::connect(url.expose(), migrate).await?,
                    limits,
                    keys: SharedKeys::new(secret.expose().as_bytes()),
                    failures_per_minute,
                    full_minutes: Arc::default(),
                }
            }
            None => Backend::Sled {
                db: SledStore::open(&settings.database_dir())?,
                throttle: Arc::new(LoginThrottle::new(limits)),
                budgets: Arc::new([
                    FailureBudget::new(failures_per_minute),
                    FailureBudget::new(failures_per_minute),
                ]),
            },
        };
        Ok(Store { backend, metrics })
    }

    /// Which store this is, for the start-up log line.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sled { .. } => "sled",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// Shared, as the sled store hands out its cached copy.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        self.metrics
            .time(StoreOp::UserById, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.user_by_id(id).await,
                    Backend::Postgres { db, .. } => Ok(db.user_by_id(id).await?.map(Arc::new)),
                }
            })
            .await
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.metrics
            .time(StoreOp::UserByEmail, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.user_by_email(email).await,
                    Backend::Postgres { db, .. } => db.user_by_email(email).await,
                }
            })
            .await
    }

    /// Up to `limit` users with ids after `after`, in id order, and whether
    /// more follow.
    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), StoreError> {
        self.metrics
            .time(StoreOp::ListUsers, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.list_users(after, limit).await,
                    Backend::Postgres { db, .. } => db.list_users(after, limit).await,
                }
            })
            .await
    }

    /// Adds a user, with `events`; `EmailTaken` if its email is in use,
    /// whatever other requests race for it.
    pub async fn insert_user(&self, user: User, events: Vec<Event>) -> Result<User, StoreError> {
        self.metrics
            .time(StoreOp::InsertUser, async {
                let inserted = match &self.backend {
                    Backend::Sled { db, .. } => db.insert_user(user, events.clone()).await,
                    Backend::Postgres { db, .. } => db.insert_user(user, events.clone()).await,
                }?;
                log_events(&events);
                Ok(inserted)
            })
            .await
    }

    /// Applies `patch` to the user `id` and returns the result; a new
    /// password hash bumps the password version. `NotFound`, `EmailTaken`,
    /// `LastAdmin` when it demotes the only admin (decided atomically: two
    /// admins demoting each other at once leave one). The change's events
    /// (`audit::user_changes`, by `origin`) are decided from the user as the
    /// write finds it, and written with it.
    pub async fn update_user(
        &self,
        id: &str,
        patch: UserPatch,
        now: u64,
        origin: &Origin,
    ) -> Result<User, StoreError> {
        self.metrics
            .time(StoreOp::UpdateUser, async {
                let (updated, events) = match &self.backend {
                    Backend::Sled { db, .. } => {
                        db.update_user(id, patch, now, origin.clone()).await
                    }
                    Backend::Postgres { db, .. } => db.update_user(id, patch, now, origin).await,
                }?;
                log_events(&events);
                Ok(updated)
            })
            .await
    }

    /// Removes the user and frees its email, with `events`; returns the
    /// removed user. `LastAdmin` if it is the only admin (atomically, as for
    /// updates).
    pub async fn delete_user(&self, id: &str, events: Vec<Event>) -> Result<User, StoreError> {
        self.metrics
            .time(StoreOp::DeleteUser, async {
                let (deleted, sessions) = match &self.backend {
                    Backend::Sled { db, .. } => db.delete_user(id, events.clone()).await,
                    Backend::Postgres { db, .. } => db.delete_user(id, events.clone()).await,
                }?;
                log_events(&events);
                self.metrics
                    .sessions_ended(SessionEnd::UserDeleted, sessions);
                Ok(deleted)
            })
            .await
    }

    /// Replaces the user's password hash `old` with `new`, a hash of the same
    /// password at a higher cost (see `PasswordHasher::needs_upgrade`),
    /// unless the hash changed meanwhile (false: nothing written). The
    /// password version stays: the user's sessions and tokens go on.
    pub async fn upgrade_password_hash(
        &self,
        id: &str,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        self.metrics
            .time(StoreOp::UpgradePasswordHash, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.upgrade_password_hash(id, old, new).await,
                    Backend::Postgres { db, .. } => db.upgrade_password_hash(id, old, new).await,
                }
            })
            .await
    }

    /// Creates an admin, or makes the user with this email an admin with this
    /// password hash (which revokes that user's earlier tokens). True if
    /// created. Either way the address counts as verified: the operator gave
    /// it (so `auth.require_verified_email` never locks the first admin out).
    pub async fn upsert_admin(
        &self,
        name: String,
        email: String,
        password_hash: String,
        now: u64,
    ) -> Result<(User, bool), StoreError> {
        self.metrics
            .time(StoreOp::UpsertAdmin, async {
                let origin = Origin::console();
                match self.user_by_email(&email).await? {
                    Some(existing) => {
                        let patch = UserPatch {
                            role: Some(Role::Admin),
                            password_hash: Some(password_hash),
                            // The operator typed the address at the console.
                            email_verified: Some(true),
                            ..UserPatch::default()
                        };
                        let user = self.update_user(&existing.id, patch, now, &origin).await?;
                        Ok((user, false))
                    }
                    None => {
                        let mut user = User::new(name, email, Role::Admin, password_hash, now);
                        user.email_verified = true;
                        let event = Event::new(Action::UserCreated, Some(&user.id), &origin, now)
                            .with("email", user.email.as_str())
                            .with("role", "admin");
                        Ok((self.insert_user(user, vec![event]).await?, true))
                    }
                }
            })
            .await
    }

    /// Stores a new session; `NotFound` if its user is gone. A user keeps
    /// at most [`MAX_SESSIONS_PER_USER`]: the oldest beyond it end, so that
    /// signing in over and over (which needs only the password) cannot
    /// grow the store, or a listing, without bound.
    /// `events` are written with it.
    pub async fn insert_session(
        &self,
        session: Session,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::InsertSession, async {
                let keep = MAX_SESSIONS_PER_USER;
                let evicted = match &self.backend {
                    Backend::Sled { db, .. } => {
                        db.insert_session(session, keep, events.clone()).await
                    }
                    Backend::Postgres { db, .. } => {
                        db.insert_session(session, keep, events.clone()).await
                    }
                }?;
                log_events(&events);
                self.metrics.sessions_ended(SessionEnd::Evicted, evicted);
                Ok(())
            })
            .await
    }

    /// The session `id` with its user, alive or not (the caller decides with
    /// `Session::is_alive`); `None` if either is gone. The token check calls
    /// this on every request with a `sid`: on sled it is served from memory,
    /// on PostgreSQL it is one statement.
    pub async fn session_and_user(
        &self,
        id: &str,
    ) -> Result<Option<(Arc<Session>, Arc<User>)>, StoreError> {
        self.metrics
            .time(StoreOp::SessionAndUser, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.session_and_user(id).await,
                    Backend::Postgres { db, .. } => Ok(db
                        .session_and_user(id)
                        .await?
                        .map(|(session, user)| (Arc::new(session), Arc::new(user)))),
                }
            })
            .await
    }

    /// Presents a refresh token (already parsed: its tag verified):
    /// rotates the session if the token is current (atomically: of racing
    /// presentations of one token, on any number of instances, exactly one
    /// rotates, and the others find it spent within the window), answers
    /// the current token again within `policy.reuse_secs` of its
    /// rotation, and ends the session on reuse after that. A rotation is
    /// recorded as `refresh` (the user as actor), a reuse as
    /// `refresh_token_reused` (no actor: the thief or the victim), each from
    /// `origin`; an answer within the window changes nothing and records
    /// nothing.
    pub async fn refresh(
        &self,
        presented: &PresentedToken,
        keys: &RefreshKeys,
        policy: &SessionPolicy,
        now: u64,
        origin: &Origin,
    ) -> Result<Refresh, StoreError> {
        self.metrics
            .time(StoreOp::Refresh, async {
                for _ in 0..ROTATION_ATTEMPTS {
                    let Some((session, user)) =
                        self.session_and_user(&presented.session_id).await?
                    else {
                        return Ok(Refresh::Refused);
                    };
                    if !session.is_alive(policy, user.password_version, now) {
                        return Ok(Refresh::Refused);
                    }
                    let corrupt = |_| StoreError::Corrupt {
                        key: session.id.clone(),
                        reason: "the session id is not a UUID".into(),
                    };
                    match session.classify(presented, policy, now) {
                        Presentation::Current => {
                            let (next, refresh_token) =
                                session.rotated(keys, policy, now).map_err(corrupt)?;
                            let event = Event::new(
                                Action::Refresh,
                                Some(&session.user_id),
                                &origin.by(&session.user_id),
                                now,
                            )
                            .with("session_id", session.id.as_str());
                            if self
                                .replace_session(&session, next.clone(), vec![event])
                                .await?
                            {
                                return Ok(Refresh::Granted {
                                    session: next,
                                    user,
                                    refresh_token,
                                });
                            }
                            // Another presentation rotated first: decide again.
                        }
                        Presentation::JustSpent => {
                            let refresh_token = session.current_token(keys).map_err(corrupt)?;
                            return Ok(Refresh::Granted {
                                session: Session::clone(&session),
                                user,
                                refresh_token,
                            });
                        }
                        Presentation::Reused => {
                            let event = Event::new(
                                Action::RefreshTokenReused,
                                Some(&session.user_id),
                                origin,
                                now,
                            )
                            .with("session_id", session.id.as_str());
                            let ended = self.end_session(&session.id, vec![event]).await?;
                            return Ok(Refresh::Reused {
                                ended: ended.is_some(),
                                session: ended.unwrap_or_else(|| Session::clone(&session)),
                            });
                        }
                        Presentation::Unknown => return Ok(Refresh::Refused),
                    }
                }
                Err(StoreError::Unavailable(
                    "a session's rotation kept losing races".into(),
                ))
            })
            .await
    }

    async fn replace_session(
        &self,
        current: &Session,
        next: Session,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let replaced = match &self.backend {
            Backend::Sled { db, .. } => db.replace_session(current, next, events.clone()).await,
            Backend::Postgres { db, .. } => db.replace_session(current, next, events.clone()).await,
        }?;
        if replaced {
            log_events(&events);
        }
        Ok(replaced)
    }

    /// Ends the session `id`; returns it if it was stored. `events` are
    /// written only if it was.
    pub async fn end_session(
        &self,
        id: &str,
        events: Vec<Event>,
    ) -> Result<Option<Session>, StoreError> {
        self.metrics
            .time(StoreOp::EndSession, async {
                let ended = match &self.backend {
                    Backend::Sled { db, .. } => db.end_session(id, events.clone()).await,
                    Backend::Postgres { db, .. } => db.end_session(id, events.clone()).await,
                }?;
                if ended.is_some() {
                    log_events(&events);
                }
                Ok(ended)
            })
            .await
    }

    /// Ends every session of `user_id` except `except`; returns those ended
    /// (alive or not). `events` are written only if one was.
    pub async fn end_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        events: Vec<Event>,
    ) -> Result<Vec<Session>, StoreError> {
        self.metrics
            .time(StoreOp::EndUserSessions, async {
                let ended = match &self.backend {
                    Backend::Sled { db, .. } => {
                        db.end_user_sessions(user_id, except, events.clone()).await
                    }
                    Backend::Postgres { db, .. } => {
                        db.end_user_sessions(user_id, except, events.clone()).await
                    }
                }?;
                if !ended.is_empty() {
                    log_events(&events);
                }
                Ok(ended)
            })
            .await
    }

    /// Keeps `pending` as the last mail token of `kind` sent to `user_id`,
    /// unless one of that kind was sent less than `resend_secs` before
    /// `pending.sent_at` (0: always written, a newer token supersedes), or
    /// the user is gone or no longer has `pending.email` (an email change
    /// raced the mail): then `false`, nothing written, no mail to send.
    /// `events` are written only with the token.
    pub async fn put_mail_token(
        &self,
        user_id: &str,
        kind: MailTokenKind,
        pending: PendingToken,
        resend_secs: u64,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        self.metrics
            .time(StoreOp::PutMailToken, async {
                let logged = events.clone();
                let stored = match &self.backend {
                    Backend::Sled { db, .. } => {
                        db.put_mail_token(user_id, kind, pending, resend_secs, events)
                            .await
                    }
                    Backend::Postgres { db, .. } => {
                        db.put_mail_token(user_id, kind, pending, resend_secs, events)
                            .await
                    }
                }?;
                if stored {
                    log_events(&logged);
                }
                Ok(stored)
            })
            .await
    }

    /// Whether `presented` would be accepted now: a read, so that a route
    /// spends no bcrypt hash on a token that cannot work (`use_mail_token`
    /// decides again, atomically).
    pub async fn mail_token_is_live(
        &self,
        presented: &PresentedMailToken,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.metrics
            .time(StoreOp::MailTokenIsLive, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.mail_token_is_live(presented, now).await,
                    Backend::Postgres { db, .. } => db.mail_token_is_live(presented, now).await,
                }
            })
            .await
    }

    /// Spends the mail token `presented`, if its record accepts it for the
    /// user as stored (unused, unexpired, same address, and for a reset the
    /// same password), applying `change` to the user in the same atomic
    /// write, with `events`; returns the changed user, or `None` (nothing
    /// written).
    pub async fn use_mail_token(
        &self,
        presented: PresentedMailToken,
        now: u64,
        change: impl Fn(&mut User) + Send + Sync + 'static,
        events: Vec<Event>,
    ) -> Result<Option<User>, StoreError> {
        self.metrics
            .time(StoreOp::UseMailToken, async {
                let logged = events.clone();
                let used = match &self.backend {
                    Backend::Sled { db, .. } => {
                        db.use_mail_token(presented, now, change, events).await
                    }
                    Backend::Postgres { db, .. } => {
                        db.use_mail_token(presented, now, change, events).await
                    }
                }?;
                if used.is_some() {
                    log_events(&logged);
                }
                Ok(used)
            })
            .await
    }

    /// Every stored session of `user_id`, alive or not yet purged.
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        self.metrics
            .time(StoreOp::SessionsOf, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.sessions_of(user_id).await,
                    Backend::Postgres { db, .. } => db.sessions_of(user_id).await,
                }
            })
            .await
    }

    /// Records a logged-out token until its expiry, with `events`.
    pub async fn revoke(
        &self,
        jti: &str,
        expires_at: u64,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::Revoke, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.revoke(jti, expires_at, events.clone()).await,
                    Backend::Postgres { db, .. } => {
                        db.revoke(jti, expires_at, events.clone()).await
                    }
                }?;
                log_events(&events);
                Ok(())
            })
            .await
    }

    /// Records `event`, which goes with no change (a failed or throttled
    /// login). An event of a capped action (`Action::is_capped`) is stored
    /// only within `audit.max_failures_per_minute` of its kind a minute (on
    /// every instance together, on PostgreSQL); the next one stored after
    /// some were dropped says how many in `detail.suppressed`. Dropped
    /// events are not logged either: a flood would fill the log instead.
    pub async fn record(&self, event: Event, now: u64) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::Record, async {
                let mut event = event;
                if !event.action.is_capped() {
                    match &self.backend {
                        Backend::Sled { db, .. } => db.record(vec![event.clone()]).await,
                        Backend::Postgres { db, .. } => db.record(vec![event.clone()]).await,
                    }?;
                    event.log();
                    return Ok(());
                }
                let suppressed = match &self.backend {
                    Backend::Sled { db, budgets, .. } => {
                        let budget = &budgets[usize::from(event.action == Action::LoginThrottled)];
                        let Some(suppressed) = budget.admit(now) else {
                            return Ok(());
                        };
                        if suppressed > 0 {
                            event = event.with("suppressed", suppressed);
                        }
                        if let Err(error) = db.record(vec![event.clone()]).await {
                            budget.restore(suppressed);
                            return Err(error);
                        }
                        suppressed
                    }
                    Backend::Postgres {
                        db,
                        failures_per_minute,
                        full_minutes,
                        ..
                    } => {
                        let full =
                            &full_minutes[usize::from(event.action == Action::LoginThrottled)];
                        let minute = now / 60;
                        if full.drop_if_full(minute) {
                            return Ok(());
                        }
                        let dropped_here = full.take_dropped();
                        match db
                            .record_capped(&event, minute, *failures_per_minute, dropped_here)
                            .await
                        {
                            Ok(Some(suppressed)) => suppressed,
                            Ok(None) => {
                                full.mark_full(minute);
                                return Ok(());
                            }
                            Err(error) => {
                                full.restore(dropped_here);
                                return Err(error);
                            }
                        }
                    }
                };
                if suppressed > 0 && !event.detail.contains_key("suppressed") {
                    event = event.with("suppressed", suppressed);
                }
                event.log();
                Ok(())
            })
            .await
    }

    /// A page of the audit log (newest first) and whether more follow.
    pub async fn audit_events(
        &self,
        query: &audit::Query,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        self.metrics
            .time(StoreOp::AuditEvents, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.audit_events(query).await,
                    Backend::Postgres { db, .. } => db.audit_events(query).await,
                }
            })
            .await
    }

    /// Deletes the audit events older than `retention_days` before `now`.
    /// Returns how many.
    pub async fn purge_audit(&self, now: u64, retention_days: u64) -> Result<usize, StoreError> {
        self.metrics
            .time(StoreOp::PurgeAudit, async {
                let cut_off_secs = now.saturating_sub(retention_days.saturating_mul(86_400));
                let cut_off = audit::first_id_at(cut_off_secs.saturating_mul(1000));
                match &self.backend {
                    Backend::Sled { db, .. } => db.purge_audit(cut_off).await,
                    Backend::Postgres { db, .. } => db.purge_audit(cut_off).await,
                }
            })
            .await
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        self.metrics
            .time(StoreOp::IsRevoked, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.is_revoked(jti).await,
                    Backend::Postgres { db, .. } => db.is_revoked(jti).await,
                }
            })
            .await
    }

    /// Deletes what has expired: revocations of tokens the verifier refuses
    /// anyway, and (shared store) login failures older than the window.
    /// Returns how many.
    ///
    /// The verifier accepts a token until `exp` + [`LEEWAY_SECS`], so a
    /// revocation is kept until then: purged at `exp`, a logged-out token
    /// would work again for the leeway (the purge also runs at start-up, so
    /// a restart would bring that about). Decided here, once, for both
    /// stores: they are asked to purge what expired before `now` minus the
    /// leeway. (PostgreSQL's login failures are purged by the same cut-off,
    /// that is up to the leeway late, which changes no count: a failure
    /// outside the window is not counted whether or not it is deleted.)
    ///
    /// Sessions that are no longer alive (`Session::is_alive` under
    /// `policy`) are deleted too: no leeway is needed there, as a token whose
    /// session is gone is refused, so deleting one only refuses sooner.
    pub async fn purge_expired(
        &self,
        now: u64,
        policy: &SessionPolicy,
    ) -> Result<usize, StoreError> {
        self.metrics
            .time(StoreOp::PurgeExpired, async {
                let expired_before = now.saturating_sub(LEEWAY_SECS);
                match &self.backend {
                    Backend::Sled { db, .. } => {
                        let policy = *policy;
                        let sessions = db
                            .purge_sessions(move |session, password_version| {
                                password_version
                                    .is_some_and(|pv| session.is_alive(&policy, pv, now))
                            })
                            .await?;
                        self.metrics.sessions_ended(SessionEnd::Expired, sessions);
                        Ok(db.purge_revoked(expired_before).await? + sessions)
                    }
                    Backend::Postgres { db, limits, .. } => {
                        let sessions = db.purge_sessions(now, policy.idle_secs).await?;
                        self.metrics.sessions_ended(SessionEnd::Expired, sessions);
                        Ok(db.purge(expired_before, limits.window_secs).await? + sessions)
                    }
                }
            })
            .await
    }

    /// Starts a login attempt for (email, client): refused with the wait when
    /// a failure count is at its limit, otherwise counted as a failure until
    /// [`Store::login_succeeded`].
    pub async fn begin_login(
        &self,
        email: &str,
        client: IpAddr,
    ) -> Result<Result<LoginAttempt, RetryAfter>, StoreError> {
        self.metrics
            .time(StoreOp::BeginLogin, async {
                let attempt = LoginAttempt {
                    email: email.to_string(),
                    client,
                    id: uuid::Uuid::new_v4(),
                };
                let verdict = match &self.backend {
                    Backend::Sled { throttle, .. } => throttle.begin(email, client),
                    Backend::Postgres {
                        db, limits, keys, ..
                    } => {
                        // The address's counter guards the account's as well: the
                        // account key names the address too.
                        let address = keys.address(client);
                        let account = keys.account(email, client);
                        db.count_attempt(
                            &address,
                            &[
                                Counter::new(&account, limits.per_account),
                                Counter::new(&address, limits.per_address),
                            ],
                            attempt.id,
                            crate::domain::unix_now(),
                            limits.window_secs,
                        )
                        .await?
                    }
                };
                Ok(verdict.map(|()| attempt))
            })
            .await
    }

    /// The attempt succeeded: the (email, client) count is reset and the
    /// client is not charged for it.
    pub async fn login_succeeded(&self, attempt: LoginAttempt) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::LoginSucceeded, async {
                match &self.backend {
                    Backend::Sled { throttle, .. } => {
                        throttle.succeeded(&attempt.email, attempt.client);
                        Ok(())
                    }
                    Backend::Postgres { db, keys, .. } => {
                        let account = keys.account(&attempt.email, attempt.client);
                        db.login_succeeded(&account, &keys.address(attempt.client), attempt.id)
                            .await
                    }
                }
            })
            .await
    }

    /// Counts a registration request from `client`, whatever its outcome:
    /// refused with the wait when the address is at
    /// `limits.registrations_per_address` in the window.
    pub async fn begin_registration(
        &self,
        client: IpAddr,
    ) -> Result<Result<(), RetryAfter>, StoreError> {
        self.metrics
            .time(StoreOp::BeginRegistration, async {
                self.count_per_address(client, PerAddress::Registrations)
                    .await
            })
            .await
    }

    /// Counts a mail-sending request (`forgot`, `verify/request`) from
    /// `client`, for known and unknown addresses alike: refused with the wait
    /// when the address is at `limits.mail_requests_per_address`.
    pub async fn begin_mail_request(
        &self,
        client: IpAddr,
    ) -> Result<Result<(), RetryAfter>, StoreError> {
        self.metrics
            .time(StoreOp::BeginMailRequest, async {
                self.count_per_address(client, PerAddress::MailRequests)
                    .await
            })
            .await
    }

    async fn count_per_address(
        &self,
        client: IpAddr,
        budget: PerAddress,
    ) -> Result<Result<(), RetryAfter>, StoreError> {
        match &self.backend {
            Backend::Sled { throttle, .. } => Ok(match budget {
                PerAddress::Registrations => throttle.count_registration(client),
                PerAddress::MailRequests => throttle.count_mail_request(client),
            }),
            Backend::Postgres {
                db, limits, keys, ..
            } => {
                let (key, limit) = match budget {
                    PerAddress::Registrations => (keys.registrations(client), limits.registrations),
                    PerAddress::MailRequests => (keys.mail_requests(client), limits.mail_requests),
                };
                db.count_attempt(
                    &key,
                    &[Counter::new(&key, limit)],
                    uuid::Uuid::new_v4(),
                    crate::domain::unix_now(),
                    limits.window_secs,
                )
                .await
            }
        }
    }

    /// The signing key set (asymmetric algorithms), if one was ever written.
    pub async fn signing_keys(&self) -> Result<Option<KeySet>, StoreError> {
        self.metrics
            .time(StoreOp::SigningKeys, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.signing_keys().await,
                    Backend::Postgres { db, .. } => db.signing_keys().await,
                }
            })
            .await
    }

    /// Replaces the key set with `keys` if it is still at version
    /// `expected` (`None`: no set yet), atomically, whatever other instances
    /// on the same database write; the new set's version is one more. False
    /// if another write came first: read again and decide again. `events`
    /// are written only with the new set.
    pub async fn swap_signing_keys(
        &self,
        expected: Option<u64>,
        keys: Vec<StoredKey>,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        self.metrics
            .time(StoreOp::SwapSigningKeys, async {
                let swapped = match &self.backend {
                    Backend::Sled { db, .. } => {
                        db.swap_signing_keys(expected, keys, events.clone()).await
                    }
                    Backend::Postgres { db, .. } => {
                        db.swap_signing_keys(expected, keys, events.clone()).await
                    }
                }?;
                if swapped {
                    log_events(&events);
                }
                Ok(swapped)
            })
            .await
    }

    /// How many users are stored (an import needs a store without; the
    /// command line says how many it found). Reads every key on sled.
    pub async fn count_users(&self) -> Result<u64, StoreError> {
        self.metrics
            .time(StoreOp::CountUsers, async {
                match &self.backend {
                    Backend::Sled { db, .. } => Ok(db.count_users()),
                    Backend::Postgres { db, .. } => db.count_users().await,
                }
            })
            .await
    }

    /// Sends everything an export holds to `pages`, in pages of at most
    /// [`EXPORT_PAGE`] records: the signing key set (if any), every user,
    /// and with `with_audit` every audit event. Sessions, revocations, mail
    /// tokens and throttle counts are not exported. On PostgreSQL all of it
    /// is one snapshot (a repeatable-read, read-only transaction), whatever
    /// is written meanwhile; on sled the users are copied to a spool file
    /// between two writes (writes wait for the copy), then paged from it.
    /// Memory stays bounded: a page is read only once the previous one was
    /// taken. Ends early, without error, if `pages` is dropped.
    pub async fn export(
        &self,
        with_audit: bool,
        pages: tokio::sync::mpsc::Sender<ExportPage>,
    ) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::Export, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.export(with_audit, pages).await,
                    Backend::Postgres { db, .. } => db.export(with_audit, pages).await,
                }
            })
            .await
    }

    /// Writes `import` into a store that has no user, all or nothing (on
    /// sled flushed batches between a marker and its removal, an unfinished
    /// import undone at the next open; one PostgreSQL transaction that first
    /// locks the users table, so no registration slips in between the check
    /// and the writes). False, with nothing written, if the store has users. The
    /// caller has checked the records (`transfer`): unique ids and emails,
    /// well-formed fields. A key set replaces any stored one (a store
    /// without users has issued no token worth keeping).
    pub async fn import(&self, import: Import) -> Result<bool, StoreError> {
        self.metrics
            .time(StoreOp::Import, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.import(import).await,
                    Backend::Postgres { db, .. } => db.import(import).await,
                }
            })
            .await
    }

    /// Answers if the store can be read and, on sled, no write has failed
    /// (a failed write is fatal there: the process is exiting).
    pub async fn health(&self) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::Health, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.health().await,
                    Backend::Postgres { db, .. } => db.health().await,
                }
            })
            .await
    }

    /// Writes everything to disk (sled; PostgreSQL commits are already
    /// durable). Called at shutdown; on sled a failure is fatal, as for any
    /// write.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.metrics
            .time(StoreOp::Flush, async {
                match &self.backend {
                    Backend::Sled { db, .. } => db.flush().await,
                    Backend::Postgres { .. } => Ok(()),
                }
            })
            .await
    }
}

/// Each event written is also one log line, once its write is durable.
fn log_events(events: &[Event]) {
    for event in events {
        event.log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitSettings;
    use crate::domain::session::Client;

    const POLICY: SessionPolicy = SessionPolicy {
        ttl_secs: 1000,
        idle_secs: 1000,
        reuse_secs: 10,
    };

    fn sled_store(dir: &std::path::Path) -> Store {
        let backend = Backend::Sled {
            db: SledStore::open(dir).unwrap(),
            throttle: Arc::new(LoginThrottle::new(ThrottleLimits::from(
                &LimitSettings::default(),
            ))),
            budgets: Arc::new([FailureBudget::new(600), FailureBudget::new(600)]),
        };
        Store {
            backend,
            metrics: Metrics::off(),
        }
    }

    async fn session(store: &Store, keys: &RefreshKeys, now: u64) -> (Session, String) {
        let user = User::new("N".into(), "n@x.io".into(), Role::User, "h".into(), now);
        let user = store.insert_user(user, Vec::new()).await.unwrap();
        let (session, token) = Session::start(keys, &POLICY, &user.id, 0, Client::default(), now);
        store
            .insert_session(session.clone(), Vec::new())
            .await
            .unwrap();
        (session, token)
    }

    /// Of many concurrent presentations of one current token, exactly one
    /// rotates; all are answered with the same successor, and the chain
    /// moved by exactly one generation.
    #[tokio::test]
    async fn concurrent_refreshes_of_one_token_make_one_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = sled_store(dir.path());
        let keys = RefreshKeys::new(b"k");
        let (session, token) = session(&store, &keys, 100).await;
        let presented = keys.parse(&token).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (store, keys, presented) = (store.clone(), keys.clone(), presented.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .refresh(&presented, &keys, &POLICY, 101, &Origin::default())
                    .await
            }));
        }
        let mut successors = std::collections::BTreeSet::new();
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Refresh::Granted { refresh_token, .. } => {
                    successors.insert(refresh_token);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(successors.len(), 1, "one chain");
        let (stored, _) = store.session_and_user(&session.id).await.unwrap().unwrap();
        assert_eq!(stored.generation, 1);
        let successor = successors.pop_first().unwrap();
        assert_eq!(stored.current_token(&keys).unwrap(), successor);
        // After the window, the first token is reuse: the session ends.
        let late = store
            .refresh(&presented, &keys, &POLICY, 112, &Origin::default())
            .await
            .unwrap();
        assert!(matches!(late, Refresh::Reused { .. }), "{late:?}");
        assert!(store.session_and_user(&session.id).await.unwrap().is_none());
        let next = keys.parse(&successor).unwrap();
        let after = store
            .refresh(&next, &keys, &POLICY, 113, &Origin::default())
            .await
            .unwrap();
        assert!(matches!(after, Refresh::Refused), "{after:?}");
    }
}
