//! The PostgreSQL store, for several gatehouse instances sharing one user
//! base: users, sessions, revocations and throttle counters (failed logins,
//! registrations) in tables.
//!
//! Driver: tokio-postgres with a deadpool pool (see ARCHITECTURE.md for why).
//! Most operations are one SQL statement (the unique index on the normalized
//! email decides registration races), its text a constant, prepared once per
//! pooled connection (`prepare_cached`) so that each later run is one round
//! trip; the token check is one such statement (the session joined with its
//! user). Prepared statements live and die with their connection: a
//! connection the server dropped is replaced by the pool, which prepares
//! again. Three are short transactions that lock
//! what they decide on: counting a throttled attempt (the row guarding the
//! client's counters, [`PgStore::count_attempt`]), and demoting or deleting a
//! user (every admin row, so the last admin always remains). Each runs within
//! [`OP_TIMEOUT`] and is retried on serialization failures and deadlocks, so
//! the SQL also suits PostgreSQL-compatible distributed engines: no advisory
//! locks, no LISTEN/NOTIFY.
//!
//! A database that cannot serve (lost, read-only or recovering, full, shutting
//! down) is `StoreError::Unavailable` (503), never a 500 and never a hang; the
//! pool reconnects by itself when the database returns. On a read-only
//! database whose schema is current, gatehouse starts (migrations then only
//! read) and answers reads.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::{ExportPage, Import, StoreError, UserPatch, EXPORT_PAGE};
use std::sync::Arc;

use crate::domain::audit::{self, Action, Event, Origin};
use crate::domain::mail_token::{MailTokenKind, PendingToken, PresentedMailToken};
use crate::domain::session::Session;
use crate::domain::signing::{KeySet, StoredKey};
use crate::domain::throttle::RetryAfter;
use crate::domain::user::{is_user_id, Role, User};

/// The longest any one store operation may take, waiting for a connection
/// included, before it is answered as unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per instance, at most.
const POOL_SIZE: usize = 16;

/// Attempts of one operation that keeps hitting serialization failures.
const ATTEMPTS: usize = 5;

/// Schema migrations, applied in order at start. Each is idempotent, so two
/// instances starting at once may both run them.
const MIGRATIONS: &[(i32, &str)] = &[
    (
    1,
    "CREATE TABLE IF NOT EXISTS gatehouse_users (
        id UUID PRIMARY KEY,
        name BYTEA NOT NULL,
        email TEXT NOT NULL,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        password_version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS gatehouse_users_email ON gatehouse_users (email);
    CREATE TABLE IF NOT EXISTS gatehouse_revoked (
        jti TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS gatehouse_revoked_expiry ON gatehouse_revoked (expires_at);
    CREATE TABLE IF NOT EXISTS gatehouse_login_failures (
        key BYTEA NOT NULL,
        attempt UUID NOT NULL,
        failed_at BIGINT NOT NULL,
        PRIMARY KEY (key, attempt)
    );
    CREATE INDEX IF NOT EXISTS gatehouse_login_failures_time ON gatehouse_login_failures (failed_at);",
    ),
    // Throttle counters under keyed hashes (`domain::throttle::SharedKeys`),
    // and the rows that serialize counting. The old counters were keyed by
    // the email text (so an email could be too long for the index) and are
    // dropped: they were only counts.
    (
        2,
        "CREATE TABLE IF NOT EXISTS gatehouse_throttle_guards (
            key BYTEA PRIMARY KEY,
            touched_at BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS gatehouse_throttle_guards_time
            ON gatehouse_throttle_guards (touched_at);
        CREATE TABLE IF NOT EXISTS gatehouse_throttle_events (
            key BYTEA NOT NULL,
            attempt UUID NOT NULL,
            at BIGINT NOT NULL,
            PRIMARY KEY (key, attempt)
        );
        CREATE INDEX IF NOT EXISTS gatehouse_throttle_events_time
            ON gatehouse_throttle_events (at);
        DROP TABLE IF EXISTS gatehouse_login_failures;",
    ),
    // Sessions (domain::session). A user's deletion ends them (the cascade).
    (
        3,
        "CREATE TABLE IF NOT EXISTS gatehouse_sessions (
            id UUID PRIMARY KEY,
            user_id UUID NOT NULL REFERENCES gatehouse_users (id) ON DELETE CASCADE,
            created_at BIGINT NOT NULL,
            last_used_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            user_agent TEXT NOT NULL,
            ip TEXT NOT NULL,
            password_version BIGINT NOT NULL,
            generation BIGINT NOT NULL,
            spent_at BIGINT[] NOT NULL,
            refresh_hash BYTEA NOT NULL
        );
        CREATE INDEX IF NOT EXISTS gatehouse_sessions_user ON gatehouse_sessions (user_id);
        CREATE INDEX IF NOT EXISTS gatehouse_sessions_expiry ON gatehouse_sessions (expires_at);",
    ),
    // The signing key set (domain::signing): one row, replaced by
    // compare-and-set on `version`. `keys` is the set's JSON, private keys
    // included (as in sled's data dir): guard the database accordingly.
    (
        4,
        "CREATE TABLE IF NOT EXISTS gatehouse_signing_keys (
            id INT PRIMARY KEY CHECK (id = 1),
            version BIGINT NOT NULL,
            keys TEXT NOT NULL
        );",
    ),
    // Counting a throttled attempt in one round trip (see
    // `PgStore::count_attempt`): the guard's lock, the counts and the
    // inserts, which took seven round trips as separate statements. Each
    // statement in a (volatile) PL/pgSQL function takes a new snapshot, so
    // the counts after the lock see what the guard's previous holder
    // committed, as the separate statements did.
    (
        5,
        "CREATE OR REPLACE FUNCTION gatehouse_count_attempt(
            guard_key BYTEA, counter_keys BYTEA[], counter_limits BIGINT[],
            attempt_id UUID, now_at BIGINT, since BIGINT, window_secs BIGINT
        ) RETURNS BIGINT LANGUAGE plpgsql AS $$
        DECLARE
            wait_secs BIGINT;
            oldest BIGINT;
        BEGIN
            INSERT INTO gatehouse_throttle_guards (key, touched_at) VALUES (guard_key, now_at)
            ON CONFLICT (key) DO UPDATE SET touched_at = EXCLUDED.touched_at;
            FOR i IN 1 .. coalesce(array_length(counter_keys, 1), 0) LOOP
                -- The limit-th newest attempt in the window, if there is one.
                SELECT at INTO oldest FROM gatehouse_throttle_events
                WHERE key = counter_keys[i] AND at > since
                ORDER BY at DESC OFFSET counter_limits[i] - 1 LIMIT 1;
                IF FOUND THEN
                    wait_secs := GREATEST(coalesce(wait_secs, 1), oldest + window_secs - now_at);
                END IF;
            END LOOP;
            IF wait_secs IS NOT NULL THEN
                RETURN wait_secs;
            END IF;
            INSERT INTO gatehouse_throttle_events (key, attempt, at)
            SELECT key, attempt_id, now_at FROM unnest(counter_keys) AS key
            ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$;",
    ),
    // `email_verified` (issue 14); accounts from before start unverified.
    (
        6,
        "ALTER TABLE gatehouse_users
            ADD COLUMN IF NOT EXISTS email_verified BOOLEAN NOT NULL DEFAULT false;",
    ),
    // The last mail token of each kind sent to a user
    // (`domain::mail_token::PendingToken`); a user's deletion removes them.
    (
        7,
        "CREATE TABLE IF NOT EXISTS gatehouse_mail_tokens (
            user_id UUID NOT NULL REFERENCES gatehouse_users (id) ON DELETE CASCADE,
            kind SMALLINT NOT NULL,
            email TEXT NOT NULL,
            token_hash BYTEA,
            password_version BIGINT NOT NULL,
            sent_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, kind)
        );",
    ),
    // The audit log (domain::audit). Ids are UUIDv7s: the primary key lists
    // events in time order, and the retention purge deletes by id. Events
    // outlive their user (no foreign key). `gatehouse_audit_rows` reads a
    // JSON array of events (one parameter whatever their number), which the
    // writes insert in the same statement as their change;
    // `gatehouse_audit_budget` holds, per capped action, the minute, the
    // events stored in it and those dropped since the last stored one, for
    // `gatehouse_record_capped`. (`at` is the event's `time`, a word
    // PostgreSQL keeps for the type.)
    (
        8,
        "CREATE TABLE IF NOT EXISTS gatehouse_audit (
            id UUID PRIMARY KEY,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            user_id TEXT,
            actor_id TEXT,
            ip TEXT,
            user_agent TEXT,
            detail TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS gatehouse_audit_user ON gatehouse_audit (user_id, id);
        CREATE INDEX IF NOT EXISTS gatehouse_audit_action ON gatehouse_audit (action, id);
        CREATE INDEX IF NOT EXISTS gatehouse_audit_user_action
            ON gatehouse_audit (user_id, action, id);
        CREATE TABLE IF NOT EXISTS gatehouse_audit_budget (
            action TEXT PRIMARY KEY,
            minute BIGINT NOT NULL,
            stored BIGINT NOT NULL,
            dropped BIGINT NOT NULL
        );
        CREATE OR REPLACE FUNCTION gatehouse_audit_rows(events TEXT)
        RETURNS TABLE (id UUID, at TEXT, action TEXT, user_id TEXT, actor_id TEXT, ip TEXT,
                       user_agent TEXT, detail TEXT)
        LANGUAGE sql STABLE AS $$
            SELECT e.id, e.at, e.action, e.user_id, e.actor_id, e.ip, e.user_agent, e.detail
            FROM jsonb_to_recordset(events::jsonb) AS e(id UUID, at TEXT, action TEXT,
                user_id TEXT, actor_id TEXT, ip TEXT, user_agent TEXT, detail TEXT)
        $$;
        -- `dropped_elsewhere`: events the calling instance dropped without
        -- asking (it knew the minute full). Another minute than the row's
        -- starts a new count, whichever way the clocks differ: a clock
        -- ahead never freezes the budget.
        CREATE OR REPLACE FUNCTION gatehouse_record_capped(
            events TEXT, capped_action TEXT, this_minute BIGINT, per_minute BIGINT,
            dropped_elsewhere BIGINT
        ) RETURNS BIGINT LANGUAGE plpgsql AS $$
        DECLARE
            budget gatehouse_audit_budget%ROWTYPE;
            stored_now BIGINT;
            dropped_now BIGINT;
        BEGIN
            INSERT INTO gatehouse_audit_budget (action, minute, stored, dropped)
            VALUES (capped_action, this_minute, 0, 0) ON CONFLICT (action) DO NOTHING;
            SELECT * INTO budget FROM gatehouse_audit_budget
            WHERE action = capped_action FOR UPDATE;
            stored_now := CASE WHEN this_minute = budget.minute THEN budget.stored ELSE 0 END;
            dropped_now := budget.dropped + dropped_elsewhere;
            IF stored_now >= per_minute THEN
                UPDATE gatehouse_audit_budget SET minute = this_minute, stored = stored_now,
                    dropped = dropped_now + 1
                WHERE action = capped_action;
                RETURN -1;
            END IF;
            UPDATE gatehouse_audit_budget SET minute = this_minute, stored = stored_now + 1,
                dropped = 0
            WHERE action = capped_action;
            INSERT INTO gatehouse_audit
            SELECT r.id, r.at, r.action, r.user_id, r.actor_id, r.ip, r.user_agent,
                CASE WHEN dropped_now > 0
                    THEN (r.detail::jsonb || jsonb_build_object('suppressed', dropped_now))::text
                    ELSE r.detail END
            FROM gatehouse_audit_rows(events) AS r;
            RETURN dropped_now;
        END $$;",
    ),
    // User ids become text (issue 16): an imported MongoDB user keeps its
    // ObjectId's 24 hex digits, which are no UUID. The "C" collation orders
    // them by bytes, as sled orders its keys (a UUID's text sorts as the
    // UUID did). The foreign keys are dropped and made again around the
    // type change; the table lock first, so that a second instance running
    // this at once waits, then finds the columns already text.
    (
        9,
        "DO $$
        BEGIN
            LOCK TABLE gatehouse_users, gatehouse_sessions, gatehouse_mail_tokens
                IN ACCESS EXCLUSIVE MODE;
            IF (SELECT data_type FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'gatehouse_users'
                  AND column_name = 'id') = 'uuid' THEN
                ALTER TABLE gatehouse_sessions
                    DROP CONSTRAINT IF EXISTS gatehouse_sessions_user_id_fkey;
                ALTER TABLE gatehouse_mail_tokens
                    DROP CONSTRAINT IF EXISTS gatehouse_mail_tokens_user_id_fkey;
                ALTER TABLE gatehouse_users ALTER COLUMN id TYPE TEXT COLLATE \"C\";
                ALTER TABLE gatehouse_sessions ALTER COLUMN user_id TYPE TEXT COLLATE \"C\";
                ALTER TABLE gatehouse_mail_tokens ALTER COLUMN user_id TYPE TEXT COLLATE \"C\";
                ALTER TABLE gatehouse_sessions ADD CONSTRAINT gatehouse_sessions_user_id_fkey
                    FOREIGN KEY (user_id) REFERENCES gatehouse_users (id) ON DELETE CASCADE;
                ALTER TABLE gatehouse_mail_tokens ADD CONSTRAINT gatehouse_mail_tokens_user_id_fkey
                    FOREIGN KEY (user_id) REFERENCES gatehouse_users (id) ON DELETE CASCADE;
            END IF;
        END $$;",
    ),
];

