//! The export file, line by line: what each line is, how it is written, and
//! how a file is read back and checked before anything is imported.
//!
//! ```text
//! {"format":"gatehouse-export","version":1,"exported_at":"2026-12-01T07:00:00Z"}
//! {"type":"secret","algorithm":"HS256","key":"<hex>"}        a generated secret only
//! {"type":"signing_keys","keys":{"version":3,"keys":[...]}}  the stored key set, if any
//! {"type":"user","_id":"…","name":"…","email":"…","role":"user",
//!  "email_verified":false,"password_hash":"$2b$12$…","password_version":0,
//!  "created_at":"…","updated_at":"…"}                        one per user
//! {"type":"audit","id":"…","time":"…","action":"login",…}   with --with-audit
//! {"type":"end","records":N}                                 N lines since the header
//! ```
//!
//! The trailer makes a cut file detectable wherever it was cut, a line
//! boundary included. Reading stops at the first line that breaks a rule
//! and names it; nothing is written before the whole file is read.

use std::collections::HashMap;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::domain::audit::Event;
use crate::domain::password::is_bcrypt_hash;
use crate::domain::signing::{KeySet, SigningAlgorithm};
use crate::domain::time::Rfc3339;
use crate::domain::user::{is_user_id, valid_email, valid_name, Role, User};
use crate::store::Import;

pub const FORMAT: &str = "gatehouse-export";
pub const VERSION: u64 = 1;

/// The longest line read (a user is under 1 KB, an RSA key set a few KB):
/// a file of one endless line is refused, not read into memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u64,
    pub exported_at: String,
}

/// Every line after the header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Secret(SecretLine),
    SigningKeys(KeysLine),
    User(UserLine),
    Audit(Event),
    End(EndLine),
}

/// A generated HS256 secret, hex-encoded as in `data_dir`'s key file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretLine {
    pub algorithm: SigningAlgorithm,
    pub key: String,
}

// Hand-written so that no error or log line can print the key.
impl std::fmt::Debug for SecretLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretLine")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysLine {
    pub keys: KeySet,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndLine {
    pub records: u64,
}

/// A user as the file holds it: the API's user object plus the password
/// hash and version (`password_version` keeps tokens' revocation rule
/// meaningful for a store that keeps the same secret).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserLine {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub email_verified: bool,
    pub password_hash: String,
    pub password_version: u64,
    pub created_at: String,
    pub updated_at: String,
}

impl UserLine {
    pub fn of(user: &User) -> UserLine {
        UserLine {
            id: user.id.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            role: user.role.as_str().to_string(),
            email_verified: user.email_verified,
            password_hash: user.password_hash.clone(),
            password_version: user.password_version,
            created_at: Rfc3339::from_unix(user.created_at).to_string(),
            updated_at: Rfc3339::from_unix(user.updated_at).to_string(),
        }
    }

    /// The user this line describes, if every field keeps the rules a
    /// stored user keeps (the email is normalized again, as the API would).
    fn user(self) -> Result<User, String> {
        if !is_user_id(&self.id) {
            return Err("_id: not an id gatehouse issues".into());
        }
        let name = valid_name(&self.name).map_err(|e| e.0)?;
        let email = valid_email(&self.email).map_err(|e| e.0)?;
        let role = Role::parse(&self.role).ok_or("role: must be \"user\" or \"admin\"")?;
        if !is_bcrypt_hash(&self.password_hash) {
            return Err("password_hash: not a bcrypt hash".into());
        }
        let time = |field: &str, text: &str| {
            Rfc3339::parse(text).ok_or(format!("{field}: not a time like 2026-11-28T21:00:00Z"))
        };
        Ok(User {
            id: self.id,
            name,
            email,
            role,
            password_hash: self.password_hash,
            password_version: self.password_version,
            created_at: time("created_at", &self.created_at)?,
            updated_at: time("updated_at", &self.updated_at)?,
            email_verified: self.email_verified,
        })
    }
}

