//! Reading the tutorial's MongoDB users, as `mongoexport --collection users`
//! writes them: one JSON document per line, or (`--jsonArray`) one array of
//! them, told apart by the first character that is not blank.
//!
//! ```text
//! {"_id":{"$oid":"5f1d7c2e9b1e8a3d4c2b1a09"},"name":"Mike","email":"Mike@Example.com",
//!  "password":"$2a$08$…","__v":0}
//! ```
//!
//! A document becomes a user with the ObjectId's 24 hex digits as `_id`,
//! the email normalized as the API normalizes it, role `user`, not verified,
//! created (and updated) at the ObjectId's time, and the bcrypt hash as it
//! is (bcryptjs writes `$2a$` or `$2b$`, PHP `$2y$`: all verify). Other
//! fields (mongoose's `__v`, anything a fork added) are ignored. Every row
//! that breaks a rule, and every row of a collision (one `_id` twice, or
//! two emails that normalize alike: which account is the real one is not
//! ours to guess), is reported; the caller decides whether that stops the
//! import.

use std::collections::HashMap;
use std::io::BufRead;

use serde_json::{Map, Value};

use super::format::{Lines, ReadError};
use crate::domain::user::{valid_email, valid_name, Role, User};

/// One row that is not imported: where it is ("line 7", "element 7") and
/// why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub place: String,
    pub reason: String,
}

/// A row's place and its position in the file, for listing in file order.
type Row = (usize, String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.reason)
    }
}

/// The users a file holds, and the rows refused, in file order.
#[derive(Debug, Default)]
pub struct MongoUsers {
    pub users: Vec<User>,
    pub rejected: Vec<Rejected>,
}

/// A row as read: its user, or why it cannot be one.
type Parsed = Result<User, String>;

/// Reads a mongoexport file. An error only for a file that cannot be read
/// as either shape at all (not JSON, or an I/O error); row problems are in
/// [`MongoUsers::rejected`]. Rows are checked as they are read (an array an
/// element at a time), so memory holds the users, not the file's JSON.
pub fn read(mut reader: impl BufRead) -> Result<MongoUsers, ReadError> {
    let mut at_start = true;
    let first = loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            break None;
        }
        // A byte-order mark some editors write; never JSON.
        if at_start && buffer.starts_with(b"\xEF\xBB\xBF") {
            reader.consume(3);
            at_start = false;
            continue;
        }
        at_start = false;
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(at) => break Some(buffer[at]),
            None => {
                let len = buffer.len();
                reader.consume(len);
            }
        }
    };
    let mut rows: Vec<(String, Parsed)> = Vec::new();
    match first {
        None => {}
        Some(b'[') => {
            let mut deserializer = serde_json::Deserializer::from_reader(reader);
            serde::Deserializer::deserialize_seq(&mut deserializer, Elements(&mut rows))
                .and_then(|()| deserializer.end())
                .map_err(|e| ReadError::Line {
                    line: e.line() as u64,
                    reason: format!("not a JSON array of documents: {e}"),
                })?;
        }
        Some(_) => {
            let mut lines = Lines::new(reader);
            while let Some((number, bytes)) = lines.next_line()? {
                let place = format!("line {number}");
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(value) => rows.push((place, user_of(&value))),
                    // One broken line is one rejected row, not the end.
                    Err(e) => rows.push((place, Err(format!("not JSON: {e}")))),
                }
            }
        }
    }
    Ok(check(rows))
}

/// Collects the elements of a JSON array as rows ("element 1", ...).
struct Elements<'r>(&'r mut Vec<(String, Parsed)>);

impl<'de> serde::de::Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of documents")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element::<Value>()? {
            let place = format!("element {}", self.0.len() + 1);
            self.0.push((place, user_of(&value)));
        }
        Ok(())
    }
}