/// The version the last migration records.
const SCHEMA_VERSION: i32 = 9;

// Every statement's text is a `&'static str` (the column lists are macros so
// that `concat!` can build them in), prepared once per pooled connection by
// `prepare_cached` and run as one round trip after that. The column lists
// are in `user_from_row`'s and `session_from_row`'s order.
macro_rules! user_columns {
    () => {
        "id, name, email, role, password_hash, password_version, created_at, updated_at,
         email_verified"
    };
}
macro_rules! session_columns {
    () => {
        "id, user_id, created_at, last_used_at, expires_at, user_agent, ip,
         password_version, generation, spent_at, refresh_hash"
    };
}

/// The audit events (parameter `$n`, a JSON array, see
/// [`events_param`]) of a change made by the statement's `changed` CTE,
/// inserted only if it changed a row.
macro_rules! log_if_changed {
    ($n:literal) => {
        concat!(
            "INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($",
            $n,
            ") WHERE EXISTS (SELECT 1 FROM changed)"
        )
    };
}

const USER_BY_ID: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM gatehouse_users WHERE id = $1"
);
const USER_BY_EMAIL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM gatehouse_users WHERE email = $1"
);
const LIST_USERS: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM gatehouse_users
     WHERE ($1::text IS NULL OR id > $1::text)
     ORDER BY id LIMIT $2"
);
// An email change also deletes the user's mail tokens: links sent to the old
// address die with it, and do not come back if the address does. (The CTE
// sees the email before the update; a refused update undoes the delete.)
// Its events ($8) are inserted in the same statement, if a row changed.
const UPDATE_USER: &str = concat!(
    "WITH forgotten AS (
        DELETE FROM gatehouse_mail_tokens
        WHERE user_id = $1 AND $3::text IS NOT NULL
          AND $3::text <> (SELECT email FROM gatehouse_users WHERE id = $1)
    ), changed AS (
    UPDATE gatehouse_users SET
        name = COALESCE($2, name),
        email = COALESCE($3, email),
        role = COALESCE($4, role),
        password_hash = COALESCE($5, password_hash),
        password_version = password_version + CASE WHEN $5::text IS NULL THEN 0 ELSE 1 END,
        email_verified = COALESCE($7,
            CASE WHEN $3::text IS NOT NULL AND $3 <> email THEN false ELSE email_verified END),
        updated_at = $6
     WHERE id = $1
     RETURNING ",
    user_columns!(),
    "), logged AS (",
    log_if_changed!(8),
    ") SELECT * FROM changed"
);
const USER_FOR_UPDATE: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM gatehouse_users WHERE id = $1 FOR UPDATE"
);
const SET_USER_AFTER_MAIL_TOKEN: &str = "UPDATE gatehouse_users SET password_hash = $2,
    password_version = $3, email_verified = $4, updated_at = $5 WHERE id = $1";
