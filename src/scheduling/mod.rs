//! Scheduling rules with no I/O: the appointment status machine, working hours in the
//! clinic's time zone (DST-safe), and the availability grid.

pub mod appointments;
pub mod hours;
pub mod operatories;
pub mod providers;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Scheduled,
    Confirmed,
    Arrived,
    InChair,
    Completed,
    Cancelled,
    NoShow,
}

impl AppointmentStatus {
    pub const ALL: [AppointmentStatus; 7] = [
        AppointmentStatus::Scheduled,
        AppointmentStatus::Confirmed,
        AppointmentStatus::Arrived,
        AppointmentStatus::InChair,
        AppointmentStatus::Completed,
        AppointmentStatus::Cancelled,
        AppointmentStatus::NoShow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentStatus::Scheduled => "scheduled",
            AppointmentStatus::Confirmed => "confirmed",
            AppointmentStatus::Arrived => "arrived",
            AppointmentStatus::InChair => "in_chair",
            AppointmentStatus::Completed => "completed",
            AppointmentStatus::Cancelled => "cancelled",
            AppointmentStatus::NoShow => "no_show",
        }
    }

    pub fn parse(s: &str) -> Option<AppointmentStatus> {
        AppointmentStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// `scheduled → confirmed → arrived → in_chair → completed`, `scheduled → arrived`,
    /// and `scheduled`/`confirmed` → `cancelled` or `no_show`. Nothing else.
    pub fn can_become(self, next: AppointmentStatus) -> bool {
        use AppointmentStatus::*;
        matches!(
            (self, next),
            (Scheduled, Confirmed)
                | (Scheduled, Arrived)
                | (Confirmed, Arrived)
                | (Arrived, InChair)
                | (InChair, Completed)
                | (Scheduled | Confirmed, Cancelled | NoShow)
        )
    }

    /// Whether the appointment still holds its slot.
    pub fn holds_slot(self) -> bool {
        !matches!(
            self,
            AppointmentStatus::Cancelled | AppointmentStatus::NoShow
        )
    }

    /// Only appointments that have not started may be moved.
    pub fn can_reschedule(self) -> bool {
        matches!(
            self,
            AppointmentStatus::Scheduled | AppointmentStatus::Confirmed
        )
    }
}

/// A local-time interval on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalInterval {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

/// A weekly template entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeeklyInterval {
    /// ISO weekday, Monday = 1.
    pub weekday: u32,
    pub interval: LocalInterval,
}

/// A dated exception: `None` is a day off; `Some` replaces the day's hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayException {
    pub date: NaiveDate,
    pub interval: Option<LocalInterval>,
}

/// A local wall-clock time on a date, as a UTC instant. A time skipped by a DST change
/// moves forward by the gap; a repeated time takes its first occurrence.
pub fn local_to_utc(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        LocalResult::None => {
            // Inside a gap (30 minutes on Lord Howe, an hour in most zones, two in Troll,
            // a whole day when Samoa crossed the date line). The offset after the gap reads
            // the wall time as an instant before the change; the offset in force there
            // reads it as the instant the gap's length later in wall time.
            let after = (1..=48).find_map(|h| {
                let later = naive.checked_add_signed(Duration::hours(h))?;
                tz.offset_from_local_datetime(&later).earliest()
            });
            after
                .and_then(|after| naive.checked_sub_offset(after.fix()))
                .map(|before_change| tz.offset_from_utc_datetime(&before_change).fix())
                .and_then(|before| naive.checked_sub_offset(before))
                .map(|t| t.and_utc())
                // Only at the ends of chrono's calendar, where no offset fits: read as UTC.
                .unwrap_or_else(|| naive.and_utc())
        }
    }
}

