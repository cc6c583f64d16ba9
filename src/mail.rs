//! Mail over SMTP: the templates, the links, and the background worker that
//! sends. A request never waits on the mail server: [`Mailer::send`] puts a
//! mail on a bounded queue (or drops it with a warning when the queue is
//! full) and returns; the worker renders it, sends it with time limits and
//! tries three times with backoff (a permanent refusal, 5xx, only once), and
//! logs a failure without the link.
//!
//! This module owns how a mail looks and how it travels. It must not decide
//! who gets one or when (the routes in `api::recovery` do), and the token in
//! a link never reaches a log line: [`Outgoing`]'s `Debug` hides the link.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::{mpsc, Semaphore};

use crate::config::Settings;
use crate::metrics::{MailOutcome, Metrics};

/// Mails waiting for the worker before new ones are dropped (and logged).
const QUEUE: usize = 1024;
/// Mails in flight at once (each holds an SMTP connection).
const CONCURRENT_SENDS: usize = 4;
/// Each SMTP command's time limit, and so each try's.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits before the second and third tries.
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];

/// What a mail is for; each kind has its own templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    Reset,
    Verify,
    /// The notice to the old address after an email change (no link).
    EmailChanged,
}

impl MailKind {
    const ALL: [MailKind; 3] = [MailKind::Reset, MailKind::Verify, MailKind::EmailChanged];

    /// The templates' file stem, and the name in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Reset => "reset",
            MailKind::Verify => "verify",
            MailKind::EmailChanged => "email_changed",
        }
    }

    fn built_in(self) -> [&'static str; 3] {
        match self {
            MailKind::Reset => [
                include_str!("mail/reset.subject"),
                include_str!("mail/reset.txt"),
                include_str!("mail/reset.html"),
            ],
            MailKind::Verify => [
                include_str!("mail/verify.subject"),
                include_str!("mail/verify.txt"),
                include_str!("mail/verify.html"),
            ],
            MailKind::EmailChanged => [
                include_str!("mail/email_changed.subject"),
                include_str!("mail/email_changed.txt"),
                include_str!("mail/email_changed.html"),
            ],
        }
    }
}

/// One mail to send. `link` carries a token: it is never logged.
pub struct Outgoing {
    pub kind: MailKind,
    /// For log lines (not the address).
    pub user_id: String,
    pub to: String,
    pub name: String,
    /// `{email}` in the templates: the account's address the mail is about
    /// (for `EmailChanged`, the new one).
    pub email: String,
    pub link: Option<String>,
    pub expires_minutes: u64,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// The subject, text and HTML templates of each kind.
pub struct Templates {
    by_kind: [[String; 3]; 3],
}

const PARTS: [&str; 3] = ["subject", "txt", "html"];

impl Templates {
    /// The built-in templates, each replaced by the file of the same name in
    /// `dir` when there is one. An unreadable file, or a reset or verify
    /// body without `{link}`, is an error naming the file.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Templates> {
        let mut by_kind: [[String; 3]; 3] = Default::default();
        for (k, kind) in MailKind::ALL.into_iter().enumerate() {
            for (p, built_in) in kind.built_in().into_iter().enumerate() {
                let file = format!("{}.{}", kind.as_str(), PARTS[p]);
                let text = match dir.map(|d| d.join(&file)) {
                    Some(path) if path.exists() => {
                        std::fs::read_to_string(&path).with_context(|| {
                            format!("mail.templates_dir: cannot read {}", path.display())
                        })?
                    }
                    _ => built_in.to_string(),
                };
                let needs_link = kind != MailKind::EmailChanged && p > 0;
                if needs_link && !text.contains("{link}") {
                    let shown =
                        dir.map_or_else(|| file.clone(), |d| d.join(&file).display().to_string());
                    return Err(anyhow!(
                        "mail.templates_dir: {shown} has no {{link}} placeholder"
                    ));
                }
                by_kind[k][p] = text;
            }
        }
        Ok(Templates { by_kind })
    }

    /// Subject, text body and HTML body of `mail`.
    pub fn render(&self, mail: &Outgoing) -> (String, String, String) {
        let [subject, text, html] = &self.by_kind[mail.kind as usize];
        let minutes = mail.expires_minutes.to_string();
        let link = mail.link.as_deref().unwrap_or("");
        let plain = |template: &str| {
            fill(
                template,
                &[
                    ("{link}", link),
                    ("{name}", &mail.name),
                    ("{email}", &mail.email),
                    ("{expires_minutes}", &minutes),
                ],
            )
        };
        let escaped = [
            escape_html(link),
            escape_html(&mail.name),
            escape_html(&mail.email),
        ];
        let html = fill(
            html,
            &[
                ("{link}", &escaped[0]),
                ("{name}", &escaped[1]),
                ("{email}", &escaped[2]),
                ("{expires_minutes}", &minutes),
            ],
        );
        // A subject is one line whatever a name holds.
        let subject = plain(subject).replace(['\r', '\n'], " ").trim().to_string();
        (subject, plain(text), html)
    }
}

