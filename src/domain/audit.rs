//! The audit log's events: what happened to which account, who did it, from
//! where (API.md "Audit log"). This module decides what an event says and how
//! it is written as JSON, the one form both stores keep and the API sends; it
//! also holds the per-minute budget of stored failure events.
//!
//! It must never put a password, a hash or a token into an event: details
//! are built here from named, non-secret facts only (an email address, a
//! session id, a role, a key id), and the tests search every stored event
//! for the secrets the requests carried.
//!
//! The stores write an event in the same write as the change it records
//! (`store::Store`'s methods take the events with the change), so a change
//! acknowledged is never without its event.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::session::MAX_USER_AGENT_CHARS;
use super::time::Rfc3339;
use super::user::{User, UserPatch};

/// The recorded actions, in API.md's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Register,
    Login,
    LoginFailed,
    LoginThrottled,
    Logout,
    Refresh,
    RefreshTokenReused,
    SessionRevoked,
    PasswordChanged,
    PasswordResetRequested,
    PasswordReset,
    EmailVerified,
    EmailChanged,
    UserCreated,
    UserUpdated,
    UserDeleted,
    RoleChanged,
    KeyRotated,
}

impl Action {
    pub const ALL: [Action; 18] = [
        Action::Register,
        Action::Login,
        Action::LoginFailed,
        Action::LoginThrottled,
        Action::Logout,
        Action::Refresh,
        Action::RefreshTokenReused,
        Action::SessionRevoked,
        Action::PasswordChanged,
        Action::PasswordResetRequested,
        Action::PasswordReset,
        Action::EmailVerified,
        Action::EmailChanged,
        Action::UserCreated,
        Action::UserUpdated,
        Action::UserDeleted,
        Action::RoleChanged,
        Action::KeyRotated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Login => "login",
            Action::LoginFailed => "login_failed",
            Action::LoginThrottled => "login_throttled",
            Action::Logout => "logout",
            Action::Refresh => "refresh",
            Action::RefreshTokenReused => "refresh_token_reused",
            Action::SessionRevoked => "session_revoked",
            Action::PasswordChanged => "password_changed",
            Action::PasswordResetRequested => "password_reset_requested",
            Action::PasswordReset => "password_reset",
            Action::EmailVerified => "email_verified",
            Action::EmailChanged => "email_changed",
            Action::UserCreated => "user_created",
            Action::UserUpdated => "user_updated",
            Action::UserDeleted => "user_deleted",
            Action::RoleChanged => "role_changed",
            Action::KeyRotated => "key_rotated",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The actions anyone can cause without an account, in any number:
    /// stored at most `audit.max_failures_per_minute` a minute each (see
    /// [`FailureBudget`]). `login_throttled` is bounded like `login_failed`,
    /// as a flood that has reached the throttle would otherwise fill the
    /// disk just the same.
    pub fn is_capped(self) -> bool {
        matches!(self, Action::LoginFailed | Action::LoginThrottled)
    }
}

/// Who made the request an event records, and from where.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The authenticated user; `None` when nobody was (a login, a reset by
    /// mail link, a command at the console).
    pub actor_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Where a request from outside HTTP came from (`detail.via`).
    pub via: Option<&'static str>,
}

impl Origin {
    /// `user_agent` cut and cleaned as a session's is (it is shown to users
    /// and written to databases); an empty one is `None`.
    pub fn new(actor_id: Option<&str>, ip: Option<String>, user_agent: Option<&str>) -> Origin {
        let user_agent: Option<String> = user_agent
            .map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_USER_AGENT_CHARS)
                    .collect::<String>()
            })
            .filter(|ua| !ua.is_empty());
        Origin {
            actor_id: actor_id.map(str::to_string),
            ip,
            user_agent,
            via: None,
        }
    }

    /// The same request, done by `actor_id` (once a login has shown who it is).
    pub fn by(&self, actor_id: &str) -> Origin {
        Origin {
            actor_id: Some(actor_id.to_string()),
            ..self.clone()
        }
    }

    /// A command run on the server (`gatehouse admin create`): no actor, no
    /// address; the detail says where it came from.
    pub fn console() -> Origin {
        Origin {
            via: Some("command line"),
            ..Origin::default()
        }
    }
}

