//! Users: the stored record, its public view, roles, and the input rules for
//! names, emails and passwords.
//!
//! The stored record holds the password hash; only [`UserView`] ever leaves the
//! process, and it has no field that could carry a password or a hash.

use std::fmt;

use serde::{Deserialize, Serialize};

use unicode_normalization::UnicodeNormalization;

use super::time::Rfc3339;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// Parses the wire form (`"user"` or `"admin"`).
    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The wire form, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// A user as the store keeps it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// A UUIDv7 string: unique, never reused, and sorting by it sorts by
    /// creation time (the order of `GET /api/users`). A user imported from
    /// the tutorial's MongoDB keeps its ObjectId's 24 hex digits instead
    /// ([`is_user_id`] says which spellings exist).
    pub id: String,
    pub name: String,
    /// Trimmed and lower-cased; the key of the email index.
    pub email: String,
    pub role: Role,
    pub password_hash: String,
    /// Bumped on every password change. Tokens carry the value they were
    /// issued under, so a change revokes every earlier token at once.
    pub password_version: u64,
    pub created_at: u64,
    pub updated_at: u64,
    /// Confirmed through a mail link or a password reset (or set by an
    /// admin); false for a new account and after any email change.
    /// (`default`: JSON records from before it existed read as false.)
    #[serde(default)]
    pub email_verified: bool,
}

// Hand-written so a logged user can never print its password hash.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("password_version", &self.password_version)
            .field("email_verified", &self.email_verified)
            .finish_non_exhaustive()
    }
}

/// Whether `id` is spelled as a stored user's id can be: a UUID in the
/// lowercase hyphenated form gatehouse issues, or 24 lowercase hex digits
/// (a MongoDB ObjectId, kept by `gatehouse import --from mongoexport`).
/// Any other spelling names no user on either store (API.md: only the exact
/// spelling the server issued names the user).
pub fn is_user_id(id: &str) -> bool {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    match id.len() {
        24 => id.bytes().all(lower_hex),
        36 => id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => lower_hex(b),
        }),
        _ => false,
    }
}

