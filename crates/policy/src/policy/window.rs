//! Budget and velocity windows: calendar day, ISO week and month in the policy's time zone, and
//! rolling windows ending now. Every window is half-open: `[start_ms, end_ms)`, unix ms.

use std::fmt;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Earliest `now_ms` the window computation takes; earlier clocks are read as this instant.
pub const NOW_MS_MIN: i64 = 0;
/// Latest `now_ms` the window computation takes (9999-12-31T23:59:59.999Z); later clocks are
/// read as this instant.
pub const NOW_MS_MAX: i64 = 253_402_300_799_999;

/// How far on either side of a local midnight a DST gap's end is searched, in seconds. Every
/// UTC offset in the tz database is under 16 h, so the gap's end is always within 24 h.
const GAP_SEARCH_SPAN_S: i64 = 24 * 3600;
/// How many periods the calendar window may step away from the local date's period to find
/// the one containing `now` (only a DST fold across midnight ever needs one step).
const CALENDAR_STEPS_MAX: usize = 4;
/// A window at least as long as any calendar period (31 days plus a DST hour and margin), used
/// only if the tz data were so odd that no period contains `now`.
const CALENDAR_PERIOD_MS_MAX: i64 = 32 * 86_400_000;

/// `[start_ms, end_ms)` in unix milliseconds: the instants a usage sum or count covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// First instant inside the window, unix ms.
    pub start_ms: i64,
    /// First instant after the window, unix ms.
    pub end_ms: i64,
}

impl Window {
    /// True when `at_ms` is inside the window.
    pub fn contains(&self, at_ms: i64) -> bool {
        self.start_ms <= at_ms && at_ms < self.end_ms
    }

    /// The rolling window of `window_ms` ending at `now_ms` inclusive: `(now - window, now]`,
    /// so a spend at `t` counts while `now < t + window`.
    pub(crate) fn rolling(window_ms: i64, now_ms: i64) -> Self {
        let now_ms = now_ms.clamp(NOW_MS_MIN, NOW_MS_MAX);
        Self {
            start_ms: now_ms - window_ms + 1,
            end_ms: now_ms + 1,
        }
    }
}

/// Which window a budget sums over (the `period` and `windowSeconds` members of a budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowRule {
    /// The calendar day in the policy's time zone, from local 00:00.
    Day,
    /// The ISO week in the policy's time zone, from Monday 00:00 local.
    Week,
    /// The calendar month in the policy's time zone, from the 1st 00:00 local.
    Month,
    /// The last `window_seconds` seconds up to and including now.
    Rolling {
        /// Length of the window in seconds.
        window_seconds: u32,
    },
}

impl fmt::Display for WindowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Day => f.write_str("day"),
            Self::Week => f.write_str("week"),
            Self::Month => f.write_str("month"),
            Self::Rolling { window_seconds } => write!(f, "rolling {window_seconds} s"),
        }
    }
}

impl WindowRule {
    /// The window containing `now_ms`, calendar periods read in `tz`.
    ///
    /// A calendar period starts at the first instant the local clock reads its first day's
    /// 00:00, or, when a DST gap skips that local time, at the instant the gap ends. Periods
    /// therefore tile the timeline (no gaps, no overlaps) and a day may last 23 or 25 hours.
    /// `now_ms` is clamped to [`NOW_MS_MIN`]..=[`NOW_MS_MAX`].
    pub fn window(self, tz: Tz, now_ms: i64) -> Window {
        let now_ms = now_ms.clamp(NOW_MS_MIN, NOW_MS_MAX);
        match self {
            Self::Rolling { window_seconds } => {
                Window::rolling(i64::from(window_seconds) * 1000, now_ms)
            }
            Self::Day | Self::Week | Self::Month => self.calendar_window(tz, now_ms),
        }
    }

    /// The calendar period containing `now_ms`.
    fn calendar_window(self, tz: Tz, now_ms: i64) -> Window {
        let mut first_day = self.first_day(local_date(tz, now_ms));
        for _ in 0..CALENDAR_STEPS_MAX {
            let window = Window {
                start_ms: start_of_day_ms(tz, first_day),
                end_ms: start_of_day_ms(tz, self.shift(first_day, true)),
            };
            if now_ms < window.start_ms {
                first_day = self.shift(first_day, false);
            } else if now_ms >= window.end_ms {
                first_day = self.shift(first_day, true);
            } else {
                return window;
            }
        }
        // Not reached with the tz database's data. Should it ever be, a window at least as long
        // as the period and ending now counts every spend of the period: stricter, never looser.
        Window::rolling(CALENDAR_PERIOD_MS_MAX, now_ms)
    }