/// A line as written: its JSON and a newline.
pub fn line(value: &impl Serialize, out: &mut Vec<u8>) {
    // Strings, numbers and maps of JSON values: nothing here can fail.
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

pub fn header(exported_at: u64) -> Header {
    Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at: Rfc3339::from_unix(exported_at).to_string(),
    }
}

/// Why a file is refused: the line (1-based) and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("line {line}: {reason}")]
    Line { line: u64, reason: String },
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
}

fn at(line: u64, reason: impl Into<String>) -> ReadError {
    ReadError::Line {
        line,
        reason: reason.into(),
    }
}

/// A whole export file, checked: what to import, and the generated secret
/// it carried (hex), which only a sled store without `auth.secret` uses.
pub struct ExportFile {
    pub import: Import,
    pub secret: Option<String>,
    pub exported_at: String,
}

// Hand-written so that no error or log line can print the secret.
impl std::fmt::Debug for ExportFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportFile")
            .field("users", &self.import.users.len())
            .field("events", &self.import.events.len())
            .field("keys", &self.import.keys.is_some())
            .field("secret", &self.secret.is_some())
            .field("exported_at", &self.exported_at)
            .finish()
    }
}

/// Reads and checks a whole export file. Refused (naming the line): another
/// format or version, a line that is not one of the records or breaks a
/// user's rules, an id or email (after normalization) or audit event id
/// seen before, a second secret or key set, a missing or miscounting
/// trailer, anything after it.
pub fn read(reader: impl BufRead) -> Result<ExportFile, ReadError> {
    let mut lines = Lines::new(reader);
    let Some((number, first)) = lines.next_line()? else {
        return Err(at(1, "the file is empty"));
    };
    let header: Header = serde_json::from_slice(&first).map_err(|_| {
        at(
            number,
            "not a gatehouse export header ({\"format\":\"gatehouse-export\",...}); \
             a MongoDB export is read with --from mongoexport",
        )
    })?;
    if header.format != FORMAT {
        return Err(at(
            number,
            format!("format {:?} is not {FORMAT:?}", header.format),
        ));
    }
    if header.version != VERSION {
        return Err(at(
            number,
            format!(
                "version {} (this gatehouse reads version {VERSION})",
                header.version
            ),
        ));
    }
    let mut file = ExportFile {
        import: Import::default(),
        secret: None,
        exported_at: header.exported_at,
    };
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut emails: HashMap<String, u64> = HashMap::new();
    let mut event_ids: HashMap<uuid::Uuid, u64> = HashMap::new();
    let mut records = 0u64;
    loop {
        let Some((number, bytes)) = lines.next_line()? else {
            return Err(at(
                lines.count + 1,
                "the file ends without its last line ({\"type\":\"end\",...}): it was cut short",
            ));
        };
        let record: Record = serde_json::from_slice(&bytes)
            .map_err(|e| at(number, format!("not a record of this format: {e}")))?;
        match record {
            Record::End(end) => {
                if end.records != records {
                    return Err(at(
                        number,
                        format!("the file says {} records, {records} were read", end.records),
                    ));
                }
                if let Some((extra, _)) = lines.next_line()? {
                    return Err(at(extra, "a line after the last line"));
                }
                return Ok(file);
            }
            Record::Secret(secret) => {
                if file.secret.is_some() {
                    return Err(at(number, "a second secret"));
                }
                if secret.algorithm != SigningAlgorithm::HS256 {
                    return Err(at(number, "secret: only an HS256 secret is exported"));
                }
                let hex = secret.key.bytes().all(|b| b.is_ascii_hexdigit());
                if secret.key.len() < 64 || secret.key.len() % 2 != 0 || !hex {
                    return Err(at(
                        number,
                        "secret: key is not 32 or more hex-encoded bytes",
                    ));
                }
                file.secret = Some(secret.key);
            }
            Record::SigningKeys(keys) => {
                if file.import.keys.is_some() {
                    return Err(at(number, "a second key set"));
                }
                for key in &keys.keys.keys {
                    if key.alg.is_asymmetric() {
                        key.decoding_key()
                            .map_err(|e| at(number, format!("signing key {}: {e}", key.kid)))?;
                    }
                }
                file.import.keys = Some(keys.keys);
            }
            Record::User(line) => {
                let user = line.user().map_err(|reason| at(number, reason))?;
                if let Some(first) = ids.insert(user.id.clone(), number) {
                    return Err(at(
                        number,
                        format!("_id {} is also on line {first}", user.id),
                    ));
                }
                if let Some(first) = emails.insert(user.email.clone(), number) {
                    return Err(at(
                        number,
                        format!("email {} is also on line {first}", user.email),
                    ));
                }
                file.import.users.push(user);
            }
            Record::Audit(event) => {
                check_event(&event).map_err(|reason| at(number, reason))?;
                if let Some(first) = event_ids.insert(event.id, number) {
                    return Err(at(
                        number,
                        format!("event {} is also on line {first}", event.id),
                    ));
                }
                file.import.events.push(event);
            }
        }
        records += 1;
    }
}