// The last column: the sessions its cascade ends (counted in the
// statement's snapshot, from before the delete).
const DELETE_USER: &str = concat!(
    "WITH changed AS (DELETE FROM gatehouse_users WHERE id = $1 RETURNING ",
    user_columns!(),
    "), logged AS (",
    log_if_changed!(2),
    ") SELECT *, (SELECT count(*) FROM gatehouse_sessions WHERE user_id = $1) FROM changed"
);
const INSERT_SESSION: &str = concat!(
    "WITH logged AS (INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($12))
     INSERT INTO gatehouse_sessions (",
    session_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
);
/// The token check: the session and its user (the user's columns first), in
/// one statement.
const SESSION_AND_USER: &str = "SELECT u.id, u.name, u.email, u.role, u.password_hash,
     u.password_version, u.created_at, u.updated_at, u.email_verified, s.id, s.user_id, s.created_at,
     s.last_used_at, s.expires_at, s.user_agent, s.ip, s.password_version, s.generation,
     s.spent_at, s.refresh_hash
     FROM gatehouse_sessions s JOIN gatehouse_users u ON u.id = s.user_id WHERE s.id = $1";
const END_SESSION: &str = concat!(
    "WITH changed AS (DELETE FROM gatehouse_sessions WHERE id = $1 RETURNING ",
    session_columns!(),
    "), logged AS (",
    log_if_changed!(2),
    ") SELECT * FROM changed"
);
const END_USER_SESSIONS: &str = concat!(
    "WITH changed AS (
        DELETE FROM gatehouse_sessions WHERE user_id = $1 AND ($2::uuid IS NULL OR id <> $2)
        RETURNING ",
    session_columns!(),
    "), logged AS (",
    log_if_changed!(3),
    ") SELECT * FROM changed"
);
/// Pages of the audit log, newest first, by filter: the primary key, or the
/// index of the user or of the action (both filters: the user's index).
macro_rules! audit_page {
    ($where:literal) => {
        concat!(
            "SELECT id, at, action, user_id, actor_id, ip, user_agent, detail
             FROM gatehouse_audit WHERE ",
            $where,
            " ORDER BY id DESC LIMIT $1"
        )
    };
}
const AUDIT_PAGE: &str = audit_page!("id < $2");
const AUDIT_PAGE_OF_USER: &str = audit_page!("id < $2 AND user_id = $3");
const AUDIT_PAGE_OF_ACTION: &str = audit_page!("id < $2 AND action = $3");
const AUDIT_PAGE_OF_USER_AND_ACTION: &str = audit_page!("id < $2 AND user_id = $3 AND action = $4");
const SESSIONS_OF: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM gatehouse_sessions WHERE user_id = $1"
);

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

/// A shared throttle counter: the key of its rows, and how many attempts
/// it may hold within the window.
#[derive(Debug, Clone, Copy)]
pub struct Counter<'a> {
    pub key: &'a [u8],
    pub limit: u32,
}

