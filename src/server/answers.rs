//! The contract's JSON error body on the answers hyper writes by itself.
//!
//! When a request head cannot be parsed, hyper answers on its own (400, 414
//! or 431, `proto/h1/role.rs`, `Server::on_error`) with an empty body, and
//! offers no hook to change it: `Conn::on_parse_error` writes the head
//! straight into its buffer (`proto/h1/conn.rs`). Such an answer is always
//! the last thing written on its connection, and it is written when every
//! request the service has started has been answered. So [`Answers`]
//! follows the answers in the bytes hyper writes, message by message:
//! a head up to its blank line, then exactly the body its `content-length`
//! declares (none for a `HEAD` request, a 1xx, 204 or 304). A head that
//! begins when every started request has its answer is hyper's own: it is
//! held back and replaced by the same status with the JSON body of
//! [`ApiError::InvalidInput`]. Framing it cannot follow exactly (chunked or
//! close-delimited bodies, which gatehouse sends only for the export, whose
//! connection then closes, or a `HEAD` too far back to remember) makes it
//! stop looking for the rest of the connection: it then passes bytes
//! unchanged and never guesses.
//!
//! On the request path this costs a scan of each answer's head (about 200
//! bytes), and nothing per body byte. It must not change any byte of an
//! answer the service produced.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

use super::connection::Requests;
use crate::http::error::ApiError;

/// Replacements for hyper's own answers, built once per server.
#[derive(Debug)]
pub struct ErrorAnswers {
    /// Per status: the header lines to add (each ending in CRLF, the blank
    /// line included) and the body.
    by_status: Vec<(u16, Vec<u8>)>,
    fallback: Vec<u8>,
}

/// Statuses hyper answers by itself, with the sentence each gets.
const MESSAGES: [(u16, &str); 3] = [
    (400, "The request is not valid HTTP/1.1."),
    (414, "The request target is too long."),
    (431, "The request head is too large."),
];

impl ErrorAnswers {
    pub async fn new() -> ErrorAnswers {
        let mut by_status = Vec::new();
        for (status, message) in MESSAGES {
            by_status.push((status, tail(message).await));
        }
        ErrorAnswers {
            by_status,
            fallback: tail("The request could not be read.").await,
        }
    }

    /// hyper's answer `head` (up to and including its blank line) with the
    /// JSON body: the status line and hyper's headers but its
    /// `content-length`, then ours. `None` if the head is not one.
    fn replace(&self, head: &[u8]) -> Option<Vec<u8>> {
        let status = status_of(head.split(|b| *b == b'\n').next()?)?;
        let tail = self
            .by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(&self.fallback, |(_, tail)| tail);
        let mut out = Vec::with_capacity(head.len() + tail.len());
        // Every line but the blank one, each with its LF.
        let lines = head.strip_suffix(b"\r\n")?;
        for line in lines.split_inclusive(|b| *b == b'\n') {
            if !starts_with_ignore_case(line, b"content-length:") {
                out.extend_from_slice(line);
            }
        }
        out.extend_from_slice(tail);
        Some(out)
    }
}

/// The added header lines, blank line and body for `message`: those of
/// [`ApiError::InvalidInput`]'s response.
async fn tail(message: &str) -> Vec<u8> {
    super::headers_and_body(ApiError::InvalidInput(message.to_string()).into_response()).await
}

/// The status code of a status line `HTTP/1.x NNN ...`.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let digits = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Bytes of a head line kept for parsing: enough for the status line's
/// start, `content-length: ` and twenty digits, and `transfer-encoding:`.
const KEPT: usize = 40;

/// Held back of hyper's own answer at most; more is passed unchanged.
const MAX_CAPTURE: usize = 1024;

/// Follows one connection's outgoing answers; see the module doc.
pub struct Answers {
    errors: Arc<ErrorAnswers>,
    framing: Framing,
    held: Held,
}

/// Where the outgoing bytes are in their messages. Small and `Copy`: a
/// write is followed on a copy first, to find where hyper's own answer
/// starts before anything is sent.
#[derive(Clone, Copy)]
struct Framing {
    at: At,
    /// Final (non-1xx) answer heads seen so far.
    answered: u64,
}

#[derive(Clone, Copy)]
enum At {
    /// Inside an answer's head.
    Head(HeadScan),
    /// This many body bytes are still to come.
    Body(u64),
    /// Framing not followed: everything passes unchanged.
    Lost,
}