/// The longest text field of an imported audit event (a user agent is cut
/// to 256 characters when recorded).
const MAX_EVENT_TEXT: usize = 1024;

/// What a stored event keeps, checked for an imported one: a UUIDv7 id (the
/// retention purge reads its time from it), a real time, user ids of a
/// stored spelling, and no NUL anywhere (PostgreSQL text cannot hold one,
/// and both stores must take the same files).
fn check_event(event: &Event) -> Result<(), String> {
    if event.id.get_version_num() != 7 {
        return Err(format!("event {}: id is not a UUIDv7", event.id));
    }
    if Rfc3339::parse(&event.time).is_none() {
        return Err(format!(
            "event {}: time is not like 2026-11-28T21:00:00Z",
            event.id
        ));
    }
    for (field, id) in [("user_id", &event.user_id), ("actor_id", &event.actor_id)] {
        if id.as_deref().is_some_and(|id| !is_user_id(id)) {
            return Err(format!("event {}: {field} is not a user id", event.id));
        }
    }
    let texts = [&event.ip, &event.user_agent];
    let bad_text = |text: &str| text.contains('\0') || text.chars().count() > MAX_EVENT_TEXT;
    if texts.iter().any(|t| t.as_deref().is_some_and(bad_text))
        || !json_is_clean(&serde_json::Value::Object(event.detail.clone()), &bad_text)
    {
        return Err(format!(
            "event {}: a text holds NUL or is longer than {MAX_EVENT_TEXT} characters",
            event.id
        ));
    }
    Ok(())
}

/// No key or string in `value` is `bad`.
fn json_is_clean(value: &serde_json::Value, bad: &impl Fn(&str) -> bool) -> bool {
    match value {
        serde_json::Value::String(text) => !bad(text),
        serde_json::Value::Array(items) => items.iter().all(|item| json_is_clean(item, bad)),
        serde_json::Value::Object(map) => map
            .iter()
            .all(|(key, item)| !bad(key) && json_is_clean(item, bad)),
        _ => true,
    }
}

/// The lines of a file, numbered from 1, each at most [`MAX_LINE_BYTES`];
/// blank lines are skipped (but counted).
pub struct Lines<R> {
    reader: R,
    pub count: u64,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R) -> Lines<R> {
        Lines { reader, count: 0 }
    }

    pub fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        loop {
            let mut bytes = Vec::new();
            let read = std::io::Read::take(&mut self.reader, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut bytes)?;
            if read == 0 {
                return Ok(None);
            }
            self.count += 1;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            } else if bytes.len() > MAX_LINE_BYTES {
                return Err(at(
                    self.count,
                    format!("longer than {MAX_LINE_BYTES} bytes"),
                ));
            }
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some((self.count, bytes)));
        }
    }
}
