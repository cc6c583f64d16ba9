//! The log: where lines go (standard error, through a background writer
//! thread) and what one looks like:
//!
//! ```text
//! 2026-11-29T00:42:24.123456Z  INFO gatehouse::server: request method=GET path=/api/auth/me status=200 micros=41 peer=127.0.0.1:50412
//! ```
//!
//! The line format is written by hand rather than by `tracing-subscriber`'s
//! default formatter: the server logs one line per request, and the default
//! formatter cost a token-checked read about a fifth of its throughput
//! (see BENCHMARKS.md). This module decides only the shape of a line (the
//! request line's too: [`RequestLine`]); what is logged, and that no secret
//! ever is, is up to the callers. It must not hold state beyond the writer.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::domain::time::{push_decimal, write_digits, Rfc3339};

/// Logs to standard error through a background writer thread, so a request
/// never waits on a `write` system call for its log line. Lines are never
/// dropped: when the writer falls behind, logging callers wait. The returned
/// guard flushes what is queued when dropped, at exit.
///
/// `RUST_LOG` takes a plain level (error, warn, info, debug, trace); the
/// default is info. The [`RequestLog`] writes request lines to the same
/// writer (or nowhere, below info).
pub fn init() -> (WriterGuard, RequestLog) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let (writer, guard) = LogWriter::start(std::io::stderr());
    let requests = if level >= tracing::Level::INFO {
        RequestLog::Direct(writer.clone())
    } else {
        RequestLog::Off
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .event_format(LineFormat)
        .init();
    (guard, requests)
}

/// Bytes of lines waiting for the writer thread before a logging caller
/// waits for it to catch up.
const MAX_PENDING_BYTES: usize = 4 << 20;

/// How long the writer thread lets lines gather after the first one before
/// it writes them all: one `write` system call per batch.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// The logging side of the background writer. A line is appended to a
/// shared buffer (a copy of its bytes under a lock held for nothing else);
/// the writer thread is woken only by the first line after it last wrote,
/// sleeps [`BATCH_WINDOW`], then takes the whole buffer and writes it.
///
/// Why not a channel to a waiting thread (as `tracing-appender` does): with
/// the server on one CPU, waking the writer for each line costs a context
/// switch per request; measured with a channel, `/me` ran at half its speed
/// (BENCHMARKS.md, issue 13). Here the writer wakes at most 100 times a
/// second under load, and never when nothing is logged.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled by the first line into an empty buffer, and by stopping.
    woken: Condvar,
    /// Signalled when the writer has taken the buffer.
    taken: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    stopping: bool,
}

