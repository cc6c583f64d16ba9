//! How the sled store writes a [`User`] as bytes, and reads it back.
//!
//! Format 1 (what is written now): one version byte `0x01`, the role (`0`
//! user, `1` admin), then `password_version`, `created_at` and `updated_at`
//! as little-endian `u64`s, then the name, the email and the password hash,
//! each as a little-endian `u32` length and UTF-8 bytes. The id is not
//! repeated: it is the record's key. That is about half the size of the JSON
//! records written before, which sled keeps in memory page by page: RSS after
//! reading 100,000 users fell by ~10 MiB (BENCHMARKS.md).
//!
//! Records written before (JSON objects, always starting with `{`) are still
//! read; they are rewritten in format 1 when the user next changes.

use crate::domain::user::{Role, User};

const FORMAT_1: u8 = 0x01;

/// Why a record could not be read (the store adds the key).
#[derive(Debug, PartialEq, Eq)]
pub struct BadRecord(pub String);

pub fn encode(user: &User) -> Vec<u8> {
    let strings = [&user.name, &user.email, &user.password_hash];
    let mut out = Vec::with_capacity(26 + strings.iter().map(|s| 4 + s.len()).sum::<usize>());
    out.push(FORMAT_1);
    out.push(match user.role {
        Role::User => 0,
        Role::Admin => 1,
    });
    for number in [user.password_version, user.created_at, user.updated_at] {
        out.extend_from_slice(&number.to_le_bytes());
    }
    for string in strings {
        // Names, emails and hashes are bounded far below 4 GiB by the input
        // rules; saturating keeps a broken record detectable, not wrapped.
        let len = u32::try_from(string.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(string.as_bytes());
    }
    out
}

/// The user stored under `id` as `bytes`, in either format.
pub fn decode(id: &str, bytes: &[u8]) -> Result<User, BadRecord> {
    match bytes.first() {
        Some(&FORMAT_1) => decode_format_1(id, &bytes[1..]),
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| BadRecord(e.to_string())),
        Some(other) => Err(BadRecord(format!("unknown record format {other:#04x}"))),
        None => Err(BadRecord("empty record".into())),
    }
}

fn decode_format_1(id: &str, bytes: &[u8]) -> Result<User, BadRecord> {
    let mut reader = Reader(bytes);
    let role = match reader.take(1)?[0] {
        0 => Role::User,
        1 => Role::Admin,
        other => return Err(BadRecord(format!("unknown role {other}"))),
    };
    let password_version = reader.u64()?;
    let created_at = reader.u64()?;
    let updated_at = reader.u64()?;
    let name = reader.string()?;
    let email = reader.string()?;
    let password_hash = reader.string()?;
    if !reader.0.is_empty() {
        return Err(BadRecord(format!(
            "{} bytes after the record",
            reader.0.len()
        )));
    }
    Ok(User {
        id: id.to_string(),
        name,
        email,
        role,
        password_hash,
        password_version,
        created_at,
        updated_at,
    })
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
            let user = user(name, role);
            let bytes = encode(&user);
            assert_eq!(bytes[0], FORMAT_1);
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
        let user = user("Old", Role::Admin);
        let json = serde_json::to_vec(&user).unwrap();
        assert_eq!(decode(&user.id, &json), Ok(user));
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
