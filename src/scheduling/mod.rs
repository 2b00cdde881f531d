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
mod proptests {
    use super::*;
    use chrono::Timelike;
    use proptest::prelude::*;

    fn zone() -> impl Strategy<Value = Tz> {
        proptest::sample::select(chrono_tz::TZ_VARIANTS.to_vec())
    }

    /// Any date chrono can represent, weighted towards this era and the two ends.
    fn date() -> impl Strategy<Value = NaiveDate> {
        let day = |d: i32| NaiveDate::from_num_days_from_ce_opt(d).expect("in range");
        let (min, max) = (
            NaiveDate::MIN.num_days_from_ce(),
            NaiveDate::MAX.num_days_from_ce(),
        );
        let (y1900, y2100) = (
            NaiveDate::from_ymd_opt(1900, 1, 1)
                .expect("date")
                .num_days_from_ce(),
            NaiveDate::from_ymd_opt(2100, 1, 1)
                .expect("date")
                .num_days_from_ce(),
        );
        prop_oneof![
            4 => (y1900..y2100).prop_map(day),
            1 => (min..=max).prop_map(day),
            1 => prop_oneof![min..min + 3, max - 2..=max].prop_map(day),
        ]
    }

    /// Any wall time, leap seconds included.
    fn time() -> impl Strategy<Value = NaiveTime> {
        prop_oneof![
            4 => (0u32..24 * 60).prop_map(|m| NaiveTime::from_hms_opt(m / 60, m % 60, 0).expect("time")),
            1 => (0u32..86_400, 0u32..1_000_000_000)
                .prop_map(|(s, n)| NaiveTime::from_num_seconds_from_midnight_opt(s, n).expect("time")),
            1 => (0u32..24, 0u32..60, 1_000_000_000u32..2_000_000_000)
                .prop_map(|(h, m, n)| NaiveTime::from_hms_nano_opt(h, m, 59, n).expect("leap second")),
        ]
    }

    fn minute(m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(m / 60 % 24, m % 60, 0).expect("time")
    }

    fn local_interval() -> impl Strategy<Value = LocalInterval> {
        (0u32..24 * 60, 1u32..12 * 60).prop_map(|(start, len)| LocalInterval {
            start: minute(start),
            end: minute((start + len).min(24 * 60 - 1)),
        })
    }

    fn weekly() -> impl Strategy<Value = Vec<WeeklyInterval>> {
        proptest::collection::vec(
            (1u32..=7, local_interval())
                .prop_map(|(weekday, interval)| WeeklyInterval { weekday, interval }),
            0..8,
        )
    }

    fn offset_at(tz: Tz, at: DateTime<Utc>) -> Duration {
        Duration::seconds(
            tz.offset_from_utc_datetime(&at.naive_utc())
                .fix()
                .local_minus_utc()
                .into(),
        )
    }

    /// A change of a zone's offset: the instant, and the offsets before and after it,
    /// with no other change within six hours either side.
    #[derive(Debug, Clone, Copy)]
    struct Transition {
        tz: Tz,
        at: DateTime<Utc>,
        before: Duration,
        after: Duration,
    }

