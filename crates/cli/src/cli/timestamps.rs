//! Times on the command line: RFC 3339 text of the `--json` documents, and the `--since`
//! value of `stepq runs` (a duration back from now, such as `2h` or `7d`, or an RFC 3339
//! timestamp).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use stepq_plan::events::civil_from_days;

const US_PER_SEC: u64 = 1_000_000;
const SECS_PER_DAY: u64 = 86_400;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, always six fraction digits) of microseconds since the
/// Unix epoch.
pub(crate) fn rfc3339(us: u64) -> String {
    let secs = us / US_PER_SEC;
    let (year, month, day) = civil_from_days((secs / SECS_PER_DAY) as i64);
    let rem = secs % SECS_PER_DAY;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        (rem % 3_600) / 60,
        rem % 60,
        us % US_PER_SEC
    )
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A fixed number of ASCII digits.
fn digits(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {what} `{text}`"));
    }
    text.parse().map_err(|_| format!("bad {what} `{text}`"))
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp: `2026-05-01T12:00:00Z`,
/// `2026-05-01T12:00:00.5+02:00` (`t`/`z` in lower case and a space for the `T` are accepted
/// too), or a date alone, `2026-05-01`, meaning its midnight UTC. Times before 1970 are
/// refused; fractions beyond microseconds are truncated.
pub(crate) fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (date, time) = match text.find(['T', 't', ' ']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else {
        return Err(format!("bad date `{date}` (expected YYYY-MM-DD)"));
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(format!("bad date `{date}` (expected YYYY-MM-DD)"));
    }
    let (year, month, day) = (
        i64::from(digits(y, "year")?),
        digits(m, "month")?,
        digits(d, "day")?,
    );
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("no such date `{date}`"));
    }
    let mut seconds = days_from_civil(year, month, day) * SECS_PER_DAY as i64;
    let mut micros = 0;
    if let Some(time) = time {
        let (clock, offset) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0)
        } else {
            let i = time
                .rfind(['+', '-'])
                .ok_or_else(|| format!("`{time}` has no time zone (Z or +HH:MM)"))?;
            let (clock, zone) = time.split_at(i);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let Some((hh, mm)) = zone[1..].split_once(':') else {
                return Err(format!("bad time zone `{zone}` (expected +HH:MM)"));
            };
            let (hh, mm) = (digits(hh, "zone hour")?, digits(mm, "zone minute")?);
            if hh > 23 || mm > 59 {
                return Err(format!("bad time zone `{zone}`"));
            }
            (clock, sign * i64::from(hh * 3_600 + mm * 60))
        };
        let (hms, fraction) = match clock.split_once('.') {
            Some((hms, fraction)) => (hms, Some(fraction)),
            None => (clock, None),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        let [h, m, s] = parts[..] else {
            return Err(format!("bad time `{clock}` (expected HH:MM:SS)"));
        };
        if h.len() != 2 || m.len() != 2 || s.len() != 2 {
            return Err(format!("bad time `{clock}` (expected HH:MM:SS)"));
        }
        let (h, m, s) = (
            digits(h, "hour")?,
            digits(m, "minute")?,
            digits(s, "second")?,
        );
        // A leap second (:60) counts as the last second of its minute.
        if h > 23 || m > 59 || s > 60 {
            return Err(format!("no such time `{clock}`"));
        }
        if let Some(fraction) = fraction {
            digits(fraction, "fraction of a second")?;
            let six: String = fraction.chars().chain("000000".chars()).take(6).collect();
            micros = six.parse::<u64>().expect("six digits");
        }
        seconds += i64::from(h * 3_600 + m * 60 + s.min(59)) - offset;
    }
    let seconds = u64::try_from(seconds).map_err(|_| format!("`{text}` is before 1970"))?;
    Ok(seconds * US_PER_SEC + micros)
}

/// A duration of whole units: `30s`, `30m`, `2h`, `7d`, `1w`, or several of them, largest
/// first or not, as in `1h30m` or `1d12h`. A number needs its unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if number_len == 0 {
            return Err(format!("bad duration `{text}` (expected e.g. 30m, 2h, 7d)"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let seconds: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => SECS_PER_DAY,
            "w" => 7 * SECS_PER_DAY,
            "" => {
                return Err(format!(
                    "`{text}`: `{number}` needs a unit (s, m, h, d or w)"
                ))
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (expected s, m, h, d or w)"
                ))
            }
        };
        let overflow = || format!("duration `{text}` is too long");
        let value: u64 = number.parse().map_err(|_| overflow())?;
        total = value
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(overflow)?;
        rest = after;
    }
    Ok(Duration::from_secs(total))
}

/// The `--since` value of `stepq runs`: how long ago, or from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now.
    Ago(Duration),
    /// From this time (microseconds since the Unix epoch).
    At(u64),
}

