//! The notice to a clinic's owners and admins that someone broke the glass on a restricted
//! patient's record: who, whose record, why, from when until when. Nothing clinical.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{html_escape, Email};

/// What a break-glass notice tells.
#[derive(Debug, Clone)]
pub struct BreakGlassNotice<'a> {
    pub user_name: &'a str,
    pub user_role: &'a str,
    pub patient_name: &'a str,
    pub patient_id: Uuid,
    pub reason: &'a str,
    pub at: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// The notice for one owner or admin. The subject names nobody: subjects travel and are
/// shown where bodies are not.
pub fn break_glass_notice(to: &str, n: &BreakGlassNotice<'_>) -> Email {
    let at = n.at.format("%Y-%m-%d %H:%M UTC");
    let until = n.until.format("%Y-%m-%d %H:%M UTC");
    let text = format!(
        "{user} ({role}) broke the glass on the restricted record of {patient} \
         (patient {id}) at {at}.\n\n\
         Reason given:\n{reason}\n\n\
         The record is open to them until {until}. Review break-glass access in Molar \
         (GET /api/v2/break-glass); every access is in the audit trail.\n",
        user = n.user_name,
        role = n.user_role,
        patient = n.patient_name,
        id = n.patient_id,
        reason = n.reason,
    );
    let html = format!(
        "<p><strong>{user}</strong> ({role}) broke the glass on the restricted record of \
         <strong>{patient}</strong> (patient {id}) at {at}.</p>\
         <p>Reason given:</p><blockquote>{reason}</blockquote>\
         <p>The record is open to them until {until}. Review break-glass access in Molar \
         (<code>GET /api/v2/break-glass</code>); every access is in the audit trail.</p>",
        user = html_escape(n.user_name),
        role = html_escape(n.user_role),
        patient = html_escape(n.patient_name),
        id = n.patient_id,
        reason = html_escape(n.reason),
    );
    Email {
        to: to.to_owned(),
        subject: "Break-glass access to a restricted patient record".into(),
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_names_who_whom_why_and_until_when_and_escapes_html() {
        let at = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .expect("instant")
            .with_timezone(&Utc);
        let n = BreakGlassNotice {
            user_name: "Dana <Dentist>",
            user_role: "dentist",
            patient_name: "Max Mustermann",
            patient_id: Uuid::nil(),
            reason: "Acute pain & swelling",
            at,
            until: at + chrono::Duration::minutes(60),
        };
        let e = break_glass_notice("owner@example.test", &n);
        assert!(!e.subject.contains("Mustermann"));
        assert!(e.text.contains("Dana <Dentist> (dentist)"));
        assert!(e.text.contains("Max Mustermann"));
        assert!(e.text.contains("Acute pain & swelling"));
        assert!(e.text.contains("until 2026-12-02 11:00 UTC"));
        assert!(e.html.contains("Dana &lt;Dentist&gt;"));
        assert!(e.html.contains("Acute pain &amp; swelling"));
    }
}
