//! Prometheus metrics: the series gatehouse records (requests, logins,
//! registrations, refreshes, ended sessions, mail, password hashing, store
//! operations, the build) and the page a scrape reads, in the Prometheus
//! text format (0.0.4) through `prometheus-client`, with the process's
//! `process_*` series beside them.
//!
//! This module owns the series: their names, labels, buckets and how each is
//! recorded. It must not slow or serialize request handling: every series is
//! built at start-up, so a recording is a few relaxed atomic additions on
//! slots found by index, never a lock, a hash or an allocation (the label
//! sets that vary per request, route × method × status, are flat arrays of
//! atomics that a collector reads at scrape time). With metrics off (no
//! `metrics.listen`) [`Metrics`] is empty and a recording is one branch. It
//! serves nothing (`server::metrics_listener` listens, `http::metrics_page`
//! answers) and knows neither hyper, the route table nor the store: callers
//! hand it the route patterns once, then indexes, methods, statuses and
//! durations.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelValue, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::MetricsSettings;

/// The `Content-Type` of the page: the Prometheus text format, which every
/// Prometheus and `promtool check metrics` read.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The route label of a request whose path matched no route pattern (a 404),
/// or that was refused before routing (a 400 for a missing `Host`).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Where recordings go: nowhere when metrics are off. Cloning shares the
/// series.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Recorder>>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Metrics(on)"
        } else {
            "Metrics(off)"
        })
    }
}

/// Declares a closed set of label values: an enum whose variants index the
/// series' arrays, with `ALL` and each variant's label. One declaration per
/// set, so a variant cannot lack its label or its series.
macro_rules! label_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

label_set! {
    /// `gatehouse_logins_total{outcome}`.
    LoginOutcome {
        Success = "success",
        /// A wrong password, an unknown email, or a wrong `current_password`.
        Failure = "failure",
        /// Refused by the login throttle (429).
        Throttled = "throttled",
        /// The right password for an unverified address under
        /// `auth.require_verified_email` (403).
        Unverified = "unverified",
    }
}

label_set! {
    /// `gatehouse_refreshes_total{outcome}`.
    RefreshOutcome {
        Granted = "granted",
        /// Not a refresh token of a live session.
        Refused = "refused",
        /// A spent token presented after the reuse window: its session ended.
        Reused = "reused",
    }
}

label_set! {
    /// `gatehouse_sessions_ended_total{reason}`: why stored sessions were
    /// deleted. Each session counts once, when its record goes.
    SessionEnd {
        Logout = "logout",
        /// `DELETE` of one session or of all a user's.
        Revoked = "revoked",
        /// Its refresh token was reused.
        Reuse = "reuse",
        PasswordChange = "password_change",
        /// A password reset by mail.
        Reset = "reset",
        UserDeleted = "user_deleted",
        /// Purged once past its time (or its user's password change).
        Expired = "expired",
        /// The oldest of a user's sessions, ended by a new one beyond
        /// `store::MAX_SESSIONS_PER_USER`.
        Evicted = "evicted",
    }
}

label_set! {
    /// `gatehouse_mail_sent_total{outcome}`.
    MailOutcome {
        Sent = "sent",
        /// Refused by the mail server, unreachable after every try, or not
        /// buildable.
        Failed = "failed",
        /// Not queued: the mail queue was full.
        Dropped = "dropped",
    }
}