/// One event, as stored and as `GET /api/audit` sends it (and as an export
/// file holds it: a field this version does not know is refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// A UUIDv7: ids order as the events happened (to the millisecond, and
    /// within one process exactly), which the listing and the `before`
    /// cursor rely on, and the retention purge reads their time from them.
    pub id: Uuid,
    /// RFC 3339, to the second.
    pub time: String,
    pub action: Action,
    /// The account the event is about; `None` when no account matched.
    pub user_id: Option<String>,
    pub actor_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(action: Action, user_id: Option<&str>, origin: &Origin, now: u64) -> Event {
        let mut detail = Map::new();
        if let Some(via) = origin.via {
            detail.insert("via".into(), via.into());
        }
        Event {
            id: Uuid::now_v7(),
            time: Rfc3339::from_unix(now).as_str().to_string(),
            action,
            user_id: user_id.map(str::to_string),
            actor_id: origin.actor_id.clone(),
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            detail,
        }
    }

    /// Adds `key: value` to the detail. Callers pass facts only, never a
    /// secret (see the module doc).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.detail.insert(key.to_string(), value.into());
        self
    }

    /// The event's JSON, as stored and sent.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, a UUID and a map of JSON values: nothing in it
        // can fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Writes the event's log line (target `gatehouse::audit`): every event is also one
    /// structured log line, with the same fields.
    pub fn log(&self) {
        let detail = Value::Object(self.detail.clone());
        // Ids, the action and the address are plain words; the user agent
        // (any text) is quoted and escaped.
        tracing::info!(
            target: "gatehouse::audit",
            id = %self.id,
            action = %self.action.as_str(),
            user_id = %self.user_id.as_deref().unwrap_or("-"),
            actor_id = %self.actor_id.as_deref().unwrap_or("-"),
            ip = %self.ip.as_deref().unwrap_or("-"),
            user_agent = self.user_agent.as_deref().unwrap_or(""),
            %detail,
            "event"
        );
    }
}

/// The longest `detail.email` kept for a failed login of an unknown address
/// (RFC 5321's limit on a path).
const MAX_EMAIL_CHARS: usize = 254;

/// The event of a failed or throttled login (`action`). For an unknown
/// address, `detail.email` is what was typed (normalized), but only if it
/// has the shape of an address: a password typed into the email field must
/// not land in the log.
pub fn failed_login(
    action: Action,
    user: Option<&User>,
    typed_email: &str,
    looks_like_email: bool,
    origin: &Origin,
    now: u64,
) -> Event {
    let event = Event::new(action, user.map(|u| u.id.as_str()), origin, now);
    match user {
        Some(_) => event,
        None if looks_like_email && typed_email.chars().count() <= MAX_EMAIL_CHARS => {
            event.with("email", typed_email)
        }
        None => event.with("email_withheld", "not an email address"),
    }
}

/// The events of `patch` applied to the user `user_id`: one per kind of
/// change. `before` is the user as the write found it (read under its lock),
/// needed only for an email, role or `email_verified` change: with it, a
/// value set to what it already was is no event, and `from` says what it
/// was. A name given is recorded whatever it was (the write happens).
pub fn user_changes(
    user_id: &str,
    before: Option<&User>,
    patch: &UserPatch,
    origin: &Origin,
    now: u64,
) -> Vec<Event> {
    let id = Some(user_id);
    let mut events = Vec::new();
    if patch.password_hash.is_some() {
        events.push(Event::new(Action::PasswordChanged, id, origin, now));
    }
    if let Some(email) = patch.email.as_deref() {
        match before {
            Some(before) if before.email == email => {}
            Some(before) => events.push(
                Event::new(Action::EmailChanged, id, origin, now)
                    .with("from", before.email.as_str())
                    .with("to", email),
            ),
            None => {
                events.push(Event::new(Action::EmailChanged, id, origin, now).with("to", email))
            }
        }
    }
    if let Some(role) = patch.role {
        match before {
            Some(before) if before.role == role => {}
            Some(before) => events.push(
                Event::new(Action::RoleChanged, id, origin, now)
                    .with("from", before.role.as_str())
                    .with("to", role.as_str()),
            ),
            None => events
                .push(Event::new(Action::RoleChanged, id, origin, now).with("to", role.as_str())),
        }
    }
    let mut event = Event::new(Action::UserUpdated, id, origin, now);
    let mut fields = Vec::new();
    if patch.name.is_some() {
        fields.push("name");
    }
    if let Some(verified) = patch.email_verified {
        if before.is_none_or(|b| b.email_verified != verified) {
            fields.push("email_verified");
            event = event.with("email_verified", verified);
        }
    }
    if !fields.is_empty() {
        events.push(event.with("fields", fields));
    }
    events
}

/// Whether the events of `patch` depend on the user as it was (see
/// [`user_changes`]): then the write reads it under its lock first.
pub fn needs_before(patch: &UserPatch) -> bool {
    patch.email.is_some() || patch.role.is_some() || patch.email_verified.is_some()
}

/// The per-minute budget of stored events of one capped action, in this
/// process (sled; PostgreSQL keeps the same in a row every instance
/// shares). Lock-free: one compare-and-swap on the (minute, stored) pair.
#[derive(Debug)]
pub struct FailureBudget {
    per_minute: u64,
    /// The minute (unix minutes) in the high 40 bits, the events stored in
    /// it in the low 24 (the budget is at most 1,000,000 < 2^24).
    minute_and_stored: AtomicU64,
    /// Events dropped since the last stored one.
    dropped: AtomicU64,
}