    /// The first day of the period holding `date`.
    fn first_day(self, date: NaiveDate) -> NaiveDate {
        match self {
            Self::Day | Self::Rolling { .. } => date,
            Self::Week => date - Days::new(u64::from(date.weekday().num_days_from_monday())),
            Self::Month => date - Days::new(u64::from(date.day0())),
        }
    }

    /// The first day of the next (`forward`) or previous period.
    fn shift(self, first_day: NaiveDate, forward: bool) -> NaiveDate {
        let shifted = match (self, forward) {
            (Self::Month, true) => first_day.checked_add_months(Months::new(1)),
            (Self::Month, false) => first_day.checked_sub_months(Months::new(1)),
            (_, true) => first_day.checked_add_days(self.days()),
            (_, false) => first_day.checked_sub_days(self.days()),
        };
        // Invariant: `now_ms` is clamped to years 1970..=9999, far inside chrono's range.
        shifted.expect("a period next to a year 1970..=9999 date is a valid date")
    }

    /// Length in days of a day or week period.
    fn days(self) -> Days {
        match self {
            Self::Week => Days::new(7),
            _ => Days::new(1),
        }
    }
}

/// The local calendar date in `tz` at `at_ms`.
fn local_date(tz: Tz, at_ms: i64) -> NaiveDate {
    let utc = DateTime::from_timestamp_millis(at_ms);
    // Invariant: callers clamp to NOW_MS_MIN..=NOW_MS_MAX, inside chrono's range.
    let utc = utc.expect("a clamped instant is inside chrono's range");
    utc.with_timezone(&tz).date_naive()
}

/// The local wall-clock time in `tz` at `at_s` (unix seconds).
fn local_time(tz: Tz, at_s: i64) -> NaiveDateTime {
    let utc = DateTime::from_timestamp(at_s, 0);
    let utc = utc.expect("an instant within a day of a year 1970..=9999 date is in range");
    utc.with_timezone(&tz).naive_local()
}

