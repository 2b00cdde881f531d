//! What the FHIR view serves, as one table: the `CapabilityStatement` at `/fhir/metadata`
//! and the table in `docs/fhir.md` are both made from [`SERVED`], and a test checks the
//! router has exactly these routes.

use axum::extract::State;
use fhir_r4::coded::Coded;
use fhir_r4::codes::{
    CapabilityStatementKind, FhirVersion, PublicationStatus, ResourceTypes, RestfulCapabilityMode,
    SearchParamType,
};
use fhir_r4::resources::capability_statement::{
    CapabilityStatementImplementation, CapabilityStatementRest, CapabilityStatementRestResource,
    CapabilityStatementRestResourceInteraction, CapabilityStatementRestResourceSearchParam,
    CapabilityStatementRestSecurity, CapabilityStatementSoftware,
};
use fhir_r4::resources::{CapabilityStatement, Resource};
use fhir_r4::types;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{built, string, Fhir, FhirOperationOutcome, FhirResource};
use crate::error::AppResult;
use crate::state::AppState;

pub struct Param {
    pub name: &'static str,
    pub kind: SearchParamType,
    pub doc: &'static str,
}

pub struct Served {
    pub resource: ResourceTypes,
    pub name: &'static str,
    /// `read` by id.
    pub read: bool,
    /// The permission a caller needs.
    pub permission: &'static str,
    pub params: &'static [Param],
    pub doc: &'static str,
}

const PAGING: &str = "Every search takes `_count` (1–200, default 50) and pages by the \
    bundle's `next` link.";

pub const SERVED: &[Served] = &[
    Served {
        resource: ResourceTypes::Patient,
        name: "Patient",
        read: true,
        permission: "patients.read",
        params: &[
            Param {
                name: "name",
                kind: SearchParamType::String,
                doc: "start of the family, given or whole name, any case",
            },
            Param {
                name: "birthdate",
                kind: SearchParamType::Date,
                doc: "YYYY, YYYY-MM or YYYY-MM-DD with eq, ge, gt, le, lt, sa, eb",
            },
            Param {
                name: "identifier",
                kind: SearchParamType::Token,
                doc: "urn:ietf:rfc:3986|urn:uuid:<id>",
            },
        ],
        doc: "Active (not archived) patients; `meta.security` R marks a restricted record.",
    },
    Served {
        resource: ResourceTypes::Practitioner,
        name: "Practitioner",
        read: true,
        permission: "appointments.read",
        params: &[
            Param {
                name: "name",
                kind: SearchParamType::String,
                doc: "start of any word of the name, any case",
            },
            Param {
                name: "identifier",
                kind: SearchParamType::Token,
                doc: "urn:ietf:rfc:3986|urn:uuid:<id>",
            },
        ],
        doc: "The clinic's providers (staff who treat patients), active or not.",
    },
    Served {
        resource: ResourceTypes::Appointment,
        name: "Appointment",
        read: true,
        permission: "appointments.read",
        params: &[
            Param {
                name: "date",
                kind: SearchParamType::Date,
                doc: "the start: a clinic day or an instant, with eq, ge, gt, le, lt, sa, eb",
            },
            Param {
                name: "patient",
                kind: SearchParamType::Reference,
                doc: "Patient/<id>",
            },
            Param {
                name: "practitioner",
                kind: SearchParamType::Reference,
                doc: "Practitioner/<id>",
            },
        ],
        doc: "The appointment book; the operatory is the third participant (by name).",
    },
    Served {
        resource: ResourceTypes::Procedure,
        name: "Procedure",
        read: false,
        permission: "treatment.read",
        params: &[Param {
            name: "patient",
            kind: SearchParamType::Reference,
            doc: "Patient/<id> (required)",
        }],
        doc: "Completed and existing procedures; teeth as ISO 3950 codes in `bodySite`.",
    },
    Served {
        resource: ResourceTypes::Condition,
        name: "Condition",
        read: false,
        permission: "clinical.read",
        params: &[Param {
            name: "patient",
            kind: SearchParamType::Reference,
            doc: "Patient/<id> (required)",
        }],
        doc: "Chart entries; teeth as ISO 3950 codes in `bodySite`.",
    },
];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metadata))
}

fn interaction(code: &str) -> CapabilityStatementRestResourceInteraction {
    CapabilityStatementRestResourceInteraction {
        code: types::Code(code.into()),
        ..Default::default()
    }
}