impl<'a> Counter<'a> {
    pub fn new(key: &'a [u8], limit: u32) -> Counter<'a> {
        Counter { key, limit }
    }
}

impl PgStore {
    /// Connects, checks the database answers, and applies the migrations
    /// (`migrate`), or (not `migrate`: an export, which must not change a
    /// schema older instances may still be using) checks that none is due.
    pub async fn connect(url: &str, migrate: bool) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("store.url is not a valid URL: {e}")))?;
        config
            .connect_timeout(OP_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("gatehouse");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store = PgStore { pool };
        if migrate {
            store.migrate().await?;
        } else {
            let version = store
                .run(|client| async move { schema_version(&client).await })
                .await?;
            if version < SCHEMA_VERSION {
                return Err(StoreError::Unavailable(format!(
                    "the database's schema is at version {version}, this gatehouse needs \
                     {SCHEMA_VERSION}: stop the older instances and start this version once \
                     (it migrates), then export"
                )));
            }
        }
        Ok(store)
    }

    /// Applies the migrations. Two instances starting at once can both try
    /// the same `CREATE … IF NOT EXISTS`, and PostgreSQL may then refuse the
    /// slower one (a duplicate in its catalog); that attempt is simply run
    /// again, and finds the work done.
    async fn migrate(&self) -> Result<(), StoreError> {
        // (A deadlock with a running instance, which migration 9's locks of
        // three tables can meet, is retried by `run` itself.)
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .run(|client| async move { apply_migrations(&client).await })
                .await
            {
                Err(StoreError::EmailTaken | StoreError::Corrupt { .. }) if attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let Some(id) = issued_user_id(id) else {
            return Ok(None);
        };
        self.run(|client| async move {
            let statement = client.prepare_cached(USER_BY_ID).await?;
            client.query_opt(&statement, &[&id]).await
        })
        .await?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        // PostgreSQL text cannot hold NUL, so no stored email has one.
        if email.contains('\0') {
            return Ok(None);
        }
        let email = email.to_string();
        self.run(|client| {
            let email = email.clone();
            async move {
                let statement = client.prepare_cached(USER_BY_EMAIL).await?;
                client.query_opt(&statement, &[&email]).await
            }
        })
        .await?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), StoreError> {
        // Ids are text in byte order (the column's "C" collation), as the
        // sled store's keys are: any cursor is a range scan of the index.
        // (PostgreSQL text holds no NUL, so no id has one.)
        let after = after.map(|after| after.replace('\0', ""));
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let rows = self
            .run(|client| {
                let after = after.clone();
                async move {
                    let statement = client.prepare_cached(LIST_USERS).await?;
                    client.query(&statement, &[&after, &fetch]).await
                }
            })
            .await?;
        let more = rows.len() > limit;
        let users = rows
            .iter()
            .take(limit)
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((users, more))
    }

    pub async fn insert_user(&self, user: User, events: Vec<Event>) -> Result<User, StoreError> {
        stored_user_id(&user.id)?;
        let stored = user.clone();
        let events = events_param(&events);
        self.run(|client| {
            let user = stored.clone();
            let events = events.clone();
            async move {
                let statement = client
                    .prepare_cached(
                        "WITH logged AS (
                            INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($10))
                         INSERT INTO gatehouse_users (id, name, email, role, password_hash,
                         password_version, created_at, updated_at, email_verified)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .await?;
                client
                    .execute(
                        &statement,
                        &[
                            &user.id,
                            &user.name.as_bytes(),
                            &user.email,
                            &role_text(user.role),
                            &user.password_hash,
                            &to_i64(user.password_version),
                            &to_i64(user.created_at),
                            &to_i64(user.updated_at),
                            &user.email_verified,
                            &events,
                        ],
                    )
                    .await?;
                Ok(())
            }
        })
        .await?;
        Ok(user)
    }

    pub async fn update_user(
        &self,
        id: &str,
        patch: UserPatch,
        now: u64,
        origin: &Origin,
    ) -> Result<(User, Vec<Event>), StoreError> {
        if !is_user_id(id) {
            return Err(StoreError::NotFound);
        }
        // Only a change to `user` can demote; only then are the admins locked.
        let demotes = patch.role == Some(Role::User);
        // A change of name or password makes the same events whatever the
        // user was: one statement, as before the audit log (the common
        // PATCH). Email, role and email_verified events say what changed
        // from what: the row is read under its lock first.
        let read_first = audit::needs_before(&patch);
        let outcome = self
            .run(|mut client| {
                let patch = patch.clone();
                async move {
                    let name = patch.name.as_ref().map(|n| n.as_bytes().to_vec());
                    let role = patch.role.map(role_text);
                    if !read_first {
                        let events = audit::user_changes(id, None, &patch, origin, now);
                        let param = events_param(&events);
                        let params: [&(dyn ToSql + Sync); 8] = [
                            &id,
                            &name,
                            &patch.email,
                            &role,
                            &patch.password_hash,
                            &to_i64(now),
                            &patch.email_verified,
                            &param,
                        ];
                        let row = change_user(client, id, demotes, UPDATE_USER, &params).await?;
                        return Ok(row.map(|row| (row, events)));
                    }
                    let transaction = client.transaction().await?;
                    if demotes && !others_stay_admin(&transaction, id).await? {
                        return Ok(Err(StoreError::LastAdmin));
                    }
                    let lock = transaction.prepare_cached(USER_FOR_UPDATE).await?;
                    let Some(row) = transaction.query_opt(&lock, &[&id]).await? else {
                        return Ok(Err(StoreError::NotFound));
                    };
                    let before = match user_from_row(&row) {
                        Ok(before) => before,
                        Err(corrupt) => return Ok(Err(corrupt)),
                    };
                    let events = audit::user_changes(id, Some(&before), &patch, origin, now);
                    let param = events_param(&events);
                    let statement = transaction.prepare_cached(UPDATE_USER).await?;
                    let row = transaction
                        .query_opt(
                            &statement,
                            &[
                                &id,
                                &name,
                                &patch.email,
                                &role,
                                &patch.password_hash,
                                &to_i64(now),
                                &patch.email_verified,
                                &param,
                            ],
                        )
                        .await?;
                    transaction.commit().await?;
                    Ok(row.ok_or(StoreError::NotFound).map(|row| (row, events)))
                }
            })
            .await?;
        let (row, events) = outcome?;
        Ok((user_from_row(&row)?, events))
    }

    /// Deletes the user (its sessions and mail tokens by the cascade);
    /// returns it and how many sessions ended with it.
    pub async fn delete_user(
        &self,
        id: &str,
        events: Vec<Event>,
    ) -> Result<(User, usize), StoreError> {
        let Some(id) = issued_user_id(id) else {
            return Err(StoreError::NotFound);
        };
        let events = events_param(&events);
        let outcome = self
            .run(|client| {
                let events = events.clone();
                async move { change_user(client, id, true, DELETE_USER, &[&id, &events]).await }
            })
            .await?;
        let row = outcome?;
        let sessions: i64 = row.try_get(9).map_err(|e| StoreError::Corrupt {
            key: format!("user {id}"),
            reason: e.to_string(),
        })?;
        Ok((user_from_row(&row)?, usize::try_from(sessions).unwrap_or(0)))
    }

    /// See `Store::upgrade_password_hash`: one conditional statement.
    pub async fn upgrade_password_hash(
        &self,
        id: &str,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        let Some(id) = issued_user_id(id) else {
            return Ok(false);
        };
        let updated = self
            .run(|client| {
                let (old, new) = (old.clone(), new.clone());
                async move {
                    let statement = client
                        .prepare_cached(
                            "UPDATE gatehouse_users SET password_hash = $3
                             WHERE id = $1 AND password_hash = $2",
                        )
                        .await?;
                    client.execute(&statement, &[&id, &old, &new]).await
                }
            })
            .await?;
        Ok(updated == 1)
    }

    pub async fn revoke(
        &self,
        jti: &str,
        expires_at: u64,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        let jti = jti.replace('\0', "");
        let events = events_param(&events);
        self.run(|client| {
            let (jti, events) = (jti.clone(), events.clone());
            async move {
                let statement = client
                    .prepare_cached(
                        "WITH logged AS (
                            INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($3))
                         INSERT INTO gatehouse_revoked (jti, expires_at) VALUES ($1, $2)
                         ON CONFLICT (jti) DO NOTHING",
                    )
                    .await?;
                client
                    .execute(&statement, &[&jti, &to_i64(expires_at), &events])
                    .await?;
                Ok(())
            }
        })
        .await
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let jti = jti.replace('\0', "");
        self.run(|client| {
            let jti = jti.clone();
            async move {
                let statement = client
                    .prepare_cached("SELECT 1 FROM gatehouse_revoked WHERE jti = $1")
                    .await?;
                Ok(client.query_opt(&statement, &[&jti]).await?.is_some())
            }
        })
        .await
    }

    /// The stored signing key set, if one was ever written.
    pub async fn signing_keys(&self) -> Result<Option<KeySet>, StoreError> {
        let row = self
            .run(|client| async move {
                let statement = client
                    .prepare_cached("SELECT version, keys FROM gatehouse_signing_keys WHERE id = 1")
                    .await?;
                client.query_opt(&statement, &[]).await
            })
            .await?;
        row.map(|row| key_set_from_row(&row)).transpose()
    }

    /// Writes `keys` as the key set at `expected` + 1 (at 1 when `expected`
    /// is `None`: the first set), only if the stored set is still at
    /// `expected`: one conditional statement. False if another instance's
    /// write came first.
    pub async fn swap_signing_keys(
        &self,
        expected: Option<u64>,
        keys: Vec<StoredKey>,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&keys).map_err(|e| StoreError::Corrupt {
            key: "gatehouse_signing_keys".into(),
            reason: e.to_string(),
        })?;
        let events = events_param(&events);
        let written = self
            .run(|client| {
                let (json, events) = (json.clone(), events.clone());
                async move {
                    let row = match expected {
                        None => {
                            client
                                .query_one(
                                    concat!(
                                        "WITH changed AS (
                                            INSERT INTO gatehouse_signing_keys (id, version, keys)
                                            VALUES (1, 1, $1) ON CONFLICT (id) DO NOTHING
                                            RETURNING 1), logged AS (",
                                        log_if_changed!(2),
                                        ") SELECT count(*) FROM changed"
                                    ),
                                    &[&json, &events],
                                )
                                .await?
                        }
                        Some(version) => {
                            client
                                .query_one(
                                    concat!(
                                        "WITH changed AS (
                                            UPDATE gatehouse_signing_keys
                                            SET version = $1 + 1, keys = $2
                                            WHERE id = 1 AND version = $1 RETURNING 1),
                                         logged AS (",
                                        log_if_changed!(3),
                                        ") SELECT count(*) FROM changed"
                                    ),
                                    &[&to_i64(version), &json, &events],
                                )
                                .await?
                        }
                    };
                    row.try_get::<_, i64>(0)
                }
            })
            .await?;
        Ok(written == 1)
    }

    /// Writes `events` alone (those that record no change).
    pub async fn record(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let events = events_param(&events);
        self.run(|client| {
            let events = events.clone();
            async move {
                let statement = client
                    .prepare_cached(
                        "INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($1)",
                    )
                    .await?;
                client.execute(&statement, &[&events]).await?;
                Ok(())
            }
        })
        .await
    }

    /// Writes `event` (of a capped action) if fewer than `per_minute` of its
    /// action were stored in `minute`, by every instance together:
    /// `gatehouse_record_capped` (migration 8) locks the action's budget row
    /// for the moment of one statement. `dropped_here`: events this instance
    /// dropped without asking, added to the count. `Some(n)`: stored, with
    /// the `n` dropped before it in `detail.suppressed`; `None`: dropped
    /// (counted).
    pub async fn record_capped(
        &self,
        event: &Event,
        minute: u64,
        per_minute: u64,
        dropped_here: u64,
    ) -> Result<Option<u64>, StoreError> {
        let events = events_param(std::slice::from_ref(event));
        let action = event.action.as_str();
        let (minute, per_minute) = (to_i64(minute), to_i64(per_minute));
        let dropped_here = to_i64(dropped_here);
        let outcome: i64 = self
            .run(|client| {
                let events = events.clone();
                async move {
                    let statement = client
                        .prepare_cached("SELECT gatehouse_record_capped($1, $2, $3, $4, $5)")
                        .await?;
                    client
                        .query_one(
                            &statement,
                            &[&events, &action, &minute, &per_minute, &dropped_here],
                        )
                        .await?
                        .try_get(0)
                }
            })
            .await?;
        Ok(u64::try_from(outcome).ok())
    }

    /// A page of the audit log, newest first, and whether more follow.
    pub async fn audit_events(
        &self,
        query: &audit::Query,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let limit = i64::try_from(query.limit)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let before = query.before.unwrap_or(Uuid::max());
        let (user_id, action) = (query.user_id.clone(), query.action.map(Action::as_str));
        let rows = self
            .run(|client| {
                let user_id = user_id.clone();
                async move {
                    let (sql, user_id, action) = match (user_id, action) {
                        (None, None) => (AUDIT_PAGE, None, None),
                        (Some(user_id), None) => (AUDIT_PAGE_OF_USER, Some(user_id), None),
                        (None, Some(action)) => (AUDIT_PAGE_OF_ACTION, None, Some(action)),
                        (Some(user_id), Some(action)) => {
                            (AUDIT_PAGE_OF_USER_AND_ACTION, Some(user_id), Some(action))
                        }
                    };
                    let statement = client.prepare_cached(sql).await?;
                    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit, &before];
                    if let Some(user_id) = &user_id {
                        params.push(user_id);
                    }
                    if let Some(action) = &action {
                        params.push(action);
                    }
                    client.query(&statement, &params).await
                }
            })
            .await?;
        let more = rows.len() > query.limit;
        let events = rows
            .iter()
            .take(query.limit)
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((events, more))
    }

    /// Deletes the events made before `cut_off` (see `SledStore::purge_audit`),
    /// a batch at a time so that no statement runs long. Returns how many.
    pub async fn purge_audit(&self, cut_off: Uuid) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let deleted = self
                .run(|client| async move {
                    let statement = client
                        .prepare_cached(
                            "DELETE FROM gatehouse_audit WHERE id IN (
                                SELECT id FROM gatehouse_audit WHERE id < $1 ORDER BY id LIMIT $2)",
                        )
                        .await?;
                    client
                        .execute(&statement, &[&cut_off, &AUDIT_PURGE_BATCH])
                        .await
                })
                .await?;
            removed += usize::try_from(deleted).unwrap_or(usize::MAX);
            if deleted < AUDIT_PURGE_BATCH as u64 {
                return Ok(removed);
            }
        }
    }

    /// Stores a new session of an existing user (`NotFound` otherwise, by
    /// the foreign key), ending its oldest ones beyond `keep` (the new one
    /// included; ids are UUIDv7s, so id order is creation order).
    pub async fn insert_session(
        &self,
        session: Session,
        keep: usize,
        events: Vec<Event>,
    ) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let (id, user_id) = (
            parse_session_id(&session.id)?,
            stored_user_id(&session.user_id)?,
        );
        let events = events_param(&events);
        self.run(|client| {
            let (s, events) = (session.clone(), events.clone());
            async move {
                let insert = client.prepare_cached(INSERT_SESSION).await?;
                client
                    .execute(
                        &insert,
                        &[
                            &id,
                            &user_id,
                            &to_i64(s.created_at),
                            &to_i64(s.last_used_at),
                            &to_i64(s.expires_at),
                            &s.user_agent,
                            &s.ip,
                            &to_i64(s.password_version),
                            &to_i64(s.generation),
                            &spent_at(&s),
                            &s.refresh_hash.as_slice(),
                            &events,
                        ],
                    )
                    .await?;
                // A separate statement: a racing sign-in may leave one more
                // until the next.
                let cap = client
                    .prepare_cached(
                        "DELETE FROM gatehouse_sessions WHERE id IN (
                            SELECT id FROM gatehouse_sessions WHERE user_id = $1
                            ORDER BY id DESC OFFSET $2)",
                    )
                    .await?;
                let ended = client.execute(&cap, &[&user_id, &keep]).await?;
                Ok(usize::try_from(ended).unwrap_or(0))
            }
        })
        .await
    }

    /// See `Store::put_mail_token`. One statement: nothing is inserted for
    /// a user who is gone or no longer has `pending.email` (an email change
    /// raced the mail), and the upsert's condition keeps the resend window.
    pub async fn put_mail_token(
        &self,
        user_id: &str,
        kind: MailTokenKind,
        pending: PendingToken,
        resend_secs: u64,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let Some(id) = issued_user_id(user_id) else {
            return Err(StoreError::NotFound);
        };
        let events = events_param(&events);
        self.run(|client| {
            let (pending, events) = (pending.clone(), events.clone());
            async move {
                let statement = client
                    .prepare_cached(concat!(
                        "WITH changed AS (INSERT INTO gatehouse_mail_tokens AS t
                            (user_id, kind, email, token_hash, password_version, sent_at, expires_at)
                         SELECT $1::text, $2::smallint, $3::text, $4::bytea, $5::bigint,
                                $6::bigint, $7::bigint
                         FROM gatehouse_users WHERE id = $1::text AND email = $3::text
                         ON CONFLICT (user_id, kind) DO UPDATE SET
                            email = EXCLUDED.email, token_hash = EXCLUDED.token_hash,
                            password_version = EXCLUDED.password_version,
                            sent_at = EXCLUDED.sent_at, expires_at = EXCLUDED.expires_at
                         WHERE $8::bigint = 0 OR t.sent_at + $8::bigint <= EXCLUDED.sent_at
                         RETURNING 1), logged AS (",
                        log_if_changed!(9),
                        ") SELECT 1 FROM changed"
                    ))
                    .await?;
                let hash = pending.token_hash.map(|h| h.to_vec());
                let written = client
                    .query_opt(
                        &statement,
                        &[
                            &id,
                            &i16::from(kind.code()),
                            &pending.email,
                            &hash,
                            &to_i64(pending.password_version),
                            &to_i64(pending.sent_at),
                            &to_i64(pending.expires_at),
                            &to_i64(resend_secs),
                            &events,
                        ],
                    )
                    .await?;
                Ok(written.is_some())
            }
        })
        .await
    }

    /// Uses the mail token `presented` if its record accepts it for the user
    /// as stored: in one transaction that locks the user's row, `change` is
    /// applied to the user (and `updated_at` set), the token is spent, and
    /// the changed user returned. `None` if the token is not accepted.
    pub async fn use_mail_token(
        &self,
        presented: PresentedMailToken,
        now: u64,
        change: impl Fn(&mut User) + Send + Sync + 'static,
        events: Vec<Event>,
    ) -> Result<Option<User>, StoreError> {
        let Some(id) = issued_user_id(&presented.user_id) else {
            return Ok(None);
        };
        let change = Arc::new(change);
        let events = events_param(&events);
        let outcome = self
            .run(|mut client| {
                let (presented, change) = (presented.clone(), Arc::clone(&change));
                let events = events.clone();
                async move {
                    let transaction = client.transaction().await?;
                    let lock = transaction.prepare_cached(USER_FOR_UPDATE).await?;
                    let Some(row) = transaction.query_opt(&lock, &[&id]).await? else {
                        return Ok(Ok(None));
                    };
                    let mut user = match user_from_row(&row) {
                        Ok(user) => user,
                        Err(corrupt) => return Ok(Err(corrupt)),
                    };
                    let read = transaction
                        .prepare_cached(
                            "SELECT email, token_hash, password_version, sent_at, expires_at
                         FROM gatehouse_mail_tokens WHERE user_id = $1 AND kind = $2
                         FOR UPDATE",
                        )
                        .await?;
                    let code = i16::from(presented.kind.code());
                    let Some(row) = transaction.query_opt(&read, &[&id, &code]).await? else {
                        return Ok(Ok(None));
                    };
                    let Some(record) = pending_from_row(&row) else {
                        return Ok(Err(StoreError::Corrupt {
                            key: format!("mail token of {id}"),
                            reason: "not a mail token record".into(),
                        }));
                    };
                    if !record.accepts(&presented, &user, now) {
                        return Ok(Ok(None));
                    }
                    change(&mut user);
                    user.updated_at = now;
                    let write = transaction
                        .prepare_cached(SET_USER_AFTER_MAIL_TOKEN)
                        .await?;
                    transaction
                        .execute(
                            &write,
                            &[
                                &id,
                                &user.password_hash,
                                &to_i64(user.password_version),
                                &user.email_verified,
                                &to_i64(user.updated_at),
                            ],
                        )
                        .await?;
                    let spend = transaction
                        .prepare_cached(
                            "UPDATE gatehouse_mail_tokens SET token_hash = NULL
                         WHERE user_id = $1 AND kind = $2 AND token_hash = $3",
                        )
                        .await?;
                    let hash = presented.hash.to_vec();
                    if transaction.execute(&spend, &[&id, &code, &hash]).await? != 1 {
                        transaction.rollback().await?;
                        return Ok(Ok(None));
                    }
                    let log = transaction
                        .prepare_cached(
                            "INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($1)",
                        )
                        .await?;
                    transaction.execute(&log, &[&events]).await?;
                    transaction.commit().await?;
                    Ok(Ok(Some(user)))
                }
            })
            .await?;
        outcome
    }

    /// Whether `presented` would be accepted now (reads; `use_mail_token`
    /// decides again, atomically).
    pub async fn mail_token_is_live(
        &self,
        presented: &PresentedMailToken,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(user) = self.user_by_id(&presented.user_id).await? else {
            return Ok(false);
        };
        let Some(id) = issued_user_id(&presented.user_id) else {
            return Ok(false);
        };
        let code = i16::from(presented.kind.code());
        let row = self
            .run(|client| async move {
                let statement = client
                    .prepare_cached(
                        "SELECT email, token_hash, password_version, sent_at, expires_at
                         FROM gatehouse_mail_tokens WHERE user_id = $1 AND kind = $2",
                    )
                    .await?;
                client.query_opt(&statement, &[&id, &code]).await
            })
            .await?;
        Ok(row
            .as_ref()
            .and_then(pending_from_row)
            .is_some_and(|record| record.accepts(presented, &user, now)))
    }

    /// The session `id` and its user, in one statement.
    pub async fn session_and_user(&self, id: &str) -> Result<Option<(Session, User)>, StoreError> {
        let Some(id) = issued_session_id(id) else {
            return Ok(None);
        };
        let row = self
            .run(|client| async move {
                let statement = client.prepare_cached(SESSION_AND_USER).await?;
                client.query_opt(&statement, &[&id]).await
            })
            .await?;
        match row {
            Some(row) => Ok(Some((session_from_row(&row, 9)?, user_from_row(&row)?))),
            None => Ok(None),
        }
    }

    /// Replaces the session `current` with `next` (a rotation), if it is
    /// still at `current`'s generation and refresh hash: false if another
    /// rotation (or an end) came first. One conditional `UPDATE`: racing
    /// rotations on any number of instances serialize on the row, and the
    /// later ones find the generation moved.
    pub async fn replace_session(
        &self,
        current: &Session,
        next: Session,
        events: Vec<Event>,
    ) -> Result<bool, StoreError> {
        let id = parse_session_id(&next.id)?;
        let (generation, hash) = (to_i64(current.generation), current.refresh_hash);
        let events = events_param(&events);
        let updated: i64 = self
            .run(|client| {
                let (next, events) = (next.clone(), events.clone());
                async move {
                    let statement = client
                        .prepare_cached(concat!(
                            "WITH changed AS (
                                UPDATE gatehouse_sessions SET generation = $2, spent_at = $3,
                                    last_used_at = $4, refresh_hash = $5
                                WHERE id = $1 AND generation = $6 AND refresh_hash = $7
                                RETURNING 1), logged AS (",
                            log_if_changed!(8),
                            ") SELECT count(*) FROM changed"
                        ))
                        .await?;
                    client
                        .query_one(
                            &statement,
                            &[
                                &id,
                                &to_i64(next.generation),
                                &spent_at(&next),
                                &to_i64(next.last_used_at),
                                &next.refresh_hash.as_slice(),
                                &generation,
                                &hash.as_slice(),
                                &events,
                            ],
                        )
                        .await?
                        .try_get(0)
                }
            })
            .await?;
        Ok(updated == 1)
    }

    /// Ends (deletes) the session `id`; returns it if it was there.
    pub async fn end_session(
        &self,
        id: &str,
        events: Vec<Event>,
    ) -> Result<Option<Session>, StoreError> {
        let Some(id) = issued_session_id(id) else {
            return Ok(None);
        };
        let events = events_param(&events);
        let row = self
            .run(|client| {
                let events = events.clone();
                async move {
                    let statement = client.prepare_cached(END_SESSION).await?;
                    client.query_opt(&statement, &[&id, &events]).await
                }
            })
            .await?;
        row.map(|row| session_from_row(&row, 0)).transpose()
    }

    /// Ends every session of `user_id` but `except`; returns them.
    pub async fn end_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        events: Vec<Event>,
    ) -> Result<Vec<Session>, StoreError> {
        let Some(user_id) = issued_user_id(user_id) else {
            return Ok(Vec::new());
        };
        let except = except.and_then(issued_session_id);
        let events = events_param(&events);
        let rows = self
            .run(|client| {
                let events = events.clone();
                async move {
                    let statement = client.prepare_cached(END_USER_SESSIONS).await?;
                    client
                        .query(&statement, &[&user_id, &except, &events])
                        .await
                }
            })
            .await?;
        rows.iter().map(|row| session_from_row(row, 0)).collect()
    }

    /// Every stored session of `user_id` (alive or not yet purged).
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        let Some(user_id) = issued_user_id(user_id) else {
            return Ok(Vec::new());
        };
        let rows = self
            .run(|client| async move {
                let statement = client.prepare_cached(SESSIONS_OF).await?;
                client.query(&statement, &[&user_id]).await
            })
            .await?;
        rows.iter().map(|row| session_from_row(row, 0)).collect()
    }

    /// Deletes the sessions that are no longer alive at `now` (the rule of
    /// `Session::is_alive`, in SQL): past their absolute end, idle for
    /// `idle_secs`, or from before their user's last password change.
    pub async fn purge_sessions(&self, now: u64, idle_secs: u64) -> Result<usize, StoreError> {
        let (now, idle) = (to_i64(now), to_i64(idle_secs));
        let deleted = self
            .run(|client| async move {
                client
                    .execute(
                        "DELETE FROM gatehouse_sessions s
                         WHERE s.expires_at <= $1 OR s.last_used_at + $2 <= $1
                            OR s.password_version <> (SELECT u.password_version
                                FROM gatehouse_users u WHERE u.id = s.user_id)",
                        &[&now, &idle],
                    )
                    .await
            })
            .await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    /// Deletes expired revocations, and throttle rows older than `window`.
    /// A guard row still in use was touched within the window, so is kept.
    pub async fn purge(&self, now: u64, window_secs: u64) -> Result<usize, StoreError> {
        let since = to_i64(now.saturating_sub(window_secs));
        self.run(|client| async move {
            let revoked = client
                .execute(
                    "DELETE FROM gatehouse_revoked WHERE expires_at < $1",
                    &[&to_i64(now)],
                )
                .await?;
            let events = client
                .execute(
                    "DELETE FROM gatehouse_throttle_events WHERE at <= $1",
                    &[&since],
                )
                .await?;
            let guards = client
                .execute(
                    "DELETE FROM gatehouse_throttle_guards WHERE touched_at <= $1",
                    &[&since],
                )
                .await?;
            Ok(usize::try_from(revoked + events + guards).unwrap_or(usize::MAX))
        })
        .await
    }

    /// Counts `attempt` against every one of `counters` (see
    /// `domain::throttle`), unless one of them already holds its limit of
    /// attempts within the window: then nothing is recorded, and the answer
    /// is the wait until the oldest of them leaves the window.
    ///
    /// Exact under concurrency, on every instance: `gatehouse_count_attempt`
    /// (migration 5; one round trip) first upserts the `guard` row, which
    /// locks it until commit, so everyone counting under that guard waits
    /// for the one before to commit, and then counts what it committed.
    /// `guard` must therefore name a key that every racing count shares: the
    /// client address's. Each counter then holds at most its limit of rows
    /// within the window.
    pub async fn count_attempt(
        &self,
        guard: &[u8],
        counters: &[Counter<'_>],
        attempt: Uuid,
        now: u64,
        window_secs: u64,
    ) -> Result<Result<(), RetryAfter>, StoreError> {
        let guard = guard.to_vec();
        let keys: Vec<Vec<u8>> = counters.iter().map(|c| c.key.to_vec()).collect();
        let limits: Vec<i64> = counters.iter().map(|c| i64::from(c.limit.max(1))).collect();
        let (now_i64, since, window) = (
            to_i64(now),
            to_i64(now.saturating_sub(window_secs)),
            to_i64(window_secs),
        );
        self.run(|client| {
            let (guard, keys, limits) = (guard.clone(), keys.clone(), limits.clone());
            async move {
                let statement = client
                    .prepare_cached("SELECT gatehouse_count_attempt($1, $2, $3, $4, $5, $6, $7)")
                    .await?;
                let wait: Option<i64> = client
                    .query_one(
                        &statement,
                        &[&guard, &keys, &limits, &attempt, &now_i64, &since, &window],
                    )
                    .await?
                    .try_get(0)?;
                Ok(match wait {
                    Some(seconds) => Err(RetryAfter(u64::try_from(seconds).unwrap_or(1).max(1))),
                    None => Ok(()),
                })
            }
        })
        .await
    }

    /// The login attempt succeeded: the account's failures are cleared and
    /// the address is not charged for this attempt. (Only deletes: fewer
    /// rows never let a count overshoot, so no guard is needed.)
    pub async fn login_succeeded(
        &self,
        account: &[u8],
        address: &[u8],
        attempt: Uuid,
    ) -> Result<(), StoreError> {
        let (account, address) = (account.to_vec(), address.to_vec());
        self.run(|client| {
            let (account, address) = (account.clone(), address.clone());
            async move {
                let statement = client
                    .prepare_cached(
                        "DELETE FROM gatehouse_throttle_events
                         WHERE key = $1 OR (key = $2 AND attempt = $3)",
                    )
                    .await?;
                client
                    .execute(&statement, &[&account, &address, &attempt])
                    .await?;
                Ok(())
            }
        })
        .await
    }

    pub async fn count_users(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .run(|client| async move {
                let statement = client
                    .prepare_cached("SELECT count(*) FROM gatehouse_users")
                    .await?;
                client.query_one(&statement, &[]).await?.try_get(0)
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// See `Store::export`: one repeatable-read, read-only transaction (one
    /// snapshot for the whole file) on a connection of its own, read through
    /// cursors a page at a time. Not bounded by [`OP_TIMEOUT`]: it lasts as
    /// long as the reader takes; a reader gone ends it.
    pub async fn export(
        &self,
        with_audit: bool,
        pages: tokio::sync::mpsc::Sender<ExportPage>,
    ) -> Result<(), StoreError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(map_error)?;
        let keys = transaction
            .query_opt(
                "SELECT version, keys FROM gatehouse_signing_keys WHERE id = 1",
                &[],
            )
            .await
            .map_err(map_error)?;
        if let Some(row) = keys {
            if pages
                .send(ExportPage::Keys(key_set_from_row(&row)?))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        let users = concat!(
            "SELECT ",
            user_columns!(),
            " FROM gatehouse_users ORDER BY id"
        );
        if !send_pages(
            &transaction,
            users,
            user_from_row,
            ExportPage::Users,
            &pages,
        )
        .await?
        {
            return Ok(());
        }
        let events = "SELECT id, at, action, user_id, actor_id, ip, user_agent, detail
                      FROM gatehouse_audit ORDER BY id";
        if with_audit
            && !send_pages(
                &transaction,
                events,
                event_from_row,
                ExportPage::Events,
                &pages,
            )
            .await?
        {
            return Ok(());
        }
        transaction.commit().await.map_err(map_error)
    }

    /// See `Store::import`: one transaction on a connection of its own (not
    /// bounded by [`OP_TIMEOUT`]; 100,000 users take a few seconds). The
    /// users table is locked against writes (reads go on) before it is
    /// found empty, so a registration on a running instance either comes
    /// first (and the import is refused) or waits for the import's end.
    pub async fn import(&self, import: Import) -> Result<bool, StoreError> {
        /// Rows per statement: one round trip each, parameters as arrays.
        const CHUNK: usize = 1000;
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let transaction = client.transaction().await.map_err(map_error)?;
        transaction
            .batch_execute("LOCK TABLE gatehouse_users IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(map_error)?;
        let has_users: bool = transaction
            .query_one("SELECT EXISTS (SELECT 1 FROM gatehouse_users)", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(map_error)?;
        if has_users {
            return Ok(false);
        }
        let insert_users = transaction
            .prepare(
                "INSERT INTO gatehouse_users (id, name, email, role, password_hash,
                    password_version, created_at, updated_at, email_verified)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[],
                    $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bool[])",
            )
            .await
            .map_err(map_error)?;
        for chunk in import.users.chunks(CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|u| u.id.as_str()).collect();
            let names: Vec<&[u8]> = chunk.iter().map(|u| u.name.as_bytes()).collect();
            let emails: Vec<&str> = chunk.iter().map(|u| u.email.as_str()).collect();
            let roles: Vec<&str> = chunk.iter().map(|u| role_text(u.role)).collect();
            let hashes: Vec<&str> = chunk.iter().map(|u| u.password_hash.as_str()).collect();
            let versions: Vec<i64> = chunk.iter().map(|u| to_i64(u.password_version)).collect();
            let created: Vec<i64> = chunk.iter().map(|u| to_i64(u.created_at)).collect();
            let updated: Vec<i64> = chunk.iter().map(|u| to_i64(u.updated_at)).collect();
            let verified: Vec<bool> = chunk.iter().map(|u| u.email_verified).collect();
            transaction
                .execute(
                    &insert_users,
                    &[
                        &ids, &names, &emails, &roles, &hashes, &versions, &created, &updated,
                        &verified,
                    ],
                )
                .await
                .map_err(map_error)?;
        }
        if let Some(keys) = &import.keys {
            let text = serde_json::to_string(&keys.keys).map_err(|e| StoreError::Corrupt {
                key: "gatehouse_signing_keys".into(),
                reason: e.to_string(),
            })?;
            transaction
                .execute(
                    // A version above any stored one: instances running on
                    // this database install a set only when its version moved.
                    "INSERT INTO gatehouse_signing_keys (id, version, keys) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET keys = EXCLUDED.keys,
                        version = GREATEST(gatehouse_signing_keys.version, EXCLUDED.version) + 1",
                    &[&to_i64(keys.version), &text],
                )
                .await
                .map_err(map_error)?;
        }
        for chunk in import.events.chunks(CHUNK) {
            transaction
                .execute(
                    "INSERT INTO gatehouse_audit SELECT * FROM gatehouse_audit_rows($1)
                     ON CONFLICT (id) DO NOTHING",
                    &[&events_param(chunk)],
                )
                .await
                .map_err(map_error)?;
        }
        transaction.commit().await.map_err(map_error)?;
        Ok(true)
    }

    /// Answers if the database can take writes: a read-only or recovering
    /// one is `Unavailable`, as every write would be refused.
    pub async fn health(&self) -> Result<(), StoreError> {
        let writable = self
            .run(|client| async move {
                let statement = client
                    .prepare_cached(
                        "SELECT NOT pg_is_in_recovery()
                            AND current_setting('transaction_read_only') = 'off'",
                    )
                    .await?;
                let row = client.query_one(&statement, &[]).await?;
                row.try_get::<_, bool>(0)
            })
            .await?;
        if writable {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the database is read-only or recovering".into(),
            ))
        }
    }

    /// Runs `op` on a pooled connection within [`OP_TIMEOUT`], retrying
    /// serialization failures and deadlocks.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let attempt = async {
            let mut tries = 0;
            loop {
                tries += 1;
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                match op(client).await {
                    Ok(value) => return Ok(value),
                    Err(error) if retryable(&error) && tries < ATTEMPTS => continue,
                    Err(error) => return Err(map_error(error)),
                }
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            )),
        }
    }
}

