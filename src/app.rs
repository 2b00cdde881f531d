//! The one place the application is assembled: every clinic area's routes under
//! `/api/v2`, the OpenAPI document built from the same annotations, the docs page,
//! `/metrics`, and the middleware stack around them.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::http::query::StrictQuery;
use crate::openapi::{self, ApiDoc};
use crate::state::AppState;
use crate::{
    audit, auth, billing, chart, clinic, documents, health, http, notes, patients, reports,
    scheduling, treatment, users,
};

/// Every clinic area's routes.
fn areas() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes::router())
        .merge(auth::sessions::router())
        .merge(auth::reset::router())
        .merge(auth::verify::router())
        .merge(auth::mfa::router())
        .merge(clinic::routes::router())
        .merge(users::routes::router())
        .merge(users::mfa::router())
        .merge(crate::webhooks::routes::router())
        .merge(audit::routes::router())
        .merge(patients::routes::router())
        .merge(chart::routes::router())
        .merge(chart::perio::router())
        .merge(notes::routes::router())
        .merge(scheduling::operatories::router())
        .merge(scheduling::hours::router())
        .merge(scheduling::appointments::router())
        .merge(treatment::codes::router())
        .merge(treatment::procedures::router())
        .merge(treatment::plans::router())
        .merge(treatment::recalls::router())
        .merge(reports::router())
        .merge(billing::account::router())
        .merge(billing::payments::router())
        .merge(billing::adjustments::router())
        .merge(billing::invoices::router())
        .merge(billing::stripe::router())
        .merge(billing::stripe_events::router())
        .merge(documents::routes::router())
        .merge(crate::fhir::router())
}

/// The API routes and the OpenAPI document describing exactly them.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v2", health::router().merge(areas()))
        .split_for_parts()
}

/// The full application: API, docs, metrics and middleware.
pub fn app(state: AppState) -> Router {
    let (api, doc) = api();
    let doc = openapi::finish(&doc, openapi::DocSettings::from(&state.config));
    let doc_json: Arc<str> = serde_json::to_string(&doc)
        .unwrap_or_else(|_| "{}".into())
        .into();
    // Every documented route refuses a query parameter it does not declare.
    let strict = StrictQuery::from_document(&doc);
    let metrics_on_api_port = state.config.metrics_port.is_none();

    let mut router = api
        .route(
            "/api/v2/openapi.json",
            get(move || {
                let body = doc_json.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )],
                        body.to_string(),
                    )
                }
            }),
        )
        .route("/api/v2/docs", get(openapi::docs_page))
        .route("/api/v2/docs/swagger-ui-bundle.js", get(openapi::docs_js))
        .route("/api/v2/docs/swagger-ui.css", get(openapi::docs_css))
        .route("/api/v2/docs/init.js", get(openapi::docs_init));
    if metrics_on_api_port {
        router = router.route("/metrics", get(health::metrics));
    }

    http::with_middleware(router, state, strict)
}
