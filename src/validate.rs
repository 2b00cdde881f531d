//! Small validators shared by the areas, collecting every invalid field of a request so
//! that one 422 names them all; and JSON Merge Patch helpers (RFC 7396).

use serde::{Deserialize, Deserializer};

use crate::error::{AppError, AppResult, FieldError};

#[derive(Default)]
pub struct Errors(Vec<FieldError>);

/// The message for text holding control characters.
pub const CONTROL_CHARACTERS: &str = "must not contain control characters";

/// Whether free text holds a control character other than a line break or a tab (U+0000
/// among them, which PostgreSQL cannot store). The rule for names and other free text.
pub fn has_control_characters(v: &str) -> bool {
    v.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    /// Trimmed text of 1..=max characters, without control characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) -> String {
        let v = value.trim();
        if v.is_empty() {
            self.add(field, "must not be empty");
        } else if v.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if has_control_characters(v) {
            self.add(field, CONTROL_CHARACTERS);
        }
        v.to_owned()
    }

    /// An email address: one `@`, a dotted domain, no spaces, at most 254 characters.
    pub fn email(&mut self, field: &str, value: &str) -> String {
        let v = value.trim().to_owned();
        let ok = v.len() <= 254
            && !v.chars().any(|c| c.is_whitespace() || c.is_control())
            && match v.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if !ok {
            self.add(field, "must be a valid email address");
        }
        v
    }

    /// A phone number: digits, spaces and + ( ) - . only, 3 to 40 characters.
    pub fn phone(&mut self, field: &str, value: &str) -> String {
        let v = value.trim().to_owned();
        let ok = (3..=40).contains(&v.len())
            && v.chars().any(|c| c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_digit() || " +()-./".contains(c));
        if !ok {
            self.add(
                field,
                "must be a phone number (digits, spaces and + ( ) - . only)",
            );
        }
        v
    }

    pub fn timezone(&mut self, field: &str, value: &str) -> String {
        let v = value.trim();
        if v.parse::<chrono_tz::Tz>().is_err() {
            self.add(field, "must be an IANA time zone such as Europe/Berlin");
        }
        v.to_owned()
    }

    pub fn currency(&mut self, field: &str, value: &str) -> String {
        let v = value.trim().to_ascii_uppercase();
        match iso_currency::Currency::from_code(&v) {
            Some(c) if c.exponent().is_some() => {}
            _ => self.add(field, "must be an ISO 4217 currency code such as EUR"),
        }
        v
    }

    pub fn finish(self) -> AppResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.0))
        }
    }
}

/// For PATCH bodies: distinguishes an absent field (`None`) from an explicit `null`
/// (`Some(None)`). Use with `#[serde(default, deserialize_with = "patch_field")]`.
pub fn patch_field<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Applies a merge patch to one nested object of a resource: absent keeps `current`,
/// `null` clears it, an object is merged into it (RFC 7396) and the result must still be
/// a valid `T` (else a 422 on `field`). `None` means "unchanged".
pub fn merge_nested<T: serde::Serialize + serde::de::DeserializeOwned>(
    current: Option<&T>,
    patch: &Option<serde_json::Value>,
    field: &str,
    errors: &mut Errors,
) -> Option<Option<T>> {
    match patch {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(p) => {
            let mut base = current
                .and_then(|c| serde_json::to_value(c).ok())
                .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
            merge_patch(&mut base, p);
            match serde_json::from_value::<T>(base) {
                Ok(v) => Some(Some(v)),
                Err(e) => {
                    let msg = e.to_string();
                    errors.add(
                        field,
                        msg.split(" at line ").next().unwrap_or(&msg).to_owned(),
                    );
                    None
                }
            }
        }
    }
}