const STORED_BITS: u32 = 24;

impl FailureBudget {
    pub fn new(per_minute: u64) -> FailureBudget {
        FailureBudget {
            per_minute: per_minute.clamp(1, (1 << STORED_BITS) - 1),
            minute_and_stored: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether an event at `now` may be stored: `Some(n)` with the number
    /// dropped since the last stored one (for `detail.suppressed`), or
    /// `None` (dropped, and counted).
    pub fn admit(&self, now: u64) -> Option<u64> {
        let minute = now / 60;
        let mut current = self.minute_and_stored.load(Ordering::Relaxed);
        loop {
            let (at, stored) = (current >> STORED_BITS, current & ((1 << STORED_BITS) - 1));
            // Any other minute is a new one: a clock stepped back starts
            // counting again rather than waiting for the old minute.
            let next = if at != minute {
                (minute << STORED_BITS) | 1
            } else if stored < self.per_minute {
                current + 1
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.minute_and_stored.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.dropped.swap(0, Ordering::Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }

    /// An admitted event could not be written after all: its `suppressed`
    /// count goes back for the next one.
    pub fn restore(&self, suppressed: u64) {
        self.dropped.fetch_add(suppressed, Ordering::Relaxed);
    }
}

/// What one instance knows of the shared per-minute budget (PostgreSQL):
/// the minute it last found full, and the events it dropped since without
/// asking the database, whose count goes with its next request there. So a
/// flood costs the shared budget row one statement per instance and minute
/// once the minute is full, not one per failed login.
#[derive(Debug, Default)]
pub struct FullMinute {
    /// The full minute plus one (0: none known).
    full: AtomicU64,
    dropped: AtomicU64,
}

impl FullMinute {
    /// True (and the event counted as dropped) if `minute` is known full.
    pub fn drop_if_full(&self, minute: u64) -> bool {
        if self.full.load(Ordering::Relaxed) == minute + 1 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub fn mark_full(&self, minute: u64) {
        self.full.store(minute + 1, Ordering::Relaxed);
    }

    /// The events dropped here since the last call, to hand to the database.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Taken, but the database did not get them: kept for the next time.
    pub fn restore(&self, dropped: u64) {
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// A page request of the audit listing.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub user_id: Option<String>,
    pub action: Option<Action>,
    /// Only events older than this one (the `before` cursor).
    pub before: Option<Uuid>,
    pub limit: usize,
}

/// The smallest UUIDv7 of the millisecond `unix_ms`: every event id made at
/// or after it sorts after it, every one made before sorts before (UUIDs
/// compare as bytes, and a v7's first 48 bits are its time).
pub fn first_id_at(unix_ms: u64) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(unix_ms, &[0; 10]).into_uuid()
}

/// The millisecond a UUIDv7 was made (0 for another version).
pub fn id_millis(id: &Uuid) -> u64 {
    let bytes = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&bytes[..6]);
    u64::from_be_bytes(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::Role;

    fn user() -> User {
        User::new(
            "Ann".into(),
            "ann@example.com".into(),
            Role::User,
            "$2b$04$hash".into(),
            1,
        )
    }

    #[test]
    fn actions_have_the_contracts_names_and_round_trip() {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), 18);
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{}\"", action.as_str()));
        }
        assert_eq!(Action::parse("Login"), None);
        assert!(Action::LoginFailed.is_capped() && !Action::Login.is_capped());
    }

    #[test]
    fn an_event_is_the_contracts_json_and_reads_back() {
        let origin = Origin::new(Some("a1"), Some("10.0.0.1".into()), Some("curl\n/8"));
        let event =
            Event::new(Action::Login, Some("u1"), &origin, 1_700_000_000).with("session_id", "s1");
        let json: Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["action"], "login");
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
        assert_eq!(json["user_id"], "u1");
        assert_eq!(json["actor_id"], "a1");
        assert_eq!(json["ip"], "10.0.0.1");
        assert_eq!(json["user_agent"], "curl/8", "control characters removed");
        assert_eq!(json["detail"]["session_id"], "s1");
        // The contract's order, in the text (a parsed map sorts its keys).
        let text = String::from_utf8(event.to_json()).unwrap();
        let at: Vec<usize> = [
            "id",
            "time",
            "action",
            "user_id",
            "actor_id",
            "ip",
            "user_agent",
            "detail",
        ]
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(Event::from_json(&event.to_json()).unwrap(), event);
        assert_eq!(id_millis(&event.id) / 1000, crate::domain::unix_now());
    }