label_set! {
    /// `gatehouse_store_operation_duration_seconds{op}`: the store's
    /// operations, one per public method of `Store`.
    StoreOp {
        UserById = "user_by_id",
        UserByEmail = "user_by_email",
        ListUsers = "list_users",
        InsertUser = "insert_user",
        UpdateUser = "update_user",
        DeleteUser = "delete_user",
        UpsertAdmin = "upsert_admin",
        InsertSession = "insert_session",
        SessionAndUser = "session_and_user",
        Refresh = "refresh",
        EndSession = "end_session",
        EndUserSessions = "end_user_sessions",
        PutMailToken = "put_mail_token",
        MailTokenIsLive = "mail_token_is_live",
        UseMailToken = "use_mail_token",
        SessionsOf = "sessions_of",
        Revoke = "revoke",
        IsRevoked = "is_revoked",
        PurgeExpired = "purge_expired",
        BeginLogin = "begin_login",
        LoginSucceeded = "login_succeeded",
        BeginRegistration = "begin_registration",
        BeginMailRequest = "begin_mail_request",
        SigningKeys = "signing_keys",
        SwapSigningKeys = "swap_signing_keys",
        Health = "health",
        Flush = "flush",
        Record = "record",
        AuditEvents = "audit_events",
        PurgeAudit = "purge_audit",
        UpgradePasswordHash = "upgrade_password_hash",
        CountUsers = "count_users",
        Export = "export",
        Import = "import",
    }
}

/// The `kind` labels of `gatehouse_mail_sent_total`: `mail::MailKind`'s
/// names (a test in `mail` checks that they agree).
pub const MAIL_KINDS: [&str; 3] = ["reset", "verify", "email_changed"];

