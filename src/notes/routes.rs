//! `/patients/{id}/notes` and `/notes/{id}`: list, write, read, edit and sign notes.

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission, Role, NOT_PERMITTED};
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::patients;
use crate::state::AppState;
use crate::validate::Errors;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PatientPath {
    /// The patient's id.
    id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NoteList {
    items: Vec<Note>,
}

/// A patient's notes, oldest first (clinical roles, owner and admin).
#[utoipa::path(get, path = "/patients/{id}/notes", tag = "notes", security(("bearer" = [])),
    params(PatientPath),
    responses(
        (status = 200, description = "The notes", body = NoteList),
        (status = 403, description = "Role lacks clinical.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn list_notes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
) -> AppResult<Json<NoteList>> {
    let event = || Event::new("note.list", "note").patient(id);
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::ClinicalRead, event).await?;
    let rows = sqlx::query_as!(
        NoteRow,
        "SELECT id, patient_id, body, author_id, addendum_to, signed_at, signed_by, version, \
         created_at, updated_at FROM clinical_notes WHERE patient_id = $1 ORDER BY created_at, id",
        id
    )
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    audit::record(&mut tx, &caller.audit(), event().ids(ids)).await?;
    tx.commit().await?;
    Ok(Json(NoteList {
        items: rows.into_iter().map(Note::from).collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"body": "Caries on 36 MO; composite planned."}))]
pub struct NewNote {
    #[schema(schema_with = crate::validate::schema::text_20000)]
    body: String,
    /// A signed note of the same patient that this addendum corrects (422 when it is not
    /// one of this patient's notes; 409 when it is not signed yet).
    addendum_to: Option<Uuid>,
}

/// Writes a note or an addendum (clinical roles).
#[utoipa::path(post, path = "/patients/{id}/notes", tag = "notes", security(("bearer" = [])),
    params(PatientPath, IdempotencyKey),
    request_body = NewNote,
    responses(
        (status = 201, description = "Written", body = Note, headers(("Location" = String))),
        (status = 403, description = "Role lacks notes.write", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 409, description = "An addendum's note is not signed yet", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn create_note(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    body: HashedJson<NewNote>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("note.create", "note").patient(id);
    caller
        .authorize(&state, Permission::NotesWrite, event)
        .await?;
    let mut errors = Errors::default();
    let text = errors.text("body", &body.body, 20_000);
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = patients::begin_on(&state, &caller, id, Permission::NotesWrite).await?;
        if let Some(target) = body.addendum_to {
            let t: Option<(Uuid, Option<DateTime<Utc>>)> = sqlx::query!(
                "SELECT patient_id, signed_at FROM clinical_notes WHERE id = $1",
                target
            )
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.patient_id, r.signed_at));
            match t {
                Some((p, _)) if p != id => {
                    return Err(AppError::validation(
                        "addendum_to",
                        "belongs to another patient",
                    ))
                }
                None => {
                    return Err(AppError::validation(
                        "addendum_to",
                        "does not exist in your clinic",
                    ))
                }
                Some((_, None)) => {
                    return Err(AppError::conflict(
                        "only a signed note takes addenda; edit the unsigned note instead",
                    ))
                }
                Some(_) => {}
            }
        }
        let note_id = Uuid::now_v7();
        let row = sqlx::query_as!(
            NoteRow,
            "INSERT INTO clinical_notes (clinic_id, id, patient_id, author_id, body, addendum_to) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, patient_id, body, author_id, addendum_to, \
             signed_at, signed_by, version, created_at, updated_at",
            caller.clinic_id,
            note_id,
            id,
            caller.user_id,
            &text,
            body.addendum_to,
        )
        .fetch_one(&mut *tx)
        .await?;
        audit::record(&mut tx, &caller.audit(), event().resource(note_id)).await?;
        let note = Note::from(row);
        let created = Created {
            location: format!("/api/v2/notes/{note_id}"),
            version: Some(note.version),
            value: note,
        };
        Ok((tx, created))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NotePath {
    /// The note's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotePatch {
    /// Cannot be cleared.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_20000)]
    body: Option<Option<String>>,
}

/// One note (clinical roles, owner and admin).
#[utoipa::path(get, path = "/notes/{id}", tag = "notes", security(("bearer" = [])),
    params(NotePath),
    responses(
        (status = 200, description = "The note", body = Note),
        (status = 403, description = "Role lacks clinical.read", body = Problem),
        (status = 404, description = "No such note in your clinic", body = Problem)))]
