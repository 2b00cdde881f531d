//! `/providers/{id}/working-hours`: the weekly template and dated exceptions, in the
//! clinic's local time.

use axum::extract::State;
use axum::Json;
use chrono::{Datelike, NaiveDate, NaiveTime};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{providers, DayException, LocalInterval, WeeklyInterval};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppResult, Problem};
use crate::http::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_working_hours, put_working_hours))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeeklyHours {
    /// ISO weekday: Monday = 1 … Sunday = 7.
    #[schema(minimum = 1, maximum = 7)]
    weekday: u32,
    /// Local time `HH:MM` (whole minutes; `HH:MM:00` is taken too).
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9](:00)?$")]
    start: String,
    /// Local time `HH:MM`, after `start` (422); the intervals of a day must not overlap (422).
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9](:00)?$")]
    end: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoursException {
    date: NaiveDate,
    /// With `end` (both or neither, else 422): that day's hours instead of the template;
    /// without: a day off.
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9](:00)?$")]
    start: Option<String>,
    /// After `start` (422).
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9](:00)?$")]
    end: Option<String>,
    #[schema(schema_with = crate::validate::schema::text_200_or_null)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "weekly": [
        {"weekday": 1, "start": "08:00", "end": "12:00"},
        {"weekday": 1, "start": "13:00", "end": "17:00"}
    ],
    "exceptions": [{"date": "2029-12-24", "reason": "Christmas Eve"}]
}))]
pub struct WorkingHours {
    weekly: Vec<WeeklyHours>,
    #[serde(default)]
    exceptions: Vec<HoursException>,
}

/// `HH:MM` or `HH:MM:SS`, two digits each, exactly.
fn parse_time(s: &str) -> Option<NaiveTime> {
    let b = s.as_bytes();
    let two = |i: usize| -> Option<u32> {
        let (x, y) = (*b.get(i)?, *b.get(i + 1)?);
        (x.is_ascii_digit() && y.is_ascii_digit())
            .then(|| u32::from(x - b'0') * 10 + u32::from(y - b'0'))
    };
    let (h, m) = (two(0)?, two(3)?);
    if b.get(2) != Some(&b':') {
        return None;
    }
    // Whole minutes, as the API shows them: `09:00:30` would be kept but shown as 09:00,
    // and the leap second `23:59:60` would be stored as 24:00 and read as 00:00.
    match b.len() {
        5 => {}
        8 if &b[5..] == b":00" => {}
        _ => return None,
    }
    NaiveTime::from_hms_opt(h, m, 0)
}

/// The dates the API reads and writes: `YYYY-MM-DD` with four digits, which PostgreSQL
/// also stores (chrono parses years far beyond its range).
pub(crate) fn plain_date(d: NaiveDate) -> bool {
    (1..=9999).contains(&d.year())
}

fn fmt_time(t: NaiveTime) -> String {
    t.format("%H:%M").to_string()
}

fn overlaps(list: &[LocalInterval]) -> bool {
    let mut sorted = list.to_vec();
    sorted.sort_by_key(|i| i.start);
    sorted.windows(2).any(|w| w[1].start < w[0].end)
}

/// The provider's weekly template, by weekday and start.
async fn load_weekly(tx: &mut Tx, provider: Uuid) -> AppResult<Vec<(u32, NaiveTime, NaiveTime)>> {
    let rows = sqlx::query!(
        "SELECT weekday, start_time, end_time FROM working_hours WHERE provider_id = $1 ORDER BY weekday, start_time",
        provider
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.weekday as u32, r.start_time, r.end_time))
        .collect())
}