impl Metrics {
    /// Off (no series, no page) unless `metrics.listen` is set. `routes`
    /// are the route table's patterns in table order (the index a request
    /// is recorded under is a position in it); entries with the same
    /// pattern share their series.
    pub fn new(settings: &MetricsSettings, routes: &[&'static str]) -> Metrics {
        match settings.listen {
            Some(_) => Metrics::on(routes),
            None => Metrics::off(),
        }
    }

    /// Metrics that record nothing.
    pub fn off() -> Metrics {
        Metrics(None)
    }

    /// Metrics that record, over the route patterns `routes`.
    pub fn on(routes: &[&'static str]) -> Metrics {
        Metrics(Some(Arc::new(Recorder::new(routes))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// One answered request: `route` is the position in the route table of
    /// the route whose pattern the path matched (`None`: no pattern, or
    /// refused before routing).
    pub fn request(&self, route: Option<usize>, method: &str, status: u16, elapsed: Duration) {
        if let Some(recorder) = &self.0 {
            recorder.requests.record(route, method, status, elapsed);
        }
    }

    pub fn login(&self, outcome: LoginOutcome) {
        if let Some(recorder) = &self.0 {
            recorder.logins[outcome as usize].inc();
        }
    }

    /// A user created by registration.
    pub fn registration(&self) {
        if let Some(recorder) = &self.0 {
            recorder.registrations.inc();
        }
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        if let Some(recorder) = &self.0 {
            recorder.refreshes[outcome as usize].inc();
        }
    }

    /// `count` stored sessions deleted for `reason`.
    pub fn sessions_ended(&self, reason: SessionEnd, count: usize) {
        if let (Some(recorder), true) = (&self.0, count > 0) {
            recorder.sessions_ended[reason as usize].inc_by(count as u64);
        }
    }

    /// A mail of `kind` (one of [`MAIL_KINDS`]) sent, failed or dropped.
    pub fn mail(&self, kind: &str, outcome: MailOutcome) {
        let Some(recorder) = &self.0 else {
            return;
        };
        match MAIL_KINDS.iter().position(|k| *k == kind) {
            Some(k) => {
                recorder.mail[k][outcome as usize].inc();
            }
            None => debug_assert!(false, "{kind} is not in MAIL_KINDS"),
        }
    }

    /// A password hash or verification entering the hashing queue: counted
    /// in `gatehouse_password_hash_queue_depth` until the returned job is
    /// dropped (done, skipped or abandoned), and timed by [`HashJob::run`].
    pub fn hash_job(&self) -> HashJob {
        if let Some(recorder) = &self.0 {
            recorder.hash_queue.inc();
        }
        HashJob(self.0.clone())
    }

    /// One store operation took `elapsed`.
    pub fn store_operation(&self, op: StoreOp, elapsed: Duration) {
        if let Some(recorder) = &self.0 {
            recorder.series.store_operations[op as usize].observe(elapsed);
        }
    }

    /// Runs `work` (a store operation's future) and records how long it
    /// took under `op`; with metrics off, only runs it. A future dropped
    /// before it finishes records nothing.
    pub async fn time<T>(&self, op: StoreOp, work: impl Future<Output = T>) -> T {
        let Some(recorder) = &self.0 else {
            return work.await;
        };
        let started = Instant::now();
        let output = work.await;
        recorder.series.store_operations[op as usize].observe(started.elapsed());
        output
    }

    /// The page a scrape reads; `None` with metrics off.
    pub fn encode(&self) -> Option<String> {
        let recorder = self.0.as_ref()?;
        let mut page = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; a collector's error would leave
        // a shorter page, still well formed up to its last line.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut page, &recorder.registry);
        Some(page)
    }

    /// Remembers the address the metrics listener is bound to (port 0
    /// becomes the real port), for [`Metrics::listening_on`].
    pub fn bound_to(&self, address: SocketAddr) {
        if let Some(recorder) = &self.0 {
            let _ = recorder.address.set(address);
        }
    }

    /// Where `/metrics` is served, once the listener is bound.
    pub fn listening_on(&self) -> Option<SocketAddr> {
        self.0.as_ref()?.address.get().copied()
    }
}

/// A job in the password-hashing queue (see [`Metrics::hash_job`]).
#[must_use = "the job leaves the queue depth when dropped"]
pub struct HashJob(Option<Arc<Recorder>>);

impl HashJob {
    /// Runs the hash or verification `work`, timing it.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        let Some(recorder) = &self.0 else {
            return work();
        };
        let started = Instant::now();
        let output = work();
        recorder.series.hash_duration.observe(started.elapsed());
        output
    }
}

impl Drop for HashJob {
    fn drop(&mut self) {
        if let Some(recorder) = &self.0 {
            recorder.hash_queue.dec();
        }
    }
}

/// Every series, built at start-up. The labelled counters are
/// `prometheus-client` families whose every label set is created here and
/// kept as a [`Counter`] handle (an `Arc`'d atomic): recording increments
/// the handle, never looks the label set up in the family (a lock and a
/// hash). The family is only read at scrape time.
struct Recorder {
    registry: Registry,
    /// Requests and the histograms, encoded by their own collector.
    requests: Arc<RequestSeries>,
    series: Arc<Histograms>,
    logins: Vec<Counter>,
    registrations: Counter,
    refreshes: Vec<Counter>,
    sessions_ended: Vec<Counter>,
    /// By [`MAIL_KINDS`], then [`MailOutcome`].
    mail: Vec<Vec<Counter>>,
    hash_queue: Gauge,
    address: OnceLock<SocketAddr>,
}

/// Label sets of the families, known at start-up.
type Labels = Vec<(&'static str, &'static str)>;

impl Recorder {
    fn new(routes: &[&'static str]) -> Recorder {
        // `register` ends each help text with a full stop itself; the
        // collectors' texts carry their own.
        let mut registry = Registry::default();
        let requests = Arc::new(RequestSeries::new(routes));
        let series = Arc::new(Histograms::new());
        registry.register_collector(Box::new(Arc::clone(&requests)));
        registry.register_collector(Box::new(Arc::clone(&series)));
        registry.register_collector(Box::new(ProcessCollector::new()));

        let logins = counters(
            &mut registry,
            "gatehouse_logins",
            "Password checks: sign-ins, and current_password confirmations that failed or were throttled",
            LoginOutcome::ALL.iter().map(|o| vec![("outcome", o.label())]),
        );
        let refreshes = counters(
            &mut registry,
            "gatehouse_refreshes",
            "Refresh tokens presented, by outcome",
            RefreshOutcome::ALL
                .iter()
                .map(|o| vec![("outcome", o.label())]),
        );
        let sessions_ended = counters(
            &mut registry,
            "gatehouse_sessions_ended",
            "Stored sessions deleted, by reason",
            SessionEnd::ALL.iter().map(|r| vec![("reason", r.label())]),
        );
        let mail_labels = MAIL_KINDS.iter().flat_map(|kind| {
            MailOutcome::ALL
                .iter()
                .map(move |o| vec![("kind", *kind), ("outcome", o.label())])
        });
        let flat = counters(
            &mut registry,
            "gatehouse_mail_sent",
            "Mails handed to the mail worker, by kind and outcome",
            mail_labels,
        );
        let mail = flat
            .chunks(MailOutcome::ALL.len())
            .map(<[Counter]>::to_vec)
            .collect();

        let registrations = Counter::default();
        registry.register(
            "gatehouse_registrations",
            "Users created by registration",
            registrations.clone(),
        );
        let hash_queue = Gauge::default();
        registry.register(
            "gatehouse_password_hash_queue_depth",
            "Password hashes and verifications waiting for or running on a hashing thread",
            hash_queue.clone(),
        );
        registry.register(
            "gatehouse_build",
            "The running gatehouse's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Recorder {
            registry,
            requests,
            series,
            logins,
            registrations,
            refreshes,
            sessions_ended,
            mail,
            hash_queue,
            address: OnceLock::new(),
        }
    }
}

/// Registers a counter family `name` with every label set of `label_sets`
/// created, and returns their handles in that order.
fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label_sets: impl Iterator<Item = Labels>,
) -> Vec<Counter> {
    let family = Family::<Labels, Counter>::default();
    let handles = label_sets
        .map(|labels| family.get_or_create_owned(&labels))
        .collect();
    registry.register(name, help, family);
    handles
}

/// Methods with a label of their own; any other is `other`, so a client
/// cannot make up label values.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const METHOD_SLOTS: usize = METHODS.len() + 1;

/// The statuses counted under their own label: every status gatehouse's
/// handlers, router and `ApiError` answer, and the common others. Any other
/// is counted as `other` (a test checks `ApiError`'s are all here).
pub const STATUSES: [u16; 26] = [
    200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 409, 410, 413, 414, 415, 422,
    429, 431, 500, 501, 502, 503, 504,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Upper bounds of `gatehouse_http_request_duration_seconds`: from a token
/// check answered from caches (tens of microseconds) to a bcrypt login at a
/// high cost (seconds).
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of `gatehouse_password_hash_duration_seconds`: bcrypt costs
/// 4 (about a millisecond) to 14 (about a second on this machine's cores).
const HASH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of `gatehouse_store_operation_duration_seconds`: cached sled
/// reads (microseconds) to flushed writes and PostgreSQL transactions up to
/// the 5 s bound of an operation.
const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// `gatehouse_http_requests_total` and
/// `gatehouse_http_request_duration_seconds`: a counter per (route pattern,
/// method, status) and a histogram per route pattern, in flat arrays. A
/// request finds its slots by index (route, then method and status by a
/// short scan of constants): no lock, no hash, no allocation.
struct RequestSeries {
    /// Each route table entry's pattern slot.
    slot_of_route: Vec<usize>,
    /// The label of each slot: the distinct patterns, then
    /// [`UNMATCHED_ROUTE`].
    patterns: Vec<&'static str>,
    /// Indexed by `(slot * METHOD_SLOTS + method) * STATUS_SLOTS + status`.
    counts: Vec<AtomicU64>,
    /// One per slot.
    durations: Vec<AtomicHistogram>,
}

impl fmt::Debug for RequestSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSeries")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl RequestSeries {
    fn new(routes: &[&'static str]) -> RequestSeries {
        let mut patterns: Vec<&'static str> = Vec::new();
        let slot_of_route = routes
            .iter()
            .map(|route| match patterns.iter().position(|p| p == route) {
                Some(slot) => slot,
                None => {
                    patterns.push(route);
                    patterns.len() - 1
                }
            })
            .collect();
        patterns.push(UNMATCHED_ROUTE);
        let slots = patterns.len();
        RequestSeries {
            slot_of_route,
            counts: (0..slots * METHOD_SLOTS * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            durations: (0..slots)
                .map(|_| AtomicHistogram::new(REQUEST_BUCKETS))
                .collect(),
            patterns,
        }
    }

    fn record(&self, route: Option<usize>, method: &str, status: u16, elapsed: Duration) {
        let slot = route
            .and_then(|r| self.slot_of_route.get(r).copied())
            .unwrap_or(self.patterns.len() - 1);
        let method = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len());
        let status = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        let index = (slot * METHOD_SLOTS + method) * STATUS_SLOTS + status;
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(histogram) = self.durations.get(slot) {
            histogram.observe(elapsed);
        }
    }
}

impl Collector for RequestSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut requests = encoder.encode_descriptor(
            "gatehouse_http_requests",
            "Requests answered, by route pattern, method and status.",
            None,
            MetricType::Counter,
        )?;
        for (slot, route) in self.patterns.iter().enumerate() {
            for method in 0..METHOD_SLOTS {
                for status in 0..STATUS_SLOTS {
                    let index = (slot * METHOD_SLOTS + method) * STATUS_SLOTS + status;
                    let count = self.counts[index].load(Ordering::Relaxed);
                    if count == 0 {
                        continue;
                    }
                    let labels = [
                        ("route", *route),
                        ("method", METHODS.get(method).copied().unwrap_or("other")),
                    ];
                    let status = [("status", StatusLabel(STATUSES.get(status).copied()))];
                    requests
                        .encode_family(&(labels, status))?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        let mut durations = encoder.encode_descriptor(
            "gatehouse_http_request_duration_seconds",
            "Time from a request's head to its answer, by route pattern.",
            None,
            MetricType::Histogram,
        )?;
        for (route, histogram) in self.patterns.iter().zip(&self.durations) {
            if histogram.count() > 0 {
                histogram.encode(&mut durations.encode_family(&[("route", *route)])?)?;
            }
        }
        Ok(())
    }
}

/// A status code as a label value, `other` for one outside [`STATUSES`].
#[derive(Clone, Copy)]
struct StatusLabel(Option<u16>);

impl EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> fmt::Result {
        match self.0 {
            Some(status) => EncodeLabelValue::encode(&status, encoder),
            None => EncodeLabelValue::encode(&"other", encoder),
        }
    }
}

/// The histograms not by route: password hashing and store operations.
struct Histograms {
    hash_duration: AtomicHistogram,
    /// One per [`StoreOp`].
    store_operations: Vec<AtomicHistogram>,
}

impl fmt::Debug for Histograms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histograms").finish_non_exhaustive()
    }
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            hash_duration: AtomicHistogram::new(HASH_BUCKETS),
            store_operations: StoreOp::ALL
                .iter()
                .map(|_| AtomicHistogram::new(STORE_BUCKETS))
                .collect(),
        }
    }
}