/// Replaces each placeholder in one pass over `template`, so a value that
/// contains a placeholder's text (a name "{link}") is not replaced again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 128);
    let mut rest = template;
    'outer: while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        for (placeholder, value) in values {
            if let Some(after) = tail.strip_prefix(placeholder) {
                out.push_str(value);
                rest = after;
                continue 'outer;
            }
        }
        out.push('{');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The mail side of the server: link building and the queue to the worker.
pub struct Mailer {
    queue: mpsc::Sender<Outgoing>,
    /// Counts the mails dropped here (the worker counts the others).
    metrics: Metrics,
    public_url: OnceLock<String>,
    reset_url: String,
    verify_url: String,
}

impl Mailer {
    /// `None` without `mail.smtp_url`. Starts the worker on the current
    /// tokio runtime. The templates are loaded here: a broken one stops
    /// start-up. Each mail's outcome is counted in `metrics`.
    pub fn start(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Option<Mailer>> {
        let m = &settings.mail;
        let Some(url) = &m.smtp_url else {
            return Ok(None);
        };
        let templates = Templates::load(m.templates_dir.as_deref())?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .map_err(|_| anyhow!("invalid configuration: mail.smtp_url is not a valid SMTP URL"))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from: Mailbox = m
            .from
            .parse()
            .map_err(|_| anyhow!("invalid configuration: mail.from must be an address"))?;
        let (queue, queued) = mpsc::channel(QUEUE);
        let worker = Worker {
            transport,
            templates: Arc::new(templates),
            from,
            metrics: metrics.clone(),
        };
        tokio::spawn(deliver(worker, queued));
        let public_url = OnceLock::new();
        if let Some(url) = &m.public_url {
            let _ = public_url.set(url.trim_end_matches('/').to_string());
        }
        Ok(Some(Mailer {
            queue,
            metrics: metrics.clone(),
            public_url,
            reset_url: m.reset_url.clone(),
            verify_url: m.verify_url.clone(),
        }))
    }

    /// Sets the links' base from the bound address when `mail.public_url`
    /// is unset (an unspecified host becomes 127.0.0.1).
    pub fn bound_to(&self, address: std::net::SocketAddr) {
        let host = match address.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let _ = self
            .public_url
            .set(format!("http://{host}:{}", address.port()));
    }

    /// The link a mail of `kind` carries for `token`.
    pub fn link(&self, kind: MailKind, token: &str) -> String {
        let template = match kind {
            MailKind::Reset => &self.reset_url,
            _ => &self.verify_url,
        };
        let base = self.public_url.get().map_or("", String::as_str);
        fill(template, &[("{public_url}", base), ("{token}", token)])
    }

    /// Queues `mail`; never waits. A full queue drops it, logged.
    pub fn send(&self, mail: Outgoing) {
        if let Err(error) = self.queue.try_send(mail) {
            let (kind, user) = match &error {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => {
                    (m.kind.as_str(), m.user_id.clone())
                }
            };
            self.metrics.mail(kind, MailOutcome::Dropped);
            tracing::warn!(kind, %user, "mail dropped: the mail queue is full");
        }
    }
}

/// What the mail worker needs to send: shared by the sends in flight.
#[derive(Clone)]
struct Worker {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    templates: Arc<Templates>,
    from: Mailbox,
    metrics: Metrics,
}

async fn deliver(worker: Worker, mut queued: mpsc::Receiver<Outgoing>) {
    let sends = Arc::new(Semaphore::new(CONCURRENT_SENDS));
    while let Some(mail) = queued.recv().await {
        let Ok(permit) = Arc::clone(&sends).acquire_owned().await else {
            return;
        };
        let worker = worker.clone();
        tokio::spawn(async move {
            let outcome = send_with_retries(&worker, &mail).await;
            worker.metrics.mail(mail.kind.as_str(), outcome);
            drop(permit);
        });
    }
}

/// Sends `mail`, trying again after a temporary failure; says how it went.
async fn send_with_retries(worker: &Worker, mail: &Outgoing) -> MailOutcome {
    let kind = mail.kind.as_str();
    let user = &mail.user_id;
    let message = match build_message(&worker.templates, worker.from.clone(), mail) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(kind, %user, %error, "mail not sent: it could not be built");
            return MailOutcome::Failed;
        }
    };
    let mut waits = BACKOFF.iter();
    let mut tries = 0;
    loop {
        tries += 1;
        match worker.transport.send(message.clone()).await {
            Ok(_) => {
                tracing::info!(kind, %user, "mail sent");
                return MailOutcome::Sent;
            }
            Err(error) if error.is_permanent() => {
                tracing::warn!(kind, %user, %error, tries, "mail refused by the mail server");
                return MailOutcome::Failed;
            }
            Err(error) => match waits.next() {
                Some(wait) => {
                    tracing::debug!(kind, %user, %error, tries, "mail not sent; trying again");
                    tokio::time::sleep(*wait).await;
                }
                None => {
                    tracing::warn!(kind, %user, %error, tries, "mail not sent");
                    return MailOutcome::Failed;
                }
            },
        }
    }
}

