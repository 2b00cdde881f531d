//! The OpenAPI 3.1 document, derived from the handlers' annotations, and the docs page
//! whose assets ship inside the binary.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Molar API",
        description = "Multi-tenant dental clinic management. Errors are RFC 9457 problem+json \
                       documents with a `request_id`; validation errors add `errors`.",
        license(name = "Proprietary")
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "operations", description = "Health, readiness and start-up checks"),
        (name = "auth", description = "Clinic registration, sign-in and tokens"),
        (name = "clinic", description = "The caller's clinic"),
        (name = "users", description = "Staff accounts"),
        (name = "audit", description = "The audit trail of access to health data"),
        (name = "patients", description = "Patients and their demographics"),
        (name = "chart", description = "The odontogram"),
        (name = "notes", description = "Clinical notes"),
        (name = "perio", description = "Periodontal charts"),
        (name = "scheduling", description = "Operatories, working hours, appointments and availability")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

const SWAGGER_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Molar API</title>
<link rel="stylesheet" href="/api/v2/docs/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="/api/v2/docs/swagger-ui-bundle.js"></script>
<script src="/api/v2/docs/init.js"></script>
</body>
</html>"#;

const DOCS_INIT: &str =
    "window.ui = SwaggerUIBundle({url: '/api/v2/openapi.json', dom_id: '#docs', deepLinking: true});";

/// The page allows only its own scripts and styles.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub async fn docs_page() -> Response {
    let mut res = Html(DOCS_HTML).into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    res
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn docs_js() -> Response {
    asset("text/javascript; charset=utf-8", SWAGGER_JS)
}

pub async fn docs_css() -> Response {
    asset("text/css; charset=utf-8", SWAGGER_CSS)
}

pub async fn docs_init() -> Response {
    asset("text/javascript; charset=utf-8", DOCS_INIT.as_bytes())
}