    #[test]
    fn a_failed_login_keeps_an_unknown_address_only_if_it_is_one() {
        let origin = Origin::default();
        let ann = user();
        let known = failed_login(
            Action::LoginFailed,
            Some(&ann),
            "ann@example.com",
            true,
            &origin,
            1,
        );
        assert_eq!(known.user_id.as_deref(), Some(ann.id.as_str()));
        assert!(known.detail.get("email").is_none());
        let unknown = failed_login(
            Action::LoginFailed,
            None,
            "bob@example.com",
            true,
            &origin,
            1,
        );
        assert_eq!(unknown.user_id, None);
        assert_eq!(unknown.detail["email"], "bob@example.com");
        let password = failed_login(
            Action::LoginFailed,
            None,
            "hunter2hunter2",
            false,
            &origin,
            1,
        );
        assert!(!String::from_utf8(password.to_json())
            .unwrap()
            .contains("hunter2"));
        let long = "a".repeat(300) + "@example.com";
        assert!(
            failed_login(Action::LoginFailed, None, &long, true, &origin, 1)
                .detail
                .get("email")
                .is_none()
        );
    }

    #[test]
    fn a_user_change_makes_one_event_per_kind() {
        let before = user();
        let origin = Origin::default();
        let patch = UserPatch {
            name: Some("Ann B".into()),
            email: Some("new@example.com".into()),
            role: Some(Role::Admin),
            password_hash: Some("$2b$04$new".into()),
            email_verified: None,
        };
        let events = user_changes(&before.id, Some(&before), &patch, &origin, 1);
        let actions: Vec<Action> = events.iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            [
                Action::PasswordChanged,
                Action::EmailChanged,
                Action::RoleChanged,
                Action::UserUpdated
            ]
        );
        assert_eq!(events[1].detail["from"], "ann@example.com");
        assert_eq!(events[1].detail["to"], "new@example.com");
        assert_eq!(events[2].detail["to"], "admin");
        assert_eq!(events[3].detail["fields"], serde_json::json!(["name"]));
        // The same values again change nothing: no event (but for a name
        // given: the write happens).
        let patch = UserPatch {
            name: None,
            email: Some("ann@example.com".into()),
            role: Some(Role::User),
            password_hash: None,
            email_verified: Some(false),
        };
        let same = user_changes(&before.id, Some(&before), &patch, &origin, 1);
        assert!(!String::from_utf8(events[0].to_json())
            .unwrap()
            .contains("$2b$"));
        assert!(same.is_empty(), "{same:?}");
    }

    #[test]
    fn the_budget_stores_at_most_its_share_a_minute_and_counts_the_rest() {
        let budget = FailureBudget::new(3);
        let minute = 60 * 1000;
        assert_eq!(budget.admit(minute), Some(0));
        assert_eq!(budget.admit(minute + 1), Some(0));
        assert_eq!(budget.admit(minute + 59), Some(0));
        assert_eq!(budget.admit(minute + 59), None);
        assert_eq!(budget.admit(minute + 30), None);
        // The next minute: stored again, carrying the two dropped.
        assert_eq!(budget.admit(minute + 60), Some(2));
        assert_eq!(budget.admit(minute + 61), Some(0));
        budget.restore(5);
        assert_eq!(budget.admit(minute + 62), Some(5));
        assert_eq!(budget.admit(minute + 62), None);
        // A clock stepped back is a new minute, not one to wait for.
        assert_eq!(budget.admit(minute), Some(1));
    }

    #[test]
    fn a_full_minute_drops_locally_until_the_next() {
        let full = FullMinute::default();
        assert!(!full.drop_if_full(10));
        full.mark_full(10);
        assert!(full.drop_if_full(10) && full.drop_if_full(10));
        assert!(!full.drop_if_full(11));
        assert_eq!(full.take_dropped(), 2);
        full.restore(2);
        assert_eq!(full.take_dropped(), 2);
        assert_eq!(full.take_dropped(), 0);
    }

    #[test]
    fn the_budget_holds_under_threads() {
        let budget = std::sync::Arc::new(FailureBudget::new(100));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|_| budget.admit(600).is_some()).count()
                })
            })
            .collect();
        let stored: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(stored, 100);
        assert_eq!(budget.admit(660), Some(7900));
    }

    #[test]
    fn ids_order_by_time_and_the_cut_off_sits_between() {
        let cut = first_id_at(1_700_000_000_000);
        let before =
            uuid::Builder::from_unix_timestamp_millis(1_699_999_999_999, &[0xff; 10]).into_uuid();
        let after =
            uuid::Builder::from_unix_timestamp_millis(1_700_000_000_000, &[0x01; 10]).into_uuid();
        assert!(before < cut && cut <= after);
        assert_eq!(id_millis(&after), 1_700_000_000_000);
    }
}
