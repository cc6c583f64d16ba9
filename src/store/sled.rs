//! The sled store (the default): users, the email index and revoked tokens
//! in an embedded database under `<data_dir>/db`. This file and `store/mod.rs`
//! are the only code that names sled.
//!
//! Layout:
//! - tree `users`: user id → [`User`] in the [`super::record`] format
//!   (ids are UUIDv7, so key order is creation order, the order of
//!   `GET /api/users`);
//! - tree `emails`: normalized email → user id;
//! - tree `revoked`: token `jti` → expiry (u64, big-endian), purged once the
//!   verifier refuses the token anyway (`Store::purge_expired` sets when);
//! - tree `sessions`: session id → [`Session`] (the [`super::record`]
//!   format), deleted when the
//!   session ends (a session ended by time or a password change stays until
//!   the purge, refused meanwhile by `Session::is_alive`);
//! - tree `user_sessions`: user id, NUL, session id → nothing: the index
//!   that lists and ends a user's sessions, changed in the same transaction
//!   as `sessions`;
//! - tree `meta`: `admins` → how many users are admins (u64, big-endian),
//!   kept in the same transaction as every change of a role, so that "is
//!   this the last admin?" is answered without a scan (sled transactions
//!   cannot scan) and atomically; `signing_keys` → the asymmetric
//!   [`KeySet`] as JSON (private keys included: the data dir is private),
//!   replaced by compare-and-swap.
//! - tree `audit`: the audit log (`domain::audit`), three kinds of key:
//!   `e` + event id (16 bytes) → the event's JSON; `u` + user id + NUL +
//!   event id → nothing (the index of `?user_id=`); `a` + action + NUL +
//!   event id → nothing (`?action=`); `b` + user id + NUL + action + NUL +
//!   event id → nothing (both filters). Event ids are UUIDv7s, so each key
//!   space lists its events oldest first, and every filter is one range. An event is written in the same
//!   transaction as the change it records.
//!
//! Invariants: the email index and the user records change together, in one
//! sled transaction, so an email maps to at most one user and every user's
//! email maps back to it. Every write method returns only after the write is
//! flushed to disk, so a 2xx built on it survives `kill -9`.
//!
//! Writes (and their flush) run on tokio's blocking pool; reads are in-memory
//! lookups and run inline.
//!
//! A write that fails with a storage error (a full disk, an IO error, a
//! corruption) is fatal: `SledStore::write` logs one line and exits the
//! process with [`EXIT_STORE_FAILED`]. After such an error sled keeps the
//! failed write in memory (readable, never durable) and refuses every later
//! write until restarted, so the only state that can be trusted is what is on
//! disk, which is what a restart serves. This file must not let any other
//! path decide that, or answer 2xx for a write whose flush failed.
//!
//! Every token-checked request reads its user by id (and its session, for a
//! token with a `sid`), so recently read users and sessions are also kept
//! decoded in small [`RecordCache`]s. sled lets one process open a database,
//! so every write goes through this file, and each one that changes a user
//! or a session forgets it from its cache before it is acknowledged: the
//! token check never reads the disk for a hot session, and never sees one
//! that has ended.
//!
//! Likewise, revoked token ids are mirrored in a [`MaybeSet`], so the token
//! check asks sled only about ids that may have been revoked.

use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use lru::LruCache;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::filter::{MaybeSet, COUNTERS};
use super::record;
use super::{ExportPage, Import, StoreError, UserPatch, EXPORT_PAGE};
use crate::domain::audit::{self, Event, Origin};
use crate::domain::mail_token::{MailTokenKind, PendingToken, PresentedMailToken};
use crate::domain::session::Session;
use crate::domain::signing::{KeySet, StoredKey};
use crate::domain::user::User;

/// The exit status of a process whose sled store failed a write (sysexits'
/// `EX_IOERR`), distinct from a start-up error's 1 and a usage error's 2, so
/// a supervisor or an operator can tell "the disk failed" from "bad config".
pub const EXIT_STORE_FAILED: i32 = 74;

/// sled's page cache. The default (1 GiB) would let the process grow far past
/// what a small auth server needs. sled's real use runs well above this
/// figure; measured RSS after reading all of 100,000 users: 70.8 MiB with
/// 32 MiB here, 66.3 MiB with 16, 64.3 MiB with 8, 62.8 with 4 (and two
/// malloc arenas). Records that fall out of it are re-read from the OS page
/// cache; the token check's reads are served by [`RecordCache`]s anyway.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// The mode of the database folder and its subfolders: the owner's only.
const PRIVATE_DIR: u32 = 0o700;

/// The mode of every file in the database folder.
const PRIVATE_FILE: u32 = 0o600;

/// Users kept decoded by the [`RecordCache`] (about 400 bytes each).
const CACHED_USERS: usize = 4096;