fn build_message(templates: &Templates, from: Mailbox, mail: &Outgoing) -> anyhow::Result<Message> {
    let (subject, text, html) = templates.render(mail);
    let to: Mailbox = mail
        .to
        .parse()
        .context("the recipient is not a valid address")?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .multipart(MultiPart::alternative_plain_html(text, html))
        .context("the message could not be built")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(kind: MailKind, name: &str) -> Outgoing {
        Outgoing {
            kind,
            user_id: "u1".into(),
            to: "zoe@example.com".into(),
            name: name.into(),
            email: "zoe@example.com".into(),
            link: Some("http://h/reset-password#token=abc&x".into()),
            expires_minutes: 30,
        }
    }

    #[test]
    fn placeholders_are_filled_once_and_html_is_escaped() {
        let templates = Templates::load(None).unwrap();
        let (subject, text, html) = templates.render(&mail(MailKind::Reset, "<b>{link}</b>\nZoë"));
        assert!(!subject.contains('\n'), "{subject}");
        assert!(
            text.contains("http://h/reset-password#token=abc&x"),
            "{text}"
        );
        assert!(
            text.contains("<b>{link}</b>"),
            "a name is not a placeholder: {text}"
        );
        assert!(text.contains("30"), "{text}");
        assert!(
            html.contains("http://h/reset-password#token=abc&amp;x"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;{link}&lt;/b&gt;"), "{html}");
        assert!(!html.contains("<b>{link}</b>"), "{html}");
        assert!(!format!("{:?}", mail(MailKind::Reset, "x")).contains("token"));
    }

    #[test]
    fn templates_dir_files_replace_the_built_in_ones_and_must_keep_the_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("verify.txt"), "Click {link}, {name}.").unwrap();
        let templates = Templates::load(Some(dir.path())).unwrap();
        let (_, text, html) = templates.render(&mail(MailKind::Verify, "Zoë"));
        assert_eq!(text, "Click http://h/reset-password#token=abc&x, Zoë.");
        assert!(html.contains("<html"), "the built-in HTML stays: {html}");

        std::fs::write(dir.path().join("reset.html"), "<p>no link here</p>").unwrap();
        let error = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(
            error.contains("reset.html") && error.contains("{link}"),
            "{error}"
        );
        std::fs::remove_file(dir.path().join("reset.html")).unwrap();
        // A notice needs no link.
        std::fs::write(dir.path().join("email_changed.txt"), "Changed to {email}.").unwrap();
        assert!(Templates::load(Some(dir.path())).is_ok());
        // Not UTF-8: unreadable as a template.
        std::fs::write(dir.path().join("reset.subject"), [0xff, 0xfe]).unwrap();
        let error = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(error.contains("reset.subject"), "{error}");
    }

    #[test]
    fn every_kind_has_its_metrics_label() {
        let names: Vec<&str> = MailKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, crate::metrics::MAIL_KINDS);
    }

    #[test]
    fn urls_are_checked() {
        use crate::config::{check_public_url, check_smtp_url};
        assert!(check_smtp_url("smtp://127.0.0.1:1025").is_ok());
        assert!(check_smtp_url("smtp://mail.example.com:587?tls=required").is_ok());
        assert!(check_smtp_url("smtps://user:pass@mail.example.com:465").is_ok());
        assert!(check_smtp_url("http://mail.example.com").is_err());
        assert!(check_smtp_url("smtp://").is_err());
        assert!(check_public_url("https://auth.example.com").is_ok());
        assert!(check_public_url("http://127.0.0.1:3000/auth").is_ok());
        assert!(check_public_url("ftp://x").is_err());
        assert!(check_public_url("https://").is_err());
        assert!(check_public_url("https://a.example/#x").is_err());
    }
}