/// The provider's working intervals on a local date, as UTC instants.
pub fn working_intervals(
    tz: Tz,
    date: NaiveDate,
    weekly: &[WeeklyInterval],
    exceptions: &[DayException],
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let todays: Vec<&DayException> = exceptions.iter().filter(|e| e.date == date).collect();
    let local: Vec<LocalInterval> = if todays.is_empty() {
        let weekday = date.weekday().number_from_monday();
        weekly
            .iter()
            .filter(|w| w.weekday == weekday)
            .map(|w| w.interval)
            .collect()
    } else if todays.iter().any(|e| e.interval.is_none()) {
        vec![]
    } else {
        todays.iter().filter_map(|e| e.interval).collect()
    };
    let mut out: Vec<(DateTime<Utc>, DateTime<Utc>)> = local
        .into_iter()
        .map(|i| {
            (
                local_to_utc(tz, date, i.start),
                local_to_utc(tz, date, i.end),
            )
        })
        .filter(|(s, e)| e > s)
        .collect();
    out.sort();
    // Touching or overlapping intervals (09–12 and 12–17) are one stretch of work.
    let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Every grid start inside the working intervals where `duration` fits without touching a
/// busy interval, after `not_before`. Grid starts count from each interval's start.
pub fn free_slots(
    intervals: &[(DateTime<Utc>, DateTime<Utc>)],
    busy: &[(DateTime<Utc>, DateTime<Utc>)],
    duration: Duration,
    grid: Duration,
    not_before: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut slots = Vec::new();
    if grid <= Duration::zero() || duration <= Duration::zero() {
        return slots;
    }
    for (start, end) in intervals {
        let mut t = *start;
        // Checked: a working day at the end of chrono's calendar must not overflow.
        while let Some(slot_end) = t.checked_add_signed(duration).filter(|e| e <= end) {
            let clashes = busy.iter().any(|(bs, be)| t < *be && *bs < slot_end);
            if t >= not_before && !clashes {
                slots.push((t, slot_end));
            }
            match t.checked_add_signed(grid) {
                Some(next) => t = next,
                None => break,
            }
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use AppointmentStatus::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let allowed = [
            (Scheduled, Confirmed),
            (Scheduled, Arrived),
            (Confirmed, Arrived),
            (Arrived, InChair),
            (InChair, Completed),
            (Scheduled, Cancelled),
            (Scheduled, NoShow),
            (Confirmed, Cancelled),
            (Confirmed, NoShow),
        ];
        for from in AppointmentStatus::ALL {
            for to in AppointmentStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} → {to:?}"
                );
            }
        }
    }

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("date")
    }

    #[test]
    fn berlin_hours_keep_local_time_across_daylight_saving() {
        let weekly = [WeeklyInterval {
            weekday: 1,
            interval: LocalInterval {
                start: t(9, 0),
                end: t(17, 0),
            },
        }];
        let tz: Tz = "Europe/Berlin".parse().expect("tz");
        // Summer time starts on 29 March 2026: a Monday on each side of it.
        let winter = working_intervals(tz, d(2026, 3, 23), &weekly, &[]);
        assert_eq!(winter[0].0.to_rfc3339(), "2026-03-23T08:00:00+00:00");
        let summer = working_intervals(tz, d(2026, 3, 30), &weekly, &[]);
        assert_eq!(summer[0].0.to_rfc3339(), "2026-03-30T07:00:00+00:00");
        assert_eq!(summer[0].1.to_rfc3339(), "2026-03-30T15:00:00+00:00");
    }

    #[test]
    fn new_york_hours_keep_local_time_across_daylight_saving() {
        let weekly = [WeeklyInterval {
            weekday: 7,
            interval: LocalInterval {
                start: t(1, 0),
                end: t(5, 0),
            },
        }];
        let tz: Tz = "America/New_York".parse().expect("tz");
        // 2026-11-01 is the fall-back Sunday: 01:00 happens twice (EDT first), 05:00 is EST.
        let fall = working_intervals(tz, d(2026, 11, 1), &weekly, &[]);
        assert_eq!(fall[0].0.to_rfc3339(), "2026-11-01T05:00:00+00:00");
        assert_eq!(fall[0].1.to_rfc3339(), "2026-11-01T10:00:00+00:00");
        // 2026-03-08 is spring-forward: 02:00–03:00 does not exist; 01:00 is EST, 05:00 EDT.
        let spring = working_intervals(tz, d(2026, 3, 8), &weekly, &[]);
        assert_eq!(spring[0].0.to_rfc3339(), "2026-03-08T06:00:00+00:00");
        assert_eq!(spring[0].1.to_rfc3339(), "2026-03-08T09:00:00+00:00");
        let gap = local_to_utc(tz, d(2026, 3, 8), t(2, 30));
        assert_eq!(gap.to_rfc3339(), "2026-03-08T07:30:00+00:00");
    }

    #[test]
    fn a_wall_time_in_a_gap_moves_forward_by_the_gap_whatever_its_length() {
        let read = |zone: &str, date: NaiveDate, time: NaiveTime| {
            let tz: Tz = zone.parse().expect("tz");
            let at = local_to_utc(tz, date, time);
            (
                at.to_rfc3339(),
                at.with_timezone(&tz).format("%F %R").to_string(),
            )
        };
        // Lord Howe moves its clock 30 minutes: 02:00 → 02:30 on 4 October 2026.
        assert_eq!(
            read("Australia/Lord_Howe", d(2026, 10, 4), t(2, 15)),
            (
                "2026-10-03T15:45:00+00:00".into(),
                "2026-10-04 02:45".into()
            )
        );
        // Troll moves it two hours: 01:00 → 03:00 on 29 March 2026.
        assert_eq!(
            read("Antarctica/Troll", d(2026, 3, 29), t(1, 30)),
            (
                "2026-03-29T01:30:00+00:00".into(),
                "2026-03-29 03:30".into()
            )
        );
        // Samoa skipped 30 December 2011 when it crossed the date line.
        assert_eq!(
            read("Pacific/Apia", d(2011, 12, 30), t(9, 0)),
            (
                "2011-12-30T19:00:00+00:00".into(),
                "2011-12-31 09:00".into()
            )
        );
    }

    #[test]
    fn the_last_day_of_the_calendar_neither_panics_nor_offers_slots_past_it() {
        let weekly: Vec<WeeklyInterval> = (1..=7)
            .map(|weekday| WeeklyInterval {
                weekday,
                interval: LocalInterval {
                    start: t(20, 0),
                    end: t(23, 59),
                },
            })
            .collect();
        for zone in ["America/New_York", "UTC", "Pacific/Kiritimati"] {
            let tz: Tz = zone.parse().expect("tz");
            for date in [NaiveDate::MIN, NaiveDate::MAX] {
                let hours = working_intervals(tz, date, &weekly, &[]);
                let slots = free_slots(
                    &hours,
                    &[],
                    Duration::minutes(5),
                    Duration::minutes(60),
                    DateTime::<Utc>::MIN_UTC,
                );
                assert!(slots.iter().all(|(s, e)| s < e), "{zone} {date}");
            }
        }
    }

    #[test]
    fn exceptions_replace_or_cancel_a_day() {
        let tz: Tz = "UTC".parse().expect("tz");
        let weekly = [WeeklyInterval {
            weekday: 4,
            interval: LocalInterval {
                start: t(9, 0),
                end: t(17, 0),
            },
        }];
        let day = d(2026, 12, 24);
        assert_eq!(working_intervals(tz, day, &weekly, &[]).len(), 1);
        let off = [DayException {
            date: day,
            interval: None,
        }];
        assert!(working_intervals(tz, day, &weekly, &off).is_empty());
        let short = [DayException {
            date: day,
            interval: Some(LocalInterval {
                start: t(9, 0),
                end: t(12, 0),
            }),
        }];
        let hours = working_intervals(tz, day, &weekly, &short);
        assert_eq!(hours[0].1.to_rfc3339(), "2026-12-24T12:00:00+00:00");
    }

    #[test]
    fn touching_intervals_make_one_stretch() {
        let tz: Tz = "UTC".parse().expect("tz");
        let weekly = [
            WeeklyInterval {
                weekday: 1,
                interval: LocalInterval {
                    start: t(12, 0),
                    end: t(17, 0),
                },
            },
            WeeklyInterval {
                weekday: 1,
                interval: LocalInterval {
                    start: t(9, 0),
                    end: t(12, 0),
                },
            },
        ];
        let hours = working_intervals(tz, d(2026, 11, 30), &weekly, &[]);
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].0.format("%H:%M").to_string(), "09:00");
        assert_eq!(hours[0].1.format("%H:%M").to_string(), "17:00");
    }

    #[test]
    fn slots_fit_between_bookings_on_the_grid() {
        let at = |h: u32, m: u32| {
            Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0)
                .single()
                .expect("instant")
        };
        let intervals = [(at(9, 0), at(12, 0))];
        let busy = [(at(10, 0), at(10, 45))];
        let slots = free_slots(
            &intervals,
            &busy,
            Duration::minutes(30),
            Duration::minutes(15),
            at(0, 0),
        );
        let starts: Vec<String> = slots
            .iter()
            .map(|s| s.0.format("%H:%M").to_string())
            .collect();
        assert_eq!(
            starts,
            ["09:00", "09:15", "09:30", "10:45", "11:00", "11:15", "11:30"]
        );
        let later = free_slots(
            &intervals,
            &busy,
            Duration::minutes(30),
            Duration::minutes(15),
            at(11, 10),
        );
        assert_eq!(later.len(), 2, "only future starts");
    }
}

#[cfg(test)]
mod proptests;