/// Sessions kept decoded by the [`RecordCache`] (about 400 bytes each).
const CACHED_SESSIONS: usize = 4096;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    users: sled::Tree,
    emails: sled::Tree,
    revoked: sled::Tree,
    meta: sled::Tree,
    sessions: sled::Tree,
    user_sessions: sled::Tree,
    /// `user id / kind code` → the last mail token of that kind
    /// (`domain::mail_token::PendingToken`, JSON).
    mail_tokens: sled::Tree,
    /// The audit log and its two indexes (see the module doc).
    audit: sled::Tree,
    cache: Arc<RecordCache<User>>,
    sessions_cache: Arc<RecordCache<Session>>,
    /// Every id in `revoked` is in here: added before it is written, removed
    /// after it is deleted.
    maybe_revoked: Arc<MaybeSet>,
    /// Set by the first write that failed; from then on the store is not
    /// healthy and accepts no write (the process is about to exit).
    failed: Arc<AtomicBool>,
    /// Held shared by every write, and exclusively by an export while it
    /// copies the users (see [`SledStore::export`]): the copy is the store
    /// as it is between two writes.
    writes: Arc<RwLock<()>>,
    /// The database folder, where an export spools its copy.
    dir: std::path::PathBuf,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. Fails if another process
    /// holds it: sled allows one process per database.
    ///
    /// `dir` is this store's own folder: it is created (with any missing
    /// parent) 0700, and it and everything in it is made private (0700 /
    /// 0600) on every open, as the records hold password hashes. sled creates
    /// its files with the process's umask (the binary sets 077, see `cli`),
    /// so this also tightens databases made by earlier versions, or by a
    /// process with a looser umask, such as an in-process test server.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)
            .map_err(io_error)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        make_private(dir).map_err(io_error)?;
        let revoked = db.open_tree("revoked")?;
        let maybe_revoked = MaybeSet::new(COUNTERS);
        for key in revoked.iter().keys() {
            maybe_revoked.add(&String::from_utf8_lossy(&key?));
        }
        let users = db.open_tree("users")?;
        let meta = db.open_tree("meta")?;
        if meta.get(ADMINS_KEY)?.is_none() {
            // A database from before the counter: count once.
            let mut admins = 0u64;
            for entry in users.iter() {
                let (key, bytes) = entry?;
                if decode_user(&key, &bytes)?.is_admin() {
                    admins += 1;
                }
            }
            meta.insert(ADMINS_KEY, &admins.to_be_bytes())?;
            db.flush()?;
        }
        let emails = db.open_tree("emails")?;
        clear_interrupted_import(&db, &users, &emails, &meta)?;
        Ok(SledStore {
            users,
            emails,
            meta,
            revoked,
            sessions: db.open_tree("sessions")?,
            user_sessions: db.open_tree("user_sessions")?,
            mail_tokens: db.open_tree("mail_tokens")?,
            audit: db.open_tree("audit")?,
            db,
            cache: Arc::new(RecordCache::new(CACHED_USERS)),
            sessions_cache: Arc::new(RecordCache::new(CACHED_SESSIONS)),
            maybe_revoked: Arc::new(maybe_revoked),
            failed: Arc::new(AtomicBool::new(false)),
            writes: Arc::default(),
            dir: dir.to_path_buf(),
        })
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        let generation = match self.cache.get(id) {
            Ok(user) => return Ok(Some(user)),
            Err(generation) => generation,
        };
        let user = self
            .users
            .get(id.as_bytes())?
            .map(|bytes| decode_user(id.as_bytes(), &bytes))
            .transpose()?
            .map(Arc::new);
        if let Some(user) = &user {
            self.cache.insert(id, user, generation);
        }
        Ok(user)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match self.emails.get(email.as_bytes())? {
            Some(id) => self
                .users
                .get(&id)?
                .map(|bytes| decode_user(&id, &bytes))
                .transpose(),
            None => Ok(None),
        }
    }

    /// Up to `limit` users with ids after `after`, in id order, and whether
    /// more follow.
    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), StoreError> {
        let range = match after {
            Some(after) => self.users.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.users.iter(),
        };
        let mut users = Vec::with_capacity(limit.min(1000));
        for entry in range {
            let (key, bytes) = entry?;
            if users.len() == limit {
                return Ok((users, true));
            }
            users.push(decode_user(&key, &bytes)?);
        }
        Ok((users, false))
    }

    /// Adds a user and its email index entry; `EmailTaken` if the email is in
    /// use, whatever other requests race for it.
    pub async fn insert_user(&self, user: User, events: Vec<Event>) -> Result<User, StoreError> {
        let store = self.clone();
        self.write(move || {
            let record = encode_user(&user);
            let entries = audit_entries(&events);
            (&store.users, &store.emails, &store.meta, &store.audit)
                .transaction(|(users, emails, meta, audit)| {
                    if emails.get(user.email.as_bytes())?.is_some() {
                        return abort(StoreError::EmailTaken);
                    }
                    emails.insert(user.email.as_bytes(), user.id.as_bytes())?;
                    users.insert(user.id.as_bytes(), record.as_slice())?;
                    if user.is_admin() {
                        add_admins(meta, 1)?;
                    }
                    put_events(audit, &entries)
                })
                .map_err(tx_error)?;
            Ok(user)
        })
        .await
    }

    /// Applies `patch` to the user `id` and returns the result.
    pub async fn update_user(
        &self,
        id: &str,
        patch: UserPatch,
        now: u64,
        origin: Origin,
    ) -> Result<(User, Vec<Event>), StoreError> {
        let store = self.clone();
        let id = id.to_string();
        self.write(move || {
            let trees = (&store.users, &store.emails, &store.meta);
            let updated = (trees.0, trees.1, trees.2, &store.mail_tokens, &store.audit)
                .transaction(|(users, emails, meta, mail_tokens, audit)| {
                    let mut user = load(users, &id)?;
                    let events = audit::user_changes(&id, Some(&user), &patch, &origin, now);
                    let old_email = user.email.clone();
                    let was_admin = user.is_admin();
                    apply(&mut user, &patch, now);
                    match (was_admin, user.is_admin()) {
                        (true, false) => add_admins(meta, -1)?,
                        (false, true) => add_admins(meta, 1)?,
                        _ => {}
                    }
                    if user.email != old_email {
                        if emails.get(user.email.as_bytes())?.is_some() {
                            return abort(StoreError::EmailTaken);
                        }
                        emails.remove(old_email.as_bytes())?;
                        emails.insert(user.email.as_bytes(), user.id.as_bytes())?;
                        // Links sent to the old address die with it (and do
                        // not come back if the address does).
                        for kind in [MailTokenKind::Reset, MailTokenKind::Verify] {
                            mail_tokens.remove(mail_token_key(&id, kind))?;
                        }
                    }
                    users.insert(user.id.as_bytes(), encode_user(&user))?;
                    put_events(audit, &audit_entries(&events))?;
                    Ok((user, events))
                })
                .map_err(tx_error);
            // Here, in the blocking task, rather than after the await: the
            // write commits even if the request that made it goes away.
            store.cache.forget(&id);
            updated
        })
        .await
    }

    /// Removes the user, frees its email and ends its sessions; returns the
    /// removed user.
    pub async fn delete_user(
        &self,
        id: &str,
        events: Vec<Event>,
    ) -> Result<(User, usize), StoreError> {
        let store = self.clone();
        let id = id.to_string();
        self.write(move || {
            let entries = audit_entries(&events);
            // A session started after this scan fails its own transaction's
            // check that the user exists, or is refused (no user) and purged.
            let sessions = store.session_ids_of(&id)?;
            let trees = (&store.users, &store.emails, &store.meta);
            let deleted = (
                trees.0,
                trees.1,
                trees.2,
                &store.sessions,
                &store.user_sessions,
                &store.mail_tokens,
                &store.audit,
            )
                .transaction(
                    |(users, emails, meta, sessions_tree, index, mail_tokens, audit)| {
                        let user = load(users, &id)?;
                        if user.is_admin() {
                            add_admins(meta, -1)?;
                        }
                        users.remove(user.id.as_bytes())?;
                        emails.remove(user.email.as_bytes())?;
                        for kind in [MailTokenKind::Reset, MailTokenKind::Verify] {
                            mail_tokens.remove(mail_token_key(&id, kind))?;
                        }
                        for sid in &sessions {
                            remove_session(sessions_tree, index, &id, sid)?;
                        }
                        put_events(audit, &entries)?;
                        Ok(user)
                    },
                )
                .map_err(tx_error);
            store.cache.forget(&id);
            for sid in &sessions {
                store.sessions_cache.forget(sid);
            }
            deleted.map(|user| (user, sessions.len()))
        })
        .await
    }

    /// See `Store::upgrade_password_hash`.
    pub async fn upgrade_password_hash(
        &self,
        id: &str,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        let id = id.to_string();
        self.write(move || {
            let upgraded = store
                .users
                .transaction(|users| {
                    let Some(bytes) = users.get(id.as_bytes())? else {
                        return Ok(false);
                    };
                    let mut user = decode_user(id.as_bytes(), &bytes).map_err(abort_with)?;
                    if user.password_hash != old {
                        return Ok(false);
                    }
                    user.password_hash = new.clone();
                    users.insert(id.as_bytes(), encode_user(&user))?;
                    Ok(true)
                })
                .map_err(tx_error);
            store.cache.forget(&id);
            upgraded
        })
        .await
    }

    /// See `Store::put_mail_token`; one transaction over `users` and
    /// `mail_tokens`.
    pub async fn put_mail_token(
        &self,
        user_id: &str,
        kind: MailTokenKind,
        pending: PendingToken,
        resend_secs: u64,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        let user_id = user_id.to_string();
        self.write(move || {
            let key = mail_token_key(&user_id, kind);
            let value = encode_mail_token(&pending);
            let entries = audit_entries(&events);
            (&store.users, &store.mail_tokens, &store.audit)
                .transaction(|(users, mail_tokens, audit)| {
                    // Issued for an address the account no longer has (an
                    // email change raced the mail): not stored, not sent.
                    if load(users, &user_id)?.email != pending.email {
                        return Ok(false);
                    }
                    if let Some(last) = mail_tokens.get(&key)? {
                        let last = decode_mail_token(&key, &last).map_err(abort_with)?;
                        if resend_secs > 0 && last.holds_resend(pending.sent_at, resend_secs) {
                            return Ok(false);
                        }
                    }
                    mail_tokens.insert(key.as_slice(), value.as_slice())?;
                    put_events(audit, &entries)?;
                    Ok(true)
                })
                .map_err(tx_error)
        })
        .await
    }

    /// Uses the mail token `presented` if its record accepts it for the user
    /// as stored: in one transaction, `change` is applied to the user (and
    /// `updated_at` set), the token is spent, and the changed user returned.
    /// `None` if the token is not accepted (nothing written).
    pub async fn use_mail_token(
        &self,
        presented: PresentedMailToken,
        now: u64,
        change: impl Fn(&mut User) + Send + 'static,
        events: Vec<Event>,
    ) -> Result<Option<User>, StoreError> {
        let store = self.clone();
        self.write(move || {
            let key = mail_token_key(&presented.user_id, presented.kind);
            let entries = audit_entries(&events);
            let used = (&store.users, &store.mail_tokens, &store.audit)
                .transaction(|(users, mail_tokens, audit)| {
                    let Some(bytes) = users.get(presented.user_id.as_bytes())? else {
                        return Ok(None);
                    };
                    let mut user =
                        decode_user(presented.user_id.as_bytes(), &bytes).map_err(abort_with)?;
                    let Some(record) = mail_tokens.get(&key)? else {
                        return Ok(None);
                    };
                    let record = decode_mail_token(&key, &record).map_err(abort_with)?;
                    if !record.accepts(&presented, &user, now) {
                        return Ok(None);
                    }
                    change(&mut user);
                    user.updated_at = now;
                    users.insert(user.id.as_bytes(), encode_user(&user))?;
                    mail_tokens.insert(key.as_slice(), encode_mail_token(&record.used()))?;
                    put_events(audit, &entries)?;
                    Ok(Some(user))
                })
                .map_err(tx_error);
            // Here, in the blocking task, as in `update_user`: the write
            // commits even if the request goes away.
            store.cache.forget(&presented.user_id);
            used
        })
        .await
    }

    /// Whether `presented` would be accepted now (a read; `use_mail_token`
    /// decides again, atomically).
    pub async fn mail_token_is_live(
        &self,
        presented: &PresentedMailToken,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(user) = self.user_by_id(&presented.user_id).await? else {
            return Ok(false);
        };
        let key = mail_token_key(&presented.user_id, presented.kind);
        let Some(record) = self.mail_tokens.get(&key)? else {
            return Ok(false);
        };
        let record = decode_mail_token(&key, &record)?;
        Ok(record.accepts(presented, &user, now))
    }

    /// Stores a new session of an existing user (`NotFound` otherwise),
    /// ending its oldest ones beyond `keep` (the new one included).
    pub async fn insert_session(
        &self,
        session: Session,
        keep: usize,
        events: Vec<Event>,
    ) -> Result<usize, StoreError> {
        let store = self.clone();
        self.write(move || {
            let record = record::encode_session(&session);
            let entries = audit_entries(&events);
            // Ids are UUIDv7s, so the index lists a user's sessions oldest
            // first. (Read before the transaction, which cannot scan: a
            // racing sign-in may leave one more until the next.)
            let existing = store.session_ids_of(&session.user_id)?;
            let evicted = &existing[..existing.len().saturating_sub(keep.saturating_sub(1))];
            let ended = (
                &store.users,
                &store.sessions,
                &store.user_sessions,
                &store.audit,
            )
                .transaction(|(users, sessions, index, audit)| {
                    if users.get(session.user_id.as_bytes())?.is_none() {
                        return abort(StoreError::NotFound);
                    }
                    let mut ended = 0;
                    for sid in evicted {
                        if remove_session(sessions, index, &session.user_id, sid)?.is_some() {
                            ended += 1;
                        }
                    }
                    sessions.insert(session.id.as_bytes(), record.as_slice())?;
                    index.insert(index_key(&session.user_id, &session.id), &[])?;
                    put_events(audit, &entries)?;
                    Ok(ended)
                })
                .map_err(tx_error)?;
            for sid in evicted {
                store.sessions_cache.forget(sid);
            }
            store.sessions_cache.forget(&session.id);
            Ok(ended)
        })
        .await
    }

    /// The session `id` and its user, from the caches when they hold them.
    pub async fn session_and_user(
        &self,
        id: &str,
    ) -> Result<Option<(Arc<Session>, Arc<User>)>, StoreError> {
        let session = match self.sessions_cache.get(id) {
            Ok(session) => session,
            Err(generation) => match self.sessions.get(id.as_bytes())? {
                Some(bytes) => {
                    let session = Arc::new(decode_session(id.as_bytes(), &bytes)?);
                    self.sessions_cache.insert(id, &session, generation);
                    session
                }
                None => return Ok(None),
            },
        };
        Ok(self
            .user_by_id(&session.user_id)
            .await?
            .map(|user| (session, user)))
    }

    /// Replaces the session `current` with `next` (a rotation), if it is
    /// still at `current`'s generation and refresh hash: false if another
    /// rotation (or an end) came first. Atomic: of racing rotations of one
    /// session, exactly one succeeds.
    pub async fn replace_session(
        &self,
        current: &Session,
        next: Session,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        let (generation, hash) = (current.generation, current.refresh_hash);
        self.write(move || {
            let record = record::encode_session(&next);
            let key = next.id.as_bytes();
            let entries = audit_entries(&events);
            let replaced = (&store.sessions, &store.audit)
                .transaction(|(sessions, audit)| {
                    let Some(bytes) = sessions.get(key)? else {
                        return Ok(false);
                    };
                    let stored = decode_session(key, &bytes).map_err(abort_with)?;
                    if stored.generation != generation || stored.refresh_hash != hash {
                        return Ok(false);
                    }
                    sessions.insert(key, record.as_slice())?;
                    put_events(audit, &entries)?;
                    Ok(true)
                })
                .map_err(tx_error)?;
            store.sessions_cache.forget(&next.id);
            Ok(replaced)
        })
        .await
    }

    /// Ends (deletes) the session `id`; returns it if it was there.
    pub async fn end_session(
        &self,
        id: &str,
        events: Vec<Event>,
    ) -> Result<Option<Session>, StoreError> {
        let store = self.clone();
        let id = id.to_string();
        self.write(move || {
            let entries = audit_entries(&events);
            let ended = (&store.sessions, &store.user_sessions, &store.audit)
                .transaction(|(sessions, index, audit)| {
                    let Some(bytes) = sessions.remove(id.as_bytes())? else {
                        return Ok(None);
                    };
                    let session = decode_session(id.as_bytes(), &bytes).map_err(abort_with)?;
                    index.remove(index_key(&session.user_id, &id))?;
                    put_events(audit, &entries)?;
                    Ok(Some(session))
                })
                .map_err(tx_error);
            store.sessions_cache.forget(&id);
            ended
        })
        .await
    }

    /// Ends every session of `user_id` but `except`; returns them.
    pub async fn end_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        events: Vec<Event>,
    ) -> Result<Vec<Session>, StoreError> {
        let store = self.clone();
        let user_id = user_id.to_string();
        let except = except.map(str::to_string);
        self.write(move || {
            let entries = audit_entries(&events);
            let ids: Vec<String> = store
                .session_ids_of(&user_id)?
                .into_iter()
                .filter(|sid| Some(sid) != except.as_ref())
                .collect();
            let ended = (&store.sessions, &store.user_sessions, &store.audit)
                .transaction(|(sessions, index, audit)| {
                    let mut ended = Vec::with_capacity(ids.len());
                    for sid in &ids {
                        if let Some(bytes) = remove_session(sessions, index, &user_id, sid)? {
                            ended.push(decode_session(sid.as_bytes(), &bytes).map_err(abort_with)?);
                        }
                    }
                    if !ended.is_empty() {
                        put_events(audit, &entries)?;
                    }
                    Ok(ended)
                })
                .map_err(tx_error);
            for sid in &ids {
                store.sessions_cache.forget(sid);
            }
            ended
        })
        .await
    }

    /// Every stored session of `user_id` (alive or not yet purged).
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        let mut sessions = Vec::new();
        for sid in self.session_ids_of(user_id)? {
            if let Some(bytes) = self.sessions.get(sid.as_bytes())? {
                sessions.push(decode_session(sid.as_bytes(), &bytes)?);
            }
        }
        Ok(sessions)
    }

    /// The ids in the `user_sessions` index under `user_id`.
    fn session_ids_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let prefix = index_key(user_id, "");
        let mut ids = Vec::new();
        for key in self.user_sessions.scan_prefix(&prefix).keys() {
            let key = key?;
            ids.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(ids)
    }

    /// Deletes every session that is no longer alive (`alive` decides, given
    /// the session and its user's password version, `None` for a user that
    /// is gone). Returns how many.
    pub async fn purge_sessions(
        &self,
        alive: impl Fn(&Session, Option<u64>) -> bool + Send + 'static,
    ) -> Result<usize, StoreError> {
        let store = self.clone();
        self.write(move || {
            let mut dead = Vec::new();
            for entry in store.sessions.iter() {
                let (key, bytes) = entry?;
                let session = decode_session(&key, &bytes)?;
                let password_version = store
                    .users
                    .get(session.user_id.as_bytes())?
                    .map(|bytes| decode_user(session.user_id.as_bytes(), &bytes))
                    .transpose()?
                    .map(|user| user.password_version);
                if !alive(&session, password_version) {
                    dead.push(session);
                }
            }
            for session in &dead {
                (&store.sessions, &store.user_sessions)
                    .transaction(|(sessions, index)| {
                        remove_session(sessions, index, &session.user_id, &session.id)?;
                        Ok(())
                    })
                    .map_err(tx_error)?;
                store.sessions_cache.forget(&session.id);
            }
            Ok(dead.len())
        })
        .await
    }

    /// Records a logged-out token until its expiry.
    pub async fn revoke(
        &self,
        jti: &str,
        expires_at: u64,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        let store = self.clone();
        let jti = jti.to_string();
        self.write(move || {
            store.maybe_revoked.add(&jti);
            let entries = audit_entries(&events);
            (&store.revoked, &store.audit)
                .transaction(|(revoked, audit)| {
                    revoked.insert(jti.as_bytes(), &expires_at.to_be_bytes())?;
                    put_events(audit, &entries)
                })
                .map_err(tx_error)
        })
        .await
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        if !self.maybe_revoked.may_contain(jti) {
            return Ok(false);
        }
        Ok(self.revoked.contains_key(jti.as_bytes())?)
    }

    /// Deletes revocations whose token expired before `before` (the caller
    /// allows for the verifier's leeway). Returns how many were removed.
    pub async fn purge_revoked(&self, before: u64) -> Result<usize, StoreError> {
        let store = self.clone();
        self.write(move || {
            let mut removed = 0;
            for entry in store.revoked.iter() {
                let (jti, expiry) = entry?;
                let expiry = <[u8; 8]>::try_from(expiry.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if expiry < before {
                    store.revoked.remove(&jti)?;
                    store.maybe_revoked.remove(&String::from_utf8_lossy(&jti));
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    /// The stored signing key set, if one was ever written.
    pub async fn signing_keys(&self) -> Result<Option<KeySet>, StoreError> {
        self.signing_keys_now()
    }

    fn signing_keys_now(&self) -> Result<Option<KeySet>, StoreError> {
        match self.meta.get(SIGNING_KEYS_KEY)? {
            Some(bytes) => Ok(Some(decode_key_set(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Writes `keys` as the key set at `expected` + 1 (at 1 when `expected`
    /// is `None`: the first set), only if the stored set is still at
    /// `expected`. False if another write came first.
    pub async fn swap_signing_keys(
        &self,
        expected: Option<u64>,
        keys: Vec<StoredKey>,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        self.write(move || {
            let set = KeySet {
                version: expected.unwrap_or(0) + 1,
                keys,
            };
            let new = serde_json::to_vec(&set).map_err(|e| StoreError::Corrupt {
                key: "meta/signing_keys".into(),
                reason: e.to_string(),
            })?;
            let entries = audit_entries(&events);
            // A transaction rather than `compare_and_swap`, so that the event
            // of an admin's rotation is written with the set.
            (&store.meta, &store.audit)
                .transaction(|(meta, audit)| {
                    let version = match meta.get(SIGNING_KEYS_KEY)? {
                        Some(bytes) => Some(decode_key_set(&bytes).map_err(abort_with)?.version),
                        None => None,
                    };
                    if version != expected {
                        return Ok(false);
                    }
                    meta.insert(SIGNING_KEYS_KEY, new.as_slice())?;
                    put_events(audit, &entries)?;
                    Ok(true)
                })
                .map_err(tx_error)
        })
        .await
    }

    pub fn has_users(&self) -> Result<bool, StoreError> {
        Ok(self.users.first()?.is_some())
    }

    pub fn count_users(&self) -> u64 {
        self.users.len() as u64
    }

    /// See `Store::export`. Runs on the blocking pool. sled has no
    /// snapshot, and users read a page at a time while they change could
    /// give a file that cannot be imported (a user's old address exported
    /// early, the same address registered by someone else later). So the
    /// users are first copied, with every write held back ([`Self::write`]
    /// takes the same gate shared), into a spool file in the database
    /// folder (0600, unlinked at once: it lives as long as the export); the
    /// copy is one instant of the store, 0.3 s for 100,000 users. The pages
    /// are then read back from the spool, each handed over once the
    /// previous one was taken. Audit events are read as they are (they
    /// only grow, and the purge only removes old ones).
    pub async fn export(
        &self,
        with_audit: bool,
        pages: tokio::sync::mpsc::Sender<ExportPage>,
    ) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            // `blocking_send` fails only once the receiver is gone: the
            // export was abandoned, and there is nobody left to tell.
            let send = |page| pages.blocking_send(page).is_ok();
            let spool = store.spool_users()?;
            if let Some(keys) = spool.keys {
                if !send(ExportPage::Keys(keys)) {
                    return Ok(());
                }
            }
            let mut reader = std::io::BufReader::new(spool.file);
            loop {
                let page = read_spooled(&mut reader, EXPORT_PAGE)?;
                if page.is_empty() {
                    break;
                }
                if !send(ExportPage::Users(page)) {
                    return Ok(());
                }
            }
            if !with_audit {
                return Ok(());
            }
            let mut page = Vec::with_capacity(EXPORT_PAGE);
            for entry in store.audit.scan_prefix(b"e") {
                let (key, bytes) = entry?;
                page.push(decode_event(&key[1..], &bytes)?);
                if page.len() == EXPORT_PAGE && !send(ExportPage::Events(std::mem::take(&mut page)))
                {
                    return Ok(());
                }
            }
            if !page.is_empty() {
                send(ExportPage::Events(page));
            }
            Ok(())
        })
        .await?
    }

    /// The key set and every user's record, copied while no write runs.
    fn spool_users(&self) -> Result<Spool, StoreError> {
        use std::io::{Seek, Write};
        static SPOOLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "export-{}-{}.spool",
            std::process::id(),
            SPOOLS.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        std::fs::remove_file(&path).map_err(io_error)?;
        let mut writer = std::io::BufWriter::new(file);
        let keys = {
            let _exclusive = self.writes.write().unwrap_or_else(|e| e.into_inner());
            for entry in self.users.iter() {
                let (key, bytes) = entry?;
                for part in [&key[..], &bytes[..]] {
                    let len = u32::try_from(part.len()).map_err(|_| StoreError::Corrupt {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        reason: "a record over 4 GiB".into(),
                    })?;
                    writer.write_all(&len.to_le_bytes()).map_err(io_error)?;
                    writer.write_all(part).map_err(io_error)?;
                }
            }
            self.signing_keys_now()?
        };
        let mut file = writer.into_inner().map_err(|e| io_error(e.into_error()))?;
        file.rewind().map_err(io_error)?;
        Ok(Spool { file, keys })
    }

    /// See `Store::import`. Not one sled transaction: over 100,000 users
    /// one held more than a gigabyte (its write set and the nodes it copies),
    /// and one atomic batch per tree 800 MB. Instead a marker
    /// ([`IMPORTING_KEY`]) is written and flushed first, then the records in
    /// batches of [`IMPORT_BATCH`], each flushed (sled keeps unflushed
    /// writes in memory), and the marker removed last: that removal is the
    /// import's commit. [`SledStore::open`] finds a marker left by an
    /// interrupted import and removes what it wrote (the store had no
    /// users: every user, email-index entry and the admin count go), so a
    /// crash leaves either the whole import or the store as it was, less
    /// any key set and audit events the import had written (a store
    /// without users has no token to verify, and events are history). The
    /// command line runs it with the database to itself: sled lets one
    /// process open it.
    pub async fn import(&self, import: Import) -> Result<bool, StoreError> {
        if self.has_users()? {
            return Ok(false);
        }
        let store = self.clone();
        self.write(move || {
            store.meta.insert(IMPORTING_KEY, &[])?;
            store.db.flush()?;
            // Leftovers of an import interrupted since the last open.
            store.emails.clear()?;
            let mut admins = 0u64;
            for chunk in import.users.chunks(IMPORT_BATCH) {
                let (mut users, mut emails) = (sled::Batch::default(), sled::Batch::default());
                for user in chunk {
                    emails.insert(user.email.as_bytes(), user.id.as_bytes());
                    users.insert(user.id.as_bytes(), encode_user(user));
                    admins += u64::from(user.is_admin());
                }
                store.emails.apply_batch(emails)?;
                store.users.apply_batch(users)?;
                store.db.flush()?;
            }
            for chunk in import.events.chunks(IMPORT_BATCH) {
                let mut audit = sled::Batch::default();
                for (key, value) in audit_entries(chunk) {
                    audit.insert(key, value);
                }
                store.audit.apply_batch(audit)?;
                store.db.flush()?;
            }
            let mut meta = sled::Batch::default();
            meta.insert(ADMINS_KEY, &admins.to_be_bytes());
            if let Some(keys) = &import.keys {
                let bytes = serde_json::to_vec(keys).map_err(|e| StoreError::Corrupt {
                    key: "meta/signing_keys".into(),
                    reason: e.to_string(),
                })?;
                meta.insert(SIGNING_KEYS_KEY, bytes);
            }
            meta.remove(IMPORTING_KEY);
            store.meta.apply_batch(meta)?;
            Ok(true)
        })
        .await
    }

    /// Writes `events` alone (those that record no change: a failed or
    /// throttled login).
    pub async fn record(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let store = self.clone();
        self.write(move || {
            let entries = audit_entries(&events);
            store
                .audit
                .transaction(|audit| put_events(audit, &entries))
                .map_err(tx_error)
        })
        .await
    }

    /// A page of the audit log, newest first: events older than
    /// `query.before`, of `query.user_id` and `query.action` when given; and
    /// whether more follow.
    pub async fn audit_events(
        &self,
        query: &audit::Query,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let prefix = match (&query.user_id, query.action) {
            (Some(user_id), Some(action)) => {
                audit_index_key(b'b', &user_and_action(user_id, action), None)
            }
            (Some(user_id), None) => audit_index_key(b'u', user_id.as_bytes(), None),
            (None, Some(action)) => audit_index_key(b'a', action.as_str().as_bytes(), None),
            (None, None) => vec![b'e'],
        };
        let mut end = prefix.clone();
        match query.before {
            Some(before) => end.extend_from_slice(before.as_bytes()),
            // Just past every key under the prefix (its last byte is `e`
            // or NUL, never 0xff).
            None => {
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
            }
        }
        let mut events = Vec::with_capacity(query.limit.min(1000) + 1);
        for entry in self.audit.range(prefix.clone()..end).rev() {
            let (key, value) = entry?;
            let id = &key[prefix.len()..];
            let bytes = if prefix == [b'e'] {
                value
            } else {
                let mut event_key = Vec::with_capacity(17);
                event_key.push(b'e');
                event_key.extend_from_slice(id);
                match self.audit.get(&event_key)? {
                    Some(bytes) => bytes,
                    None => continue, // purged between the two reads
                }
            };
            let event = decode_event(id, &bytes)?;
            if events.len() == query.limit {
                return Ok((events, true));
            }
            events.push(event);
        }
        Ok((events, false))
    }

    /// Deletes the events made before `cut_off` (a UUIDv7 of the retention's
    /// first millisecond), with their index entries, a batch at a time.
    /// Returns how many.
    pub async fn purge_audit(&self, cut_off: uuid::Uuid) -> Result<usize, StoreError> {
        let store = self.clone();
        self.write(move || {
            let mut end = vec![b'e'];
            end.extend_from_slice(cut_off.as_bytes());
            let mut removed = 0;
            loop {
                let mut batch = sled::Batch::default();
                let mut in_batch = 0;
                for entry in store
                    .audit
                    .range(vec![b'e']..end.clone())
                    .take(AUDIT_PURGE_BATCH)
                {
                    let (key, value) = entry?;
                    let id = &key[1..];
                    // An unreadable event still goes (its index entries, if
                    // any, are only unreachable).
                    if let Ok(event) = decode_event(id, &value) {
                        if let Some(user_id) = &event.user_id {
                            batch.remove(audit_index_key(b'u', user_id.as_bytes(), Some(id)));
                            let both = user_and_action(user_id, event.action);
                            batch.remove(audit_index_key(b'b', &both, Some(id)));
                        }
                        batch.remove(audit_index_key(
                            b'a',
                            event.action.as_str().as_bytes(),
                            Some(id),
                        ));
                    }
                    batch.remove(key);
                    in_batch += 1;
                }
                if in_batch == 0 {
                    return Ok(removed);
                }
                store.audit.apply_batch(batch)?;
                removed += in_batch;
            }
        })
        .await
    }

    /// Answers if no write has failed and the database can be read.
    pub async fn health(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(failed_write());
        }
        self.users.first()?;
        Ok(())
    }

    /// Writes everything to disk; called at shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|| Ok(())).await
    }

    /// Runs a write on the blocking pool, then flushes before returning, so
    /// the caller may acknowledge it. Concurrent flushes share one disk write.
    ///
    /// The one place that decides what a storage error means: the process
    /// exits (see [`fail`]), before anyone can acknowledge the write.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let failed = Arc::clone(&self.failed);
        let writes = Arc::clone(&self.writes);
        tokio::task::spawn_blocking(move || {
            if failed.load(Ordering::Acquire) {
                return Err(failed_write());
            }
            // A poisoned gate only means a write panicked; the data is sled's.
            let _shared = writes.read().unwrap_or_else(|e| e.into_inner());
            let result = work().and_then(|value| {
                db.flush()?;
                Ok(value)
            });
            // Aborts (`EmailTaken`, `NotFound`, a corrupt record refused by
            // a transaction) change nothing; a storage error may have left
            // the write in memory but not on disk.
            if let Err(StoreError::Database(error)) = &result {
                fail(&failed, error);
            }
            result
        })
        .await?
    }
}

/// What a write or health check answers once a write has failed (the
/// process is then exiting).
fn failed_write() -> StoreError {
    StoreError::Unavailable("a write to disk failed".into())
}

/// A write failed in sled: exits the process at once, as PostgreSQL panics
/// on a failed fsync. sled keeps the unflushed write in memory, readable,
/// and fails every later write until restarted, so going on would serve
/// (and let others build on) a write that was refused, while every write
/// answers 503 and nothing recovers. A restart serves what is on disk.
///
/// `std::process::exit` rather than an error to unwind: the failing write
/// runs on a blocking thread, the exit must win the race against requests
/// reading the failed write, and there is nothing left to shut down
/// gracefully (a final flush would fail the same way). The line goes
/// straight to standard error, as the log's writer thread would not be
/// flushed by the exit. The error names an IO or corruption failure, never
/// a key or value. Only the first failing thread exits; the others return
/// their error (a 503) in the meantime.
fn fail(failed: &AtomicBool, error: &::sled::Error) {
    if failed.swap(true, Ordering::AcqRel) {
        return;
    }
    crate::log::write_fatal(
        "gatehouse::store::sled",
        &format!(
            "a write to the database failed; exiting so that no write missing \
             from disk is served (restart once the disk is fixed) \
             error={error} exit_code={EXIT_STORE_FAILED}"
        ),
    );
    std::process::exit(EXIT_STORE_FAILED);
}

/// Sets `dir` and every folder under it to [`PRIVATE_DIR`], and every file
/// to [`PRIVATE_FILE`]. Symbolic links are left alone (their mode means
/// nothing, and what they point to is not ours).
fn make_private(dir: &Path) -> std::io::Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)?;
        let mode = if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
            PRIVATE_DIR
        } else if metadata.is_file() {
            PRIVATE_FILE
        } else {
            continue;
        };
        if metadata.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Recently read records by key, decoded: users by id (every token check
/// reads one) and sessions by id (every check of a token with a `sid`).
///
/// A read that misses notes the cache's generation before it reads sled, and
/// keeps its result only if no write has forgotten any record since:
/// otherwise a read that raced an update could put the old record back after
/// the update forgot it, and serve it until evicted.
struct RecordCache<T> {
    inner: Mutex<CachedRecords<T>>,
}

struct CachedRecords<T> {
    records: LruCache<String, Arc<T>>,
    /// Bumped by every [`RecordCache::forget`].
    generation: u64,
}

impl<T> RecordCache<T> {
    fn new(capacity: usize) -> RecordCache<T> {
        RecordCache {
            inner: Mutex::new(CachedRecords {
                records: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
                generation: 0,
            }),
        }
    }

    /// The cached record, or the generation to hand back to
    /// [`RecordCache::insert`].
    fn get(&self, key: &str) -> Result<Arc<T>, u64> {
        let mut inner = self.lock();
        match inner.records.get(key) {
            Some(record) => Ok(Arc::clone(record)),
            None => Err(inner.generation),
        }
    }

    /// Keeps `record`, read from sled after [`RecordCache::get`] gave
    /// `generation`, unless a write has happened since.
    fn insert(&self, key: &str, record: &Arc<T>, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.records.put(key.to_string(), Arc::clone(record));
        }
    }

    /// Called after every committed change to the record `key`.
    fn forget(&self, key: &str) {
        let mut inner = self.lock();
        inner.records.pop(key);
        inner.generation += 1;
    }

    fn lock(&self) -> MutexGuard<'_, CachedRecords<T>> {
        // Every operation leaves the cache consistent, even one that panicked
        // half-way: a lost entry is only a miss.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn tx_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Database(error),
    }
}

/// The `meta` key of the admin count.
const ADMINS_KEY: &[u8] = b"admins";

/// `meta` key of the signing key set.
const SIGNING_KEYS_KEY: &[u8] = b"signing_keys";

/// A file-system error, as sled's own are reported.
fn io_error(error: std::io::Error) -> StoreError {
    StoreError::Database(error.into())
}

/// An export's copy of the users (see [`SledStore::export`]).
struct Spool {
    file: std::fs::File,
    keys: Option<KeySet>,
}

/// Up to `limit` users from a spool; fewer at its end.
fn read_spooled(reader: &mut impl std::io::Read, limit: usize) -> Result<Vec<User>, StoreError> {
    let part = |reader: &mut dyn std::io::Read| -> Result<Option<Vec<u8>>, StoreError> {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other.map_err(io_error)?,
        }
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        reader.read_exact(&mut bytes).map_err(io_error)?;
        Ok(Some(bytes))
    };
    let mut users = Vec::with_capacity(limit);
    while users.len() < limit {
        let Some(key) = part(reader)? else {
            break;
        };
        let bytes =
            part(reader)?.ok_or_else(|| io_error(std::io::ErrorKind::UnexpectedEof.into()))?;
        users.push(decode_user(&key, &bytes)?);
    }
    Ok(users)
}

/// Undoes an import that did not finish (its marker is still there, see
/// [`SledStore::import`]): the store had no users before it, so every user
/// and email-index entry goes and the admin count is zero again; then the
/// store takes a registration or another import as if nothing had happened.
fn clear_interrupted_import(
    db: &sled::Db,
    users: &sled::Tree,
    emails: &sled::Tree,
    meta: &sled::Tree,
) -> Result<(), StoreError> {
    if meta.get(IMPORTING_KEY)?.is_none() {
        return Ok(());
    }
    tracing::warn!("an import did not finish: removing the users it had written");
    users.clear()?;
    emails.clear()?;
    meta.insert(ADMINS_KEY, &0u64.to_be_bytes())?;
    db.flush()?;
    meta.remove(IMPORTING_KEY)?;
    db.flush()?;
    Ok(())
}

/// Present in `meta` while an import is being written.
const IMPORTING_KEY: &[u8] = b"importing";

/// Records per batch (and flush) of an import.
const IMPORT_BATCH: usize = 1000;

/// Changes the admin count by `delta` inside a transaction; refuses
/// (`LastAdmin`) a change that would leave no admin.
fn add_admins(meta: &TransactionalTree, delta: i64) -> TxResult<()> {
    let count = meta
        .get(ADMINS_KEY)?
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    let next = count.saturating_add_signed(delta);
    if delta < 0 && next == 0 {
        return abort(StoreError::LastAdmin);
    }
    meta.insert(ADMINS_KEY, &next.to_be_bytes())?;
    Ok(())
}

fn load(users: &TransactionalTree, id: &str) -> TxResult<User> {
    match users.get(id.as_bytes())? {
        Some(bytes) => {
            decode_user(id.as_bytes(), &bytes).map_err(ConflictableTransactionError::Abort)
        }
        None => abort(StoreError::NotFound),
    }
}

fn apply(user: &mut User, patch: &UserPatch, now: u64) {
    if let Some(name) = &patch.name {
        user.name = name.clone();
    }
    if let Some(email) = &patch.email {
        if *email != user.email {
            user.email_verified = false;
        }
        user.email = email.clone();
    }
    if let Some(verified) = patch.email_verified {
        user.email_verified = verified;
    }
    if let Some(role) = patch.role {
        user.role = role;
    }
    if let Some(hash) = &patch.password_hash {
        user.password_hash = hash.clone();
        user.password_version += 1;
    }
    user.updated_at = now;
}

/// Removes a session and its index entry (they change together); returns
/// the record if it was there.
fn remove_session(
    sessions: &TransactionalTree,
    index: &TransactionalTree,
    user_id: &str,
    session_id: &str,
) -> TxResult<Option<sled::IVec>> {
    index.remove(index_key(user_id, session_id))?;
    Ok(sessions.remove(session_id.as_bytes())?)
}

/// The `user_sessions` key of a user's session (`""` for the user's prefix).
fn index_key(user_id: &str, session_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_id.len() + 1 + session_id.len());
    key.extend_from_slice(user_id.as_bytes());
    key.push(0);
    key.extend_from_slice(session_id.as_bytes());
    key
}

