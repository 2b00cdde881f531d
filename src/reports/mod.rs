//! Reports: the day sheet, one local day of the clinic at a glance. A day is read in the
//! clinic's time zone, so a day with a DST change is 23 or 25 hours long.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiQuery;
use crate::scheduling::local_to_utc;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(day_sheet))
}

/// Appointments starting in the day, by status.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct AppointmentCounts {
    scheduled: i64,
    confirmed: i64,
    arrived: i64,
    in_chair: i64,
    completed: i64,
    cancelled: i64,
    no_show: i64,
    total: i64,
}

/// Payments received in the day, by method, in minor units.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Collections {
    cash: i64,
    card: i64,
    bank_transfer: i64,
    check: i64,
    total_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DaySheet {
    date: NaiveDate,
    timezone: String,
    /// The day's first instant (local midnight) in UTC.
    from: DateTime<Utc>,
    /// The next day's first instant in UTC (the day is [from, to)).
    to: DateTime<Utc>,
    appointments: AppointmentCounts,
    /// Fees of procedures charged in the day, less charges reversed in it.
    production_cents: i64,
    collections: Collections,
    /// Adjustments posted in the day (signed: negative lowers what patients owe).
    adjustments_cents: i64,
    /// Refunds paid out in the day.
    refunds_cents: i64,
    /// Patients registered in the day.
    new_patients: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DaySheetParams {
    /// The day, in the clinic's time zone.
    date: NaiveDate,
}

/// The day sheet for one day in the clinic's time zone (owner, admin, billing, front desk).
#[utoipa::path(get, path = "/reports/day-sheet", tag = "reports", security(("bearer" = [])),
    params(DaySheetParams),
    responses(
        (status = 200, description = "The day sheet", body = DaySheet),
        (status = 400, description = "Missing or malformed date", body = Problem),
        (status = 403, description = "Role lacks ledger.read", body = Problem)))]
pub async fn day_sheet(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<DaySheetParams>,
) -> AppResult<Json<DaySheet>> {
    let event = || Event::new("report.day_sheet", "report");
    caller
        .authorize(&state, Permission::LedgerRead, event)
        .await?;
    let next = p
        .date
        .checked_add_days(Days::new(1))
        .filter(|_| crate::validate::storable_date(p.date))
        .ok_or_else(|| {
            AppError::BadRequest(
                "invalid query parameters: `date` must be a date in the years 1 to 9999".into(),
            )
        })?;
    let mut tx = caller.begin(&state).await?;
    let tz = crate::clinic::timezone(&state, &mut tx, caller.clinic_id).await?;
    let from = local_to_utc(tz, p.date, NaiveTime::MIN);
    let to = local_to_utc(tz, next, NaiveTime::MIN);
    let mut appointments = AppointmentCounts::default();
    let counts = sqlx::query!(
        r#"SELECT status, count(*) AS "n!" FROM appointments
           WHERE start_at >= $1 AND start_at < $2 GROUP BY status"#,
        from,
        to
    )
    .fetch_all(&mut *tx)
    .await?;
    for c in counts {
        let slot = match c.status.as_str() {
            "scheduled" => &mut appointments.scheduled,
            "confirmed" => &mut appointments.confirmed,
            "arrived" => &mut appointments.arrived,
            "in_chair" => &mut appointments.in_chair,
            "completed" => &mut appointments.completed,
            "cancelled" => &mut appointments.cancelled,
            _ => &mut appointments.no_show,
        };
        *slot += c.n;
        appointments.total += c.n;
    }
    // One pass over the day's journal: receivable lines give production, adjustments and
    // refunds; the payment accounts' debits give collections.
    let money = sqlx::query!(
        r#"SELECT
             coalesce(sum(l.amount_cents) FILTER (WHERE l.account = 'receivable'
                 AND (t.kind = 'charge' OR (t.kind = 'reversal' AND o.kind = 'charge'))), 0)::bigint AS "production!",
             coalesce(sum(l.amount_cents) FILTER (WHERE l.account = 'receivable'
                 AND (t.kind = 'adjustment' OR (t.kind = 'reversal' AND o.kind = 'adjustment'))), 0)::bigint AS "adjustments!",
             coalesce(-sum(l.amount_cents) FILTER (WHERE t.kind = 'refund'
                 AND l.account IN ('cash', 'card', 'bank_transfer', 'check', 'stripe_clearing')), 0)::bigint AS "refunds!",
             coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account = 'cash'), 0)::bigint AS "cash!",
             coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment'
                 AND l.account IN ('card', 'stripe_clearing')), 0)::bigint AS "card!",
             coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account = 'bank_transfer'), 0)::bigint AS "bank_transfer!",
             coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account = 'check'), 0)::bigint AS "check!"
           FROM ledger_transactions t
           JOIN ledger_lines l ON l.clinic_id = t.clinic_id AND l.transaction_id = t.id
           LEFT JOIN ledger_transactions o ON o.clinic_id = t.clinic_id AND o.id = t.reverses_id
           WHERE t.posted_at >= $1 AND t.posted_at < $2"#,
        from,
        to
    )
    .fetch_one(&mut *tx)
    .await?;
    let new_patients = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM patients WHERE created_at >= $1 AND created_at < $2"#,
        from,
        to
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event().details(serde_json::json!({ "date": p.date })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(DaySheet {
        date: p.date,
        timezone: tz.name().to_owned(),
        from,
        to,
        appointments,
        production_cents: money.production,
        collections: Collections {
            total_cents: money.cash + money.card + money.bank_transfer + money.check,
            cash: money.cash,
            card: money.card,
            bank_transfer: money.bank_transfer,
            check: money.check,
        },
        adjustments_cents: money.adjustments,
        refunds_cents: money.refunds,
        new_patients,
    }))
}