/// Turns documents into users, then drops (and reports) every collision.
fn check(rows: Vec<(String, Parsed)>) -> MongoUsers {
    let mut rejected: Vec<(usize, Rejected)> = Vec::new();
    let mut candidates: Vec<(Row, User)> = Vec::new();
    for (position, (place, parsed)) in rows.into_iter().enumerate() {
        match parsed {
            Ok(user) => candidates.push(((position, place), user)),
            Err(reason) => rejected.push((position, Rejected { place, reason })),
        }
    }
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_email: HashMap<&str, Vec<&str>> = HashMap::new();
    for ((_, place), user) in &candidates {
        by_id.entry(&user.id).or_default().push(place);
        by_email.entry(&user.email).or_default().push(place);
    }
    let others = |places: &[&str], me: &str| -> String {
        let others: Vec<&str> = places.iter().copied().filter(|p| *p != me).collect();
        others.join(", ")
    };
    let mut kept = Vec::new();
    for ((position, place), user) in &candidates {
        let same_id = &by_id[user.id.as_str()];
        let same_email = &by_email[user.email.as_str()];
        if same_id.len() > 1 {
            rejected.push((
                *position,
                Rejected {
                    place: place.clone(),
                    reason: format!("_id {} is also on {}", user.id, others(same_id, place)),
                },
            ));
        } else if same_email.len() > 1 {
            rejected.push((
                *position,
                Rejected {
                    place: place.clone(),
                    reason: format!(
                        "email {} (after normalization) is also on {}",
                        user.email,
                        others(same_email, place)
                    ),
                },
            ));
        } else {
            kept.push(user.clone());
        }
    }
    rejected.sort_by_key(|(position, _)| *position);
    MongoUsers {
        users: kept,
        rejected: rejected.into_iter().map(|(_, row)| row).collect(),
    }
}

/// The user a document describes, or why it cannot be one.
fn user_of(value: &Value) -> Result<User, String> {
    let Value::Object(document) = value else {
        return Err("not a JSON object".into());
    };
    let id = object_id(document)?;
    let text = |field: &str| -> Result<&str, String> {
        match document.get(field) {
            Some(Value::String(text)) => Ok(text),
            Some(_) => Err(format!("{field} is not a string")),
            None => Err(format!("no {field}")),
        }
    };
    let name = valid_name(text("name")?).map_err(|e| e.0)?;
    let email = valid_email(text("email")?).map_err(|e| e.0)?;
    let hash = text("password")?;
    let variant_ok = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    if !variant_ok || !crate::domain::password::is_bcrypt_hash(hash) {
        return Err("password is not a bcrypt hash ($2a$, $2b$ or $2y$)".into());
    }
    // The ObjectId's first 4 bytes: seconds since the epoch, big-endian.
    let created_at = u64::from_str_radix(&id[..8], 16).unwrap_or(0);
    let mut user = User::new(name, email, Role::User, hash.to_string(), created_at);
    user.id = id;
    Ok(user)
}

