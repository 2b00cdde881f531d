//! Webhooks: clinics subscribe an HTTPS address to event types, and every change of those
//! kinds reaches it, signed, from the outbox.
//!
//! Events are not raised by hand in each route: a successful audited action that
//! [`EVENTS`] names writes one outbox row per matching active subscription, in the same
//! statement as its audit row (see `audit::record`), so an event exists exactly when its
//! change is committed. The outbox worker delivers it (see [`deliver`]).

pub mod deliver;
pub mod routes;
pub mod ssrf;

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use uuid::Uuid;

/// The audited actions that are webhook events: (action, event type, meaning). The event
/// table in docs/webhooks.md is generated from this.
pub const EVENTS: [(&str, &str, &str); 12] = [
    ("patient.create", "patient.created", "a patient was added"),
    (
        "patient.update",
        "patient.updated",
        "a patient's details changed",
    ),
    (
        "patient.archive",
        "patient.archived",
        "a patient was archived",
    ),
    (
        "appointment.create",
        "appointment.created",
        "an appointment was booked",
    ),
    (
        "appointment.update",
        "appointment.updated",
        "an appointment was moved or changed",
    ),
    (
        "appointment.status",
        "appointment.status_changed",
        "an appointment was confirmed, checked in, completed, cancelled or missed",
    ),
    ("payment.create", "payment.created", "a payment was taken"),
    (
        "refund.create",
        "payment.refunded",
        "a payment was refunded",
    ),
    (
        "payment.stripe_event",
        "payment.updated",
        "Stripe reported a card payment or refund, and it was recorded",
    ),
    ("invoice.create", "invoice.created", "an invoice was issued"),
    ("invoice.void", "invoice.voided", "an invoice was voided"),
    (
        "invoice.apply_credit",
        "invoice.credit_applied",
        "the patient's credit was applied to an invoice",
    ),
];

/// The families a subscription may name as `<family>.*`.
pub const FAMILIES: [&str; 4] = ["appointment", "patient", "payment", "invoice"];

/// The event table of docs/webhooks.md.
pub fn events_markdown() -> String {
    let mut out = String::from("| event type | when | `data` |\n|---|---|---|\n");
    for (action, event_type, meaning) in EVENTS {
        let resource = match action.split('.').next() {
            Some("refund") => "payment",
            Some(r) => r,
            None => "",
        };
        let data = if resource == "patient" {
            "`patient_id`".to_owned()
        } else {
            format!("`{resource}_id`, and `patient_id` where known")
        };
        out.push_str(&format!("| `{event_type}` | {meaning} | {data} |\n"));
    }
    out
}

/// The event type of an audited action, if it is one.
pub fn event_type(action: &str) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(a, _, _)| *a == action)
        .map(|(_, t, _)| *t)
}

/// `patient.*` for `patient.created`.
pub fn family_pattern(event_type: &str) -> String {
    let family = event_type.split('.').next().unwrap_or(event_type);
    format!("{family}.*")
}

/// Whether a subscription may name `pattern`: an event type, or a family's `.*`.
pub fn known_pattern(pattern: &str) -> bool {
    EVENTS.iter().any(|(_, t, _)| *t == pattern)
        || FAMILIES.iter().any(|f| pattern == format!("{f}.*"))
}

/// An event's body: ids and types only, never clinical or personal details.
pub fn event_body(
    event_type: &str,
    resource_type: &str,
    resource_id: Option<Uuid>,
    patient_id: Option<Uuid>,
) -> Value {
    let mut data = Map::new();
    if let Some(id) = resource_id {
        data.insert(format!("{resource_type}_id"), json!(id));
    }
    if let Some(id) = patient_id {
        data.insert("patient_id".into(), json!(id));
    }
    json!({
        "id": Uuid::now_v7(),
        "type": event_type,
        "created_at": chrono::Utc::now(),
        "data": data,
    })
}

/// The `Molar-Signature` header of a body sent at `t` (Unix seconds): `t=<t>,v1=<hex
/// HMAC-SHA256 of "<t>.<body>" keyed with the secret as given to the subscriber>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_actions_to_types_of_the_four_families() {
        assert_eq!(event_type("patient.create"), Some("patient.created"));
        assert_eq!(event_type("patient.read"), None);
        for (_, t, _) in EVENTS {
            assert!(FAMILIES.contains(&t.split('.').next().unwrap_or("")), "{t}");
            assert!(known_pattern(t));
        }
        assert!(known_pattern("invoice.*"));
        assert!(!known_pattern("note.*") && !known_pattern("*") && !known_pattern("patient.read"));
        assert_eq!(family_pattern("payment.refunded"), "payment.*");
    }

    #[test]
    fn the_signature_follows_the_documented_recipe() {
        // HMAC-SHA256 keyed "whsec_test" of "1700000000.{}", computed with Python's hmac.
        assert_eq!(
            signature("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn bodies_carry_ids_and_types_only() {
        let p = Uuid::now_v7();
        let body = event_body("payment.created", "payment", Some(p), Some(p));
        assert_eq!(body["type"], "payment.created");
        assert_eq!(body["data"]["payment_id"], json!(p));
        assert_eq!(body["data"].as_object().map(Map::len), Some(2));
    }
}