/// The provider's template and the exceptions between two dates (inclusive).
pub async fn load(
    tx: &mut Tx,
    provider: Uuid,
    from: NaiveDate,
    to: NaiveDate,
) -> AppResult<(Vec<WeeklyInterval>, Vec<DayException>)> {
    let weekly = load_weekly(tx, provider).await?;
    let exceptions = sqlx::query!(
        "SELECT on_date, start_time, end_time FROM working_hour_exceptions \
         WHERE provider_id = $1 AND on_date BETWEEN $2 AND $3 ORDER BY on_date, start_time",
        provider,
        from,
        to
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok((
        weekly
            .into_iter()
            .map(|(weekday, start, end)| WeeklyInterval {
                weekday,
                interval: LocalInterval { start, end },
            })
            .collect(),
        exceptions
            .into_iter()
            .map(|r| DayException {
                date: r.on_date,
                interval: r
                    .start_time
                    .zip(r.end_time)
                    .map(|(start, end)| LocalInterval { start, end }),
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProviderPath {
    /// The provider's user id.
    id: Uuid,
}

async fn read(tx: &mut Tx, id: Uuid) -> AppResult<WorkingHours> {
    let weekly = load_weekly(tx, id).await?;
    let exceptions = sqlx::query!(
        "SELECT on_date, start_time, end_time, reason FROM working_hour_exceptions WHERE provider_id = $1 \
         ORDER BY on_date, start_time",
        id
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(WorkingHours {
        weekly: weekly
            .into_iter()
            .map(|(weekday, s, e)| WeeklyHours {
                weekday,
                start: fmt_time(s),
                end: fmt_time(e),
            })
            .collect(),
        exceptions: exceptions
            .into_iter()
            .map(|r| HoursException {
                date: r.on_date,
                start: r.start_time.map(fmt_time),
                end: r.end_time.map(fmt_time),
                reason: r.reason,
            })
            .collect(),
    })
}

/// A provider's working hours.
#[utoipa::path(get, path = "/providers/{id}/working-hours", tag = "scheduling", security(("bearer" = [])),
    params(ProviderPath),
    responses((status = 200, description = "Working hours", body = WorkingHours),
              (status = 404, description = "No such provider in your clinic", body = Problem)))]
pub async fn get_working_hours(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ProviderPath { id }): ApiPath<ProviderPath>,
) -> AppResult<Json<WorkingHours>> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("working_hours.read", "user").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    providers::ensure_exists(&mut tx, id).await?;
    let hours = read(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(hours))
}

/// Replaces a provider's working hours (owner and admin).
#[utoipa::path(put, path = "/providers/{id}/working-hours", tag = "scheduling", security(("bearer" = [])),
    params(ProviderPath),
    request_body = WorkingHours,
    responses((status = 200, description = "The new working hours", body = WorkingHours),
              (status = 403, description = "Role lacks schedule.manage", body = Problem),
              (status = 404, description = "No such provider in your clinic", body = Problem),
              (status = 422, description = "Invalid or overlapping intervals", body = Problem)))]
pub async fn put_working_hours(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ProviderPath { id }): ApiPath<ProviderPath>,
    ApiJson(body): ApiJson<WorkingHours>,
) -> AppResult<Json<WorkingHours>> {
    caller
        .authorize(&state, Permission::ScheduleManage, || {
            Event::new("working_hours.update", "user").resource(id)
        })
        .await?;
    let mut errors = Errors::default();
    let mut weekly: Vec<(u32, LocalInterval)> = Vec::new();
    for (i, w) in body.weekly.iter().enumerate() {
        if !(1..=7).contains(&w.weekday) {
            errors.add(
                format!("weekly[{i}].weekday"),
                "must be 1 (Monday) to 7 (Sunday)",
            );
        }
        match (parse_time(&w.start), parse_time(&w.end)) {
            (Some(start), Some(end)) if end > start => {
                weekly.push((w.weekday, LocalInterval { start, end }))
            }
            (Some(_), Some(_)) => errors.add(format!("weekly[{i}].end"), "must be after start"),
            (None, _) => errors.add(format!("weekly[{i}].start"), "must be a time HH:MM"),
            (_, None) => errors.add(format!("weekly[{i}].end"), "must be a time HH:MM"),
        }
    }
    for day in 1..=7 {
        let list: Vec<LocalInterval> = weekly.iter().filter(|w| w.0 == day).map(|w| w.1).collect();
        if overlaps(&list) {
            errors.add("weekly", format!("intervals on weekday {day} overlap"));
        }
    }
    let mut exceptions: Vec<(NaiveDate, Option<LocalInterval>, Option<String>)> = Vec::new();
    for (i, e) in body.exceptions.iter().enumerate() {
        if !plain_date(e.date) {
            errors.add(format!("exceptions[{i}].date"), "must be a date YYYY-MM-DD");
        }
        let interval = match (&e.start, &e.end) {
            (None, None) => None,
            (Some(s), Some(en)) => match (parse_time(s), parse_time(en)) {
                (Some(start), Some(end)) if end > start => Some(LocalInterval { start, end }),
                _ => {
                    errors.add(
                        format!("exceptions[{i}]"),
                        "start and end must be times HH:MM, end after start",
                    );
                    None
                }
            },
            _ => {
                errors.add(
                    format!("exceptions[{i}]"),
                    "give both start and end, or neither for a day off",
                );
                None
            }
        };
        let reason = e
            .reason
            .as_deref()
            .map(|r| errors.text(&format!("exceptions[{i}].reason"), r, 200));
        exceptions.push((e.date, interval, reason));
    }
    let mut dates: Vec<NaiveDate> = exceptions.iter().map(|e| e.0).collect();
    dates.sort();
    dates.dedup();
    for date in dates {
        let same: Vec<&(NaiveDate, Option<LocalInterval>, Option<String>)> =
            exceptions.iter().filter(|e| e.0 == date).collect();
        if same.len() > 1 && same.iter().any(|e| e.1.is_none()) {
            errors.add(
                "exceptions",
                format!("{date} is both a day off and has hours"),
            );
        }
        let list: Vec<LocalInterval> = same.iter().filter_map(|e| e.1).collect();
        if overlaps(&list) {
            errors.add("exceptions", format!("intervals on {date} overlap"));
        }
    }
    errors.finish()?;

    let mut tx = caller.begin(&state).await?;
    providers::ensure_exists(&mut tx, id).await?;
    // Serialise concurrent replacements of the same provider's hours.
    sqlx::query!("SELECT 1 AS locked FROM users WHERE id = $1 FOR UPDATE", id)
        .fetch_all(&mut *tx)
        .await?;
    sqlx::query!("DELETE FROM working_hours WHERE provider_id = $1", id)
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "DELETE FROM working_hour_exceptions WHERE provider_id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    for (weekday, i) in &weekly {
        sqlx::query!(
            "INSERT INTO working_hours (clinic_id, provider_id, weekday, start_time, end_time) VALUES ($1, $2, $3, $4, $5)",
            caller.clinic_id,
            id,
            *weekday as i16,
            i.start,
            i.end
        )
        .execute(&mut *tx)
        .await?;
    }
    for (date, i, reason) in &exceptions {
        sqlx::query!(
            "INSERT INTO working_hour_exceptions (clinic_id, id, provider_id, on_date, start_time, end_time, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            caller.clinic_id,
            Uuid::now_v7(),
            id,
            date,
            i.map(|x| x.start),
            i.map(|x| x.end),
            reason.as_deref()
        )
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("working_hours.update", "user").resource(id),
    )
    .await?;
    let hours = read(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(hours))
}