/// `"_id": {"$oid": "<24 hex digits>"}` (also a bare 24-hex string, as
/// some tools write it), as the lowercase digits.
fn object_id(document: &Map<String, Value>) -> Result<String, String> {
    let hex = match document.get("_id") {
        Some(Value::Object(id)) => match id.get("$oid") {
            Some(Value::String(hex)) if id.len() == 1 => hex,
            _ => return Err("_id is not {\"$oid\": \"<24 hex digits>\"}".into()),
        },
        Some(Value::String(hex)) => hex,
        Some(_) => return Err("_id is not {\"$oid\": \"<24 hex digits>\"}".into()),
        None => return Err("no _id".into()),
    };
    if hex.len() != 24 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("_id {hex:?} is not 24 hex digits"));
    }
    Ok(hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2a$04$DCq7YPn5Rq63x1Lad4cll.TV4S6ytwfsfvkgY8jIucDrjc8deX1s.";

    fn document(id: &str, email: &str) -> String {
        format!(
            r#"{{"_id":{{"$oid":"{id}"}},"name":"Mike","email":"{email}","password":"{HASH}","__v":0}}"#
        )
    }

    #[test]
    fn lines_and_arrays_give_the_same_users() {
        let a = document("5f1d7c2e9b1e8a3d4c2b1a09", " Mike@Example.COM ");
        let b = document("5F1D7C2E9B1E8A3D4C2B1A0A", "zoe@example.com");
        let lines = read(format!("{a}\n\n{b}\n").as_bytes()).unwrap();
        let array = read(format!("  [\n{a},\n{b}\n]").as_bytes()).unwrap();
        for found in [&lines, &array] {
            assert!(found.rejected.is_empty(), "{:?}", found.rejected);
            let users = &found.users;
            assert_eq!(users.len(), 2);
            assert_eq!(users[0].id, "5f1d7c2e9b1e8a3d4c2b1a09");
            assert_eq!(users[0].email, "mike@example.com");
            assert_eq!(users[1].id, "5f1d7c2e9b1e8a3d4c2b1a0a");
            assert_eq!(users[0].created_at, 0x5f1d7c2e);
            assert_eq!(users[0].updated_at, 0x5f1d7c2e);
            assert_eq!(users[0].role, Role::User);
            assert!(!users[0].email_verified);
            assert_eq!(users[0].password_hash, HASH);
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_no_row_text_is_echoed() {
        let a = document("5f1d7c2e9b1e8a3d4c2b1a09", "mike@example.com");
        for file in [format!("\u{feff}{a}\n"), format!("\u{feff} [{a}]")] {
            let found = read(file.as_bytes()).unwrap();
            assert_eq!(found.users.len(), 1, "{file}");
        }
        // A hash (or a password) as a bare element is refused without
        // repeating it.
        let found = read(format!(r#"[{a}, "{HASH}"]"#).as_bytes()).unwrap();
        assert_eq!(found.users.len(), 1);
        assert_eq!(
            found.rejected[0].to_string(),
            "element 2: not a JSON object"
        );
        // Not an array after all: the file is refused, by line.
        assert!(matches!(
            read(format!("[{a}] trailing").as_bytes()),
            Err(ReadError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn broken_rows_and_every_row_of_a_collision_are_rejected_by_place() {
        let good = document("5f1d7c2e9b1e8a3d4c2b1a01", "good@example.com");
        let rows = [
            good.as_str(),
            &document("5f1d7c2e9b1e8a3d4c2b1a02", "Same@example.com"),
            &document("5f1d7c2e9b1e8a3d4c2b1a03", "same@EXAMPLE.com"),
            &document("5f1d7c2e9b1e8a3d4c2b1a04", "twice@example.com"),
            &document("5f1d7c2e9b1e8a3d4c2b1a04", "other@example.com"),
            &document("nothex", "bad-id@example.com"),
            &document("5f1d7c2e9b1e8a3d4c2b1a07", "not an email"),
            r#"{"_id":{"$oid":"5f1d7c2e9b1e8a3d4c2b1a08"},"email":"x@example.com","password":"secret123"}"#,
            r#"{"_id":{"$oid":"5f1d7c2e9b1e8a3d4c2b1a09"},"name":"X","email":"y@example.com","password":"secret123"}"#,
            "{not json",
            "[1]",
        ];
        let found = read(rows.join("\n").as_bytes()).unwrap();
        assert_eq!(found.users.len(), 1);
        assert_eq!(found.users[0].email, "good@example.com");
        let places: Vec<&str> = found.rejected.iter().map(|r| r.place.as_str()).collect();
        for line in 2..=11 {
            assert!(
                places.contains(&format!("line {line}").as_str()),
                "{places:?}"
            );
        }
        let text: Vec<String> = found.rejected.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        assert!(
            text.contains("line 2: email same@example.com (after normalization) is also on line 3"),
            "{text}"
        );
        assert!(
            text.contains("line 5: _id 5f1d7c2e9b1e8a3d4c2b1a04 is also on line 4"),
            "{text}"
        );
        assert!(
            text.contains("line 9: password is not a bcrypt hash"),
            "{text}"
        );
        // No password text reaches a message.
        assert!(!text.contains("secret123"), "{text}");
    }
}