/// Stops the writer thread when dropped, after it has written every line
/// logged before.
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread over `out`.
    pub fn start(out: impl std::io::Write + Send + 'static) -> (LogWriter, WriterGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            woken: Condvar::new(),
            taken: Condvar::new(),
        });
        let writer_side = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log writer".into())
            .spawn(move || write_pending(&writer_side, out))
            // Without a thread nothing could be logged at all; this runs once,
            // at start-up, before anything else can fail.
            .expect("cannot start the log writer thread");
        let guard = WriterGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        (LogWriter { shared }, guard)
    }

    /// Queues whole lines (waits while [`MAX_PENDING_BYTES`] are pending).
    /// Lines logged after the writer stopped, at exit, are lost.
    pub fn send(&self, lines: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= MAX_PENDING_BYTES && !pending.stopping {
            pending = self
                .shared
                .taken
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if pending.stopping {
            return;
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(lines);
        drop(pending);
        if first {
            self.shared.woken.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic elsewhere while holding the lock left whole lines behind.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn write_pending(shared: &Shared, out: impl std::io::Write) {
    let mut out = out;
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && !pending.stopping {
            pending = shared
                .woken
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if !pending.stopping {
            drop(pending);
            std::thread::sleep(BATCH_WINDOW);
            pending = shared.lock();
        }
        std::mem::swap(&mut batch, &mut pending.bytes);
        let stopping = pending.stopping;
        drop(pending);
        shared.taken.notify_all();
        // A failed write to standard error has nowhere to be reported.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        if stopping {
            return;
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.woken.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `tracing`'s side: the formatter writes each event's finished line in one
/// `write`.
impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl std::io::Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the server's per-request lines go. They are the one line written
/// for every request, so [`RequestLog::Direct`] formats the whole line
/// itself (the same shape as [`LineFormat`]'s, level INFO, target
/// `gatehouse::server`) and hands it to the log writer in one piece,
/// skipping `tracing`'s dispatch and field passes: about a third of the
/// line's cost (BENCHMARKS.md).
#[derive(Clone, Default)]
pub enum RequestLog {
    /// Through `tracing`, like every other line (the default, for servers
    /// started without [`init`], as in tests).
    #[default]
    Tracing,
    /// Straight to the log writer.
    Direct(LogWriter),
    Off,
}

impl RequestLog {
    /// Writes one request line whose message `push_message` appends.
    pub fn write(&self, push_message: impl FnOnce(&mut Vec<u8>)) {
        match self {
            RequestLog::Tracing => {
                let mut message = Vec::with_capacity(128);
                push_message(&mut message);
                let message = String::from_utf8_lossy(&message);
                tracing::info!(target: "gatehouse::server", "{message}");
            }
            RequestLog::Direct(writer) => {
                let mut line = Vec::with_capacity(192);
                push_prefix(
                    &mut line,
                    SystemTime::now(),
                    Level::INFO,
                    "gatehouse::server",
                );
                line.push(b' ');
                push_message(&mut line);
                line.push(b'\n');
                writer.send(&line);
            }
            RequestLog::Off => {}
        }
    }
}

/// `request method=GET path=/api/auth/me status=200 micros=41
/// peer=127.0.0.1:50412`: the request line's message, appended to the line
/// [`RequestLog`] builds, not passed as `tracing` fields: it is written for
/// every request and each formatted part costs. The path cannot break the
/// line: hyper refuses request targets with spaces or control characters.
pub struct RequestLine<'r> {
    pub method: &'r Method,
    pub path: &'r str,
    pub status: StatusCode,
    pub micros: u64,
    pub peer: SocketAddr,
}

impl RequestLine<'_> {
    /// Appends the message, as bytes: every part is ASCII (the path is what
    /// hyper accepted as a request target), so no UTF-8 check is needed.
    pub fn push_to(&self, line: &mut Vec<u8>) {
        line.extend_from_slice(b"request method=");
        line.extend_from_slice(self.method.as_str().as_bytes());
        line.extend_from_slice(b" path=");
        line.extend_from_slice(self.path.as_bytes());
        line.extend_from_slice(b" status=");
        line.extend_from_slice(self.status.as_str().as_bytes());
        line.extend_from_slice(b" micros=");
        push_decimal(line, self.micros);
        line.extend_from_slice(b" peer=");
        match self.peer {
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        line.push(b'.');
                    }
                    push_decimal(line, u64::from(octet));
                }
                line.push(b':');
                push_decimal(line, u64::from(v4.port()));
            }
            SocketAddr::V6(v6) => {
                let _ = write!(line, "{v6}");
            }
        }
    }
}

/// Writes one ERROR line straight to standard error, bypassing the
/// background writer: for the last words of a process about to exit (whose
/// writer thread would not be flushed). Same shape as every other line; a
/// line break inside `message` becomes a space, so it stays one line.
pub fn write_fatal(target: &str, message: &str) {
    let mut line = String::with_capacity(64 + message.len());
    // Writing into a String cannot fail.
    let _ = write_prefix(&mut line, SystemTime::now(), Level::ERROR, target);
    line.push(' ');
    line.extend(
        message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
    );
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `<RFC 3339 UTC time, microseconds> <LEVEL> <target>: <message> <k=v>...`,
/// the same shape as `tracing-subscriber`'s default format without colours.
/// String fields are quoted and escaped (`name="a \"b\""`), so a value cannot
/// forge a second line or a field; `%`-formatted fields are written as they
/// display.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        format_line(&mut writer, SystemTime::now(), event)
    }
}

fn format_line(out: &mut impl fmt::Write, now: SystemTime, event: &Event<'_>) -> fmt::Result {
    let metadata = event.metadata();
    write_prefix(out, now, *metadata.level(), metadata.target())?;
    // The message first, then the other fields in their order: two passes
    // over the fields instead of a buffer.
    write_fields(out, event, true)?;
    write_fields(out, event, false)?;
    out.write_char('\n')
}

/// `2026-11-29T00:42:24.123456Z  INFO gatehouse::server:`, every line's start.
fn write_prefix(
    out: &mut impl fmt::Write,
    now: SystemTime,
    level: Level,
    target: &str,
) -> fmt::Result {
    let mut prefix = Vec::with_capacity(48 + target.len());
    push_prefix(&mut prefix, now, level, target);
    out.write_str(&String::from_utf8_lossy(&prefix))
}

/// [`write_prefix`] into bytes, for the request line.
fn push_prefix(out: &mut Vec<u8>, now: SystemTime, level: Level, target: &str) {
    push_time(out, now);
    out.extend_from_slice(match level {
        Level::ERROR => b" ERROR ",
        Level::WARN => b"  WARN ",
        Level::INFO => b"  INFO ",
        Level::DEBUG => b" DEBUG ",
        Level::TRACE => b" TRACE ",
    });
    out.extend_from_slice(target.as_bytes());
    out.push(b':');
}

