//! One connection's socket as hyper sees it: the time limits hyper's HTTP/1
//! server does not keep, and the bookkeeping of which request is in progress.
//!
//! [`Connection`] wraps the TCP stream and enforces, on the reads and writes
//! hyper makes:
//!
//! - **write**: once a write goes pending, what hyper has handed over must be
//!   taken by the client (drained into the kernel) within
//!   `server.write_timeout_secs`, else the write fails and hyper drops the
//!   connection. hyper has no write timeout at all, so a client that never
//!   reads would otherwise hold its connection slot forever.
//! - **idle**: while no request is in progress and no answer is waiting to be
//!   drained, a read waits at most `server.idle_timeout_secs` for the next
//!   request's first byte; then the read ends (end of stream) and hyper closes
//!   the connection quietly.
//! - **head**: from a request's first byte (or from the accept, for the first
//!   request), its head must arrive within `server.header_timeout_secs`. This
//!   replaces hyper's `header_read_timeout`, which in hyper 1.x starts when
//!   hyper begins waiting for a head, idle time between keep-alive requests
//!   included (`proto/h1/conn.rs`, `poll_read_head` and `State::idle`): with
//!   it, an idle connection would be closed after the header timeout whatever
//!   the idle timeout said.
//!
//! A request is in progress from the service's first step until it returns
//! its response ([`Requests::begin`]); reads then have no deadline here (the
//! body's own time limit is `http::body`'s), so a request waiting for a
//! password hash is never cut by the idle timer. hyper does not necessarily
//! read again once it has flushed an answer (without its header timer it
//! waits for the socket), so the idle timer is armed by that flush as well
//! as by a read that goes pending.
//!
//! Cost on the request path: two atomic additions on the connection's own
//! counter, and a clock read when a read goes pending between requests.
//! Timers are armed only when a read or write goes pending, and one timer
//! per connection is moved, not recreated; it is moved only to an earlier
//! time, so a keep-alive connection answering request after request does
//! not touch the timer wheel for each. This module must not look into the
//! bytes it carries beyond handing written ones to [`Answers`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

use super::answers::{Answers, ErrorAnswers};

/// The three time limits a connection keeps (from `server.*_timeout_secs`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// What the service tells the connection's IO: how many requests have
/// started, whether one is in progress, and which were `HEAD` requests (whose
/// answers declare a length but carry no body; [`Answers`] needs to know).
/// Shared by one connection's service and IO, so never contended.
#[derive(Debug, Default)]
pub struct Requests {
    /// Twice the requests finished, plus one while a request is in progress:
    /// odd means in progress. HTTP/1 runs one request at a time.
    progress: AtomicU64,
    /// Bit `n % 64` is set if request `n` (from 0) was a `HEAD`.
    heads: AtomicU64,
}

impl Requests {
    /// Marks a request as in progress until the returned guard is dropped
    /// (also when the request's future is dropped unfinished).
    pub fn begin(self: &Arc<Self>, head: bool) -> InProgress {
        let number = self.progress.load(Ordering::Relaxed) / 2;
        let bit = 1u64 << (number % 64);
        if head {
            self.heads.fetch_or(bit, Ordering::Relaxed);
        } else if self.heads.load(Ordering::Relaxed) & bit != 0 {
            self.heads.fetch_and(!bit, Ordering::Relaxed);
        }
        // Release: the HEAD bit is visible to whoever sees the new count.
        self.progress.fetch_add(1, Ordering::Release);
        InProgress(self.clone())
    }

    fn progress(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    /// Requests started so far (the one in progress included).
    pub fn started(&self) -> u64 {
        self.progress().div_ceil(2)
    }

    /// Whether request `number` was a `HEAD`; `None` once it is too far
    /// behind the latest to be remembered, or not started.
    pub fn was_head(&self, number: u64) -> Option<bool> {
        let started = self.started();
        if number >= started || started - number > 64 {
            return None;
        }
        Some(self.heads.load(Ordering::Acquire) & (1 << (number % 64)) != 0)
    }
}

/// A request in progress; see [`Requests::begin`].
pub struct InProgress(Arc<Requests>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.progress.fetch_add(1, Ordering::Release);
    }
}

/// What a pending read is waiting for, and since when.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// The head of a request that has begun to arrive (or of the first one).
    Head(Instant),
    /// The first byte of the next request.
    Idle(Instant),
    /// A request is in progress or an answer is being written: no read
    /// deadline here.
    Busy,
}

