//! An SMTP server for the tests, on 127.0.0.1: it speaks enough SMTP for
//! lettre (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), keeps every message it
//! accepts, and can be told to answer slowly or to refuse mail, so tests can
//! show that requests never wait for it and that a failing one loses nothing
//! but the mail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How the sink treats the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// Waits this long before its greeting.
    Slow(Duration),
    /// Refuses every message for good (550).
    Refuse,
    /// Refuses the next message for now (451: try again later), then
    /// accepts again.
    DeferOnce,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Captured {
    pub to: Vec<String>,
    pub data: String,
}

impl Captured {
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string()
    }

    /// The decoded text/plain part.
    pub fn text(&self) -> String {
        part(&self.data, "text/plain")
    }

    /// The decoded text/html part.
    pub fn html(&self) -> String {
        part(&self.data, "text/html")
    }

    /// The first link in the text part.
    pub fn link(&self) -> String {
        let text = self.text();
        let start = text
            .find("http")
            .unwrap_or_else(|| panic!("no link in {text}"));
        text[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// The token in the link (after `#token=`).
    pub fn token(&self) -> String {
        let link = self.link();
        link.split_once("#token=")
            .unwrap_or_else(|| panic!("no #token= in {link}"))
            .1
            .to_string()
    }
}

pub struct MailSink {
    pub address: String,
    messages: Arc<Mutex<Vec<Captured>>>,
    mode: Arc<Mutex<Mode>>,
    /// Messages refused so far (either way).
    refused: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MailSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MailSink {
    pub async fn start() -> MailSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let address = listener.local_addr().unwrap().to_string();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Accept));
        let refused = Arc::new(Mutex::new(0));
        let (m, md, r) = (
            Arc::clone(&messages),
            Arc::clone(&mode),
            Arc::clone(&refused),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (m, md, r) = (Arc::clone(&m), Arc::clone(&md), Arc::clone(&r));
                tokio::spawn(async move {
                    let _ = session(stream, m, md, r).await;
                });
            }
        });
        MailSink {
            address,
            messages,
            mode,
            refused,
            task,
        }
    }

    pub fn smtp_url(&self) -> String {
        format!("smtp://{}", self.address)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Polls (deadline 15 s) until `count` messages were refused in all.
    pub async fn wait_for_refusals(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while *self.refused.lock().unwrap() < count {
            assert!(Instant::now() < deadline, "fewer than {count} refusals");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn refusals(&self) -> usize {
        *self.refused.lock().unwrap()
    }

    /// Messages accepted for `to` so far.
    pub fn to(&self, to: &str) -> Vec<Captured> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == to))
            .cloned()
            .collect()
    }

    /// Polls (deadline 15 s) until `to` has `count` messages; returns them.
    pub async fn wait_for(&self, to: &str, count: usize) -> Vec<Captured> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.to(to);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{to} got {} mails, expected {count}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls (deadline 15 s) until `to` has `count` mails whose text holds
    /// `marker` (e.g. `/reset-password#`); returns the `count`-th of them.
    /// Mails of different requests may arrive in either order.
    pub async fn nth_with(&self, to: &str, marker: &str, count: usize) -> Captured {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got: Vec<Captured> = self
                .to(to)
                .into_iter()
                .filter(|m| m.text().contains(marker))
                .collect();
            if got.len() >= count {
                return got[count - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{to} got {} mails with {marker}, expected {count}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last message to `to`, waiting for the `count`-th.
    pub async fn nth(&self, to: &str, count: usize) -> Captured {
        self.wait_for(to, count).await[count - 1].clone()
    }
}

async fn session(
    stream: TcpStream,
    messages: Arc<Mutex<Vec<Captured>>>,
    shared_mode: Arc<Mutex<Mode>>,
    refused: Arc<Mutex<usize>>,
) -> std::io::Result<()> {
    let slow = match *shared_mode.lock().unwrap() {
        Mode::Slow(wait) => Some(wait),
        _ => None,
    };
    if let Some(wait) = slow {
        tokio::time::sleep(wait).await;
    }
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if command.starts_with("HELO") || command.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if command.starts_with("RSET") {
            to.clear();
            b"250 OK\r\n"
        } else if command.starts_with("MAIL FROM") {
            mail_from_reply(&shared_mode, &refused)
        } else if command.starts_with("RCPT TO") {
            let address = line.trim_end()[8..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_string();
            to.push(address);
            b"250 OK\r\n"
        } else if command == "DATA" {
            write.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                // Dot-stuffing.
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            messages.lock().unwrap().push(Captured {
                to: std::mem::take(&mut to),
                data,
            });
            b"250 queued\r\n"
        } else if command.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"500 what?\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// The answer to MAIL FROM in the sink's mode now (a deferral happens once).
fn mail_from_reply(shared_mode: &Mutex<Mode>, refused: &Mutex<usize>) -> &'static [u8] {
    let mut mode = shared_mode.lock().unwrap();
    match *mode {
        Mode::Refuse => {
            *refused.lock().unwrap() += 1;
            b"550 no mail for you\r\n"
        }
        Mode::DeferOnce => {
            *refused.lock().unwrap() += 1;
            *mode = Mode::Accept;
            b"451 not now\r\n"
        }
        _ => b"250 OK\r\n",
    }
}

/// The body of the MIME part of `content_type` in `data`, decoded.
fn part(data: &str, content_type: &str) -> String {
    let data = data.replace("\r\n", "\n");
    let start = data
        .find(&format!("Content-Type: {content_type}"))
        .unwrap_or_else(|| panic!("no {content_type} part in {data}"));
    let rest = &data[start..];
    let (headers, body) = rest.split_once("\n\n").expect("part headers end");
    let body = body.split("\n--").next().unwrap_or_default();
    let encoding = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Transfer-Encoding: "))
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .expect("base64 part");
            String::from_utf8(bytes).expect("UTF-8 part")
        }
        "quoted-printable" => decode_quoted_printable(body),
        _ => body.to_string(),
    }
}

fn decode_quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
            if let Some(hex) = joined.get(i + 1..i + 3) {
                if let Ok(byte) = u8::from_str_radix(hex, 16) {
                    out.push(byte);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 part")
}