/// Runs `sql`, which changes the user `id` and returns its row. When the
/// change may leave no admin (`guard`), it runs in a transaction that first
/// locks the admin rows and refuses with `LastAdmin` if `id` is the only one
/// ([`others_stay_admin`]); any other change is the single statement alone,
/// with no transaction's round trips.
async fn change_user(
    mut client: deadpool_postgres::Object,
    id: &str,
    guard: bool,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Result<Row, StoreError>, tokio_postgres::Error> {
    if !guard {
        let statement = client.prepare_cached(sql).await?;
        return Ok(client
            .query_opt(&statement, params)
            .await?
            .ok_or(StoreError::NotFound));
    }
    let transaction = client.transaction().await?;
    if !others_stay_admin(&transaction, id).await? {
        return Ok(Err(StoreError::LastAdmin));
    }
    let statement = transaction.prepare_cached(sql).await?;
    let row = transaction.query_opt(&statement, params).await?;
    transaction.commit().await?;
    Ok(row.ok_or(StoreError::NotFound))
}

/// False if `id` is the only admin. Locks every admin row (in id order, so
/// two of these cannot deadlock) until the transaction ends: a concurrent
/// demotion or deletion of another admin waits, then sees this one's outcome
/// (under READ COMMITTED, a row demoted meanwhile no longer matches), so two
/// admins demoting each other at once leave one.
async fn others_stay_admin(
    transaction: &deadpool_postgres::Transaction<'_>,
    id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(
            "SELECT id FROM gatehouse_users WHERE role = 'admin' ORDER BY id FOR UPDATE",
        )
        .await?;
    let admins = transaction.query(&statement, &[]).await?;
    let is_admin = admins.iter().any(|row| row.get::<_, &str>(0) == id);
    Ok(!is_admin || admins.len() > 1)
}

/// The schema version recorded in the database; 0 for an empty schema.
/// Only reads, so that a read-only database with a current schema starts.
async fn schema_version(client: &deadpool_postgres::Object) -> Result<i32, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('gatehouse_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM gatehouse_migrations",
            &[],
        )
        .await?
        .try_get(0)
}

