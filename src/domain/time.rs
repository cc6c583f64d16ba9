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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn reference(secs: u64) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
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
