//! Property tests for the validators: time zones, phones, emails.

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