async fn apply_migrations(client: &deadpool_postgres::Object) -> Result<(), tokio_postgres::Error> {
    if schema_version(client).await? >= SCHEMA_VERSION {
        return Ok(());
    }
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS gatehouse_migrations (version INT PRIMARY KEY)")
        .await?;
    for (version, sql) in MIGRATIONS {
        let applied = client
            .query_opt(
                "SELECT version FROM gatehouse_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !applied {
            client.batch_execute(sql).await?;
            client
                .execute(
                    "INSERT INTO gatehouse_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[version],
                )
                .await?;
        }
    }
    Ok(())
}

fn retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE) | Some(&SqlState::T_R_DEADLOCK_DETECTED)
    )
}

fn map_error(error: tokio_postgres::Error) -> StoreError {
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection failed, or the server's answer did not
        // arrive.
        return StoreError::Unavailable(error.to_string());
    };
    if code == &SqlState::UNIQUE_VIOLATION {
        return StoreError::EmailTaken;
    }
    // A session for a user deleted meanwhile (the only foreign key).
    if code == &SqlState::FOREIGN_KEY_VIOLATION {
        return StoreError::NotFound;
    }
    match code.code().get(..2) {
        // The database cannot serve now, whatever we send: connection (08),
        // read-only or recovering (25, e.g. 25006), out of resources such as
        // disk (53), shutting down or cancelled (57), and serialization
        // failures still there after our retries (40). A 503, not a bug.
        Some("08" | "25" | "40" | "53" | "57") => {
            StoreError::Unavailable(format!("SQLSTATE {}: {}", code.code(), db_message(&error)))
        }
        // Anything else the server refused is a bug on our side.
        _ => StoreError::Corrupt {
            key: format!("SQLSTATE {}", code.code()),
            reason: db_message(&error),
        },
    }
}

