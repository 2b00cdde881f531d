//! Appointments: booking and rescheduling under the database's exclusion constraints (a
//! double booking is a 409 listing what it clashes with), the status machine with its
//! history, the calendar, and availability computed on the server.

mod booking;
mod calendar;
mod queries;
mod status;
mod types;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
pub use booking::*;
pub use calendar::*;
use queries::*;
pub use status::*;
pub use types::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_appointments, book_appointment))
        .routes(routes!(get_appointment, reschedule_appointment))
        .routes(routes!(change_status))
        .routes(routes!(appointment_history))
        .routes(routes!(availability))
}