impl User {
    pub fn new(name: String, email: String, role: Role, password_hash: String, now: u64) -> User {
        User {
            id: uuid::Uuid::now_v7().to_string(),
            name,
            email,
            role,
            password_hash,
            password_version: 0,
            created_at: now,
            updated_at: now,
            email_verified: false,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn view(&self) -> UserView<'_> {
        UserView {
            id: &self.id,
            name: &self.name,
            email: &self.email,
            role: self.role,
            email_verified: self.email_verified,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        }
    }
}

/// The user object of the contract. It has no password field by construction.
/// It borrows from its [`User`]: serializing it copies each string once, into
/// the response body.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct UserView<'u> {
    #[serde(rename = "_id")]
    pub id: &'u str,
    pub name: &'u str,
    pub email: &'u str,
    pub role: Role,
    pub email_verified: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl UserView<'_> {
    /// Exactly the JSON serde_json writes for this view, written directly:
    /// `GET /api/auth/me` sends one on every token-checked read, and of its
    /// twelve strings only the name and the email may need escaping.
    pub fn to_json(&self) -> Vec<u8> {
        // The fixed text is at most 141 bytes with the two timestamps; one
        // allocation (a realloc here cost a /me 500 instructions).
        let mut out = Vec::with_capacity(160 + self.id.len() + self.name.len() + self.email.len());
        out.extend_from_slice(b"{\"_id\":");
        push_json_string(&mut out, self.id);
        out.extend_from_slice(b",\"name\":");
        push_json_string(&mut out, self.name);
        out.extend_from_slice(b",\"email\":");
        push_json_string(&mut out, self.email);
        out.extend_from_slice(b",\"role\":\"");
        out.extend_from_slice(self.role.as_str().as_bytes());
        out.extend_from_slice(if self.email_verified {
            b"\",\"email_verified\":true,\"created_at\":\""
        } else {
            b"\",\"email_verified\":false,\"created_at\":\""
        });
        out.extend_from_slice(Rfc3339::from_unix(self.created_at.0).as_bytes());
        out.extend_from_slice(b"\",\"updated_at\":\"");
        out.extend_from_slice(Rfc3339::from_unix(self.updated_at.0).as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping (JSON
/// escapes only `"`, `\` and control characters below U+0020), else written
/// by serde_json.
fn push_json_string(out: &mut Vec<u8>, value: &str) {
    // Checked 16 bytes at a time without an early exit inside a chunk, so
    // the compiler can do each chunk in a few vector instructions (a byte at
    // a time, this check was a third of the JSON's cost).
    let plain = value.as_bytes().chunks(16).all(|chunk| {
        !chunk.iter().fold(false, |escape, &b| {
            escape | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, value).is_err() {
        // Writing a string into a Vec cannot fail; keep the JSON valid anyway.
        out.extend_from_slice(b"\"\"");
    }
}

/// Unix seconds, serialized as RFC 3339 UTC (`2023-11-14T22:13:20Z`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timestamp(pub u64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Rfc3339::from_unix(self.0).as_str())
    }
}

/// A broken input rule; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(pub String);

/// bcrypt reads at most this many bytes of a password.
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_EMAIL_CHARS: usize = 254;

/// The canonical form of an email, used for storage, uniqueness and lookups
/// alike, so that addresses a person cannot tell apart are one account:
/// trimmed, Unicode NFKC (fullwidth letters, compatibility forms and
/// decomposed accents fold together), lower-cased, and the domain mapped by
/// UTS #46 and kept in its Unicode form (`BÜCHER.de`, `bücher.de` and
/// `xn--bcher-kva.de` are one domain). A domain UTS #46 refuses is left as
/// it is: [`valid_email`] refuses it, and a login with it finds no account.
pub fn normalize_email(email: &str) -> String {
    let folded: String = email.trim().nfkc().collect::<String>().to_lowercase();
    // Lower-casing can leave a string that is no longer NFKC (e.g. U+0130).
    let folded: String = folded.nfkc().collect();
    match folded.rsplit_once('@') {
        Some((local, domain)) => match unicode_domain(domain) {
            Some(domain) => format!("{local}@{domain}"),
            None => folded,
        },
        None => folded,
    }
}

/// An email as versions before [`normalize_email`] stored it: trimmed and
/// lower-cased only. Login falls back to it, so accounts stored then under a
/// non-ASCII or punycode address keep working; nothing is stored in it.
pub fn earlier_normalized_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The UTS #46 Unicode form of a domain, if it is a valid one (STD3 rules:
/// letters, digits and hyphens in each label, within DNS lengths).
fn unicode_domain(domain: &str) -> Option<String> {
    let ascii = idna::domain_to_ascii_strict(domain).ok()?;
    let (unicode, result) = idna::domain_to_unicode(&ascii);
    result.ok().map(|()| unicode)
}

/// Characters never allowed in an address: controls, format characters
/// (zero-width spaces and joiners, bidi marks, soft hyphens, tags) and every
/// kind of space or separator, which would make two addresses look alike.
fn invisible_or_space(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_whitespace()
        || matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::SpaceSeparator
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::Unassigned
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
        )
}

/// Checks a name: 1 to 100 characters after trimming. Names are kept as
/// typed (only trimmed): they are shown, never compared.
pub fn valid_name(name: &str) -> Result<String, RuleError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 {
        return Err(RuleError("name must not be empty".into()));
    }
    if chars > MAX_NAME_CHARS {
        return Err(RuleError(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_string())
}

/// Checks and normalizes an email ([`normalize_email`]): at most 254
/// characters, one `@`, a non-empty local part and a dotted domain that
/// UTS #46 accepts, no control, format or space characters anywhere.
pub fn valid_email(email: &str) -> Result<String, RuleError> {
    let invalid = || RuleError("email must be a valid email address".into());
    // Checked before normalizing too: NFKC turns some invisible characters
    // into ordinary spaces, and some spaces into nothing.
    if email.trim().chars().any(invisible_or_space) {
        return Err(invalid());
    }
    let email = normalize_email(email);
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(RuleError(format!(
            "email must be at most {MAX_EMAIL_CHARS} characters"
        )));
    }
    if email.chars().any(invisible_or_space) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    if local.is_empty() || domain.contains('@') {
        return Err(invalid());
    }
    let dotted = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if !dotted || unicode_domain(domain).as_deref() != Some(domain) {
        return Err(invalid());
    }
    Ok(email)
}

/// Checks a password: at least `min_chars` characters and at most 72 bytes,
/// because bcrypt would silently ignore everything past the 72nd byte.
pub fn valid_password(password: &str, min_chars: usize) -> Result<(), RuleError> {
    if password.chars().count() < min_chars {
        return Err(RuleError(format!(
            "password must be at least {min_chars} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(RuleError(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct UserPatch {
    pub name: Option<String>,
    /// Already normalized.
    pub email: Option<String>,
    pub role: Option<Role>,
    /// A new bcrypt hash; setting it bumps the password version, which
    /// revokes every token issued before.
    pub password_hash: Option<String>,
    /// Set by an admin. Left `None`, a change of the email (to a different
    /// address) makes it false: the new address is not yet confirmed.
    pub email_verified: Option<bool>,
}

impl UserPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.role.is_none()
            && self.password_hash.is_none()
            && self.email_verified.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_issued_uuids_or_object_ids_in_one_spelling() {
        let issued = uuid::Uuid::now_v7().to_string();
        assert!(is_user_id(&issued));
        assert!(is_user_id("5f1d7c2e9b1e8a3d4c2b1a09"));
        for other in [
            issued.to_uppercase(),
            issued.replace('-', ""),
            format!("{{{issued}}}"),
            format!("urn:uuid:{issued}"),
            "5F1D7C2E9B1E8A3D4C2B1A09".into(),
            "5f1d7c2e9b1e8a3d4c2b1a0".into(),
            "5f1d7c2e9b1e8a3d4c2b1a0g".into(),
            issued.replacen('-', "x", 1),
            String::new(),
        ] {
            assert!(!is_user_id(&other), "{other}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(valid_name("  Mike \n").unwrap(), "Mike");
        assert!(valid_name("   ").is_err());
        assert!(valid_name(&"é".repeat(100)).is_ok());
        assert!(valid_name(&"é".repeat(101)).is_err());
        assert_eq!(valid_name("a\0b 🦀").unwrap(), "a\0b 🦀");
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            valid_email(" Mike@Example.COM ").unwrap(),
            "mike@example.com"
        );
        for bad in [
            "",
            "mike",
            "@example.com",
            "mike@example",
            "mike@@example.com",
            "a@b@example.com",
            "mi ke@example.com",
            "mike@.com",
            "mike@example.",
            "mike@example..com",
        ] {
            assert!(valid_email(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(243));
        assert_eq!(long.len(), 255);
        assert!(valid_email(&long).is_err());
        assert!(valid_email(&long[1..]).is_ok());
    }

    #[test]
    fn lookalike_emails_are_one_account() {
        let canonical = valid_email("mike@example.com").unwrap();
        for alike in [
            "ＭＩＫＥ@ＥＸＡＭＰＬＥ.com", // fullwidth letters
            "mike@EXAMPLE.COM",
            "  Mike@example.com ",
        ] {
            assert_eq!(valid_email(alike).unwrap(), canonical, "{alike:?}");
        }
        // Decomposed and precomposed accents.
        assert_eq!(
            valid_email("jose\u{301}@example.com").unwrap(),
            valid_email("jos\u{e9}@example.com").unwrap()
        );
        // IDN: Unicode, upper case and punycode spellings of one domain.
        let bucher = valid_email("a@bücher.de").unwrap();
        assert_eq!(bucher, "a@bücher.de");
        assert_eq!(valid_email("a@BÜCHER.de").unwrap(), bucher);
        assert_eq!(valid_email("a@xn--bcher-kva.de").unwrap(), bucher);
        assert_eq!(normalize_email("A@XN--BCHER-KVA.DE"), bucher);
    }

    #[test]
    fn the_openapi_documents_subset_is_accepted() {
        // The document's Email pattern describes ASCII addresses only (JSON
        // Schema cannot express NFKC or UTS #46); every one it allows must
        // pass here.
        for email in [
            "a@b.c",
            "a@b.1",
            "!#$%&'*+/=?^_`{|}~.-\"\\\\[]()<>,;:@a-b.c-d",
            "Z@0.0.0.0",
            "x@a1-b2-c3.d4",
        ] {
            assert!(valid_email(email).is_ok(), "{email:?}");
        }
    }

    #[test]
    fn invisible_and_space_characters_are_refused() {
        for bad in [
            "mi\u{200b}ke@example.com", // zero-width space
            "mike\u{200d}@example.com", // zero-width joiner
            "mike@exa\u{200b}mple.com",
            "mi\u{ad}ke@example.com",   // soft hyphen
            "mi\u{a0}ke@example.com",   // no-break space
            "mi\u{3000}ke@example.com", // ideographic space
            "mike\u{202e}@example.com", // right-to-left override
            "mi\u{feff}ke@example.com", // byte order mark
            "mi\u{7}ke@example.com",
            "mike@exam_ple.com",
            "mike@-example.com",
        ] {
            assert!(valid_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_are_bounded_in_bytes_not_truncated() {
        assert!(valid_password("1234567", 8).is_err());
        assert!(valid_password("12345678", 8).is_ok());
        assert!(valid_password(&"a".repeat(72), 8).is_ok());
        assert!(valid_password(&"a".repeat(73), 8).is_err());
        // 25 three-byte characters: 25 characters but 75 bytes.
        assert!(valid_password(&"€".repeat(25), 8).is_err());
    }

    #[test]
    fn the_direct_json_is_serde_json_s() {
        let mut names: Vec<String> = [
            "Mike",
            "",
            "say \"hi\"",
            "back\\slash",
            "line\nbreak\ttab",
            "Zoë 🚀 ünïcode",
            "\u{7f}del and \u{1f}unit",
            "</script>",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        names.extend((0u8..0x80).map(|b| format!("a{}b", char::from(b))));
        // Past the first 16-byte chunk the check reads at once.
        names.extend(
            (0u8..0x80).map(|b| format!("{}{}b", "x".repeat(17 + b as usize % 16), char::from(b))),
        );
        for (i, name) in names.into_iter().enumerate() {
            let mut user = User::new(
                name,
                format!("o'brien+{i}@example.com"),
                if i % 2 == 0 { Role::User } else { Role::Admin },
                "$2b$04$hash".into(),
                1_700_000_000 + i as u64,
            );
            user.updated_at = u64::MAX;
            user.email_verified = i % 3 == 0;
            let view = user.view();
            assert_eq!(
                String::from_utf8(view.to_json()).unwrap(),
                serde_json::to_string(&view).unwrap(),
                "{user:?}"
            );
        }
    }

    #[test]
    fn the_view_has_no_secret_and_debug_hides_the_hash() {
        let user = User::new(
            "Mike".into(),
            "mike@example.com".into(),
            Role::User,
            "$2b$04$secrethash".into(),
            1_700_000_000,
        );
        let json = serde_json::to_string(&user.view()).unwrap();
        assert!(!json.contains("secrethash") && !json.contains("password"));
        assert!(json.contains("\"_id\""));
        assert!(json.contains("2023-11-14T22:13:20Z"), "{json}");
        assert!(!format!("{user:?}").contains("secrethash"));
    }
}
