//! How one setting's text becomes a typed value. Reading never fails on a bad value: it is
//! kept as [`Parsed::Invalid`] so that the validation pass can report every problem at once.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{Environment, LogFormat};

/// A setting as read: its typed value, or the text that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    Valid(T),
    /// The text as given (trimmed; lowercased where case does not matter).
    Invalid(String),
}

impl<T> From<T> for Parsed<T> {
    fn from(value: T) -> Self {
        Parsed::Valid(value)
    }
}

/// The rules by which one setting's text (already trimmed, never empty) becomes a value.
pub trait FromSetting: Sized {
    fn from_setting(text: &str) -> Parsed<Self>;
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl FromSetting for $t {
            fn from_setting(text: &str) -> Parsed<Self> {
                text.parse().map_or_else(|_| Parsed::Invalid(text.to_owned()), Parsed::Valid)
            }
        }
    )*};
}
numbers!(u16, u32, u64, usize, i64);

impl FromSetting for bool {
    fn from_setting(text: &str) -> Parsed<Self> {
        let text = text.to_ascii_lowercase();
        match text.as_str() {
            "1" | "true" | "yes" | "on" => Parsed::Valid(true),
            "0" | "false" | "no" | "off" => Parsed::Valid(false),
            _ => Parsed::Invalid(text),
        }
    }
}

impl FromSetting for Environment {
    fn from_setting(text: &str) -> Parsed<Self> {
        let text = text.to_ascii_lowercase();
        match text.as_str() {
            "development" | "dev" => Parsed::Valid(Environment::Development),
            "test" => Parsed::Valid(Environment::Test),
            "production" | "prod" => Parsed::Valid(Environment::Production),
            _ => Parsed::Invalid(text),
        }
    }
}

impl FromSetting for LogFormat {
    fn from_setting(text: &str) -> Parsed<Self> {
        let text = text.to_ascii_lowercase();
        match text.as_str() {
            "json" => Parsed::Valid(LogFormat::Json),
            "pretty" | "text" => Parsed::Valid(LogFormat::Pretty),
            _ => Parsed::Invalid(text),
        }
    }
}

/// A CIDR range, or a single address standing for a range of one.
impl FromSetting for IpNet {
    fn from_setting(text: &str) -> Parsed<Self> {
        match (text.parse::<IpNet>(), text.parse::<IpAddr>()) {
            (Ok(net), _) => Parsed::Valid(net),
            (_, Ok(ip)) => Parsed::Valid(IpNet::from(ip)),
            _ => Parsed::Invalid(text.to_owned()),
        }
    }
}

impl<'de, T: FromSetting> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(d)?;
        Ok(T::from_setting(text.trim()))
    }
}

/// Free text (a host, a prefix, a path), trimmed.
pub fn text<'de, D: Deserializer<'de>, T: From<String>>(d: D) -> Result<T, D::Error> {
    let Text(text) = Text::deserialize(d)?;
    Ok(T::from(text.trim().to_owned()))
}

/// Text, trimmed; `None` when unset.
pub fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Text(text) = Text::deserialize(d)?;
    Ok(Some(text.trim().to_owned()))
}

/// A secret, trimmed; `None` when unset.
pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<Text>::deserialize(d)?.map(|Text(t)| SecretString::from(t.trim().to_owned())))
}

/// A comma-separated list of free text; items are trimmed and empty items dropped.
pub fn list<'de, D: Deserializer<'de>, T: From<String>>(d: D) -> Result<Vec<T>, D::Error> {
    let Text(text) = Text::deserialize(d)?;
    Ok(items(&text).map(|item| T::from(item.to_owned())).collect())
}

/// A comma-separated list whose items each parse (or are kept as invalid) on their own.
pub fn parsed_list<'de, D: Deserializer<'de>, T: FromSetting>(
    d: D,
) -> Result<Vec<Parsed<T>>, D::Error> {
    let Text(text) = Text::deserialize(d)?;
    Ok(items(&text).map(T::from_setting).collect())
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// One value as text, whether it came from the environment (always text) or from the file
/// (where `port = 8000` and `cache_enabled = false` are native numbers and booleans).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        Ok(Text(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_accept_the_usual_spellings_in_any_case() {
        for yes in ["1", "true", "TRUE", "Yes", "on"] {
            assert_eq!(bool::from_setting(yes), Parsed::Valid(true), "{yes}");
        }
        for no in ["0", "false", "No", "OFF"] {
            assert_eq!(bool::from_setting(no), Parsed::Valid(false), "{no}");
        }
        assert_eq!(bool::from_setting("Maybe"), Parsed::Invalid("maybe".into()));
    }

    #[test]
    fn environments_have_short_forms() {
        assert_eq!(
            Environment::from_setting("Prod"),
            Parsed::Valid(Environment::Production)
        );
        assert_eq!(
            Environment::from_setting("dev"),
            Parsed::Valid(Environment::Development)
        );
        assert_eq!(
            Environment::from_setting("staging"),
            Parsed::Invalid("staging".into())
        );
    }

    #[test]
    fn a_proxy_is_a_range_or_a_single_address() {
        assert!(matches!(
            IpNet::from_setting("10.0.0.0/8"),
            Parsed::Valid(n) if n.prefix_len() == 8
        ));
        assert!(matches!(
            IpNet::from_setting("::1"),
            Parsed::Valid(n) if n.prefix_len() == 128
        ));
        assert_eq!(
            IpNet::from_setting("nonsense"),
            Parsed::Invalid("nonsense".into())
        );
    }
}
