//! Serialisers for the dates and instants that fill long responses (`#[serde(serialize_with
//! = ...)]`), writing each as one string. chrono's own `Serialize` hands serde_json a
//! `Display` (`collect_str`), and serde_json escapes every fragment the formatter writes,
//! digit pair by digit pair, on its own: in a page of fifty patients that was thousands
//! of calls. Here chrono formats the text first, the same text (its RFC 3339 with `Z` and
//! as many fractional digits as the instant needs, its `YYYY-MM-DD`), and serde_json
//! writes it once. The tests hold the two to the same output.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serializer;

/// An instant, as chrono's `Serialize` writes it: `2026-12-06T01:07:00.123Z`.
pub fn instant<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// An optional instant: `null`, or as [`instant`].
pub fn instant_or_null<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => instant(t, s),
        None => s.serialize_none(),
    }
}

/// A calendar date, as chrono's `Serialize` writes it: `1985-04-12`.
pub fn date<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_string())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Timelike};
    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "instant")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "instant_or_null")]
        maybe: Option<DateTime<Utc>>,
        #[serde(serialize_with = "date")]
        on: NaiveDate,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
        on: NaiveDate,
    }

    #[test]
    fn the_text_is_chronos_own() {
        let second = Utc.with_ymd_and_hms(2026, 12, 6, 1, 7, 9).single();
        let second = second.expect("a valid instant");
        let mut cases = Vec::new();
        // Whole seconds, milli-, micro- and nanoseconds: the fraction's length follows them.
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789, 5] {
            cases.push(second.with_nanosecond(nanos).expect("a valid fraction"));
        }
        // The first and the last years of four digits, and a leap second's instant.
        cases.push(
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0)
                .single()
                .expect("year 1"),
        );
        cases.push(
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
                .single()
                .expect("year 9999"),
        );
        cases.push(
            second
                .with_nanosecond(1_500_000_000)
                .expect("a leap second"),
        );
        for (i, at) in cases.into_iter().enumerate() {
            let on = at.date_naive();
            let maybe = (i % 2 == 0).then_some(at);
            let ours = serde_json::to_string(&Ours { at, maybe, on }).expect("serialises");
            let chronos = serde_json::to_string(&Chronos { at, maybe, on }).expect("serialises");
            assert_eq!(ours, chronos, "case {i}");
        }
    }
}
