//! Timestamps as text: RFC 3339 in UTC to the second (`2023-11-14T22:13:20Z`),
//! the form of `created_at` and `updated_at` and of the log's clock.
//!
//! Written by hand, into a fixed buffer, because it runs for every user object
//! sent and every log line: the general formatters allocate or go through
//! `core::fmt` for each part.

/// The last second this formats with four-digit years; later times are
/// written as this one.
const LAST_SECOND: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// `YYYY-MM-DDTHH:MM:SSZ`, on the stack.
#[derive(Clone, Copy)]
pub struct Rfc3339([u8; 20]);

impl Rfc3339 {
    /// The UTC time `unix_secs` seconds after the Unix epoch.
    pub fn from_unix(unix_secs: u64) -> Rfc3339 {
        let secs = unix_secs.min(LAST_SECOND);
        let (year, month, day) = civil_from_days(secs / 86_400);
        let second_of_day = secs % 86_400;
        let mut text = *b"0000-00-00T00:00:00Z";
        write_digits(&mut text[0..4], year);
        write_digits(&mut text[5..7], month);
        write_digits(&mut text[8..10], day);
        write_digits(&mut text[11..13], second_of_day / 3600);
        write_digits(&mut text[14..16], second_of_day / 60 % 60);
        write_digits(&mut text[17..19], second_of_day % 60);
        Rfc3339(text)
    }

    /// The Unix time of `text` if it is exactly this form
    /// (`YYYY-MM-DDTHH:MM:SSZ`, a real date, 1970 or later): what an export
    /// file holds, read back. Anything else is `None`.
    pub fn parse(text: &str) -> Option<u64> {
        let b = text.as_bytes();
        if b.len() != 20 || &b[4..5] != b"-" || &b[7..8] != b"-" || &b[10..11] != b"T" {
            return None;
        }
        if &b[13..14] != b":" || &b[16..17] != b":" || &b[19..20] != b"Z" {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<u64> {
            let digits = &text[range];
            digits
                .bytes()
                .all(|d| d.is_ascii_digit())
                .then(|| digits.parse().ok())?
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if year < 1970 || !(1..=12).contains(&month) || day == 0 || hour > 23 || minute > 59 {
            return None;
        }
        if second > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        // A day past the month's end (02-30) comes back as another date.
        if civil_from_days(days) != (year, month, day) {
            return None;
        }
        Some(days * 86_400 + hour * 3600 + minute * 60 + second)
    }

    /// The text as bytes, for writers of bytes (no UTF-8 check).
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00Z")
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fills `out` with the last `out.len()` decimal digits of `value`.
pub(crate) fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Appends `value` in decimal, without going through `core::fmt` (the
/// request log writes several numbers per line).
pub(crate) fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let len = value.checked_ilog10().map_or(1, |log| log as usize + 1);
    write_digits(&mut digits[..len], value);
    out.extend_from_slice(&digits[..len]);
}

/// (year, month, day) of the day `days` after 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The days from 1970-01-01 to (year, month, day), for years ≥ 1970
/// (Howard Hinnant's `days_from_civil`, the inverse of the above).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn reference(secs: u64) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
    }

    #[test]
    fn parsing_reads_back_what_is_written_and_nothing_else() {
        for secs in [
            0,
            59,
            951_782_400,
            1_700_000_000,
            4_107_542_399,
            253_402_300_799,
        ] {
            assert_eq!(
                Rfc3339::parse(Rfc3339::from_unix(secs).as_str()),
                Some(secs)
            );
        }
        for bad in [
            "",
            "2023-11-14T22:13:20",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20.5Z",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-00-01T00:00:00Z",
            "2023-11-00T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:60:00Z",
            "2023-11-14T22:13:60Z",
            "1969-12-31T23:59:59Z",
            "+023-11-14T22:13:20Z",
            "2023-11-14T22:13:20+00:00",
        ] {
            assert_eq!(Rfc3339::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn known_instants() {
        assert_eq!(Rfc3339::from_unix(0).as_str(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Rfc3339::from_unix(1_700_000_000).as_str(),
            "2023-11-14T22:13:20Z"
        );
        // Leap days, centuries and the last supported second.
        assert_eq!(
            Rfc3339::from_unix(951_782_400).as_str(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            Rfc3339::from_unix(4_107_542_399).as_str(),
            "2100-02-28T23:59:59Z"
        );
        assert_eq!(
            Rfc3339::from_unix(u64::MAX).as_str(),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn decimals_have_every_digit_and_no_more() {
        for value in [0, 7, 10, 99, 100, 1234, u64::from(u32::MAX), u64::MAX] {
            let mut text = b"=".to_vec();
            push_decimal(&mut text, value);
            assert_eq!(text, format!("={value}").into_bytes());
        }
    }

    #[test]
    fn agrees_with_humantime_across_four_centuries() {
        // Every ~3.7 days plus an odd number of seconds, 1970 to 2370.
        let mut secs = 0;
        while secs < 12_622_780_800 {
            assert_eq!(Rfc3339::from_unix(secs).as_str(), reference(secs), "{secs}");
            secs += 321_457;
        }
    }
}
