//! Property tests for the scheduling rules: any zone, any date, any booking.

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