    /// The first change of offset in the year after `from`, if there is one.
    fn next_transition(tz: Tz, from: DateTime<Utc>) -> Option<Transition> {
        let at = |secs: i64| DateTime::from_timestamp(secs, 0).expect("in range");
        let step = 6 * 3600;
        let mut lo = from.timestamp();
        let start = offset_at(tz, at(lo));
        while offset_at(tz, at(lo + step)) == start {
            lo += step;
            if lo - from.timestamp() > 366 * 86_400 {
                return None;
            }
        }
        // The offset is `start` at lo and different at hi: narrow down to the second.
        let mut hi = lo + step;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if offset_at(tz, at(mid)) == start {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let t = Transition {
            tz,
            at: at(hi),
            before: start,
            after: offset_at(tz, at(hi)),
        };
        let quiet = (1..=24).all(|k| {
            offset_at(tz, t.at - Duration::minutes(15 * k)) == t.before
                && offset_at(tz, t.at + Duration::minutes(15 * (k - 1))) == t.after
        });
        quiet.then_some(t)
    }

    fn transition() -> impl Strategy<Value = Transition> {
        (zone(), 1900i32..2100, 0i64..365 * 86_400).prop_filter_map(
            "no change of offset that year",
            |(tz, year, into)| {
                let from =
                    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).single()? + Duration::seconds(into);
                next_transition(tz, from)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn local_to_utc_answers_for_any_wall_time_in_any_zone(tz in zone(), d in date(), t in time()) {
            let at = local_to_utc(tz, d, t);
            // A wall time that exists once is read as exactly that instant.
            if let LocalResult::Single(x) = tz.from_local_datetime(&d.and_time(t)) {
                prop_assert_eq!(at, x.with_timezone(&Utc));
            }
        }

        #[test]
        fn wall_times_around_a_change_of_offset_are_read_as_documented(
            tr in transition(),
            minutes in -180i64..180,
            seconds in 0i64..60,
        ) {
            // The wall clock just before the change reads `tr.at + before`.
            let naive = (tr.at + tr.before).naive_utc() + Duration::minutes(minutes) + Duration::seconds(seconds);
            let at = local_to_utc(tr.tz, naive.date(), naive.time());
            // Before the change, in a gap (moved forward by the gap) and in a repeated hour
            // (its first occurrence), the offset before the change reads it; after, the new one.
            let changed_by = naive - (tr.at + tr.before.max(tr.after)).naive_utc();
            let offset = if changed_by < Duration::zero() { tr.before } else { tr.after };
            prop_assert_eq!(
                at,
                (naive - offset).and_utc(),
                "{} {} (offset {} → {} at {})",
                tr.tz.name(), naive, tr.before, tr.after, tr.at
            );
        }

        #[test]
        fn working_intervals_are_ordered_apart_and_cover_the_day_template(
            tz in zone(),
            d in date(),
            weekly in weekly(),
        ) {
            let out = working_intervals(tz, d, &weekly, &[]);
            for (s, e) in &out {
                prop_assert!(s < e);
            }
            // Merged: ordered with a gap between any two.
            prop_assert!(out.windows(2).all(|w| w[0].1 < w[1].0), "{:?}", out);
            let weekday = d.weekday().number_from_monday();
            for w in weekly.iter().filter(|w| w.weekday == weekday) {
                let (s, e) = (local_to_utc(tz, d, w.interval.start), local_to_utc(tz, d, w.interval.end));
                if s < e {
                    prop_assert!(out.iter().any(|(os, oe)| *os <= s && e <= *oe), "{:?} lost", w);
                }
            }
            // Nothing is added: every stretch starts and ends where some interval does.
            for (s, e) in &out {
                let todays = weekly.iter().filter(|w| w.weekday == weekday);
                prop_assert!(todays.clone().any(|w| local_to_utc(tz, d, w.interval.start) == *s));
                prop_assert!(todays.clone().any(|w| local_to_utc(tz, d, w.interval.end) == *e));
            }
        }

        #[test]
        fn an_exception_replaces_or_cancels_the_day(
            tz in zone(),
            d in date(),
            weekly in weekly(),
            replacement in proptest::collection::vec(local_interval(), 0..3),
            other_day in any::<bool>(),
        ) {
            let exception_day = if other_day { d.succ_opt().or_else(|| d.pred_opt()).expect("a day") } else { d };
            let day_off = [DayException { date: exception_day, interval: None }];
            let replaced: Vec<DayException> = replacement
                .iter()
                .map(|i| DayException { date: exception_day, interval: Some(*i) })
                .collect();
            let plain = working_intervals(tz, d, &weekly, &[]);
            if other_day {
                prop_assert_eq!(working_intervals(tz, d, &weekly, &day_off), plain.clone());
                prop_assert_eq!(working_intervals(tz, d, &weekly, &replaced), plain);
            } else {
                prop_assert!(working_intervals(tz, d, &weekly, &day_off).is_empty());
                let as_template: Vec<WeeklyInterval> = replacement
                    .iter()
                    .map(|i| WeeklyInterval { weekday: d.weekday().number_from_monday(), interval: *i })
                    .collect();
                let expected = if replacement.is_empty() { plain } else { working_intervals(tz, d, &as_template, &[]) };
                prop_assert_eq!(working_intervals(tz, d, &weekly, &replaced), expected);
            }
        }

        #[test]
        fn free_slots_lie_on_the_grid_inside_working_hours_and_clear_of_bookings(
            day in 0i64..3650,
            hours in proptest::collection::vec((0i64..24 * 60, 5i64..600), 0..4),
            bookings in proptest::collection::vec((0i64..36 * 60, 1i64..240), 0..6),
            duration in 5i64..240,
            grid in 5i64..60,
            not_before in 0i64..36 * 60,
        ) {
            let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("instant") + Duration::days(day);
            let at = |m: i64| base + Duration::minutes(m);
            // Working intervals as working_intervals gives them: ordered and apart.
            let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
            let mut sorted = hours.clone();
            sorted.sort();
            for (s, len) in sorted {
                match intervals.last_mut() {
                    Some(last) if at(s) <= last.1 => last.1 = last.1.max(at(s + len)),
                    _ => intervals.push((at(s), at(s + len))),
                }
            }
            let busy: Vec<_> = bookings.iter().map(|(s, len)| (at(*s), at(s + len))).collect();
            let (duration, grid, not_before) = (Duration::minutes(duration), Duration::minutes(grid), at(not_before));
            let slots = free_slots(&intervals, &busy, duration, grid, not_before);
            for (s, e) in &slots {
                prop_assert_eq!(*e - *s, duration);
                prop_assert!(*s >= not_before);
                let (is, _) = intervals
                    .iter()
                    .find(|(is, ie)| is <= s && e <= ie)
                    .ok_or_else(|| TestCaseError::fail(format!("{s}–{e} outside working hours")))?;
                prop_assert_eq!((*s - *is).num_seconds() % grid.num_seconds(), 0, "off the grid");
                prop_assert!(busy.iter().all(|(bs, be)| e <= bs || be <= s), "{}–{} clashes", s, e);
            }
            prop_assert!(slots.windows(2).all(|w| w[0].0 < w[1].0), "starts repeat or go back");
            // And none is missed: every grid start that fits is offered.
            for (is, ie) in &intervals {
                let mut t = *is;
                while t + duration <= *ie {
                    let e = t + duration;
                    if t >= not_before && busy.iter().all(|(bs, be)| e <= *bs || *be <= t) {
                        prop_assert!(slots.contains(&(t, e)), "{} missing", t);
                    }
                    t += grid;
                }
            }
        }

        #[test]
        fn availability_never_panics_on_any_day_in_any_zone(
            tz in zone(),
            d in date(),
            weekly in weekly(),
            duration in 5i64..=480,
            grid in 5i64..=60,
        ) {
            let intervals = working_intervals(tz, d, &weekly, &[]);
            let slots = free_slots(&intervals, &[], Duration::minutes(duration), Duration::minutes(grid), DateTime::<Utc>::MIN_UTC);
            prop_assert!(slots.iter().all(|(s, e)| intervals.iter().any(|(is, ie)| is <= s && e <= ie)));
            prop_assert!(slots.iter().all(|(s, _)| s.time().nanosecond() < 1_000_000_000));
        }
    }
}