/// The server's own message (`Display` of the error says only "db error").
fn db_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_string(),
        None => error.to_string(),
    }
}

/// A `gatehouse_mail_tokens` row; `None` if it holds what no version wrote.
fn pending_from_row(row: &Row) -> Option<PendingToken> {
    let number = |i: usize| {
        row.try_get::<_, i64>(i)
            .ok()
            .and_then(|n| u64::try_from(n).ok())
    };
    let hash: Option<Vec<u8>> = row.try_get(1).ok()?;
    let token_hash = match hash {
        Some(bytes) => Some(<[u8; 32]>::try_from(bytes.as_slice()).ok()?),
        None => None,
    };
    Some(PendingToken {
        email: row.try_get(0).ok()?,
        token_hash,
        password_version: number(2)?,
        sent_at: number(3)?,
        expires_at: number(4)?,
    })
}

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: row.try_get::<_, String>(0).unwrap_or_default(),
        reason: reason.to_string(),
    };
    let id: String = row.try_get(0).map_err(|e| corrupt(&e.to_string()))?;
    let name: Vec<u8> = row.try_get(1).map_err(|e| corrupt(&e.to_string()))?;
    let role: String = row.try_get(3).map_err(|e| corrupt(&e.to_string()))?;
    let get_u64 = |i: usize| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(i).map_err(|e| corrupt(&e.to_string()))?;
        u64::try_from(value).map_err(|_| corrupt("negative number"))
    };
    Ok(User {
        id,
        name: String::from_utf8(name).map_err(|_| corrupt("name is not UTF-8"))?,
        email: row.try_get(2).map_err(|e| corrupt(&e.to_string()))?,
        role: Role::parse(&role).ok_or_else(|| corrupt("unknown role"))?,
        password_hash: row.try_get(4).map_err(|e| corrupt(&e.to_string()))?,
        password_version: get_u64(5)?,
        created_at: get_u64(6)?,
        updated_at: get_u64(7)?,
        email_verified: row.try_get(8).map_err(|e| corrupt(&e.to_string()))?,
    })
}