fn decode_session(key: &[u8], bytes: &[u8]) -> Result<Session, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let id = std::str::from_utf8(key).map_err(|_| corrupt("the key is not UTF-8".into()))?;
    record::decode_session(id, bytes).map_err(|e| corrupt(e.0))
}

fn decode_key_set(bytes: &[u8]) -> Result<KeySet, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: "meta/signing_keys".into(),
        reason: e.to_string(),
    })
}

fn abort_with(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

fn mail_token_key(user_id: &str, kind: MailTokenKind) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_id.len() + 2);
    key.extend_from_slice(user_id.as_bytes());
    key.push(b'/');
    key.push(kind.code());
    key
}

fn encode_mail_token(pending: &PendingToken) -> Vec<u8> {
    // Strings, numbers and a byte array: serde_json cannot fail on them.
    serde_json::to_vec(pending).unwrap_or_default()
}

fn decode_mail_token(key: &[u8], bytes: &[u8]) -> Result<PendingToken, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Events removed per batch by the retention purge.
const AUDIT_PURGE_BATCH: usize = 1000;

/// An index key of the `audit` tree: `kind` (`u`, `a` or `b`), the user id,
/// action or both, NUL, and the event id (none: the prefix of them all).
fn audit_index_key(kind: u8, value: &[u8], id: Option<&[u8]>) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + value.len() + 16);
    key.push(kind);
    key.extend_from_slice(value);
    key.push(0);
    key.extend_from_slice(id.unwrap_or_default());
    key
}