/// `2026-11-29T00:42:24.123456Z`.
fn push_time(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = Rfc3339::from_unix(since_epoch.as_secs());
    out.extend_from_slice(&second.as_bytes()[..19]);
    let mut fraction = *b".000000Z";
    write_digits(&mut fraction[1..7], u64::from(since_epoch.subsec_micros()));
    out.extend_from_slice(&fraction);
}

/// Writes either the `message` field or every other field, each after a
/// space.
fn write_fields(out: &mut impl fmt::Write, event: &Event<'_>, message: bool) -> fmt::Result {
    let mut writer = FieldWriter {
        out,
        message,
        result: Ok(()),
    };
    event.record(&mut writer);
    writer.result
}

struct FieldWriter<'o, W> {
    out: &'o mut W,
    message: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> FieldWriter<'_, W> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let is_message = field.name() == "message";
        if self.result.is_err() || is_message != self.message {
            return;
        }
        self.result = self.out.write_char(' ');
        if !is_message {
            self.result = self
                .result
                .and_then(|()| self.out.write_str(field.name()))
                .and_then(|()| self.out.write_char('='));
        }
        self.result = self.result.and_then(|()| self.out.write_fmt(value));
    }
}

impl<W: fmt::Write> Visit for FieldWriter<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, format_args!("{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    /// Collects formatted lines, with a fixed clock.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<String>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
            let now = UNIX_EPOCH + Duration::from_micros(1_764_376_944_123_456);
            let mut lines = self.0.lock().unwrap();
            format_line(&mut *lines, now, event).unwrap();
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        use tracing_subscriber::layer::SubscriberExt as _;
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        tracing::subscriber::with_default(subscriber, emit);
        let text = lines.0.lock().unwrap().clone();
        text
    }

    #[test]
    fn string_fields_are_quoted_so_they_cannot_forge_lines() {
        let text = logged(|| tracing::warn!(reason = "a\nb \"c\"", "refused"));
        assert_eq!(
            text,
            "2025-11-29T00:42:24.123456Z  WARN gatehouse::log::tests: refused \
             reason=\"a\\nb \\\"c\\\"\"\n"
        );
        assert_eq!(text.lines().count(), 1);
    }

    /// A sink the test can read after the writer thread is done.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `RequestLog::Direct` writes for `line`, through its real writer.
    fn direct(line: &RequestLine<'_>) -> String {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::start(sink.clone());
        RequestLog::Direct(writer).write(|out| line.push_to(out));
        drop(guard); // flushes and stops the writer thread
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn a_request_line_is_written_whole_with_its_fields_after_the_message() {
        let line = |peer: &str| {
            direct(&RequestLine {
                method: &Method::PATCH,
                path: "/api/users/abc",
                status: StatusCode::NOT_FOUND,
                micros: 1234,
                peer: peer.parse().unwrap(),
            })
        };
        let text = line("10.0.255.7:50412");
        let (time, rest) = text.split_at(27);
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{text}");
        assert_eq!(
            rest,
            "  INFO gatehouse::server: request method=PATCH path=/api/users/abc \
             status=404 micros=1234 peer=10.0.255.7:50412\n"
        );
        assert!(line("[::1]:8080").ends_with(" micros=1234 peer=[::1]:8080\n"));
        assert!(line("0.0.0.0:0").ends_with(" micros=1234 peer=0.0.0.0:0\n"));
        RequestLog::Off.write(|_| panic!("an off log formats nothing"));
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_before_the_guard_returns() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::start(sink.clone());
        // More than MAX_PENDING_BYTES in all, so loggers also wait for the
        // writer to take the buffer.
        let lines_per_thread = MAX_PENDING_BYTES / 4 / 64 * 2;
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..lines_per_thread {
                        writer.send(format!("{thread} {i:>56}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (thread, i) = line.split_once(' ').unwrap();
            let thread: usize = thread.parse().unwrap();
            assert_eq!(i.trim().parse::<usize>().unwrap(), next[thread], "{line}");
            next[thread] += 1;
        }
        assert_eq!(next, [lines_per_thread; 4]);
    }

    #[test]
    fn times_have_microseconds_and_follow_the_second() {
        let at = |micros: u64| {
            let mut text = Vec::new();
            push_time(&mut text, UNIX_EPOCH + Duration::from_micros(micros));
            String::from_utf8(text).unwrap()
        };
        assert_eq!(at(1_764_376_944_000_007), "2025-11-29T00:42:24.000007Z");
        assert_eq!(at(1_764_376_944_999_999), "2025-11-29T00:42:24.999999Z");
        assert_eq!(at(1_764_376_945_100_000), "2025-11-29T00:42:25.100000Z");
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn a_formatted_message_is_written_as_it_displays() {
        let text = logged(|| tracing::error!(code = -3i64, ok = false, "failed: {}", 7));
        assert!(
            text.ends_with(" ERROR gatehouse::log::tests: failed: 7 code=-3 ok=false\n"),
            "{text}"
        );
    }
}
