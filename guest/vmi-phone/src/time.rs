//! Calendar arithmetic for the clock and mail dates (proleptic Gregorian, no time zones:
//! the phone shows UTC shifted by a fixed offset).

const NS_PER_S: u64 = 1_000_000_000;
/// Nanoseconds in a minute.
pub const NS_PER_MIN: u64 = 60 * NS_PER_S;

const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A local time of day and date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: i64,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of the month, 1..=31.
    pub day: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Day of the week, 0 = Sunday.
    pub weekday: u32,
    /// Days since 1970-01-01 (local).
    pub days: i64,
}

impl Civil {
    /// The local time for `unix_s` seconds since the epoch, shifted by `offset_min` minutes.
    pub fn from_unix(unix_s: i64, offset_min: i32) -> Civil {
        let t = unix_s + i64::from(offset_min) * 60;
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        // Howard Hinnant's days_from_civil inverse.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (secs / 3600) as u32,
            minute: (secs / 60 % 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
            days,
        }
    }

    /// The local time for a wall clock in ns.
    pub fn from_wall_ns(wall_ns: u64, offset_min: i32) -> Civil {
        Civil::from_unix((wall_ns / NS_PER_S) as i64, offset_min)
    }

    /// "09:41".
    pub fn hh_mm(&self) -> String {
        format!("{:02}:{:02}", self.hour, self.minute)
    }

    /// "Tuesday".
    pub fn weekday_name(&self) -> &'static str {
        WEEKDAYS[self.weekday as usize % 7]
    }

    /// "14 May".
    pub fn day_month(&self) -> String {
        format!("{} {}", self.day, MONTHS[(self.month as usize + 11) % 12])
    }
}

/// How a mail list shows a receipt time: the time today, else the date.
pub fn short_stamp(unix_s: i64, now_unix_s: i64, offset_min: i32) -> String {
    let t = Civil::from_unix(unix_s, offset_min);
    let now = Civil::from_unix(now_unix_s, offset_min);
    if t.days == now.days { t.hh_mm() } else { t.day_month() }
}

/// Nanoseconds from `wall_ns` to the next minute boundary (never 0).
pub fn ns_to_next_minute(wall_ns: u64) -> u64 {
    NS_PER_MIN - wall_ns % NS_PER_MIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_known_dates() {
        // 2024-05-14 09:41:00 UTC was a Tuesday.
        let c = Civil::from_unix(1_715_679_660, 0);
        assert_eq!((c.year, c.month, c.day, c.hour, c.minute), (2024, 5, 14, 9, 41));
        assert_eq!(c.weekday_name(), "Tuesday");
        assert_eq!(c.hh_mm(), "09:41");
        assert_eq!(c.day_month(), "14 May");
        let e = Civil::from_unix(0, 0);
        assert_eq!((e.year, e.month, e.day, e.weekday), (1970, 1, 1, 4));
        let shifted = Civil::from_unix(1_715_679_660, 120);
        assert_eq!(shifted.hh_mm(), "11:41");
        let leap = Civil::from_unix(951_782_400, 0);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn stamps_and_minutes() {
        let now = 1_715_679_660;
        assert_eq!(short_stamp(now - 60, now, 0), "09:40");
        assert_eq!(short_stamp(now - 86_400, now, 0), "13 May");
        assert_eq!(ns_to_next_minute(0), NS_PER_MIN);
        assert_eq!(ns_to_next_minute(NS_PER_MIN - 1), 1);
    }
}