pub async fn get_note(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(NotePath { id }): ApiPath<NotePath>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::ClinicalRead, || {
            Event::new("note.read", "note").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let note = load(&mut tx, id).await?;
    let event = Event::new("note.read", "note")
        .resource(id)
        .patient(note.patient_id);
    respond(tx, &caller, event, note).await
}

/// Edits an unsigned note (its author only); a signed note is 409.
#[utoipa::path(patch, path = "/notes/{id}", tag = "notes", security(("bearer" = [])),
    params(NotePath, IfMatch),
    request_body = NotePatch,
    responses(
        (status = 200, description = "Updated", body = Note),
        (status = 403, description = "Not the author", body = Problem),
        (status = 404, description = "No such note in your clinic", body = Problem),
        (status = 409, description = "The note is signed", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem)))]
pub async fn update_note(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(NotePath { id }): ApiPath<NotePath>,
    ApiJson(patch): ApiJson<NotePatch>,
) -> AppResult<Response> {
    let event = || Event::new("note.update", "note").resource(id);
    caller
        .authorize(&state, Permission::NotesWrite, event)
        .await?;
    let mut errors = Errors::default();
    if let Some(None) = patch.body {
        errors.add("body", "cannot be cleared");
    }
    let text = patch
        .body
        .clone()
        .flatten()
        .map(|b| errors.text("body", &b, 20_000));
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, id).await?;
    if current.signed {
        return Err(AppError::conflict(
            "a signed note cannot change; write an addendum",
        ));
    }
    if current.author_id != caller.user_id {
        tx.rollback().await?;
        return Err(caller
            .deny(&state, event().patient(current.patient_id), NOT_PERMITTED)
            .await);
    }
    etag::check(&headers, current.version)?;
    let result = sqlx::query_as!(
        NoteRow,
        "UPDATE clinical_notes SET body = $2, version = version + 1, updated_at = now() WHERE id = $1 \
         RETURNING id, patient_id, body, author_id, addendum_to, signed_at, signed_by, version, \
         created_at, updated_at",
        id,
        text.unwrap_or(current.body.clone()),
    )
    .fetch_one(&mut *tx)
    .await;
    let row = result.on_constraint("clinical_notes_signed_immutable", || {
        AppError::conflict("a signed note cannot change; write an addendum")
    })?;
    respond(tx, &caller, event().patient(current.patient_id), row.into()).await
}

/// Signs a note: the author when a dentist or hygienist; an assistant's note by a dentist.
#[utoipa::path(post, path = "/notes/{id}/sign", tag = "notes", security(("bearer" = [])),
    params(NotePath),
    responses(
        (status = 200, description = "Signed", body = Note),
        (status = 403, description = "Not allowed to sign this note", body = Problem),
        (status = 404, description = "No such note in your clinic", body = Problem),
        (status = 409, description = "Already signed", body = Problem)))]
pub async fn sign_note(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(NotePath { id }): ApiPath<NotePath>,
) -> AppResult<Response> {
    let event = || Event::new("note.sign", "note").resource(id);
    caller
        .authorize(&state, Permission::NotesSign, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, id).await?;
    if current.signed {
        return Err(AppError::conflict("the note is already signed"));
    }
    let author = sqlx::query!(
        "SELECT role, is_provider FROM users WHERE id = $1",
        current.author_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let author_role = Role::parse(&author.role)
        .unwrap_or(Role::Billing)
        .clinical(author.is_provider);
    if !may_sign(
        author_role,
        current.author_id,
        caller.clinical_role(),
        caller.user_id,
    ) {
        tx.rollback().await?;
        return Err(caller
            .deny(&state, event().patient(current.patient_id), NOT_PERMITTED)
            .await);
    }
    let row = sqlx::query_as!(
        NoteRow,
        "UPDATE clinical_notes SET signed_at = now(), signed_by = $2, version = version + 1, \
         updated_at = now() WHERE id = $1 RETURNING id, patient_id, body, author_id, addendum_to, \
         signed_at, signed_by, version, created_at, updated_at",
        id,
        caller.user_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    respond(tx, &caller, event().patient(current.patient_id), row.into()).await
}

/// How a read or change of one note ends: its audit event in the transaction, the
/// commit, then the note with its ETag.
async fn respond(mut tx: Tx, caller: &Caller, event: Event, note: Note) -> AppResult<Response> {
    audit::record(&mut tx, &caller.audit(), event).await?;
    tx.commit().await?;
    Ok((
        StatusCode::OK,
        [(header::ETAG, etag::etag(note.version))],
        Json(&note),
    )
        .into_response())
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notes, create_note))
        .routes(routes!(get_note, update_note))
        .routes(routes!(sign_note))
}