/// The statement, from [`SERVED`].
pub fn statement(base: &str) -> AppResult<CapabilityStatement> {
    let resources = SERVED
        .iter()
        .map(|s| {
            let mut interactions = vec![];
            if s.read {
                interactions.push(interaction("read"));
            }
            interactions.push(interaction("search-type"));
            CapabilityStatementRestResource {
                r#type: Coded::Known(s.resource.clone()),
                documentation: Some(types::Markdown(format!(
                    "{} Needs `{}`.",
                    s.doc, s.permission
                ))),
                interaction: interactions,
                search_param: s
                    .params
                    .iter()
                    .map(|p| CapabilityStatementRestResourceSearchParam {
                        name: string(p.name),
                        r#type: Coded::Known(p.kind.clone()),
                        documentation: Some(types::Markdown(p.doc.into())),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    let rest = CapabilityStatementRest {
        mode: Coded::Known(RestfulCapabilityMode::Server),
        documentation: Some(types::Markdown(format!(
            "Read-only. {PAGING} Errors are OperationOutcomes."
        ))),
        security: Some(CapabilityStatementRestSecurity {
            description: Some(types::Markdown(
                "The native API's bearer tokens (`Authorization: Bearer`), permissions and \
                 clinic tenancy; every read of patient data is audited."
                    .into(),
            )),
            ..Default::default()
        }),
        resource: resources,
        ..Default::default()
    };
    built(
        CapabilityStatement::builder()
            .status(Coded::Known(PublicationStatus::Active))
            .date(types::DateTime("2026-12-03".into()))
            .kind(Coded::Known(CapabilityStatementKind::Instance))
            .fhir_version(Coded::Known(FhirVersion::N401))
            .format(vec1::vec1![types::Code("json".into())])
            .name(string("Molar"))
            .title(string("Molar FHIR R4 view"))
            .software(CapabilityStatementSoftware {
                name: string("Molar"),
                version: Some(string(env!("CARGO_PKG_VERSION"))),
                ..Default::default()
            })
            .implementation(CapabilityStatementImplementation {
                description: string("A read-only FHIR R4 view of a dental clinic's records"),
                url: Some(types::Url(base.into())),
                ..Default::default()
            })
            .rest(vec![rest])
            .build(),
    )
}

/// What this server serves, as FHIR describes a server (no token needed).
#[utoipa::path(get, path = "/fhir/metadata", tag = "fhir",
    responses(
        (status = 200, description = "The CapabilityStatement", content_type = "application/fhir+json", body = FhirResource),
        (status = 429, description = "Rate limited", body = FhirOperationOutcome)))]
pub async fn metadata(State(state): State<AppState>) -> AppResult<Fhir> {
    let statement = statement(&super::base(&state))?;
    Ok(Fhir(Resource::CapabilityStatement(Box::new(statement))))
}

/// The table in `docs/fhir.md`.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| resource | interactions | search parameters | permission | notes |\n|---|---|---|---|---|\n",
    );
    for s in SERVED {
        let interactions = if s.read { "read, search" } else { "search" };
        let params: Vec<String> = s
            .params
            .iter()
            .map(|p| format!("`{}` ({})", p.name, p.doc.replace('|', "\\|")))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | `{}` | {} |\n",
            s.name,
            interactions,
            params.join("; "),
            s.permission,
            s.doc
        ));
    }
    out.push_str(&format!("\n{PAGING}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::PREFIX;

    #[test]
    fn the_router_serves_exactly_the_table() {
        let (_, doc) = crate::app::api();
        let doc = serde_json::to_value(&doc).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        let mut served: Vec<String> = paths
            .keys()
            .filter(|p| p.starts_with(PREFIX))
            .cloned()
            .collect();
        served.sort();
        let mut expected = vec![format!("{PREFIX}/metadata")];
        for s in SERVED {
            expected.push(format!("{PREFIX}/{}", s.name));
            if s.read {
                expected.push(format!("{PREFIX}/{}/{{id}}", s.name));
            }
        }
        expected.sort();
        assert_eq!(served, expected);
        // Each search declares the table's parameters and the page's, nothing else.
        for s in SERVED {
            let op = &paths[&format!("{PREFIX}/{}", s.name)]["get"];
            let mut declared: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            declared.sort_unstable();
            let mut wanted: Vec<&str> = s.params.iter().map(|p| p.name).collect();
            wanted.extend(["_count", "_cursor"]);
            wanted.sort_unstable();
            assert_eq!(declared, wanted, "{}", s.name);
        }
    }

    #[test]
    fn the_statement_lists_the_table() {
        let cs = statement("http://x").expect("builds");
        let names: Vec<String> = cs.rest[0]
            .resource
            .iter()
            .map(|r| {
                serde_json::to_value(&r.r#type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        let table: Vec<&str> = SERVED.iter().map(|s| s.name).collect();
        assert_eq!(names, table);
    }
}
