//! The odontogram's vocabulary: teeth in FDI and Universal numbering (stored as FDI),
//! surfaces with the anatomical rule, and the fixed list of conditions.

pub mod perio;
pub mod routes;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tooth, canonically in FDI notation (11–48 permanent, 51–85 primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tooth(u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Numbering {
    #[default]
    Fdi,
    Universal,
}

impl Tooth {
    pub fn from_fdi_number(n: u8) -> Option<Tooth> {
        let (quadrant, position) = (n / 10, n % 10);
        let ok = match quadrant {
            1..=4 => (1..=8).contains(&position),
            5..=8 => (1..=5).contains(&position),
            _ => false,
        };
        ok.then_some(Tooth(n))
    }

    pub fn parse_fdi(s: &str) -> Option<Tooth> {
        if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Tooth::from_fdi_number(s.parse().ok()?)
    }

    /// Universal: permanent 1–32 from the upper right third molar clockwise,
    /// primary A–T in the same order.
    pub fn parse_universal(s: &str) -> Option<Tooth> {
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(n) = digits.then(|| s.parse::<u8>().ok()).flatten() {
            if s.starts_with('0') {
                return None;
            }
            let fdi = match n {
                1..=8 => 19 - n,   // 1 → 18 … 8 → 11
                9..=16 => 12 + n,  // 9 → 21 … 16 → 28
                17..=24 => 55 - n, // 17 → 38 … 24 → 31
                25..=32 => 16 + n, // 25 → 41 … 32 → 48
                _ => return None,
            };
            return Tooth::from_fdi_number(fdi);
        }
        let mut chars = s.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return None;
        };
        let c = c.to_ascii_uppercase();
        if !c.is_ascii_uppercase() {
            return None;
        }
        let i = (c as u8).checked_sub(b'A')? + 1; // A = 1 … T = 20
        let fdi = match i {
            1..=5 => 56 - i,   // A → 55 … E → 51
            6..=10 => 55 + i,  // F → 61 … J → 65
            11..=15 => 86 - i, // K → 75 … O → 71
            16..=20 => 65 + i, // P → 81 … T → 85
            _ => return None,
        };
        Tooth::from_fdi_number(fdi)
    }

    pub fn parse(s: &str, numbering: Numbering) -> Option<Tooth> {
        match numbering {
            Numbering::Fdi => Tooth::parse_fdi(s),
            Numbering::Universal => Tooth::parse_universal(s),
        }
    }

    pub fn fdi(self) -> u8 {
        self.0
    }

    pub fn quadrant(self) -> u8 {
        self.0 / 10
    }

    pub fn position(self) -> u8 {
        self.0 % 10
    }

    pub fn is_primary(self) -> bool {
        self.quadrant() >= 5
    }

    /// Incisors and canines.
    pub fn is_anterior(self) -> bool {
        self.position() <= 3
    }

    pub fn to_universal(self) -> String {
        let (q, p) = (self.quadrant(), self.position());
        match q {
            1 => (9 - p).to_string(),
            2 => (8 + p).to_string(),
            3 => (25 - p).to_string(),
            4 => (24 + p).to_string(),
            5 => char::from(b'A' + (5 - p)).to_string(),
            6 => char::from(b'E' + p).to_string(),
            7 => char::from(b'K' + (5 - p)).to_string(),
            _ => char::from(b'O' + p).to_string(),
        }
    }

    pub fn render(self, numbering: Numbering) -> String {
        match numbering {
            Numbering::Fdi => self.0.to_string(),
            Numbering::Universal => self.to_universal(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
pub enum Surface {
    M,
    O,
    I,
    D,
    B,
    L,
}

impl Surface {
    /// Parses a surface; `F` (facial) is `B`, `P` (palatal) is `L`.
    pub fn parse(s: &str) -> Option<Surface> {
        match s.to_ascii_uppercase().as_str() {
            "M" => Some(Surface::M),
            "O" => Some(Surface::O),
            "I" => Some(Surface::I),
            "D" => Some(Surface::D),
            "B" | "F" => Some(Surface::B),
            "L" | "P" => Some(Surface::L),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::M => "M",
            Surface::O => "O",
            Surface::I => "I",
            Surface::D => "D",
            Surface::B => "B",
            Surface::L => "L",
        }
    }

    /// Incisal only on anterior teeth, occlusal only on posterior ones.
    pub fn fits(self, tooth: Tooth) -> bool {
        match self {
            Surface::I => tooth.is_anterior(),
            Surface::O => !tooth.is_anterior(),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Caries,
    Filling,
    Crown,
    Missing,
    Implant,
    RootCanal,
    Bridge,
    Sealant,
    Fracture,
    Watch,
    Veneer,
    Abscess,
    Impacted,
    Erupting,
}

impl Condition {
    pub const ALL: [Condition; 14] = [
        Condition::Caries,
        Condition::Filling,
        Condition::Crown,
        Condition::Missing,
        Condition::Implant,
        Condition::RootCanal,
        Condition::Bridge,
        Condition::Sealant,
        Condition::Fracture,
        Condition::Watch,
        Condition::Veneer,
        Condition::Abscess,
        Condition::Impacted,
        Condition::Erupting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Caries => "caries",
            Condition::Filling => "filling",
            Condition::Crown => "crown",
            Condition::Missing => "missing",
            Condition::Implant => "implant",
            Condition::RootCanal => "root_canal",
            Condition::Bridge => "bridge",
            Condition::Sealant => "sealant",
            Condition::Fracture => "fracture",
            Condition::Watch => "watch",
            Condition::Veneer => "veneer",
            Condition::Abscess => "abscess",
            Condition::Impacted => "impacted",
            Condition::Erupting => "erupting",
        }
    }

    pub fn parse(s: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Conditions of surfaces need at least one; whole-tooth conditions take none.
    pub fn surfaces_rule(self) -> SurfacesRule {
        match self {
            Condition::Caries | Condition::Filling => SurfacesRule::Required,
            Condition::Missing
            | Condition::Implant
            | Condition::Crown
            | Condition::RootCanal
            | Condition::Bridge
            | Condition::Abscess
            | Condition::Impacted
            | Condition::Erupting => SurfacesRule::None,
            _ => SurfacesRule::Optional,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurfacesRule {
    Required,
    Optional,
    None,
}

/// Parses and checks a list of surfaces for a tooth: de-duplicated, in canonical order.
pub fn parse_surfaces(tooth: Tooth, raw: &[String]) -> Result<Vec<Surface>, String> {
    let mut out = Vec::with_capacity(raw.len());
    for s in raw {
        let surface = Surface::parse(s)
            .ok_or_else(|| format!("{s:?} is not a surface (M, O, I, D, B/F, L/P)"))?;
        if !surface.fits(tooth) {
            return Err(match surface {
                Surface::I => format!("tooth {} is posterior: no incisal surface", tooth.fdi()),
                _ => format!("tooth {} is anterior: no occlusal surface", tooth.fdi()),
            });
        }
        if !out.contains(&surface) {
            out.push(surface);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdi_accepts_exactly_the_permanent_and_primary_teeth() {
        let valid: Vec<u8> = (0..=99)
            .filter(|n| Tooth::from_fdi_number(*n).is_some())
            .collect();
        assert_eq!(valid.len(), 32 + 20);
        for bad in ["10", "19", "49", "56", "86", "90", "1", "111", "3a", ""] {
            assert!(Tooth::parse_fdi(bad).is_none(), "{bad}");
        }
        assert_eq!(Tooth::parse_fdi("36").map(Tooth::fdi), Some(36));
    }

    #[test]
    fn universal_maps_to_fdi_and_back_for_every_tooth() {
        let pairs = [
            ("1", 18),
            ("8", 11),
            ("9", 21),
            ("16", 28),
            ("17", 38),
            ("24", 31),
            ("25", 41),
            ("32", 48),
            ("A", 55),
            ("E", 51),
            ("F", 61),
            ("J", 65),
            ("K", 75),
            ("O", 71),
            ("P", 81),
            ("T", 85),
        ];
        for (u, fdi) in pairs {
            let t = Tooth::parse_universal(u).expect(u);
            assert_eq!(t.fdi(), fdi, "{u}");
            assert_eq!(t.to_universal(), u);
        }
        for n in (11..=85).filter_map(Tooth::from_fdi_number) {
            assert_eq!(Tooth::parse_universal(&n.to_universal()), Some(n));
        }
        for bad in ["0", "33", "U", "01", "AA", "", "-1", "+1", "+32"] {
            assert!(Tooth::parse_universal(bad).is_none(), "{bad}");
        }
        assert_eq!(Tooth::parse_universal("a").map(Tooth::fdi), Some(55));
    }

    #[test]
    fn surfaces_follow_anatomy_and_aliases() {
        let molar = Tooth::parse_fdi("36").expect("tooth");
        let incisor = Tooth::parse_fdi("11").expect("tooth");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_surfaces(molar, &s(&["O", "M", "F", "P", "m"])).expect("ok"),
            vec![Surface::M, Surface::O, Surface::B, Surface::L]
        );
        assert!(parse_surfaces(molar, &s(&["I"])).is_err());
        assert!(parse_surfaces(incisor, &s(&["O"])).is_err());
        assert!(parse_surfaces(incisor, &s(&["I", "F"])).is_ok());
        assert!(parse_surfaces(molar, &s(&["X"])).is_err());
        // Primary canine (53) is anterior, primary molar (54) is posterior.
        assert!(parse_surfaces(Tooth::parse_fdi("53").expect("t"), &s(&["I"])).is_ok());
        assert!(parse_surfaces(Tooth::parse_fdi("54").expect("t"), &s(&["O"])).is_ok());
    }

    #[test]
    fn conditions_have_a_fixed_vocabulary() {
        for c in Condition::ALL {
            assert_eq!(Condition::parse(c.as_str()), Some(c));
        }
        assert_eq!(Condition::parse("cavity"), None);
        assert_eq!(Condition::Missing.surfaces_rule(), SurfacesRule::None);
        assert_eq!(Condition::Caries.surfaces_rule(), SurfacesRule::Required);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Every tooth there is, in FDI.
    fn all_teeth() -> Vec<Tooth> {
        (0..=u8::MAX).filter_map(Tooth::from_fdi_number).collect()
    }

    fn tooth() -> impl Strategy<Value = Tooth> {
        proptest::sample::select(all_teeth())
    }

    /// Strings near the notations (digits, letters, signs, blanks) as well as any text.
    fn tooth_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{0,3}",
            "[ \t]?[+-]?[0-9A-Za-z]{1,3}[ \t]?",
            "[A-Za-z]",
            any::<String>(),
        ]
    }

    fn surface_like() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(vec![
                "M", "O", "I", "D", "B", "L", "F", "P", "m", "o", "i", "d", "b", "l", "f", "p",
                " M", "O ", "X", "MO", "", " ",
            ])
            .prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_tooth_number_is_valid_exactly_when_quadrant_and_position_exist(n in any::<u8>()) {
            let (q, p) = (n / 10, n % 10);
            let expected = match q {
                1..=4 => (1..=8).contains(&p),
                5..=8 => (1..=5).contains(&p),
                _ => false,
            };
            prop_assert_eq!(Tooth::from_fdi_number(n).is_some(), expected);
        }

        #[test]
        fn every_tooth_round_trips_through_both_notations(t in tooth()) {
            prop_assert_eq!(Tooth::parse(&t.render(Numbering::Fdi), Numbering::Fdi), Some(t));
            let u = t.render(Numbering::Universal);
            prop_assert_eq!(Tooth::parse(&u, Numbering::Universal), Some(t));
            prop_assert_eq!(Tooth::parse(&u.to_ascii_lowercase(), Numbering::Universal), Some(t));
            // Universal numbers permanent teeth 1–32 and primary teeth A–T.
            if t.is_primary() {
                prop_assert!(u.len() == 1 && ("A"..="T").contains(&u.as_str()), "{}", u);
            } else {
                let n: u8 = u.parse().map_err(|_| TestCaseError::fail(format!("{u} is not a number")))?;
                prop_assert!((1..=32).contains(&n));
            }
        }

        #[test]
        fn universal_notation_is_one_to_one(a in tooth(), b in tooth()) {
            prop_assert_eq!(a == b, a.to_universal() == b.to_universal());
        }

        #[test]
        fn a_string_is_a_tooth_only_in_its_canonical_spelling(s in tooth_like()) {
            // Parsing never panics; what parses is exactly the tooth's own rendering
            // (surrounding blanks aside, and letters in either case for Universal).
            if let Some(t) = Tooth::parse(&s, Numbering::Fdi) {
                prop_assert_eq!(t.render(Numbering::Fdi), s.trim());
                prop_assert!(Tooth::from_fdi_number(t.fdi()).is_some());
            }
            if let Some(t) = Tooth::parse(&s, Numbering::Universal) {
                prop_assert!(
                    t.to_universal().eq_ignore_ascii_case(s.trim()),
                    "{:?} parsed as Universal {}", s, t.to_universal()
                );
            }
        }

        #[test]
        fn surfaces_are_checked_deduplicated_and_ordered(
            t in tooth(),
            raw in proptest::collection::vec(surface_like(), 0..8),
        ) {
            let parsed: Vec<Option<Surface>> = raw.iter().map(|s| Surface::parse(s)).collect();
            match parse_surfaces(t, &raw) {
                Ok(out) => {
                    // Strictly ascending: sorted and without duplicates.
                    prop_assert!(out.windows(2).all(|w| w[0] < w[1]), "{:?}", out);
                    // Each one fits the tooth: incisal only on anterior, occlusal only on posterior.
                    for s in &out {
                        prop_assert!(s.fits(t));
                        if t.is_anterior() {
                            prop_assert_ne!(*s, Surface::O);
                        } else {
                            prop_assert_ne!(*s, Surface::I);
                        }
                    }
                    // Exactly the surfaces that were asked for.
                    let mut asked: Vec<Surface> = parsed.iter().map(|p| p.expect("every input parsed")).collect();
                    asked.sort();
                    asked.dedup();
                    prop_assert_eq!(out, asked);
                }
                Err(_) => prop_assert!(
                    parsed.iter().any(|p| p.is_none_or(|s| !s.fits(t))),
                    "{:?} refused for tooth {} though every surface is valid", raw, t.fdi()
                ),
            }
        }

        #[test]
        fn a_surface_is_one_of_the_letters_and_their_aliases(s in surface_like()) {
            match Surface::parse(&s) {
                Some(surface) => {
                    let letter = s.trim().to_ascii_uppercase();
                    let alias = match letter.as_str() {
                        "F" => "B",
                        "P" => "L",
                        other => other,
                    };
                    prop_assert_eq!(surface.as_str(), alias);
                }
                // Blanks around a letter may be trimmed or refused.
                None => prop_assert!(!["M", "O", "I", "D", "B", "L", "F", "P"]
                    .contains(&s.to_ascii_uppercase().as_str())),
            }
        }
    }
}
