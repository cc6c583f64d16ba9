//! Export and import: everything a store holds that outlives a session, as
//! one JSON Lines file ([`format`]), written from a store page by page and
//! read back into an empty store all or nothing; and the tutorial's MongoDB
//! users ([`mongo`]).
//!
//! This module owns the file: its lines, their checks, and the order in
//! which an export is produced. It reads stores only through
//! `Store::export` and writes them only through `Store::import`, after the
//! whole file was read and checked. It must never log a line of the file:
//! they hold password hashes and keys.

pub mod format;
pub mod mongo;

use hyper::body::Bytes;
use tokio::sync::mpsc;

use crate::store::{ExportPage, Store};
use format::{EndLine, KeysLine, Record, SecretLine, UserLine};

/// How an export is asked for.
#[derive(Clone, Default)]
pub struct ExportOptions {
    pub with_audit: bool,
    /// The generated HS256 secret (hex, as its file holds it); `None` when
    /// the key is `auth.secret` (a configured secret is not exported).
    pub secret: Option<String>,
    /// Unix time written as `exported_at`.
    pub now: u64,
}

// Hand-written so that no error or log line can print the secret.
impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("with_audit", &self.with_audit)
            .field("secret", &self.secret.is_some())
            .field("now", &self.now)
            .finish()
    }
}

/// What an export counted, for the command line's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: u64,
    pub events: u64,
    pub records: u64,
}

/// Chunks of an export file, in order, each a page of lines (a few hundred
/// KB at most: at most two are buffered, so memory stays flat whatever the
/// store holds). The last chunk is the trailer; an `Err` instead means the
/// export failed (why) and the file is incomplete (it then has no trailer).
pub type Chunks = mpsc::Receiver<Result<Bytes, String>>;

/// Starts an export of `store` on a task of its own; the file arrives on
/// the returned channel, and stops being produced when the receiver is
/// dropped. The counts arrive once the trailer was handed over.
pub fn spawn_export(
    store: Store,
    options: ExportOptions,
) -> (Chunks, tokio::sync::oneshot::Receiver<Counts>) {
    let (chunks, receiver) = mpsc::channel(1);
    let (counted, counts) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(counts) = export(&store, &options, &chunks).await {
            let _ = counted.send(counts);
        }
    });
    (receiver, counts)
}

/// Gone: the receiver was dropped (the client went away).
struct Gone;

async fn export(
    store: &Store,
    options: &ExportOptions,
    chunks: &mpsc::Sender<Result<Bytes, String>>,
) -> Result<Counts, Gone> {
    let mut counts = Counts::default();
    let mut out = Vec::new();
    format::line(&format::header(options.now), &mut out);
    if let Some(key) = &options.secret {
        let secret = Record::Secret(SecretLine {
            algorithm: crate::domain::signing::SigningAlgorithm::HS256,
            key: key.clone(),
        });
        format::line(&secret, &mut out);
        counts.records += 1;
    }
    let (pages_in, mut pages) = mpsc::channel(1);
    let produce = store.export(options.with_audit, pages_in);
    let write = async {
        while let Some(page) = pages.recv().await {
            match page {
                ExportPage::Keys(keys) => {
                    format::line(&Record::SigningKeys(KeysLine { keys }), &mut out);
                    counts.records += 1;
                }
                ExportPage::Users(users) => {
                    for user in &users {
                        format::line(&Record::User(UserLine::of(user)), &mut out);
                    }
                    counts.users += users.len() as u64;
                    counts.records += users.len() as u64;
                }
                ExportPage::Events(events) => {
                    counts.events += events.len() as u64;
                    counts.records += events.len() as u64;
                    for event in events {
                        format::line(&Record::Audit(event), &mut out);
                    }
                }
            }
            let chunk = Bytes::from(std::mem::take(&mut out));
            if chunks.send(Ok(chunk)).await.is_err() {
                // The producer may be waiting to hand over its next page:
                // closing makes that send fail, so it ends (and on
                // PostgreSQL ends its transaction and returns its
                // connection) instead of waiting for ever.
                pages.close();
                return Err(Gone);
            }
        }
        Ok(())
    };
    let (produced, written) = tokio::join!(produce, write);
    written?;
    if let Err(error) = produced {
        tracing::error!(%error, "the export failed; the file is incomplete");
        let _ = chunks
            .send(Err(format!("cannot read the store: {error}")))
            .await;
        return Err(Gone);
    }
    let end = Record::End(EndLine {
        records: counts.records,
    });
    format::line(&end, &mut out);
    chunks.send(Ok(Bytes::from(out))).await.map_err(|_| Gone)?;
    Ok(counts)
}