impl Collector for Histograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if self.hash_duration.count() > 0 {
            let mut hashing = encoder.encode_descriptor(
                "gatehouse_password_hash_duration_seconds",
                "Time a hashing thread spent on one bcrypt hash or verification.",
                None,
                MetricType::Histogram,
            )?;
            self.hash_duration.encode(&mut hashing)?;
        }
        // Operations never timed are left out (none, until the store is
        // timed), rather than printed as empty histograms.
        if self.store_operations.iter().all(|h| h.count() == 0) {
            return Ok(());
        }
        let mut store = encoder.encode_descriptor(
            "gatehouse_store_operation_duration_seconds",
            "Time of one store operation (sled or PostgreSQL), retries included.",
            None,
            MetricType::Histogram,
        )?;
        for (op, histogram) in StoreOp::ALL.iter().zip(&self.store_operations) {
            if histogram.count() > 0 {
                histogram.encode(&mut store.encode_family(&[("op", op.label())])?)?;
            }
        }
        Ok(())
    }
}

/// A histogram of durations in atomics: a count per bucket and the sum, so
/// an observation is two relaxed additions, where `prometheus-client`'s
/// `Histogram` takes a lock. The total count is the buckets' sum, read at
/// scrape time; a scrape racing an observation may see its bucket without
/// its sum (or the reverse), which the next scrape corrects, as with the
/// other Prometheus clients.
struct AtomicHistogram {
    /// Upper bounds in seconds, as printed.
    bounds: &'static [f64],
    /// The same in nanoseconds, compared with each observation.
    bounds_nanos: Vec<u64>,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: Vec<AtomicU64>,
    /// In nanoseconds: 584 years of observed time before it wraps.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            bounds_nanos: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_nanos
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(self.bounds_nanos.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn encode(&self, metric: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The standard `process_*` series of the Prometheus client libraries, read
/// from `/proc/self` at each scrape: CPU time, resident and virtual memory,
/// open and maximum file descriptors, start time. A value that cannot be
/// read is left out of the page.
#[derive(Debug)]
struct ProcessCollector {
    /// Clock ticks per second (`/proc` counts CPU time in them).
    ticks_per_second: f64,
    page_bytes: u64,
    /// When the machine booted (Unix seconds; `/proc/stat`'s `btime`):
    /// `/proc/self/stat` gives the start time in ticks since boot.
    boot_time: Option<u64>,
}

impl ProcessCollector {
    fn new() -> ProcessCollector {
        // SAFETY: sysconf reads constants; no pointers.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        ProcessCollector {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_bytes: u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096),
            boot_time: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|stat| boot_time(&stat)),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| ProcessStat::parse(&text));
        if let Some(stat) = &stat {
            let cpu = (stat.user_ticks + stat.system_ticks) as f64 / self.ticks_per_second;
            encoder
                .encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, u64>(&cpu, None)?;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                entries.count() as i64,
            )?;
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                i64::try_from(soft).unwrap_or(i64::MAX),
            )?;
        }
        let Some(stat) = stat else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            i64::try_from(stat.virtual_bytes).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            i64::try_from(stat.resident_pages * self.page_bytes).unwrap_or(i64::MAX),
        )?;
        if let Some(boot_time) = self.boot_time {
            let started = boot_time as f64 + stat.start_ticks as f64 / self.ticks_per_second;
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                started,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// The fields of `/proc/self/stat` the process series need (proc(5)).
#[derive(Debug, PartialEq)]
struct ProcessStat {
    user_ticks: u64,
    system_ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl ProcessStat {
    fn parse(text: &str) -> Option<ProcessStat> {
        // The command name (field 2) is in parentheses and may hold spaces
        // and parentheses itself: the fields are counted from the last `)`.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3 (the state), so field n is `fields[n - 3]`.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(ProcessStat {
            user_ticks: field(14)?,
            system_ticks: field(15)?,
            start_ticks: field(22)?,
            virtual_bytes: field(23)?,
            resident_pages: field(24)?,
        })
    }
}

