//! How the sled store writes a [`User`] and a [`Session`] as bytes, and
//! reads them back.
//!
//! Format 2 (what is written now): one version byte `0x02`, the role (`0`
//! user, `1` admin), a flags byte (bit 0: `email_verified`; the other bits
//! are zero), then `password_version`, `created_at` and `updated_at` as
//! little-endian `u64`s, then the name, the email and the password hash,
//! each as a little-endian `u32` length and UTF-8 bytes. Format 1, written
//! before `email_verified` existed, is format 2 without the flags byte (read
//! as not verified). The id is not
//! repeated: it is the record's key. That is about half the size of the JSON
//! records written before, which sled keeps in memory page by page: RSS after
//! reading 100,000 users fell by ~10 MiB (BENCHMARKS.md).
//!
//! Records written before (JSON objects, always starting with `{`, and
//! format 1) are still read; they are rewritten in format 2 when the user
//! next changes.
//!
//! Sessions, format 1: `0x01`, then `created_at`, `last_used_at`,
//! `expires_at`, `password_version` and `generation` as little-endian
//! `u64`s, the count of `spent_at` entries (`u32`) and the entries (`u64`
//! each), the 32 bytes of `refresh_hash`, then `user_id`, `user_agent` and
//! `ip` as length-prefixed strings; the id is the key. About 40 % of the
//! JSON (a 357-byte session in the benchmark takes 159), and every session
//! is written at each refresh; JSON sessions (`{`) are still read.

use crate::domain::session::Session;
use crate::domain::user::{Role, User};

const FORMAT_1: u8 = 0x01;
const FORMAT_2: u8 = 0x02;
const EMAIL_VERIFIED: u8 = 0x01;

/// Why a record could not be read (the store adds the key).
#[derive(Debug, PartialEq, Eq)]
pub struct BadRecord(pub String);

pub fn encode(user: &User) -> Vec<u8> {
    let strings = [&user.name, &user.email, &user.password_hash];
    let mut out = Vec::with_capacity(27 + strings.iter().map(|s| 4 + s.len()).sum::<usize>());
    out.push(FORMAT_2);
    out.push(match user.role {
        Role::User => 0,
        Role::Admin => 1,
    });
    out.push(if user.email_verified {
        EMAIL_VERIFIED
    } else {
        0
    });
    for number in [user.password_version, user.created_at, user.updated_at] {
        out.extend_from_slice(&number.to_le_bytes());
    }
    for string in strings {
        push_string(&mut out, string);
    }
    out
}

/// The user stored under `id` as `bytes`, in either format.
pub fn decode(id: &str, bytes: &[u8]) -> Result<User, BadRecord> {
    match bytes.first() {
        Some(&FORMAT_1) => decode_binary(id, &bytes[1..], false),
        Some(&FORMAT_2) => decode_binary(id, &bytes[1..], true),
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| BadRecord(e.to_string())),
        Some(other) => Err(BadRecord(format!("unknown record format {other:#04x}"))),
        None => Err(BadRecord("empty record".into())),
    }
}

/// Formats 1 and 2 (`with_flags`) after the version byte.
fn decode_binary(id: &str, bytes: &[u8], with_flags: bool) -> Result<User, BadRecord> {
    let mut reader = Reader(bytes);
    let role = match reader.take(1)?[0] {
        0 => Role::User,
        1 => Role::Admin,
        other => return Err(BadRecord(format!("unknown role {other}"))),
    };
    let email_verified = if with_flags {
        match reader.take(1)?[0] {
            0 => false,
            EMAIL_VERIFIED => true,
            other => return Err(BadRecord(format!("unknown user flags {other:#04x}"))),
        }
    } else {
        false
    };
    let password_version = reader.u64()?;
    let created_at = reader.u64()?;
    let updated_at = reader.u64()?;
    let name = reader.string()?;
    let email = reader.string()?;
    let password_hash = reader.string()?;
    reader.finish()?;
    Ok(User {
        id: id.to_string(),
        name,
        email,
        role,
        password_hash,
        password_version,
        created_at,
        updated_at,
        email_verified,
    })
}