/// Applies an RFC 7396 merge patch to a JSON document.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut doc, &json!({"c": [1]}));
        assert_eq!(doc["c"], json!([1]));
    }

    #[test]
    fn emails_and_zones_and_currencies() {
        let mut e = Errors::default();
        e.email("a", "front.desk@clinic.example");
        e.timezone("b", "America/New_York");
        e.currency("c", "jpy");
        assert!(e.finish().is_ok());
        let mut e = Errors::default();
        e.email("a", "no-at-sign");
        e.email("a2", "two@@example.com");
        e.timezone("b", "Mars/Olympus");
        e.currency("c", "XYZ");
        match e.finish() {
            Err(AppError::Validation(errs)) => assert_eq!(errs.len(), 4),
            other => panic!("expected 422, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Runs one validator on `value`: its result, and whether it added an error on `f`.
    fn check(run: impl FnOnce(&mut Errors) -> String) -> (String, bool) {
        let mut e = Errors::default();
        let v = run(&mut e);
        assert!(
            e.0.iter().all(|f| f.field == "f"),
            "an error on another field"
        );
        (v, !e.0.is_empty())
    }

    fn blanks() -> impl Strategy<Value = String> {
        "[ \t\n]{0,2}"
    }

    fn zone_name() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(
            chrono_tz::TZ_VARIANTS
                .iter()
                .map(|z| z.name())
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_iana_zone_is_accepted_as_its_name((a, z, b) in (blanks(), zone_name(), blanks())) {
            let (v, refused) = check(|e| e.timezone("f", z));
            prop_assert!(!refused, "{} refused", z);
            prop_assert_eq!(v, z);
            // Blanks around it are trimmed or refused, never kept.
            let (v, refused) = check(|e| e.timezone("f", &format!("{a}{z}{b}")));
            prop_assert!(refused || v == z, "{:?} kept", v);
        }

        #[test]
        fn an_accepted_zone_is_a_canonical_zone_name(
            s in prop_oneof![
                any::<String>(),
                "[A-Za-z_/+-]{1,20}",
                zone_name().prop_map(|z| z.to_ascii_lowercase()),
                zone_name().prop_map(|z| z.replace('/', " / ")),
            ],
        ) {
            let (v, refused) = check(|e| e.timezone("f", &s));
            if !refused {
                let tz: chrono_tz::Tz = v.parse().map_err(|_| TestCaseError::fail("unparsable"))?;
                // The stored text is the zone's own name: no other spelling gets in.
                prop_assert_eq!(tz.name(), v.as_str());
            }
        }

        #[test]
        fn an_accepted_phone_has_only_phone_characters(
            s in prop_oneof![any::<String>(), "[ +()0-9./a-z-]{0,45}"],
        ) {
            let (v, refused) = check(|e| e.phone("f", &s));
            if !refused {
                prop_assert_eq!(v.as_str(), v.trim());
                prop_assert!((3..=40).contains(&v.len()), "{:?}", v);
                prop_assert!(v.chars().any(|c| c.is_ascii_digit()));
                prop_assert!(v.chars().all(|c| c.is_ascii_digit() || " +()-./".contains(c)), "{:?}", v);
            }
        }

        #[test]
        fn a_plausible_phone_number_is_accepted(
            s in "(\\+[1-9][0-9]{0,2} )?(\\([0-9]{2,4}\\) )?[0-9]{3,6}([ ./-][0-9]{2,6}){0,3}",
            (a, b) in (blanks(), blanks()),
        ) {
            let (v, refused) = check(|e| e.phone("f", &s));
            prop_assert!(!refused, "{:?} refused", s);
            prop_assert_eq!(&v, &s);
            // Blanks around it are trimmed or refused, never kept.
            let (v, refused) = check(|e| e.phone("f", &format!("{a}{s}{b}")));
            prop_assert!(refused || v == s, "{:?} kept", v);
        }

        #[test]
        fn an_accepted_email_has_one_at_and_a_dotted_domain(
            s in prop_oneof![
                any::<String>(),
                "[a-z.@ ]{0,12}",
                "[a-z]{0,3}@[a-z.]{0,6}",
                "[a-z]{60,70}@[a-z]{1,5}\\.[a-z]{2,3}",
            ],
        ) {
            let (v, refused) = check(|e| e.email("f", &s));
            if !refused {
                prop_assert_eq!(v.as_str(), v.trim());
                prop_assert!(v.len() <= 254);
                prop_assert!(!v.chars().any(|c| c.is_whitespace() || c.is_control()));
                let (local, domain) = v.split_once('@').ok_or_else(|| TestCaseError::fail("no @"))?;
                prop_assert!(!local.is_empty() && local.len() <= 64, "{:?}", v);
                prop_assert!(!domain.contains('@'));
                let labels: Vec<&str> = domain.split('.').collect();
                prop_assert!(labels.len() >= 2, "{:?}", v);
                prop_assert!(!labels[0].is_empty() && !labels[labels.len() - 1].is_empty(), "{:?}", v);
            }
        }

        #[test]
        fn a_plausible_email_is_accepted(
            s in "[a-z0-9][a-z0-9.+_-]{0,30}@[a-z0-9][a-z0-9-]{0,20}(\\.[a-z]{2,10}){1,3}",
            (a, b) in (blanks(), blanks()),
        ) {
            let (v, refused) = check(|e| e.email("f", &s));
            prop_assert!(!refused, "{:?} refused", s);
            prop_assert_eq!(&v, &s);
            // Blanks around it are trimmed or refused, never kept.
            let (v, refused) = check(|e| e.email("f", &format!("{a}{s}{b}")));
            prop_assert!(refused || v == s, "{:?} kept", v);
        }
    }
}