/// The `audit` tree's entries of `events`: the event under `e`, and its
/// index entries (see the module doc).
fn audit_entries(events: &[Event]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::with_capacity(events.len() * 3);
    for event in events {
        let id = event.id.as_bytes();
        let mut key = Vec::with_capacity(17);
        key.push(b'e');
        key.extend_from_slice(id);
        entries.push((key, event.to_json()));
        if let Some(user_id) = &event.user_id {
            entries.push((
                audit_index_key(b'u', user_id.as_bytes(), Some(id)),
                Vec::new(),
            ));
            let both = user_and_action(user_id, event.action);
            entries.push((audit_index_key(b'b', &both, Some(id)), Vec::new()));
        }
        let action = event.action.as_str().as_bytes();
        entries.push((audit_index_key(b'a', action, Some(id)), Vec::new()));
    }
    entries
}

/// The `b` index's value: user id, NUL, action.
fn user_and_action(user_id: &str, action: audit::Action) -> Vec<u8> {
    let mut value = Vec::with_capacity(user_id.len() + 1 + 24);
    value.extend_from_slice(user_id.as_bytes());
    value.push(0);
    value.extend_from_slice(action.as_str().as_bytes());
    value
}

fn put_events(audit: &TransactionalTree, entries: &[(Vec<u8>, Vec<u8>)]) -> TxResult<()> {
    for (key, value) in entries {
        audit.insert(key.as_slice(), value.as_slice())?;
    }
    Ok(())
}

