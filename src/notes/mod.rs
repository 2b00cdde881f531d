//! Clinical notes: written by clinical roles; signed by the author when a dentist or
//! hygienist, an assistant's note by a dentist; a signed note never changes (the database
//! refuses it too); corrections are addenda linked to the signed note, signed in turn.

pub mod routes;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Role;
use crate::db::Tx;
use crate::error::{AppError, AppResult};

#[derive(Debug, Serialize, ToSchema)]
pub struct Note {
    id: Uuid,
    patient_id: Uuid,
    body: String,
    author_id: Uuid,
    /// The signed note this one corrects.
    addendum_to: Option<Uuid>,
    signed: bool,
    signed_at: Option<DateTime<Utc>>,
    signed_by: Option<Uuid>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct NoteRow {
    id: Uuid,
    patient_id: Uuid,
    body: String,
    author_id: Uuid,
    addendum_to: Option<Uuid>,
    signed_at: Option<DateTime<Utc>>,
    signed_by: Option<Uuid>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<NoteRow> for Note {
    fn from(r: NoteRow) -> Note {
        Note {
            id: r.id,
            patient_id: r.patient_id,
            body: r.body,
            author_id: r.author_id,
            addendum_to: r.addendum_to,
            signed: r.signed_at.is_some(),
            signed_at: r.signed_at,
            signed_by: r.signed_by,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The one SELECT of a note, with `$lock` either `""` or `" FOR UPDATE"`: the statement
/// stays a literal that sqlx checks at build time.
macro_rules! select_note {
    ($tx:expr, $id:expr, $lock:literal) => {
        sqlx::query_as!(
            NoteRow,
            "SELECT id, patient_id, body, author_id, addendum_to, signed_at, signed_by, version, \
             created_at, updated_at FROM clinical_notes WHERE id = $1"
                + $lock,
            $id
        )
        .fetch_optional(&mut **$tx)
        .await?
        .map(Note::from)
        .ok_or_else(|| AppError::not_found("note"))
    };
}

/// One note of the transaction's clinic; another clinic's is 404.
async fn load(tx: &mut Tx, id: Uuid) -> AppResult<Note> {
    select_note!(tx, id, "")
}

/// [`load`], the row locked until the transaction ends.
async fn load_for_update(tx: &mut Tx, id: Uuid) -> AppResult<Note> {
    select_note!(tx, id, " FOR UPDATE")
}

/// Who may sign a note, from the author's role and the signer.
pub fn may_sign(author_role: Role, author_id: Uuid, signer_role: Role, signer_id: Uuid) -> bool {
    match author_role {
        Role::Dentist | Role::Hygienist => signer_id == author_id,
        Role::Assistant => signer_role == Role::Dentist,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_rules() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(may_sign(Role::Dentist, a, Role::Dentist, a));
        assert!(
            !may_sign(Role::Dentist, a, Role::Dentist, b),
            "only the author"
        );
        assert!(may_sign(Role::Hygienist, a, Role::Hygienist, a));
        assert!(!may_sign(Role::Hygienist, a, Role::Dentist, b));
        assert!(
            may_sign(Role::Assistant, a, Role::Dentist, b),
            "a dentist signs for an assistant"
        );
        assert!(!may_sign(Role::Assistant, a, Role::Hygienist, b));
        assert!(!may_sign(Role::Assistant, a, Role::Assistant, a));
    }
}
