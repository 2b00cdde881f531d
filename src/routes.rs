//! One place that merges every area's routes.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(crate::auth::routes::router())
        .merge(crate::clinic::router())
        .merge(crate::users::router())
        .merge(crate::audit::routes::router())
        .merge(crate::patients::routes::router())
        .merge(crate::chart::routes::router())
        .merge(crate::notes::router())
        .merge(crate::perio::router())
        .merge(crate::scheduling::operatories::router())
        .merge(crate::scheduling::hours::router())
        .merge(crate::scheduling::appointments::router())
}