pub fn encode_session(session: &Session) -> Vec<u8> {
    let strings = [&session.user_id, &session.user_agent, &session.ip];
    let mut out = Vec::with_capacity(
        1 + 5 * 8
            + 4
            + 8 * session.spent_at.len()
            + 32
            + strings.iter().map(|s| 4 + s.len()).sum::<usize>(),
    );
    out.push(FORMAT_1);
    for number in [
        session.created_at,
        session.last_used_at,
        session.expires_at,
        session.password_version,
        session.generation,
    ] {
        out.extend_from_slice(&number.to_le_bytes());
    }
    // At most `REMEMBERED_SPENDS` entries.
    let count = u32::try_from(session.spent_at.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for at in &session.spent_at {
        out.extend_from_slice(&at.to_le_bytes());
    }
    out.extend_from_slice(&session.refresh_hash);
    for string in strings {
        push_string(&mut out, string);
    }
    out
}

/// The session stored under `id` as `bytes`, in either format.
pub fn decode_session(id: &str, bytes: &[u8]) -> Result<Session, BadRecord> {
    match bytes.first() {
        Some(&FORMAT_1) => {}
        Some(b'{') => return serde_json::from_slice(bytes).map_err(|e| BadRecord(e.to_string())),
        Some(other) => return Err(BadRecord(format!("unknown record format {other:#04x}"))),
        None => return Err(BadRecord("empty record".into())),
    }
    let mut reader = Reader(&bytes[1..]);
    let created_at = reader.u64()?;
    let last_used_at = reader.u64()?;
    let expires_at = reader.u64()?;
    let password_version = reader.u64()?;
    let generation = reader.u64()?;
    let count = reader.take(4)?;
    let count = u32::from_le_bytes(count.try_into().unwrap_or_default()) as usize;
    if count > reader.0.len() / 8 {
        return Err(BadRecord("record cut short".into()));
    }
    let spent_at = (0..count).map(|_| reader.u64()).collect::<Result<_, _>>()?;
    let refresh_hash = reader.take(32)?.try_into().unwrap_or_default();
    let session = Session {
        id: id.to_string(),
        user_id: reader.string()?,
        created_at,
        last_used_at,
        expires_at,
        user_agent: reader.string()?,
        ip: reader.string()?,
        password_version,
        generation,
        spent_at,
        refresh_hash,
    };
    reader.finish()?;
    Ok(session)
}

fn push_string(out: &mut Vec<u8>, string: &str) {
    // Every string we store is bounded far below 4 GiB by the input rules;
    // saturating keeps a broken record detectable, not wrapped.
    let len = u32::try_from(string.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(string.as_bytes());
}

/// The unread rest of a record.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, len: usize) -> Result<&'b [u8], BadRecord> {
        if self.0.len() < len {
            return Err(BadRecord("record cut short".into()));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u64(&mut self) -> Result<u64, BadRecord> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }

    /// Nothing may follow the last field.
    fn finish(&self) -> Result<(), BadRecord> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BadRecord(format!(
                "{} bytes after the record",
                self.0.len()
            )))
        }
    }

    fn string(&mut self) -> Result<String, BadRecord> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default());
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BadRecord("a string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, role: Role) -> User {
        let mut user = User::new(
            name.into(),
            "zoë+tag@example.com".into(),
            role,
            "$2b$10$abcdefghijklmnopqrstuuJ8tq3Ue0vJ0vIgAjoJvB2JXBJT1XbeG".into(),
            1_700_000_000,
        );
        user.password_version = 3;
        user.updated_at = u64::MAX;
        user
    }

    #[test]
    fn users_come_back_as_they_went_in() {
        for (name, role) in [
            ("Mike", Role::User),
            ("", Role::Admin),
            ("Zoë \"🚀\"", Role::User),
        ] {
            let mut user = user(name, role);
            user.email_verified = role == Role::User;
            let bytes = encode(&user);
            assert_eq!(bytes[0], FORMAT_2);
            assert!(
                !bytes
                    .windows(user.id.len())
                    .any(|w| w == user.id.as_bytes()),
                "the id is the key, not in the value"
            );
            assert_eq!(decode(&user.id, &bytes), Ok(user.clone()));
            assert!(bytes.len() < serde_json::to_vec(&user).unwrap().len() / 2 + 20);
        }
    }

    #[test]
    fn json_records_written_before_are_still_read() {
        let mut user = user("Old", Role::Admin);
        let json = serde_json::to_vec(&user).unwrap();
        assert_eq!(decode(&user.id, &json), Ok(user.clone()));
        // From before `email_verified`: not verified.
        user.email_verified = true;
        let mut old: serde_json::Value = serde_json::to_value(&user).unwrap();
        old.as_object_mut().unwrap().remove("email_verified");
        let read = decode(&user.id, &serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(!read.email_verified);
        assert_eq!(read.email, user.email);
    }

    #[test]
    fn format_1_records_read_as_unverified_and_unknown_flags_are_refused() {
        let mut user = user("Format one", Role::Admin);
        user.email_verified = true;
        let format_2 = encode(&user);
        // Format 1 is format 2 without the flags byte.
        let mut format_1 = vec![FORMAT_1, format_2[1]];
        format_1.extend_from_slice(&format_2[3..]);
        let read = decode(&user.id, &format_1).unwrap();
        assert_eq!(
            read,
            User {
                email_verified: false,
                ..user.clone()
            }
        );
        let mut flags = format_2.clone();
        flags[2] = 0x02;
        assert!(decode(&user.id, &flags).is_err());
        for len in 0..format_2.len() {
            assert!(decode("id", &format_2[..len]).is_err(), "cut at {len}");
        }
    }

    fn session() -> Session {
        Session {
            id: "01a22e08-88b9-7074-bb2c-f8582353d60e".into(),
            user_id: "01a22e08-88b8-7631-87de-f74347ac61f2".into(),
            created_at: 1_700_000_000,
            last_used_at: 1_700_000_100,
            expires_at: u64::MAX,
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) Zoë".into(),
            ip: "2001:db8::1".into(),
            password_version: 4,
            generation: 7,
            spent_at: vec![1_700_000_050, 1_700_000_100],
            refresh_hash: [0xab; 32],
        }
    }

    #[test]
    fn sessions_come_back_as_they_went_in_and_broken_ones_are_errors() {
        let session = session();
        let bytes = encode_session(&session);
        assert_eq!(decode_session(&session.id, &bytes), Ok(session.clone()));
        assert!(bytes.len() * 2 < serde_json::to_vec(&session).unwrap().len());
        let json = serde_json::to_vec(&session).unwrap();
        assert_eq!(decode_session(&session.id, &json), Ok(session.clone()));
        let empty = Session {
            spent_at: Vec::new(),
            user_agent: String::new(),
            ..session
        };
        let bytes = encode_session(&empty);
        assert_eq!(decode_session(&empty.id, &bytes), Ok(empty.clone()));
        for len in 0..bytes.len() {
            assert!(decode_session("id", &bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_session("id", &longer).is_err());
        let mut huge_count = bytes.clone();
        huge_count[41..45].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_session("id", &huge_count).is_err());
        assert!(decode_session("id", b"\x02rest").is_err());
    }

    #[test]
    fn broken_records_are_errors_not_panics() {
        let bytes = encode(&user("Mike", Role::User));
        for len in 0..bytes.len() {
            assert!(decode("id", &bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode("id", &longer).is_err());
        let mut bad_role = bytes.clone();
        bad_role[1] = 7;
        assert!(decode("id", &bad_role).is_err());
        let mut huge_len = bytes.clone();
        huge_len[26..30].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode("id", &huge_len).is_err());
        assert!(decode("id", b"\x02rest").is_err());
        assert!(decode("id", b"{not json").is_err());
    }
}