/// `btime` of `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[&str] = &[
        "/api/auth/me",
        "/api/users/{id}",
        "/api/users/{id}",
        "/api/auth/login",
    ];

    fn page(metrics: &Metrics) -> String {
        metrics.encode().expect("metrics are on")
    }

    /// The value of the sample line that starts with `series` (name and
    /// labels exactly as printed).
    fn sample(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn off_records_nothing_and_has_no_page() {
        let metrics = Metrics::new(&MetricsSettings::default(), ROUTES);
        assert!(!metrics.is_on());
        metrics.request(Some(0), "GET", 200, Duration::from_millis(1));
        metrics.login(LoginOutcome::Success);
        drop(metrics.hash_job());
        assert_eq!(metrics.encode(), None);
        assert_eq!(metrics.listening_on(), None);
    }

    #[test]
    fn requests_are_counted_by_pattern_method_and_status() {
        let metrics = Metrics::on(ROUTES);
        let ms = Duration::from_millis(1);
        metrics.request(Some(0), "GET", 200, ms);
        metrics.request(Some(0), "GET", 200, ms);
        metrics.request(Some(0), "HEAD", 200, ms);
        // Two table entries of one pattern share its series.
        metrics.request(Some(1), "GET", 403, ms);
        metrics.request(Some(2), "PATCH", 200, ms);
        metrics.request(None, "GET", 404, ms);
        metrics.request(None, "BREW", 404, ms);
        metrics.request(Some(99), "GET", 404, ms);
        metrics.request(Some(3), "POST", 299, ms);
        let page = page(&metrics);
        let count =
            |labels: &str| sample(&page, &format!("gatehouse_http_requests_total{{{labels}}}"));
        assert_eq!(
            count(r#"route="/api/auth/me",method="GET",status="200""#),
            Some(2.0)
        );
        assert_eq!(
            count(r#"route="/api/auth/me",method="HEAD",status="200""#),
            Some(1.0)
        );
        assert_eq!(
            count(r#"route="/api/users/{id}",method="GET",status="403""#),
            Some(1.0)
        );
        assert_eq!(
            count(r#"route="/api/users/{id}",method="PATCH",status="200""#),
            Some(1.0)
        );
        assert_eq!(
            count(r#"route="unmatched",method="GET",status="404""#),
            Some(2.0)
        );
        assert_eq!(
            count(r#"route="unmatched",method="other",status="404""#),
            Some(1.0)
        );
        assert_eq!(
            count(r#"route="/api/auth/login",method="POST",status="other""#),
            Some(1.0)
        );
        assert!(!page.contains("BREW"), "{page}");
        // No series for what never happened.
        assert_eq!(
            count(r#"route="/api/auth/me",method="POST",status="200""#),
            None
        );
        assert_eq!(
            page.matches("# TYPE gatehouse_http_requests_total counter")
                .count(),
            1
        );
        let durations = |suffix: &str, route: &str| {
            sample(
                &page,
                &format!("gatehouse_http_request_duration_seconds_{suffix}{{route=\"{route}\"}}"),
            )
        };
        assert_eq!(durations("count", "/api/auth/me"), Some(3.0));
        assert_eq!(durations("count", "/api/users/{id}"), Some(2.0));
        assert_eq!(durations("count", "unmatched"), Some(3.0));
        assert!((durations("sum", "/api/auth/me").unwrap() - 0.003).abs() < 1e-9);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        let histogram = AtomicHistogram::new(&[0.001, 0.01]);
        for micros in [500, 1000, 1001, 5000, 20_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let metrics = Metrics::on(&[]);
        let recorder = metrics.0.as_ref().unwrap();
        for micros in [500, 1000, 1001, 5000, 20_000] {
            recorder
                .series
                .hash_duration
                .observe(Duration::from_micros(micros));
        }
        assert_eq!(histogram.count(), 5);
        let page = page(&metrics);
        let bucket = |le: &str| {
            sample(
                &page,
                &format!("gatehouse_password_hash_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        // 500 µs and exactly 1 ms are within 0.001; 20 ms only within +Inf.
        assert_eq!(bucket("0.001"), Some(2.0));
        assert_eq!(bucket("0.0025"), Some(3.0));
        assert_eq!(bucket("0.005"), Some(4.0));
        assert_eq!(bucket("0.01"), Some(4.0));
        assert_eq!(bucket("+Inf"), Some(5.0));
        assert_eq!(
            sample(&page, "gatehouse_password_hash_duration_seconds_count"),
            Some(5.0)
        );
        let sum = sample(&page, "gatehouse_password_hash_duration_seconds_sum").unwrap();
        assert!((sum - 0.027501).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn fixed_label_sets_are_all_present_from_the_start() {
        let metrics = Metrics::on(&[]);
        metrics.login(LoginOutcome::Throttled);
        metrics.login(LoginOutcome::Throttled);
        metrics.registration();
        metrics.refresh(RefreshOutcome::Reused);
        metrics.sessions_ended(SessionEnd::PasswordChange, 3);
        metrics.sessions_ended(SessionEnd::Logout, 0);
        metrics.mail("email_changed", MailOutcome::Dropped);
        let page = page(&metrics);
        for outcome in LoginOutcome::ALL {
            let expected = if *outcome == LoginOutcome::Throttled {
                2.0
            } else {
                0.0
            };
            let series = format!("gatehouse_logins_total{{outcome=\"{}\"}}", outcome.label());
            assert_eq!(sample(&page, &series), Some(expected), "{series}");
        }
        assert_eq!(sample(&page, "gatehouse_registrations_total"), Some(1.0));
        assert_eq!(
            sample(&page, r#"gatehouse_refreshes_total{outcome="reused"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&page, r#"gatehouse_refreshes_total{outcome="granted"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &page,
                r#"gatehouse_sessions_ended_total{reason="password_change"}"#
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(&page, r#"gatehouse_sessions_ended_total{reason="logout"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &page,
                r#"gatehouse_mail_sent_total{kind="email_changed",outcome="dropped"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            page.matches("gatehouse_mail_sent_total{").count(),
            MAIL_KINDS.len() * MailOutcome::ALL.len()
        );
        let build = format!(
            "gatehouse_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&page, &build), Some(1.0));
    }

    #[test]
    fn the_hash_queue_depth_counts_jobs_until_dropped() {
        let metrics = Metrics::on(&[]);
        let depth =
            |metrics: &Metrics| sample(&page(metrics), "gatehouse_password_hash_queue_depth");
        let first = metrics.hash_job();
        let second = metrics.hash_job();
        assert_eq!(depth(&metrics), Some(2.0));
        assert_eq!(first.run(|| 7), 7);
        drop(first);
        assert_eq!(depth(&metrics), Some(1.0));
        drop(second);
        assert_eq!(depth(&metrics), Some(0.0));
        // Only the job that ran was timed.
        assert_eq!(
            sample(
                &page(&metrics),
                "gatehouse_password_hash_duration_seconds_count"
            ),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn store_operations_are_timed_by_op() {
        let metrics = Metrics::on(&[]);
        assert!(!page(&metrics).contains("gatehouse_store_operation_duration_seconds"));
        let answer = metrics.time(StoreOp::UserById, async { 42 }).await;
        assert_eq!(answer, 42);
        metrics.store_operation(StoreOp::Flush, Duration::from_millis(3));
        metrics.store_operation(StoreOp::Flush, Duration::from_millis(4));
        let page = page(&metrics);
        let count = |op: &str| {
            sample(
                &page,
                &format!("gatehouse_store_operation_duration_seconds_count{{op=\"{op}\"}}"),
            )
        };
        assert_eq!(count("user_by_id"), Some(1.0));
        assert_eq!(count("flush"), Some(2.0));
        assert_eq!(count("refresh"), None, "never timed, left out");
        assert_eq!(Metrics::off().time(StoreOp::Flush, async { 1 }).await, 1);
    }

    #[test]
    fn the_process_series_are_read_from_proc() {
        let page = page(&Metrics::on(&[]));
        for (series, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
        ] {
            assert!(
                page.contains(&format!("# TYPE {series} {kind}\n")),
                "{series}: {page}"
            );
            let value = sample(&page, series).unwrap_or_else(|| panic!("{series}: {page}"));
            assert!(value >= 0.0, "{series} {value}");
        }
        let resident = sample(&page, "process_resident_memory_bytes").unwrap();
        assert!(
            resident > 1024.0 * 1024.0,
            "a test process holds over 1 MiB: {resident}"
        );
        assert!(sample(&page, "process_open_fds").unwrap() >= 3.0);
        let started = sample(&page, "process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
    }

    #[test]
    fn proc_stat_fields_are_counted_from_the_command_names_end() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let line = "4242 (gate (house) x) S 1 4242 4242 0 -1 4194560 2513 0 0 0 \
                    250 130 0 0 20 0 9 0 98765 1234567890 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17610 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            ProcessStat::parse(line),
            Some(ProcessStat {
                user_ticks: 250,
                system_ticks: 130,
                start_ticks: 98765,
                virtual_bytes: 1_234_567_890,
                resident_pages: 2048,
            })
        );
        assert_eq!(ProcessStat::parse("4242 (cut short) S 1"), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1764547200\nprocesses 9\n"),
            Some(1_764_547_200)
        );
    }
}
