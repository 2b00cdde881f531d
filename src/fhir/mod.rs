//! `/fhir`: a read-only FHIR R4 (4.0.1) view of the native records, for the labs, imaging
//! and hospital systems a clinic connects. Every answer is built from the typed resources
//! of `fhir-r4` and served as `application/fhir+json`; searches are `searchset` bundles
//! paged by a sealed cursor in their `next` link; every error (ours, the framework's, the
//! rate limiter's) is an `OperationOutcome` ([`outcome`]). The same tokens, permissions,
//! tenancy (another clinic's id is a 404) and audit events as the native routes apply:
//! each handler makes the native route's checks and records its event.
//!
//! What is served, resource by resource, is one table ([`capability::SERVED`]): the
//! `CapabilityStatement` at `/fhir/metadata` and `docs/fhir.md` are generated from it.

pub mod capability;
mod clinical;
pub mod outcome;
mod people;
mod schedule;
mod search;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhir_r4::resources::bundle::{BundleEntry, BundleEntrySearch, BundleLink};
use fhir_r4::resources::{Bundle, Resource};
use fhir_r4::types;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";
/// The path every FHIR route lives under.
pub const PREFIX: &str = "/api/v2/fhir";
/// ISO 3950 (FDI) two-digit tooth notation, the system of every `bodySite` tooth code.
pub const ISO_3950: &str = "urn:iso:std:iso:3950";
/// The system of the identifier every resource carries: its id as a `urn:uuid:`.
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(capability::router())
        .merge(people::router())
        .merge(schedule::router())
        .merge(clinical::router())
}

/// A FHIR answer: one resource, serialised with its `resourceType`.
pub struct Fhir(pub Resource);

impl IntoResponse for Fhir {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
                body,
            )
                .into_response(),
            Err(e) => AppError::Internal(anyhow::anyhow!("serialising a FHIR resource: {e}"))
                .into_response(),
        }
    }
}

/// The schema the OpenAPI document gives a FHIR resource (the standard defines the rest).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FhirResource {
    #[serde(rename = "resourceType")]
    resource_type: String,
    id: Option<String>,
}

/// The schema the OpenAPI document gives a search answer.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FhirBundle {
    #[serde(rename = "resourceType")]
    resource_type: String,
    r#type: String,
    link: Vec<serde_json::Value>,
    entry: Vec<serde_json::Value>,
}

/// The schema the OpenAPI document gives an error.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FhirOperationOutcome {
    #[serde(rename = "resourceType")]
    resource_type: String,
    issue: Vec<serde_json::Value>,
}

/// A FHIR string.
pub fn string(s: impl Into<String>) -> types::String {
    types::String(s.into())
}

/// The identifier every served resource carries: its id, as a URI.
pub fn identifier(id: Uuid) -> types::Identifier {
    types::Identifier {
        system: Some(types::Uri(URI_SYSTEM.into())),
        value: Some(string(format!("urn:uuid:{id}"))),
        ..Default::default()
    }
}

/// A reference to a served resource, `Type/id`.
pub fn reference<T>(resource_type: &str, id: Uuid) -> types::Reference<T> {
    types::Reference {
        reference: Some(string(format!("{resource_type}/{id}"))),
        ..Default::default()
    }
}

/// One coding in a concept, with an optional text.
pub fn concept(system: &str, code: &str, display: Option<&str>) -> types::CodeableConcept {
    types::CodeableConcept {
        coding: vec![types::Coding {
            system: Some(types::Uri(system.into())),
            code: Some(types::Code(code.into())),
            display: display.map(string),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The tooth (FDI number, as stored) and surfaces as a `bodySite`.
pub fn tooth_site(fdi: i16, surfaces: &[String]) -> types::CodeableConcept {
    let mut site = concept(ISO_3950, &fdi.to_string(), None);
    site.text = Some(if surfaces.is_empty() {
        string(format!("tooth {fdi}"))
    } else {
        string(format!("tooth {fdi}, surfaces {}", surfaces.join("")))
    });
    site
}

/// `meta` with the version and last change of a versioned record.
pub fn meta(version: i32, updated_at: chrono::DateTime<chrono::Utc>) -> types::Meta {
    types::Meta {
        version_id: Some(types::Id(version.to_string())),
        last_updated: Some(instant(updated_at)),
        ..Default::default()
    }
}

pub fn instant(at: chrono::DateTime<chrono::Utc>) -> types::Instant {
    types::Instant(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Whatever could go wrong assembling a resource from a builder: only a required element
/// left unset, which is this server's mistake.
pub fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> AppResult<T> {
    r.map_err(|e| AppError::Internal(anyhow::anyhow!("assembling a FHIR resource: {e}")))
}

/// A `searchset` bundle: the page's resources, the search as asked (`self`) and, when more
/// follows, the same search with the cursor of the next page (`next`).
pub fn searchset(
    base: &str,
    self_link: String,
    next_link: Option<String>,
    resources: Vec<(String, Resource)>,
) -> AppResult<Fhir> {
    let mut link = vec![BundleLink {
        relation: string("self"),
        url: types::Uri(self_link),
        ..Default::default()
    }];
    if let Some(next) = next_link {
        link.push(BundleLink {
            relation: string("next"),
            url: types::Uri(next),
            ..Default::default()
        });
    }
    let entry = resources
        .into_iter()
        .map(|(path, resource)| {
            Ok(BundleEntry {
                full_url: Some(types::Uri(format!("{base}/{path}"))),
                resource: Some(serde_json::to_value(&resource).map_err(|e| {
                    AppError::Internal(anyhow::anyhow!("serialising a FHIR resource: {e}"))
                })?),
                search: Some(BundleEntrySearch {
                    mode: Some(fhir_r4::coded::Coded::Known(
                        fhir_r4::codes::SearchEntryMode::Match,
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    let bundle = built(
        Bundle::builder()
            .r#type(fhir_r4::coded::Coded::Known(
                fhir_r4::codes::BundleType::Searchset,
            ))
            .timestamp(instant(chrono::Utc::now()))
            .link(link)
            .entry(entry)
            .build(),
    )?;
    Ok(Fhir(Resource::Bundle(Box::new(bundle))))
}

/// The FHIR base address clients see (`PUBLIC_API_URL` + `/api/v2/fhir`).
pub fn base(state: &AppState) -> String {
    format!("{}{PREFIX}", state.config.public_api_url)
}