/// hyper's own answer, held back.
enum Held {
    Nothing,
    /// Its head so far.
    Capturing(Vec<u8>),
    /// Its replacement, sent up to `sent`.
    Replacing {
        bytes: Vec<u8>,
        sent: usize,
    },
}

#[derive(Clone, Copy)]
struct HeadScan {
    /// The current line's first bytes.
    line: [u8; KEPT],
    kept: usize,
    /// The current line is longer than [`KEPT`].
    long: bool,
    /// Complete lines so far (the status line first).
    lines: usize,
    status: u16,
    length: Option<u64>,
    /// A `transfer-encoding` header or a malformed length: not followed.
    unframed: bool,
}

impl HeadScan {
    const START: HeadScan = HeadScan {
        line: [0; KEPT],
        kept: 0,
        long: false,
        lines: 0,
        status: 0,
        length: None,
        unframed: false,
    };

    fn at_start(&self) -> bool {
        self.lines == 0 && self.kept == 0 && !self.long
    }
}

impl Answers {
    pub fn new(errors: Arc<ErrorAnswers>) -> Answers {
        Answers {
            errors,
            framing: Framing {
                at: At::Head(HeadScan::START),
                answered: 0,
            },
            held: Held::Nothing,
        }
    }

    /// Writes `bufs` to `stream` up to where hyper's own answer begins, if
    /// it does; from there on, holds them back (reporting them written).
    pub fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        requests: &Requests,
    ) -> Poll<io::Result<usize>> {
        match self.held {
            Held::Nothing => {}
            Held::Capturing(_) => return self.capture(stream, cx, bufs),
            Held::Replacing { .. } => {
                // hyper writes nothing after its own answer; should it,
                // the bytes follow the replacement unchanged.
                ready!(self.poll_replacement(stream, cx))?;
                self.held = Held::Nothing;
                self.framing.at = At::Lost;
            }
        }
        let mut after = self.framing;
        let mut ours = 0;
        for buf in bufs {
            match after.follow(buf, requests) {
                Some(at) => {
                    ours += at;
                    break;
                }
                None => ours += buf.len(),
            }
        }
        if ours == 0 && bufs.iter().any(|buf| !buf.is_empty()) {
            self.held = Held::Capturing(Vec::new());
            return self.capture(stream, cx, bufs);
        }
        let all: usize = bufs.iter().map(|buf| buf.len()).sum();
        let written = if ours == all {
            ready!(Pin::new(&mut *stream).poll_write_vectored(cx, bufs))?
        } else {
            // Ours, then hyper's own answer in the same write (rare): send
            // ours; hyper writes the rest again, which is then held.
            let mut left = ours;
            let mut slices = Vec::new();
            for buf in bufs {
                let part = &buf[..left.min(buf.len())];
                left -= part.len();
                slices.push(IoSlice::new(part));
            }
            ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))?
        };
        if written == all {
            self.framing = after;
        } else {
            let mut left = written;
            for buf in bufs {
                let part = &buf[..left.min(buf.len())];
                left -= part.len();
                self.framing.follow(part, requests);
            }
        }
        Poll::Ready(Ok(written))
    }

    /// Sends any replacement still held, then flushes `stream`.
    pub fn poll_flush<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Held::Capturing(head) = &mut self.held {
            // hyper flushes what it has written whole: an unfinished head was
            // not one of its answers after all. Send it as it is.
            let bytes = std::mem::take(head);
            self.held = Held::Replacing { bytes, sent: 0 };
        }
        if let Held::Replacing { .. } = self.held {
            ready!(self.poll_replacement(stream, cx))?;
            self.held = Held::Nothing;
            self.framing.at = At::Lost;
        }
        Pin::new(stream).poll_flush(cx)
    }

    /// Holds back hyper's own answer until its head is complete, then
    /// replaces it. Reports every byte as written.
    fn capture<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Held::Capturing(held) = &mut self.held else {
            return Poll::Ready(Ok(0));
        };
        let mut taken = 0;
        for buf in bufs {
            held.extend_from_slice(buf);
            taken += buf.len();
        }
        let end = held.windows(4).position(|w| w == b"\r\n\r\n");
        let bytes = match end {
            Some(end) => match self.errors.replace(&held[..end + 4]) {
                Some(mut bytes) => {
                    bytes.extend_from_slice(&held[end + 4..]);
                    bytes
                }
                None => std::mem::take(held),
            },
            None if held.len() > MAX_CAPTURE => std::mem::take(held),
            None => return Poll::Ready(Ok(taken)),
        };
        self.held = Held::Replacing { bytes, sent: 0 };
        // Start sending; what does not fit now is sent on the flush.
        if let Poll::Ready(Err(error)) = self.poll_replacement(stream, cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_replacement<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let Held::Replacing { bytes, sent } = &mut self.held else {
            return Poll::Ready(Ok(()));
        };
        while *sent < bytes.len() {
            match ready!(Pin::new(&mut *stream).poll_write(cx, &bytes[*sent..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => *sent += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Framing {
    /// Follows `bytes`, written in order, up to where an answer head begins
    /// while every started request has its answer: hyper's own. Returns
    /// that offset, or `None` if `bytes` hold no such start.
    fn follow(&mut self, bytes: &[u8], requests: &Requests) -> Option<usize> {
        let mut rest = bytes;
        loop {
            match &mut self.at {
                At::Head(scan) if scan.at_start() && self.answered == requests.started() => {
                    return Some(bytes.len() - rest.len());
                }
                _ if rest.is_empty() => return None,
                At::Body(left) => {
                    let skip = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= skip as u64;
                    rest = &rest[skip..];
                    if *left == 0 {
                        self.at = At::Head(HeadScan::START);
                    }
                }
                At::Head(scan) => {
                    if scan.at_start() {
                        // The fast path: a whole head here, as hyper
                        // usually writes one, read in place.
                        if let Some((length, head)) = whole_head(rest) {
                            rest = &rest[length..];
                            self.at = self.after_head(&head, requests);
                            continue;
                        }
                    }
                    let Some(end) = memchr::memchr(b'\n', rest) else {
                        keep(scan, rest);
                        return None;
                    };
                    keep(scan, &rest[..end]);
                    rest = &rest[end + 1..];
                    self.end_line(requests);
                }
                At::Lost => return None,
            }
        }
    }

    /// The current head line is complete.
    fn end_line(&mut self, requests: &Requests) {
        let At::Head(scan) = &mut self.at else {
            return;
        };
        // A copy (the slow path only), as `scan` is updated from it.
        let kept = scan.line;
        let line = &kept[..scan.kept];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if scan.lines == 0 {
            match status_of(line) {
                Some(status) => scan.status = status,
                None => scan.unframed = true,
            }
        } else if line.is_empty() && !scan.long {
            let scan = *scan;
            self.at = self.after_head(&scan, requests);
            return;
        } else {
            let long = scan.long;
            header_line(scan, line, long);
        }
        scan.lines += 1;
        scan.kept = 0;
        scan.long = false;
    }

    /// What follows the head `scan` just ended.
    fn after_head(&mut self, scan: &HeadScan, requests: &Requests) -> At {
        if scan.unframed {
            return At::Lost;
        }
        if (100..200).contains(&scan.status) {
            return At::Head(HeadScan::START);
        }
        let number = self.answered;
        self.answered += 1;
        let Some(head_request) = requests.was_head(number) else {
            return At::Lost;
        };
        match scan.length {
            _ if head_request || scan.status == 204 || scan.status == 304 => {
                At::Head(HeadScan::START)
            }
            Some(0) => At::Head(HeadScan::START),
            Some(length) => At::Body(length),
            None => At::Lost,
        }
    }
}

/// The head at the start of `bytes`, if all of it is there: its length
/// (blank line included) and what it says. Lines are found with `memchr`
/// and read in place, with no copy: this runs for every answer.
fn whole_head(bytes: &[u8]) -> Option<(usize, HeadScan)> {
    let mut scan = HeadScan::START;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if scan.lines == 0 {
            match status_of(line) {
                Some(status) => scan.status = status,
                None => scan.unframed = true,
            }
        } else if line.is_empty() {
            return Some((end + 1, scan));
        } else {
            header_line(&mut scan, line, false);
        }
        scan.lines += 1;
        start = end + 1;
    }
    None
}

/// Reads one header line (cut to its first bytes if `long`) into `scan`:
/// only `content-length` and `transfer-encoding` matter for the framing.
fn header_line(scan: &mut HeadScan, line: &[u8], long: bool) {
    // hyper writes every header name in lower case (`HeaderName` is lower
    // case, and title-casing is off), so the names are compared as they
    // are, after one byte has told which one to compare. A name in another
    // case would leave the length unknown, and the framing is then no longer
    // followed (bytes pass unchanged): never a wrong guess.
    match line.first() {
        Some(b'c') if line.starts_with(b"content-length:") => {
            let value = line[b"content-length:".len()..].trim_ascii();
            scan.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            scan.unframed |= long || scan.length.is_none();
        }
        Some(b't') if line.starts_with(b"transfer-encoding:") => {
            scan.unframed = true;
        }
        _ => {}
    }
}

/// Keeps the first bytes of a head line.
fn keep(scan: &mut HeadScan, bytes: &[u8]) {
    let room = KEPT - scan.kept;
    let take = bytes.len().min(room);
    scan.line[scan.kept..scan.kept + take].copy_from_slice(&bytes[..take]);
    scan.kept += take;
    scan.long |= bytes.len() > room;
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
        content-length: 10\r\ndate: x\r\n\r\n{\"a\":\"\n\"}X";
    const OURS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
        content-length: 10\r\n\r\n";
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    const HYPERS: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
        connection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 17:34:52 GMT\r\n\r\n";

    fn errors() -> Arc<ErrorAnswers> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Arc::new(runtime.block_on(ErrorAnswers::new()))
    }

    /// Writes `stream` through [`Answers`] in pieces of `piece` bytes (each
    /// passed as two slices), the requests having started as `heads` says
    /// (true for a HEAD), and returns what reached the socket.
    fn written(errors: &Arc<ErrorAnswers>, heads: &[bool], stream: &[u8], piece: usize) -> Vec<u8> {
        let requests = Arc::new(Requests::default());
        for head in heads {
            drop(requests.begin(*head));
        }
        let mut answers = Answers::new(errors.clone());
        let mut socket = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for chunk in stream.chunks(piece) {
            let (a, b) = chunk.split_at(chunk.len() / 2);
            let bufs = [IoSlice::new(a), IoSlice::new(b)];
            let mut done = 0;
            while done < chunk.len() {
                let rest: Vec<u8> = chunk[done..].to_vec();
                let bufs_rest = [IoSlice::new(&rest)];
                let bufs = if done == 0 { &bufs[..] } else { &bufs_rest[..] };
                match answers.poll_write(&mut socket, &mut cx, bufs, &requests) {
                    Poll::Ready(Ok(n)) => done += n,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(answers.poll_flush(&mut socket, &mut cx).is_ready());
        socket
    }

    #[test]
    fn our_answers_pass_unchanged_and_hypers_own_gets_the_json_body() {
        let errors = errors();
        let mut ours = Vec::new();
        for part in [OURS, OURS_HEAD, CONTINUE, OURS] {
            ours.extend_from_slice(part);
        }
        let mut all = ours.clone();
        all.extend_from_slice(HYPERS);
        for piece in 1..all.len() + 1 {
            // Three requests: a GET, a HEAD, and one with a 100 Continue.
            let heads = [false, true, false];
            assert_eq!(written(&errors, &heads, &ours, piece), ours, "{piece}");
            let out = written(&errors, &heads, &all, piece);
            let (before, replaced) = out.split_at(ours.len());
            assert_eq!(before, ours, "{piece}");
            let replaced = String::from_utf8(replaced.to_vec()).unwrap();
            let (head, body) = replaced.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{head}"
            );
            assert!(
                head.contains("\r\ncontent-type: application/json\r\n"),
                "{head}"
            );
            assert!(head.contains("\r\ndate: Mon, 30 Nov 2026 17:34:52 GMT\r\n"));
            assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
            assert_eq!(head.matches("content-length").count(), 1, "{head}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"], "invalid_input");
            assert_eq!(body["message"], "The request head is too large.");
        }
    }

    #[test]
    fn a_head_request_too_far_back_or_unframed_bodies_stop_the_following() {
        let errors = errors();
        // The HEAD's answer taken as a GET's would swallow ten bytes of
        // hyper's answer: not knowing, Answers must pass it unchanged.
        let mut stream = OURS_HEAD.to_vec();
        stream.extend_from_slice(HYPERS);
        let heads: Vec<bool> = (0..70).map(|n| n == 0).collect();
        assert_eq!(written(&errors, &heads, &stream, 7), stream);
        let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(HYPERS);
        assert_eq!(written(&errors, &[false], &chunked, 5), chunked);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 400 Bad Request\r"), Some(400));
        assert_eq!(status_of(b"HTTP/1.0 204"), Some(204));
        assert_eq!(status_of(b"HTTP/2 200 OK"), None);
        assert_eq!(status_of(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
    }
}