fn decode_event(id: &[u8], bytes: &[u8]) -> Result<Event, StoreError> {
    Event::from_json(bytes).map_err(|e| StoreError::Corrupt {
        key: format!(
            "audit/{}",
            uuid::Uuid::from_slice(id)
                .map(|u| u.to_string())
                .unwrap_or_default()
        ),
        reason: e.to_string(),
    })
}

fn encode_user(user: &User) -> Vec<u8> {
    record::encode(user)
}

fn decode_user(key: &[u8], bytes: &[u8]) -> Result<User, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let id = std::str::from_utf8(key).map_err(|_| corrupt("the key is not UTF-8".into()))?;
    record::decode(id, bytes).map_err(|e| corrupt(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store in `dir` again after dropping it. sled lets go of its
    /// lock once the dropped store's flusher thread has stopped, which can
    /// lag the drop on a busy machine: poll, with a deadline.
    async fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(error) => panic!("reopening: {error}"),
            }
        }
    }
    use crate::domain::user::Role;

    fn user(email: &str) -> User {
        User::new("N".into(), email.into(), Role::User, "hash".into(), 1)
    }

    #[tokio::test]
    async fn an_import_is_whole_or_undone_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut admin = user("a@example.com");
        admin.role = Role::Admin;
        let users = vec![admin, user("b@example.com"), user("c@example.com")];
        let import = Import {
            users: users.clone(),
            ..Import::default()
        };
        assert!(store.import(import).await.unwrap());
        assert!(store.meta.get(IMPORTING_KEY).unwrap().is_none());
        assert_eq!(store.count_users(), 3);
        let found = store.user_by_email("b@example.com").await.unwrap().unwrap();
        assert_eq!(found.id, users[1].id);
        // A store with users takes no import.
        let again = Import {
            users: vec![user("d@example.com")],
            ..Import::default()
        };
        assert!(!store.import(again).await.unwrap());
        assert!(store
            .user_by_email("d@example.com")
            .await
            .unwrap()
            .is_none());
        // Interrupted: the marker is still there when the store is opened.
        store.meta.insert(IMPORTING_KEY, &[]).unwrap();
        store.db.flush().unwrap();
        drop((store, found));
        let store = reopen(dir.path()).await;
        assert_eq!(store.count_users(), 0);
        assert!(store.emails.first().unwrap().is_none());
        assert!(store.meta.get(IMPORTING_KEY).unwrap().is_none());
        // As if nothing had happened: the first admin is counted from zero.
        let admin = users[0].clone();
        store.insert_user(admin, Vec::new()).await.unwrap();
        let only = store.users.first().unwrap().unwrap().0;
        assert!(matches!(
            store
                .delete_user(std::str::from_utf8(&only).unwrap(), Vec::new())
                .await,
            Err(StoreError::LastAdmin)
        ));
    }

    #[tokio::test]
    async fn mail_tokens_go_with_an_email_change_and_with_their_user() {
        use crate::domain::mail_token::{issue, MailTokenKind};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = store.insert_user(user("a@x.io"), Vec::new()).await.unwrap();
        let put = |user: &User, kind| {
            let (_, pending) = issue(kind, user, 10, 60).unwrap();
            let id = user.id.clone();
            let store = store.clone();
            async move {
                store
                    .put_mail_token(&id, kind, pending, 0, Vec::new())
                    .await
            }
        };
        assert!(put(&a, MailTokenKind::Reset).await.unwrap());
        assert!(put(&a, MailTokenKind::Verify).await.unwrap());
        assert_eq!(store.mail_tokens.len(), 2);
        let moved = UserPatch {
            email: Some("b@x.io".into()),
            ..UserPatch::default()
        };
        let b = store
            .update_user(&a.id, moved, 2, Origin::default())
            .await
            .unwrap()
            .0;
        assert_eq!(store.mail_tokens.len(), 0, "an email change deletes them");
        // A token for the old address is not stored any more.
        assert!(!put(&a, MailTokenKind::Reset).await.unwrap());
        assert!(put(&b, MailTokenKind::Reset).await.unwrap());
        store.delete_user(&b.id, Vec::new()).await.unwrap();
        assert_eq!(store.mail_tokens.len(), 0, "deleting the user deletes them");
    }

    #[tokio::test]
    async fn the_email_index_follows_inserts_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = store.insert_user(user("a@x.io"), Vec::new()).await.unwrap();
        assert!(matches!(
            store.insert_user(user("a@x.io"), Vec::new()).await,
            Err(StoreError::EmailTaken)
        ));
        let b = store.insert_user(user("b@x.io"), Vec::new()).await.unwrap();
        let taken = UserPatch {
            email: Some("b@x.io".into()),
            ..UserPatch::default()
        };
        assert!(matches!(
            store.update_user(&a.id, taken, 2, Origin::default()).await,
            Err(StoreError::EmailTaken)
        ));
        let moved = UserPatch {
            email: Some("c@x.io".into()),
            password_hash: Some("hash2".into()),
            ..UserPatch::default()
        };
        let a2 = store
            .update_user(&a.id, moved, 2, Origin::default())
            .await
            .unwrap()
            .0;
        assert_eq!(a2.password_version, 1);
        assert!(store.user_by_email("a@x.io").await.unwrap().is_none());
        assert_eq!(
            store.user_by_email("c@x.io").await.unwrap().unwrap().id,
            a.id
        );
        store.delete_user(&b.id, Vec::new()).await.unwrap();
        assert!(store.user_by_email("b@x.io").await.unwrap().is_none());
        assert!(matches!(
            store.delete_user(&b.id, Vec::new()).await,
            Err(StoreError::NotFound)
        ));
        store.insert_user(user("b@x.io"), Vec::new()).await.unwrap();
    }

    #[tokio::test]
    async fn after_a_failed_write_the_store_is_unhealthy_and_takes_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.health().await.unwrap();
        // What `fail` records before it exits the process.
        store.failed.store(true, Ordering::Release);
        assert!(matches!(
            store.health().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.insert_user(user("a@x.io"), Vec::new()).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(store.user_by_email("a@x.io").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_database_folder_and_its_files_are_made_private() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("db");
        let store = SledStore::open(&dir).unwrap();
        store.insert_user(user("a@x.io"), Vec::new()).await.unwrap();
        drop(store);
        // As an earlier version (or a looser umask) left it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = dir.join("conf");
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = reopen(&dir).await;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let expected = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&path), expected, "{}", path.display());
        }
        drop(store);
    }

    #[tokio::test]
    async fn cached_users_follow_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = store.insert_user(user("a@x.io"), Vec::new()).await.unwrap();
        assert_eq!(store.user_by_id(&a.id).await.unwrap().unwrap().name, "N");
        assert!(store.cache.get(&a.id).is_ok(), "the read was cached");
        let rename = UserPatch {
            name: Some("Renamed".into()),
            ..UserPatch::default()
        };
        store
            .update_user(&a.id, rename, 2, Origin::default())
            .await
            .unwrap();
        assert_eq!(
            store.user_by_id(&a.id).await.unwrap().unwrap().name,
            "Renamed"
        );
        store.delete_user(&a.id, Vec::new()).await.unwrap();
        assert!(store.user_by_id(&a.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn json_records_of_earlier_versions_are_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let old = user("old@x.io");
        let json = serde_json::to_vec(&old).unwrap();
        store.users.insert(old.id.as_bytes(), json).unwrap();
        store
            .emails
            .insert(old.email.as_bytes(), old.id.as_bytes())
            .unwrap();
        assert_eq!(
            store.user_by_email("old@x.io").await.unwrap().as_ref(),
            Some(&old)
        );
        let rename = UserPatch {
            name: Some("New".into()),
            ..UserPatch::default()
        };
        store
            .update_user(&old.id, rename, 2, Origin::default())
            .await
            .unwrap();
        let stored = store.users.get(old.id.as_bytes()).unwrap().unwrap();
        assert_eq!(stored[0], 0x02, "rewritten in the current format");
        assert_eq!(
            store.user_by_id(&old.id).await.unwrap().unwrap().name,
            "New"
        );
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let cache = RecordCache::new(8);
        let stale = Arc::new(user("a@x.io"));
        let generation = cache.get(&stale.id).unwrap_err();
        // An update commits and forgets the user between the read and its
        // insert: the stale record must not be kept.
        cache.forget(&stale.id);
        cache.insert(&stale.id, &stale, generation);
        assert!(cache.get(&stale.id).is_err());
        let generation = cache.get(&stale.id).unwrap_err();
        cache.insert(&stale.id, &stale, generation);
        assert!(cache.get(&stale.id).is_ok());
    }

    #[tokio::test]
    async fn listing_pages_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                store
                    .insert_user(user(&format!("{i}@x.io")), Vec::new())
                    .await
                    .unwrap()
                    .id,
            );
        }
        ids.sort();
        let (page, more) = store.list_users(None, 2).await.unwrap();
        assert!(more);
        assert_eq!(
            page.iter().map(|u| &u.id).collect::<Vec<_>>(),
            [&ids[0], &ids[1]]
        );
        let (page, more) = store.list_users(Some(&ids[3]), 2).await.unwrap();
        assert!(!more);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, ids[4]);
    }

    #[tokio::test]
    async fn revocations_are_purged_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.revoke("old", 100, Vec::new()).await.unwrap();
        store.revoke("new", 300, Vec::new()).await.unwrap();
        assert_eq!(store.purge_revoked(200).await.unwrap(), 1);
        assert!(!store.is_revoked("old").await.unwrap());
        assert!(store.is_revoked("new").await.unwrap());
        assert!(
            !store.maybe_revoked.may_contain("old"),
            "removed after purge"
        );
        assert!(!store.is_revoked("never").await.unwrap());
        drop(store);
        // Reopened, the filter is rebuilt from the tree.
        let store = reopen(dir.path()).await;
        assert!(store.is_revoked("new").await.unwrap());
        assert!(store.maybe_revoked.may_contain("new"));
    }
}