/// A TCP stream (or any stream) with the write, idle and head time limits.
pub struct Connection<S> {
    stream: S,
    requests: Arc<Requests>,
    limits: Limits,
    waiting: Waiting,
    /// `Requests::progress` when `waiting` was last set: a change means
    /// requests ran since, so the connection's idle time starts afresh.
    seen: u64,
    /// Bytes were written and not yet flushed (hyper flushes once it has
    /// handed over all it holds).
    unflushed: bool,
    /// When the bytes hyper is trying to write must have drained.
    write_deadline: Option<Instant>,
    /// One timer for both directions, created the first time a read or write
    /// goes pending and moved after that.
    timer: Option<Pin<Box<Sleep>>>,
    answers: Answers,
}

impl<S> Connection<S> {
    pub fn new(
        stream: S,
        requests: Arc<Requests>,
        limits: Limits,
        errors: Arc<ErrorAnswers>,
    ) -> Self {
        Connection {
            stream,
            requests,
            limits,
            waiting: Waiting::Head(Instant::now()),
            seen: 0,
            unflushed: false,
            write_deadline: None,
            timer: None,
            answers: Answers::new(errors),
        }
    }

    /// The deadline of a read that went pending, if it has one, and whether
    /// it is the idle one.
    fn read_deadline(&mut self) -> Option<(Instant, bool)> {
        let progress = self.requests.progress();
        if progress % 2 == 1 || self.unflushed {
            self.waiting = Waiting::Busy;
            self.seen = progress;
            return None;
        }
        if progress != self.seen {
            self.seen = progress;
            self.waiting = Waiting::Busy;
        }
        if let Waiting::Busy = self.waiting {
            self.waiting = Waiting::Idle(Instant::now());
        }
        match self.waiting {
            Waiting::Head(since) => Some((since + self.limits.header, false)),
            Waiting::Idle(since) => Some((since + self.limits.idle, true)),
            Waiting::Busy => None,
        }
    }

    /// A read returned bytes: if the connection was idle, a request's head
    /// has begun, and it has the header timeout from now. (Bytes that came
    /// while a request was in progress count from when it went idle: at
    /// worst a pipelined head waits the idle time, never less.)
    fn on_bytes_read(&mut self) {
        if let Waiting::Idle(_) = self.waiting {
            if self.requests.progress() == self.seen {
                self.waiting = Waiting::Head(Instant::now());
            }
        }
    }

    /// Ready once `deadline` has passed. The timer is moved to `deadline` if
    /// it is set later, or if it went off for the other direction's earlier
    /// deadline (that direction re-arms it when hyper polls it next, in the
    /// same pass: hyper polls reading and writing each time it wakes).
    fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        loop {
            let set = timer.deadline();
            if set > deadline || (set < deadline && timer.is_elapsed()) {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
        }
    }

    /// A write or flush went pending: fails it once what hyper is writing
    /// has not drained for the write timeout.
    fn poll_write_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let write = self.limits.write;
        let deadline = *self
            .write_deadline
            .get_or_insert_with(|| Instant::now() + write);
        ready!(self.poll_until(cx, deadline));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the answer within server.write_timeout_secs",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let Some((deadline, idle)) = this.read_deadline() else {
                    return Poll::Pending;
                };
                ready!(this.poll_until(cx, deadline));
                if idle {
                    // End of stream: hyper closes an idle connection quietly.
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head did not arrive within server.header_timeout_secs",
                    )))
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = match this
            .answers
            .poll_write(&mut this.stream, cx, bufs, &this.requests)
        {
            Poll::Ready(Ok(written)) => written,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {
                ready!(this.poll_write_deadline(cx))?;
                return Poll::Pending;
            }
        };
        if written > 0 {
            this.unflushed = true;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.answers.poll_flush(&mut this.stream, cx) {
            Poll::Ready(Ok(())) => {
                this.unflushed = false;
                this.write_deadline = None;
                // All written and no request in progress: the connection is
                // idle from now. hyper may not read again until the client
                // sends something, so the idle timer is armed here too.
                if let Some((deadline, true)) = this.read_deadline() {
                    if this.poll_until(cx, deadline).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                ready!(this.poll_write_deadline(cx))?;
                Poll::Pending
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_remember_heads_and_progress() {
        let requests = Arc::new(Requests::default());
        assert_eq!(requests.started(), 0);
        assert_eq!(requests.was_head(0), None);
        let first = requests.begin(true);
        assert_eq!((requests.started(), requests.progress() % 2), (1, 1));
        drop(first);
        assert_eq!((requests.started(), requests.progress() % 2), (1, 0));
        for n in 1..100 {
            drop(requests.begin(n % 3 == 0));
        }
        assert_eq!(requests.started(), 100);
        assert_eq!(requests.was_head(0), None, "forgotten");
        assert_eq!(requests.was_head(36), Some(true));
        assert_eq!(requests.was_head(98), Some(false));
        assert_eq!(requests.was_head(99), Some(true));
        assert_eq!(requests.was_head(100), None, "not started");
    }
}