/// The session in `row`'s columns from `at` on (`session_columns!`'s order).
fn session_from_row(row: &Row, at: usize) -> Result<Session, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: row
            .try_get::<_, Uuid>(at)
            .map(|id| id.to_string())
            .unwrap_or_default(),
        reason,
    };
    let get_u64 = |i: usize| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(at + i).map_err(|e| corrupt(e.to_string()))?;
        u64::try_from(value).map_err(|_| corrupt("negative number".into()))
    };
    let id: Uuid = row.try_get(at).map_err(|e| corrupt(e.to_string()))?;
    let user_id: String = row.try_get(at + 1).map_err(|e| corrupt(e.to_string()))?;
    let hash: Vec<u8> = row.try_get(at + 10).map_err(|e| corrupt(e.to_string()))?;
    Ok(Session {
        id: id.to_string(),
        user_id,
        created_at: get_u64(2)?,
        last_used_at: get_u64(3)?,
        expires_at: get_u64(4)?,
        user_agent: row.try_get(at + 5).map_err(|e| corrupt(e.to_string()))?,
        ip: row.try_get(at + 6).map_err(|e| corrupt(e.to_string()))?,
        password_version: get_u64(7)?,
        generation: get_u64(8)?,
        spent_at: row
            .try_get::<_, Vec<i64>>(at + 9)
            .map_err(|e| corrupt(e.to_string()))?
            .into_iter()
            .map(|t| u64::try_from(t).map_err(|_| corrupt("negative number".into())))
            .collect::<Result<_, _>>()?,
        refresh_hash: hash
            .try_into()
            .map_err(|_| corrupt("refresh_hash is not 32 bytes".into()))?,
    })
}

/// Reads `sql`'s rows through a cursor, [`EXPORT_PAGE`] at a time, and
/// sends each page as `page(records)`; false if `pages` was dropped.
async fn send_pages<T>(
    transaction: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    record: fn(&Row) -> Result<T, StoreError>,
    page: fn(Vec<T>) -> ExportPage,
    pages: &tokio::sync::mpsc::Sender<ExportPage>,
) -> Result<bool, StoreError> {
    let portal = transaction.bind(sql, &[]).await.map_err(map_error)?;
    loop {
        let rows = transaction
            .query_portal(&portal, EXPORT_PAGE as i32)
            .await
            .map_err(map_error)?;
        if rows.is_empty() {
            return Ok(true);
        }
        let records = rows.iter().map(record).collect::<Result<_, _>>()?;
        if pages.send(page(records)).await.is_err() {
            return Ok(false);
        }
    }
}

/// The key set in a `SELECT version, keys FROM gatehouse_signing_keys` row.
fn key_set_from_row(row: &Row) -> Result<KeySet, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: "gatehouse_signing_keys".into(),
        reason,
    };
    let version: i64 = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
    let keys: String = row.try_get(1).map_err(|e| corrupt(e.to_string()))?;
    let keys: Vec<StoredKey> = serde_json::from_str(&keys).map_err(|e| corrupt(e.to_string()))?;
    Ok(KeySet {
        version: u64::try_from(version).map_err(|e| corrupt(e.to_string()))?,
        keys,
    })
}

fn spent_at(session: &Session) -> Vec<i64> {
    session.spent_at.iter().map(|&t| to_i64(t)).collect()
}

/// Events removed per statement by the retention purge.
const AUDIT_PURGE_BATCH: i64 = 10_000;

/// `events` as the one parameter `gatehouse_audit_rows` reads: a JSON array
/// of objects with the event's columns, the detail as JSON text.
fn events_param(events: &[Event]) -> String {
    #[derive(serde::Serialize)]
    struct Columns<'e> {
        id: &'e Uuid,
        at: &'e str,
        action: &'static str,
        user_id: Option<&'e str>,
        actor_id: Option<&'e str>,
        ip: Option<&'e str>,
        user_agent: Option<&'e str>,
        detail: String,
    }
    let rows: Vec<Columns> = events
        .iter()
        .map(|e| Columns {
            id: &e.id,
            at: &e.time,
            action: e.action.as_str(),
            user_id: e.user_id.as_deref(),
            actor_id: e.actor_id.as_deref(),
            ip: e.ip.as_deref(),
            user_agent: e.user_agent.as_deref(),
            detail: serde_json::Value::Object(e.detail.clone()).to_string(),
        })
        .collect();
    // Strings and a UUID: nothing here can fail to serialize.
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: "gatehouse_audit".into(),
        reason,
    };
    let get = |i: usize| -> Result<Option<String>, StoreError> {
        row.try_get(i).map_err(|e| corrupt(e.to_string()))
    };
    let id: Uuid = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
    let action = get(2)?.unwrap_or_default();
    let detail = get(7)?.unwrap_or_default();
    Ok(Event {
        id,
        time: get(1)?.unwrap_or_default(),
        action: Action::parse(&action)
            .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
        user_id: get(3)?,
        actor_id: get(4)?,
        ip: get(5)?,
        user_agent: get(6)?,
        detail: serde_json::from_str(&detail).map_err(|e| corrupt(e.to_string()))?,
    })
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Admin => "admin",
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `id` if it is spelled as a stored user id can be ([`is_user_id`]): the
/// sled store's keys are exact bytes, so only the issued spelling may name a
/// user here as well (and nothing longer reaches the database).
fn issued_user_id(id: &str) -> Option<&str> {
    is_user_id(id).then_some(id)
}

/// The UUID a session `id` names, if it is spelled as gatehouse issues them
/// (lowercase, hyphenated). `Uuid::parse_str` also takes upper case, braces,
/// URNs and the simple form.
fn issued_session_id(id: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(id).ok()?;
    let mut spelled = Uuid::encode_buffer();
    (uuid.hyphenated().encode_lower(&mut spelled) == id).then_some(uuid)
}

/// `id` as a user's id to write: one of [`is_user_id`]'s spellings.
fn stored_user_id(id: &str) -> Result<&str, StoreError> {
    issued_user_id(id).ok_or_else(|| StoreError::Corrupt {
        key: id.to_string(),
        reason: "not a user id".into(),
    })
}

fn parse_session_id(id: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(id).map_err(|_| StoreError::Corrupt {
        key: id.to_string(),
        reason: "not a UUID".into(),
    })
}
