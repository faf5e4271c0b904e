//! Maintenance windows: when a vehicle may install (`Mon-Fri 01:00-05:00 Europe/Berlin`).
//!
//! The director only instructs a vehicle inside its window, and signs the window into the
//! instruction (the `maintenance_window` custom field of its director target) so that the
//! primary, too, refuses to install outside it: a vehicle whose clock says it is outside the
//! window postpones, whatever the server thinks. Pure: the caller gives the time.
//!
//! Syntax: `DAYS HH:MM-HH:MM ZONE`. `DAYS` is `daily`, a day (`Sat`), a range (`Mon-Fri`,
//! `Fri-Mon`) or a comma list of those (`Mon,Wed,Fri-Sun`). The time range is local to
//! `ZONE` (an IANA name such as `Europe/Berlin`, or `UTC`); an end before the start crosses
//! midnight (`Sat 22:00-02:00` runs into Sunday), and the days name the day it starts.
//! Local times a clock change skips or repeats are read as the zone says at that instant.
//!
//! Zones come from the IANA database bundled by `jiff` (compact TZif, about a tenth of the
//! size chrono-tz compiled into the vehicle agent), never from the file system: the core does
//! no I/O, and a vehicle's own zoneinfo may be missing or stale.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveTime, Utc};
use jiff::tz::TimeZone;

use crate::error::{Error, Result};

/// A parsed maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Days it may start on (Monday first).
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
    /// The zone's IANA name as the database spells it (what is signed).
    zone_name: String,
    zone: TimeZone,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn bad(spec: &str, why: impl fmt::Display) -> Error {
    Error::malformed(
        format!("maintenance window {spec:?}"),
        format!("{why} (expected e.g. `Mon-Fri 01:00-05:00 Europe/Berlin`)"),
    )
}

fn day(spec: &str, name: &str) -> Result<usize> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .ok_or_else(|| bad(spec, format!("{name:?} is not a day (Mon … Sun)")))
}

fn time(spec: &str, hhmm: &str) -> Result<NaiveTime> {
    NaiveTime::parse_from_str(hhmm, "%H:%M")
        .map_err(|_| bad(spec, format!("{hhmm:?} is not a time of day (HH:MM)")))
}

impl FromStr for MaintenanceWindow {
    type Err = Error;

    fn from_str(spec: &str) -> Result<MaintenanceWindow> {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        let [days_part, times, zone] = parts.as_slice() else {
            return Err(bad(spec, "three parts are needed: days, times, time zone"));
        };
        let mut days = [false; 7];
        if days_part.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for item in days_part.split(',') {
                match item.split_once('-') {
                    Some((a, b)) => {
                        let (mut i, last) = (day(spec, a)?, day(spec, b)?);
                        loop {
                            if let Some(d) = days.get_mut(i) {
                                *d = true;
                            }
                            if i == last {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => {
                        if let Some(d) = days.get_mut(day(spec, item)?) {
                            *d = true;
                        }
                    }
                }
            }
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| bad(spec, format!("{times:?} is not a range HH:MM-HH:MM")))?;
        let (start, end) = (time(spec, start)?, time(spec, end)?);
        if start == end {
            return Err(bad(spec, "the window is empty (start equals end)"));
        }
        let tz = TimeZone::get(zone)
            .map_err(|_| bad(spec, format!("{zone:?} is not an IANA time zone")))?;
        Ok(MaintenanceWindow {
            days,
            start,
            end,
            zone_name: tz.iana_name().unwrap_or(zone).to_owned(),
            zone: tz,
        })
    }
}

impl fmt::Display for MaintenanceWindow {
    /// The canonical spelling (what the director signs): days listed, `HH:MM-HH:MM`, zone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = if self.days == [true; 7] {
            vec!["daily"]
        } else {
            DAYS.iter()
                .zip(self.days)
                .filter(|(_, on)| *on)
                .map(|(d, _)| *d)
                .collect()
        };
        write!(
            f,
            "{} {}-{} {}",
            days.join(","),
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.zone_name
        )
    }
}