/// The first instant (unix ms) whose local time in `tz` is `date` 00:00 or later: the earlier
/// one when a fold repeats midnight, the gap's end when a gap skips it.
fn start_of_day_ms(tz: Tz, date: NaiveDate) -> i64 {
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    if let Some(start) = tz.from_local_datetime(&midnight).earliest() {
        return start.timestamp_millis();
    }
    // Midnight falls in a DST gap: binary-search the instant the gap ends, to the second
    // (every tz transition is on a whole second). Invariant: local(lo) < midnight <= local(hi).
    let naive_s = midnight.and_utc().timestamp();
    let mut lo = naive_s - GAP_SEARCH_SPAN_S;
    let mut hi = naive_s + GAP_SEARCH_SPAN_S;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_time(tz, mid) >= midnight {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of an RFC 3339 instant.
    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn tz(name: &str) -> Tz {
        name.parse().unwrap()
    }

    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn berlin_spring_forward_day_lasts_23_hours() {
        let berlin = tz("Europe/Berlin");
        let window = WindowRule::Day.window(berlin, ms("2025-03-30T12:00:00+02:00"));
        assert_eq!(window.start_ms, ms("2025-03-30T00:00:00+01:00"));
        assert_eq!(window.end_ms, ms("2025-03-31T00:00:00+02:00"));
        assert_eq!(window.end_ms - window.start_ms, 23 * HOUR_MS);
    }

    #[test]
    fn berlin_fall_back_day_lasts_25_hours() {
        let berlin = tz("Europe/Berlin");
        let window = WindowRule::Day.window(berlin, ms("2025-10-26T02:30:00+01:00"));
        assert_eq!(window.start_ms, ms("2025-10-26T00:00:00+02:00"));
        assert_eq!(window.end_ms, ms("2025-10-27T00:00:00+01:00"));
        assert_eq!(window.end_ms - window.start_ms, 25 * HOUR_MS);
        // Both passes through the repeated 02:00-03:00 hour are in the same day.
        let first_pass = ms("2025-10-26T02:30:00+02:00");
        assert_eq!(WindowRule::Day.window(berlin, first_pass), window);
    }

    #[test]
    fn last_millisecond_of_the_day_and_next_midnight_get_adjacent_windows() {
        for (zone, last_ms) in [
            ("UTC", "2025-06-10T23:59:59.999Z"),
            ("Europe/Berlin", "2025-06-10T23:59:59.999+02:00"),
            ("Asia/Kolkata", "2025-06-10T23:59:59.999+05:30"),
            ("America/New_York", "2025-06-10T23:59:59.999-04:00"),
        ] {
            let zone = tz(zone);
            let last_ms = ms(last_ms);
            let today = WindowRule::Day.window(zone, last_ms);
            let tomorrow = WindowRule::Day.window(zone, last_ms + 1);
            assert_eq!(today.end_ms, last_ms + 1, "{zone}");
            assert_eq!(tomorrow.start_ms, last_ms + 1, "{zone}");
            assert_eq!(tomorrow.end_ms - tomorrow.start_ms, 24 * HOUR_MS, "{zone}");
            assert!(today.contains(last_ms) && !today.contains(last_ms + 1));
        }
    }

    #[test]
    fn kolkata_day_starts_at_18_30_utc() {
        let kolkata = tz("Asia/Kolkata");
        let window = WindowRule::Day.window(kolkata, ms("2025-06-10T18:29:59.999Z"));
        assert_eq!(window.start_ms, ms("2025-06-09T18:30:00Z"));
        assert_eq!(window.end_ms, ms("2025-06-10T18:30:00Z"));
        let next = WindowRule::Day.window(kolkata, ms("2025-06-10T18:30:00Z"));
        assert_eq!(next.start_ms, ms("2025-06-10T18:30:00Z"));
        // The same instant is already 2025-06-11 in Kolkata but still 2025-06-10 in UTC.
        let utc = WindowRule::Day.window(tz("UTC"), ms("2025-06-10T18:30:00Z"));
        assert_eq!(utc.start_ms, ms("2025-06-10T00:00:00Z"));
    }

    #[test]
    fn iso_week_starts_monday_local_midnight() {
        let berlin = tz("Europe/Berlin");
        // Sunday evening belongs to the week that started the previous Monday.
        let sunday = WindowRule::Week.window(berlin, ms("2025-06-15T23:59:59.999+02:00"));
        assert_eq!(sunday.start_ms, ms("2025-06-09T00:00:00+02:00"));
        assert_eq!(sunday.end_ms, ms("2025-06-16T00:00:00+02:00"));
        let monday = WindowRule::Week.window(berlin, ms("2025-06-16T00:00:00+02:00"));
        assert_eq!(monday.start_ms, sunday.end_ms);
        // The week holding the spring-forward Sunday is one hour short.
        let dst_week = WindowRule::Week.window(berlin, ms("2025-03-26T12:00:00+01:00"));
        assert_eq!(dst_week.start_ms, ms("2025-03-24T00:00:00+01:00"));
        assert_eq!(
            dst_week.end_ms - dst_week.start_ms,
            7 * 24 * HOUR_MS - HOUR_MS
        );
        // A week spanning new year: 2025-12-29 is the Monday of ISO week 2026-W01.
        let new_year = WindowRule::Week.window(tz("UTC"), ms("2026-01-01T08:00:00Z"));
        assert_eq!(new_year.start_ms, ms("2025-12-29T00:00:00Z"));
    }

    #[test]
    fn month_runs_from_the_first_local_midnight() {
        let berlin = tz("Europe/Berlin");
        let march = WindowRule::Month.window(berlin, ms("2025-03-15T12:00:00+01:00"));
        assert_eq!(march.start_ms, ms("2025-03-01T00:00:00+01:00"));
        assert_eq!(march.end_ms, ms("2025-04-01T00:00:00+02:00"));
        assert_eq!(march.end_ms - march.start_ms, 31 * 24 * HOUR_MS - HOUR_MS);
        let december = WindowRule::Month.window(berlin, ms("2025-12-31T23:59:59.999+01:00"));
        assert_eq!(december.end_ms, ms("2026-01-01T00:00:00+01:00"));
        let february = WindowRule::Month.window(tz("UTC"), ms("2024-02-29T12:00:00Z"));
        assert_eq!(february.end_ms - february.start_ms, 29 * 24 * HOUR_MS);
    }

    #[test]
    fn midnight_skipped_by_dst_starts_the_day_when_the_gap_ends() {
        // Chile springs forward at 00:00 local: 2024-09-08 00:00 never happens in Santiago.
        let santiago = tz("America/Santiago");
        let window = WindowRule::Day.window(santiago, ms("2024-09-08T12:00:00-03:00"));
        assert_eq!(window.start_ms, ms("2024-09-08T01:00:00-03:00"));
        assert_eq!(window.end_ms, ms("2024-09-09T00:00:00-03:00"));
        let before = WindowRule::Day.window(santiago, ms("2024-09-07T23:59:59.999-04:00"));
        assert_eq!(before.end_ms, window.start_ms);
    }

    #[test]
    fn midnight_repeated_by_dst_starts_the_day_at_its_first_pass() {
        // Cuba falls back from 01:00 to 00:00: 2025-11-02 00:00-01:00 happens twice in Havana.
        let havana = tz("America/Havana");
        let second_pass = ms("2025-11-02T00:30:00-05:00");
        let window = WindowRule::Day.window(havana, second_pass);
        assert_eq!(window.start_ms, ms("2025-11-02T00:00:00-04:00"));
        assert_eq!(window.end_ms, ms("2025-11-03T00:00:00-05:00"));
        assert_eq!(window.end_ms - window.start_ms, 25 * HOUR_MS);
        let first_pass = ms("2025-11-02T00:30:00-04:00");
        assert_eq!(WindowRule::Day.window(havana, first_pass), window);
    }

    #[test]
    fn fold_back_across_midnight_counts_the_repeated_hour_in_the_new_day() {
        // St. John's fell back from 2010-11-07 00:01 (-02:30) to 2010-11-06 23:01 (-03:30): the
        // local clock reads the 6th again after the 7th began. Windows follow instants, so the
        // repeated 23:01-00:00 belongs to the 7th, and day windows still tile.
        let st_johns = tz("America/St_Johns");
        let seventh = WindowRule::Day.window(st_johns, ms("2010-11-06T23:30:00-03:30"));
        assert_eq!(seventh.start_ms, ms("2010-11-07T00:00:00-02:30"));
        assert_eq!(seventh.end_ms, ms("2010-11-08T00:00:00-03:30"));
        let sixth = WindowRule::Day.window(st_johns, ms("2010-11-06T23:30:00-02:30"));
        assert_eq!(sixth.end_ms, seventh.start_ms);
    }

    #[test]
    fn a_skipped_calendar_day_has_no_window() {
        // Samoa skipped 2011-12-30: Thursday 29th 23:59:59 (-10) was followed by Saturday 31st.
        let apia = tz("Pacific/Apia");
        let thursday = WindowRule::Day.window(apia, ms("2011-12-29T23:59:59-10:00"));
        assert_eq!(thursday.end_ms, ms("2011-12-31T00:00:00+14:00"));
        let saturday = WindowRule::Day.window(apia, ms("2011-12-31T00:00:00+14:00"));
        assert_eq!(saturday.start_ms, thursday.end_ms);
    }

    #[test]
    fn calendar_windows_tile_the_timeline_in_many_zones() {
        let zones = [
            "UTC",
            "Europe/Berlin",
            "Asia/Kolkata",
            "America/Havana",
            "America/Santiago",
            "Australia/Lord_Howe",
            "Asia/Kathmandu",
        ];
        let year_start = ms("2025-01-01T00:00:00Z");
        for zone in zones {
            let zone = tz(zone);
            for rule in [WindowRule::Day, WindowRule::Week, WindowRule::Month] {
                // Every 37 minutes for a year, and the first instant of each next window.
                let mut now_ms = year_start;
                while now_ms < year_start + 366 * 24 * HOUR_MS {
                    let window = rule.window(zone, now_ms);
                    assert!(window.contains(now_ms), "{zone} {rule} {now_ms}");
                    assert_eq!(rule.window(zone, window.end_ms - 1), window);
                    assert_eq!(rule.window(zone, window.end_ms).start_ms, window.end_ms);
                    now_ms += 37 * 60_000;
                }
            }
        }
    }

    #[test]
    fn rolling_window_covers_exactly_the_last_seconds_up_to_now() {
        let now_ms = ms("2025-06-10T12:00:00Z");
        let rule = WindowRule::Rolling {
            window_seconds: 3600,
        };
        let window = rule.window(tz("Asia/Kolkata"), now_ms);
        assert_eq!(window.end_ms, now_ms + 1);
        assert_eq!(window.end_ms - window.start_ms, HOUR_MS);
        assert!(window.contains(now_ms));
        assert!(window.contains(now_ms - HOUR_MS + 1));
        assert!(!window.contains(now_ms - HOUR_MS));
    }

    #[test]
    fn absurd_clocks_are_clamped_not_panicking() {
        let berlin = tz("Europe/Berlin");
        for rule in [
            WindowRule::Day,
            WindowRule::Week,
            WindowRule::Month,
            WindowRule::Rolling {
                window_seconds: 31_536_000,
            },
        ] {
            let late = rule.window(berlin, i64::MAX);
            assert!(late.contains(NOW_MS_MAX), "{rule}");
            let early = rule.window(berlin, i64::MIN);
            assert!(early.contains(NOW_MS_MIN), "{rule}");
        }
    }

    #[test]
    fn rules_display_as_their_period() {
        let rolling = WindowRule::Rolling { window_seconds: 60 };
        assert_eq!(rolling.to_string(), "rolling 60 s");
        assert_eq!(WindowRule::Week.to_string(), "week");
    }
}
