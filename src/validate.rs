//! Small validators shared by the areas, collecting every invalid field of a request so
//! that one 422 names them all; and JSON Merge Patch helpers (RFC 7396).

use serde::{Deserialize, Deserializer};

use chrono::{DateTime, Datelike, Utc};

use crate::error::{AppError, AppResult, FieldError};

/// What an instant outside the years PostgreSQL's `timestamptz` holds is told.
pub const UNSTORABLE_INSTANT: &str = "is outside the instants Molar can store";

/// Whether PostgreSQL's `timestamptz` holds the instant (4713 BC to 294276 AD, in chrono's
/// count of years): one outside is refused before it reaches the database.
pub fn storable(t: DateTime<Utc>) -> bool {
    (-4712..=294275).contains(&t.year())
}

/// Whether a date is one the clinic's reports and lists reason about: years 1 to 9999
/// (PostgreSQL holds more, but date arithmetic near its ends would overflow).
pub fn storable_date(d: chrono::NaiveDate) -> bool {
    (1..=9999).contains(&d.year())
}

/// An instant in a query parameter that the database could not hold: a 400 naming it.
pub fn storable_param(name: &str, t: Option<DateTime<Utc>>) -> AppResult<()> {
    match t {
        Some(t) if !storable(t) => Err(AppError::BadRequest(format!(
            "invalid query parameters: `{name}` {UNSTORABLE_INSTANT}"
        ))),
        _ => Ok(()),
    }
}

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

    /// Merge-patch fields that may change but not be cleared: each one sent as `null`
    /// (`true` here) is a 422.
    pub fn uncleared(&mut self, fields: &[(&str, bool)]) {
        for (field, cleared) in fields {
            if *cleared {
                self.add(*field, "cannot be cleared");
            }
        }
    }

    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    /// Text of at most `max` characters with one that is not white space, and no control
    /// characters but line feed and tab ([`schema::text_pattern`]); returned trimmed.
    pub fn text(&mut self, field: &str, value: &str, max: usize) -> String {
        let v = value.trim();
        if v.is_empty() {
            self.add(field, "must not be empty");
        } else if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if has_control_characters(value) {
            self.add(field, CONTROL_CHARACTERS);
        }
        v.to_owned()
    }

    /// Up to `max` characters without control characters but line feed and tab (may be
    /// empty; [`schema::plain_pattern`]).
    pub fn line(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if has_control_characters(value) {
            self.add(field, CONTROL_CHARACTERS);
        }
    }

    /// An email address ([`schema::email_pattern`]): visible ASCII only, up to 64
    /// characters, one `@`, a domain with an inner dot; at most 254 characters.
    pub fn email(&mut self, field: &str, value: &str) -> String {
        let ok = value.len() <= 254
            && value.bytes().all(|b| b.is_ascii_graphic())
            && match value.split_once('@') {
                Some((local, domain)) => {
                    (1..=64).contains(&local.len())
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
        value.to_owned()
    }

    /// A phone number ([`schema::PHONE_PATTERN`]): digits, spaces and + ( ) - . / only, with
    /// a digit, 3 to 40 characters, no space first or last.
    pub fn phone(&mut self, field: &str, value: &str) -> String {
        let ok = (3..=40).contains(&value.len())
            && value.chars().any(|c| c.is_ascii_digit())
            && !value.starts_with(' ')
            && !value.ends_with(' ')
            && value
                .chars()
                .all(|c| c.is_ascii_digit() || " +()-./".contains(c));
        if !ok {
            self.add(
                field,
                "must be a phone number (digits, spaces and + ( ) - . / only)",
            );
        }
        value.trim().to_owned()
    }

    /// An IANA time zone name, exactly as the time zone database spells it.
    pub fn timezone(&mut self, field: &str, value: &str) -> String {
        if value.parse::<chrono_tz::Tz>().is_err() {
            self.add(field, "must be an IANA time zone such as Europe/Berlin");
        }
        value.to_owned()
    }

    /// An ISO 4217 currency code with minor units, in capitals.
    pub fn currency(&mut self, field: &str, value: &str) -> String {
        match iso_currency::Currency::from_code(value) {
            Some(c) if c.exponent().is_some() => {}
            _ => self.add(field, "must be an ISO 4217 currency code such as EUR"),
        }
        value.to_owned()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
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
            // A key the object does not have is refused even as `null` (which would
            // otherwise remove nothing and pass unnoticed).
            let fields = field_names::<T>();
            if let (false, Some(keys)) = (fields.is_empty(), p.as_object()) {
                let unknown: Vec<&String> = keys
                    .keys()
                    .filter(|k| !fields.contains(&k.as_str()))
                    .collect();
                if !unknown.is_empty() {
                    for k in unknown {
                        errors.add(format!("{field}.{k}"), "is not a field of this object");
                    }
                    return None;
                }
            }
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

/// The field names of the struct `T` as serde reads them (empty for anything else): a
/// deserializer that only records what `deserialize_struct` is asked for.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only structs are probed"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
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
    fn a_nested_patch_names_only_the_objects_fields_even_with_null() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Place {
            city: String,
            line2: Option<String>,
        }
        let current = Place {
            city: "Bonn".into(),
            line2: Some("Hof".into()),
        };
        let mut errors = Errors::default();
        let merged = merge_nested(
            Some(&current),
            &Some(json!({"line2": null})),
            "address",
            &mut errors,
        );
        assert_eq!(
            merged,
            Some(Some(Place {
                city: "Bonn".into(),
                line2: None
            }))
        );
        assert!(errors.finish().is_ok());
        let mut errors = Errors::default();
        let merged = merge_nested(
            Some(&current),
            &Some(json!({"w": null})),
            "address",
            &mut errors,
        );
        assert_eq!(merged, None);
        assert!(errors.finish().is_err());
    }

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
        e.currency("c", "JPY");
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

/// The rules above as JSON Schema, for the OpenAPI document (`#[schema(schema_with = ...)]`):
/// the document and the server refuse the same values.
pub mod schema {
    use serde_json::{json, Value};
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;

    /// Control characters but line feed and tab: refused in text.
    const CONTROL: &str = r"\u0000-\u0008\u000B-\u001F\u007F-\u009F";
    /// Control characters and white space (Unicode `White_Space`, what `str::trim` removes).
    const BLANK: &str =
        r"\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

    /// Text with at least one character that is not white space, and no control
    /// characters but line feed and tab ([`super::Errors::text`]).
    pub fn text_pattern() -> String {
        format!("^[^{CONTROL}]*[^{BLANK}][^{CONTROL}]*$")
    }

    /// Text without control characters but line feed and tab; may be empty.
    pub fn plain_pattern() -> String {
        format!("^[^{CONTROL}]*$")
    }

    /// [`super::Errors::email`]: visible ASCII but `@` (and no `.` first or last in the
    /// domain).
    pub fn email_pattern() -> String {
        let c = r"[!-?A-~]";
        let d = r"[!-\-/-?A-~]";
        format!("^{c}{{1,64}}@{d}{c}*\\.{c}*{d}$")
    }

    /// [`super::Errors::phone`]: a digit somewhere, no space first or last.
    pub const PHONE_PATTERN: &str =
        r"^([0-9+()./-][0-9 +()./-]*)?[0-9]([0-9 +()./-]*[0-9+()./-])?$";

    fn build(mut schema: Value, nullable: bool) -> RefOr<Schema> {
        if nullable {
            let t = schema["type"].clone();
            schema["type"] = json!([t, "null"]);
        }
        // A literal of ours: it always deserializes (a unit test makes sure).
        let object: utoipa::openapi::schema::Object =
            serde_json::from_value(schema).unwrap_or_default();
        RefOr::T(Schema::Object(object))
    }

    fn text(max: usize, nullable: bool) -> RefOr<Schema> {
        build(
            json!({"type": "string", "maxLength": max, "pattern": text_pattern()}),
            nullable,
        )
    }

    macro_rules! text_schemas {
        ($($name:ident, $nullable:ident = $max:expr;)*) => {$(
            #[doc = concat!("Text of up to ", stringify!($max), " characters ([`super::Errors::text`]).")]
            pub fn $name() -> RefOr<Schema> {
                text($max, false)
            }
            #[doc = concat!("[`", stringify!($name), "`] or null.")]
            pub fn $nullable() -> RefOr<Schema> {
                text($max, true)
            }
        )*};
    }

    text_schemas! {
        text_100, text_100_or_null = 100;
        text_200, text_200_or_null = 200;
        text_500, text_500_or_null = 500;
        text_2000, text_2000_or_null = 2000;
        text_20000, text_20000_or_null = 20000;
    }

    /// An address line and the like: up to 200 characters, no control characters, or null.
    pub fn line_or_null() -> RefOr<Schema> {
        build(
            json!({"type": "string", "maxLength": 200, "pattern": plain_pattern()}),
            true,
        )
    }

    /// No `format: email`: validators read that format each their own way (quoted local
    /// parts, address literals, non-ASCII), and the pattern says exactly what the server
    /// takes.
    fn email_schema(nullable: bool) -> RefOr<Schema> {
        build(
            json!({"type": "string", "maxLength": 254, "pattern": email_pattern(),
                   "description": "An email address in visible ASCII: up to 64 characters, `@`, \
                                   a domain with a dot inside"}),
            nullable,
        )
    }

    pub fn email() -> RefOr<Schema> {
        email_schema(false)
    }

    pub fn email_or_null() -> RefOr<Schema> {
        email_schema(true)
    }

    fn phone_schema(nullable: bool) -> RefOr<Schema> {
        build(
            json!({"type": "string", "minLength": 3, "maxLength": 40, "pattern": PHONE_PATTERN,
                   "description": "Digits, spaces and + ( ) - . / only, with at least one digit"}),
            nullable,
        )
    }

    pub fn phone() -> RefOr<Schema> {
        phone_schema(false)
    }

    pub fn phone_or_null() -> RefOr<Schema> {
        phone_schema(true)
    }

    /// A new password: 12 to 128 characters (and not a common or guessable one, which only
    /// the server can judge: a 422).
    pub fn password() -> RefOr<Schema> {
        build(
            json!({"type": "string", "minLength": 12, "maxLength": 128,
                   "pattern": "^[^\\u0000]*$",
                   "description": "12 to 128 characters, not a common or easily guessed password"}),
            false,
        )
    }

    /// Every IANA time zone the server knows.
    pub fn timezone() -> RefOr<Schema> {
        let zones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect();
        build(
            json!({"type": "string", "enum": zones,
                   "description": "An IANA time zone, e.g. `Europe/Berlin`"}),
            false,
        )
    }

    /// Every ISO 4217 currency with minor units.
    pub fn currency() -> RefOr<Schema> {
        build(
            json!({"type": "string", "enum": super::currencies(),
                   "description": "An ISO 4217 currency code, e.g. `EUR`"}),
            false,
        )
    }

    /// Tooth surfaces as a chart entry takes them.
    pub fn surfaces() -> RefOr<Schema> {
        let item = build(
            json!({"type": "string", "pattern": "^[MOIDBLFPmoidblfp]$"}),
            false,
        );
        RefOr::T(Schema::Array(
            utoipa::openapi::schema::ArrayBuilder::new()
                .items(item)
                .description(Some(
                    "Surfaces: M, O, I, D, B (or F), L (or P), either case",
                ))
                .build(),
        ))
    }

    /// An ISO 3166-1 alpha-2 country code, or null.
    pub fn country_or_null() -> RefOr<Schema> {
        build(
            json!({"type": "string", "pattern": "^[A-Za-z]{2}$",
                   "description": "ISO 3166-1 alpha-2 country code, e.g. `DE`"}),
            true,
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_schema_is_a_real_one() {
            let all = [
                text_100(),
                text_100_or_null(),
                text_200(),
                text_200_or_null(),
                text_500(),
                text_500_or_null(),
                text_2000(),
                text_2000_or_null(),
                text_20000(),
                text_20000_or_null(),
                line_or_null(),
                email(),
                email_or_null(),
                phone(),
                phone_or_null(),
                password(),
                timezone(),
                currency(),
                country_or_null(),
                surfaces(),
            ];
            for s in all {
                let v = serde_json::to_value(&s).expect("serializes");
                assert!(v.get("type").is_some(), "{v}");
                // The constraints survived the trip through utoipa's types.
                assert!(
                    ["pattern", "enum", "minLength", "items"]
                        .iter()
                        .any(|k| v.get(*k).is_some()),
                    "{v}"
                );
            }
        }
    }
}

/// The ISO 4217 codes [`Errors::currency`] accepts.
pub fn currencies() -> Vec<String> {
    let mut codes = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            for c in b'A'..=b'Z' {
                let code = String::from_utf8_lossy(&[a, b, c]).into_owned();
                if iso_currency::Currency::from_code(&code).is_some_and(|x| x.exponent().is_some())
                {
                    codes.push(code);
                }
            }
        }
    }
    codes
}

#[cfg(test)]
mod proptests;