#[cfg(test)]
mod proptests {
    use super::*;
    use chrono::Timelike;
    use proptest::prelude::*;

    fn time_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,2}:[0-9]{1,2}",
            "[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}",
            "[ 0-9:.apmAPM+-]{0,10}",
            any::<String>(),
        ]
    }

    fn interval() -> impl Strategy<Value = LocalInterval> {
        (0u32..24 * 60, 1u32..24 * 60).prop_filter_map("ends after midnight", |(start, len)| {
            let end = start + len;
            (end < 24 * 60).then(|| LocalInterval {
                start: NaiveTime::from_hms_opt(start / 60, start % 60, 0).expect("time"),
                end: NaiveTime::from_hms_opt(end / 60, end % 60, 0).expect("time"),
            })
        })
    }

    #[test]
    fn seconds_and_leap_seconds_are_refused() {
        for bad in ["09:00:30", "23:59:60", "24:00", "9", "09:60", "noon"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(parse_time("09:30:00"), NaiveTime::from_hms_opt(9, 30, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_wall_clock_minute_parses(h in 0u32..24, m in 0u32..60) {
            let t = NaiveTime::from_hms_opt(h, m, 0).expect("time");
            prop_assert_eq!(parse_time(&format!("{h:02}:{m:02}")), Some(t));
            prop_assert_eq!(parse_time(&format!("{h:02}:{m:02}:00")), Some(t));
            prop_assert_eq!(fmt_time(t), format!("{h:02}:{m:02}"));
        }

        #[test]
        fn an_accepted_time_reads_back_as_it_was_stored(s in time_like()) {
            // What the API shows (HH:MM) must be the time it keeps and schedules with.
            if let Some(t) = parse_time(&s) {
                prop_assert_eq!(parse_time(&fmt_time(t)), Some(t), "{:?} kept as {:?}", s, t);
                prop_assert!(t.nanosecond() < 1_000_000_000, "{:?} is a leap second", s);
            }
        }

        #[test]
        fn overlap_means_some_two_intervals_share_time(
            list in proptest::collection::vec(interval(), 0..6),
        ) {
            let pairwise = list.iter().enumerate().any(|(i, a)| {
                list.iter().skip(i + 1).any(|b| a.start < b.end && b.start < a.end)
            });
            prop_assert_eq!(overlaps(&list), pairwise);
        }
    }
}