impl MaintenanceWindow {
    /// Whether `now` is inside the window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        // Instants jiff cannot represent (beyond ±9999 years) are outside every window.
        let Ok(instant) = jiff::Timestamp::from_second(now.timestamp()) else {
            return false;
        };
        let local = self.zone.to_datetime(instant);
        let t = NaiveTime::from_hms_opt(
            u32::try_from(local.hour()).unwrap_or(0),
            u32::try_from(local.minute()).unwrap_or(0),
            u32::try_from(local.second()).unwrap_or(0),
        )
        .unwrap_or(NaiveTime::MIN);
        let weekday = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(0);
        let starts_on = |d: usize| self.days.get(d).copied().unwrap_or(false);
        if self.start < self.end {
            starts_on(weekday) && self.start <= t && t < self.end
        } else {
            // Crosses midnight: the evening part on its own day, the morning part on the
            // day after the one it started.
            let yesterday = (weekday + 6) % 7;
            (starts_on(weekday) && t >= self.start) || (starts_on(yesterday) && t < self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn a_weekday_window_in_berlin_follows_local_time_and_summer_time() {
        let w: MaintenanceWindow = "Mon-Fri 01:00-05:00 Europe/Berlin".parse().unwrap();
        // Wednesday 2 December 2026, 00:30 UTC = 01:30 in Berlin (CET, UTC+1): inside.
        assert!(w.contains(at(2026, 12, 2, 0, 30)));
        // 04:30 UTC = 05:30 Berlin: after.
        assert!(!w.contains(at(2026, 12, 2, 4, 30)));
        // 23:30 UTC on Tuesday = 00:30 Wednesday in Berlin: before.
        assert!(!w.contains(at(2026, 12, 1, 23, 30)));
        // Summer (CEST, UTC+2): 23:30 UTC Tuesday 30 June = 01:30 Wednesday: inside.
        assert!(w.contains(at(2026, 6, 30, 23, 30)));
        // Saturday 5 December, 02:00 Berlin: not a working day.
        assert!(!w.contains(at(2026, 12, 5, 1, 0)));
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_starts() {
        let w: MaintenanceWindow = "Sat 22:00-02:00 UTC".parse().unwrap();
        assert!(w.contains(at(2026, 12, 5, 23, 0)), "Saturday night");
        assert!(w.contains(at(2026, 12, 6, 1, 0)), "early Sunday");
        assert!(!w.contains(at(2026, 12, 6, 23, 0)), "Sunday night");
        assert!(!w.contains(at(2026, 12, 5, 1, 0)), "early Saturday");
        let wrap: MaintenanceWindow = "Fri-Mon 00:00-06:00 UTC".parse().unwrap();
        assert_eq!(wrap.to_string(), "Mon,Fri,Sat,Sun 00:00-06:00 UTC");
    }

    #[test]
    fn a_zone_is_signed_as_the_database_spells_it_and_keeps_its_rules() {
        let w: MaintenanceWindow = "daily 01:00-05:00 europe/berlin".parse().unwrap();
        assert_eq!(w.to_string(), "daily 01:00-05:00 Europe/Berlin");
        // New York's summer time began at 02:00 on 8 March 2026 (EST UTC-5 → EDT UTC-4).
        let ny: MaintenanceWindow = "Sun 03:00-04:00 America/New_York".parse().unwrap();
        assert!(ny.contains(at(2026, 3, 8, 7, 30)), "03:30 EDT");
        assert!(!ny.contains(at(2026, 3, 8, 8, 30)), "04:30 EDT");
        assert!(
            ny.contains(at(2026, 3, 15, 7, 30)),
            "a week later, same local time"
        );
        assert!(
            !ny.contains(at(2026, 3, 1, 7, 30)),
            "a week before: 02:30 EST"
        );
    }

    #[test]
    fn windows_print_canonically_and_bad_ones_say_why() {
        let w: MaintenanceWindow = "daily 01:00-05:00 America/New_York".parse().unwrap();
        assert_eq!(w.to_string(), "daily 01:00-05:00 America/New_York");
        for (spec, why) in [
            ("Mon-Fri 01:00-05:00", "three parts"),
            ("Mon-Fry 01:00-05:00 UTC", "not a day"),
            ("Mon 1am-5am UTC", "not a time of day"),
            ("Mon 01:00 UTC", "not a range"),
            ("Mon 01:00-01:00 UTC", "empty"),
            ("Mon 01:00-05:00 Mars/Olympus", "IANA"),
        ] {
            let e = spec.parse::<MaintenanceWindow>().unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}