impl Since {
    /// The time in microseconds since the Unix epoch, `now_us` being now (0 if it is before
    /// the epoch).
    pub(crate) fn resolve(self, now_us: u64) -> u64 {
        match self {
            Since::Ago(ago) => {
                now_us.saturating_sub(u64::try_from(ago.as_micros()).unwrap_or(u64::MAX))
            }
            Since::At(us) => us,
        }
    }
}

/// Why a `--since` value is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSinceError(String);

impl fmt::Display for ParseSinceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseSinceError {}

impl FromStr for Since {
    type Err = ParseSinceError;

    /// A duration (`2h`, `7d`, `30m`, `1h30m`) or an RFC 3339 timestamp (a value that starts
    /// with four digits and a `-`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        let is_date = t.len() > 4
            && t.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && t.as_bytes()[4] == b'-';
        if is_date {
            parse_rfc3339(t).map(Since::At).map_err(ParseSinceError)
        } else {
            parse_duration(t).map(Since::Ago).map_err(|e| {
                ParseSinceError(format!(
                    "{e}; give a duration such as 30m, 2h, 7d or an RFC 3339 time such as 2026-05-01T12:00:00Z"
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600;

    #[test]
    fn durations_parse_in_every_unit_and_in_combinations() {
        for (text, secs) in [
            ("30s", 30),
            ("30m", 30 * 60),
            ("2h", 2 * H),
            ("7d", 7 * 24 * H),
            ("1w", 7 * 24 * H),
            ("1h30m", H + 1_800),
            ("1d12h", 36 * H),
            ("0s", 0),
            (" 15m ", 900),
            ("90m", 5_400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("5", "needs a unit"),
            ("2x", "unknown unit `x`"),
            ("2 h", "needs a unit"),
            ("h", "bad duration"),
            ("-2h", "bad duration"),
            ("1.5h", "needs a unit"),
            ("2H", "unknown unit `H`"),
            ("99999999999999999999s", "too long"),
            ("9999999999999999w", "too long"),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn rfc3339_prints_utc_with_microseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
    }

    #[test]
    fn rfc3339_parses_back_what_it_prints() {
        for us in [
            0,
            1,
            951_782_400_000_001,
            1_700_000_000_123_456,
            4_102_444_799_999_999,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(us)), Ok(us), "{}", rfc3339(us));
        }
    }

    #[test]
    fn rfc3339_accepts_offsets_fractions_and_dates() {
        let noon = 1_777_636_800 * 1_000_000; // 2026-05-01T12:00:00Z
        for text in [
            "2026-05-01T12:00:00Z",
            "2026-05-01t12:00:00z",
            "2026-05-01 12:00:00Z",
            "2026-05-01T14:00:00+02:00",
            "2026-05-01T07:30:00-04:30",
            "2026-05-01T12:00:00.000Z",
        ] {
            assert_eq!(parse_rfc3339(text), Ok(noon), "{text}");
        }
        assert_eq!(parse_rfc3339("2026-05-01T12:00:00.5Z"), Ok(noon + 500_000));
        assert_eq!(
            parse_rfc3339("2026-05-01T12:00:00.1234567Z"),
            Ok(noon + 123_456),
            "truncated to microseconds"
        );
        assert_eq!(parse_rfc3339("2026-05-01"), Ok(noon - 12 * H * 1_000_000));
        assert_eq!(parse_rfc3339("2024-02-29"), Ok(1_709_164_800 * 1_000_000));
    }

    #[test]
    fn bad_timestamps_are_refused() {
        for text in [
            "2026-05-01T12:00:00",
            "2026-13-01",
            "2026-02-29",
            "2026-04-31",
            "2026-05-01T24:00:00Z",
            "2026-05-01T12:60:00Z",
            "2026-05-01T12:00Z",
            "2026-05-01T12:00:00.Z",
            "2026-05-01T12:00:00+0200",
            "2026-5-1",
            "1969-12-31T23:59:59Z",
            "yesterday",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text}");
        }
    }

    #[test]
    fn since_is_a_duration_or_a_timestamp() {
        assert_eq!("2h".parse(), Ok(Since::Ago(Duration::from_secs(2 * H))));
        assert_eq!(
            "2026-05-01T12:00:00Z".parse(),
            Ok(Since::At(1_777_636_800 * 1_000_000))
        );
        let e = "2 hours".parse::<Since>().unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
        assert!("2026-05-01T12".parse::<Since>().is_err());
        let now = 10 * H * 1_000_000;
        assert_eq!(
            Since::Ago(Duration::from_secs(H)).resolve(now),
            9 * H * 1_000_000
        );
        assert_eq!(Since::Ago(Duration::from_secs(100 * H)).resolve(now), 0);
        assert_eq!(Since::At(5).resolve(now), 5);
    }
}
