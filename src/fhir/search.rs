//! FHIR search parameters: the raw query (a parameter may repeat, as `date=ge…&date=lt…`
//! does), dates with their precision and prefixes, references, tokens, strings, and the
//! page (`_count`, and `_cursor` in the `next` link).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The page size when `_count` is absent, and the most it may ask for.
pub const DEFAULT_COUNT: u32 = 50;
pub const MAX_COUNT: u32 = 200;

/// A search's parameters, in the order given.
pub struct Query {
    pairs: Vec<(String, String)>,
}

fn bad(detail: impl Into<String>) -> AppError {
    AppError::BadRequest(detail.into())
}

impl Query {
    /// The raw query; a parameter outside `known` (and `_count`, `_cursor`) is a 400, as
    /// the route's declared parameters already are.
    pub fn parse(raw: Option<&str>, known: &[&str]) -> AppResult<Query> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (name, _) in &pairs {
            let allowed =
                known.contains(&name.as_str()) || matches!(name.as_str(), "_count" | "_cursor");
            if !allowed {
                return Err(bad(format!("unknown search parameter `{name}`")));
            }
        }
        Ok(Query { pairs })
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The one value of `name`; given twice is a 400.
    pub fn one<'a>(&'a self, name: &'a str) -> AppResult<Option<&'a str>> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(bad(format!("`{name}` may be given once")));
        }
        Ok(first)
    }

    /// The page size: `_count`, 1 to 200 (default 50).
    pub fn count(&self) -> AppResult<u32> {
        match self.one("_count")? {
            None => Ok(DEFAULT_COUNT),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_COUNT).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "`_count` must be a whole number from 1 to {MAX_COUNT}"
                    ))
                }),
        }
    }

    /// The search without its cursor, in a stable order: what a cursor is bound to, and
    /// what the `self` and `next` links repeat.
    pub fn canonical(&self) -> String {
        let mut pairs: Vec<&(String, String)> =
            self.pairs.iter().filter(|(k, _)| k != "_cursor").collect();
        pairs.sort();
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            out.append_pair(k, v);
        }
        out.finish()
    }

    /// The position after which this page starts (`None` for the first page); a cursor
    /// issued for another search is a 400.
    pub fn position<P: DeserializeOwned>(&self, state: &AppState) -> AppResult<Option<P>> {
        let Some(cursor) = self.one("_cursor")? else {
            return Ok(None);
        };
        let (search, position): (String, P) = state.cursors.decode(cursor)?;
        if search != self.canonical() {
            return Err(bad("the cursor belongs to another search"));
        }
        Ok(Some(position))
    }

    /// The `self` link and, when `last` is a position to continue after, the `next` link.
    pub fn links<P: Serialize>(
        &self,
        state: &AppState,
        resource_type: &str,
        last: Option<P>,
    ) -> (String, Option<String>) {
        let base = super::base(state);
        let search = self.canonical();
        let join = |extra: &str| {
            let q = [search.as_str(), extra]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("&");
            if q.is_empty() {
                format!("{base}/{resource_type}")
            } else {
                format!("{base}/{resource_type}?{q}")
            }
        };
        let self_link = join("");
        let next = last.map(|p| {
            let cursor = state.cursors.encode(&(search.clone(), p));
            join(&format!("_cursor={cursor}"))
        });
        (self_link, next)
    }
}

/// A page from `count + 1` rows: the rows kept and, when another page follows, the last
/// one kept (whose position the `next` link continues after).
pub fn page<T>(mut rows: Vec<T>, count: u32) -> (Vec<T>, bool) {
    let more = rows.len() > count as usize;
    rows.truncate(count as usize);
    (rows, more)
}

/// A lower and an upper bound, either open; `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range<T> {
    pub from: Option<T>,
    pub to: Option<T>,
}

impl<T: Ord + Copy> Range<T> {
    fn narrow(&mut self, other: Range<T>) {
        if let Some(f) = other.from {
            self.from = Some(self.from.map_or(f, |s| s.max(f)));
        }
        if let Some(t) = other.to {
            self.to = Some(self.to.map_or(t, |s| s.min(t)));
        }
    }
}

/// A date parameter's value: when it starts and when the next one at its precision would
/// (`2026` is the year, `2026-12` the month, `2026-12-03` the day); a time is at most a
/// second long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    Days(NaiveDate, NaiveDate),
    Instants(DateTime<Utc>, DateTime<Utc>),
}

fn moment(v: &str) -> Option<Moment> {
    let day = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let year = |s: &str| -> Option<i32> {
        (s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
            .filter(|y| (0..=9999).contains(y))
    };
    let two = |s: &str| -> Option<u32> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if v.contains('T') {
        let at = DateTime::parse_from_rfc3339(v).ok()?.with_timezone(&Utc);
        if at.year() < 0 || at.year() > 9999 {
            return None;
        }
        let start = at.with_nanosecond_floor();
        return Some(Moment::Instants(
            start,
            start + chrono::Duration::seconds(1),
        ));
    }
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [y] => {
            let y = year(y)?;
            Some(Moment::Days(day(y, 1, 1)?, day(y + 1, 1, 1)?))
        }
        [y, m] => {
            let (y, m) = (year(y)?, two(m)?);
            let start = day(y, m, 1)?;
            let next = if m == 12 {
                day(y + 1, 1, 1)?
            } else {
                day(y, m + 1, 1)?
            };
            Some(Moment::Days(start, next))
        }
        [y, m, d] => {
            let start = day(year(y)?, two(m)?, two(d)?)?;
            Some(Moment::Days(start, start.succ_opt()?))
        }
        _ => None,
    }
}

trait Floor {
    fn with_nanosecond_floor(self) -> Self;
}

impl Floor for DateTime<Utc> {
    fn with_nanosecond_floor(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

/// The prefixes served: `eq` (the default), `ge`, `gt`, `le`, `lt`, `sa`, `eb`.
fn split_prefix(v: &str) -> (&str, &str) {
    for p in ["eq", "ge", "gt", "le", "lt", "sa", "eb", "ne", "ap"] {
        if let Some(rest) = v.strip_prefix(p) {
            return (p, rest);
        }
    }
    ("eq", v)
}

/// The bounds one prefixed value puts on a target that is a point in time (a birth date,
/// an appointment's start): `[start, end)` of the value for `eq`, from its end for `gt`
/// and `sa`, and so on.
fn bounds<T: Copy>(name: &str, prefix: &str, start: T, end: T) -> AppResult<Range<T>> {
    Ok(match prefix {
        "eq" => Range {
            from: Some(start),
            to: Some(end),
        },
        "ge" => Range {
            from: Some(start),
            to: None,
        },
        "gt" | "sa" => Range {
            from: Some(end),
            to: None,
        },
        "le" => Range {
            from: None,
            to: Some(end),
        },
        "lt" | "eb" => Range {
            from: None,
            to: Some(start),
        },
        other => {
            return Err(bad(format!(
                "`{name}` does not support the `{other}` prefix (eq, ge, gt, le, lt, sa, eb do)"
            )))
        }
    })
}

fn malformed_date(name: &str) -> AppError {
    bad(format!(
        "`{name}` must be a date (YYYY, YYYY-MM or YYYY-MM-DD) with an optional prefix"
    ))
}

/// Every value of a date parameter on a date (a birth date): their bounds together.
pub fn date_range(q: &Query, name: &str) -> AppResult<Range<NaiveDate>> {
    let mut range = Range::default();
    for v in q.all(name) {
        let (prefix, value) = split_prefix(v);
        let Some(Moment::Days(start, end)) = moment(value) else {
            return Err(malformed_date(name));
        };
        range.narrow(bounds(name, prefix, start, end)?);
    }
    Ok(range)
}

/// Every value of a date parameter on an instant (an appointment's start): dates are days
/// in the clinic's time zone, times are instants; their bounds together.
pub fn instant_range(
    q: &Query,
    name: &str,
    zone: chrono_tz::Tz,
) -> AppResult<Range<DateTime<Utc>>> {
    let local = |d: NaiveDate| -> AppResult<DateTime<Utc>> {
        let midnight = d.and_hms_opt(0, 0, 0).ok_or_else(|| malformed_date(name))?;
        zone.from_local_datetime(&midnight)
            .earliest()
            // A midnight skipped by a clock change: the day starts an hour later.
            .or_else(|| {
                zone.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| malformed_date(name))
    };
    let mut range = Range::default();
    for v in q.all(name) {
        let (prefix, value) = split_prefix(v);
        let (start, end) = match moment(value) {
            Some(Moment::Days(s, e)) => (local(s)?, local(e)?),
            Some(Moment::Instants(s, e)) => (s, e),
            None => {
                return Err(bad(format!(
                    "`{name}` must be a date (YYYY, YYYY-MM, YYYY-MM-DD) or a time with its \
                     offset (YYYY-MM-DDThh:mm:ssZ), with an optional prefix"
                )))
            }
        };
        range.narrow(bounds(name, prefix, start, end)?);
    }
    Ok(range)
}

/// A reference parameter: `Type/id`, or the bare id; several values are a 400. An id that
/// is not a UUID finds nothing (`Ok(Some(None))`).
pub fn reference(q: &Query, name: &str, resource_type: &str) -> AppResult<Option<Option<Uuid>>> {
    let Some(v) = q.one(name)? else {
        return Ok(None);
    };
    let id = match v.split_once('/') {
        Some((t, id)) if t == resource_type => id,
        Some(_) => {
            return Err(bad(format!(
                "`{name}` must reference a {resource_type} (`{resource_type}/<id>` or the id)"
            )))
        }
        None => v,
    };
    if id.is_empty() || v.chars().count() > 100 {
        return Err(bad(format!("`{name}` must be 1 to 100 characters")));
    }
    Ok(Some(Uuid::parse_str(id).ok()))
}

/// The `identifier` token: `urn:ietf:rfc:3986|urn:uuid:<id>`, or without the system. Any
/// other system or value finds nothing (`Ok(Some(None))`).
pub fn identifier(q: &Query) -> AppResult<Option<Option<Uuid>>> {
    let Some(v) = q.one("identifier")? else {
        return Ok(None);
    };
    let value = match v.split_once('|') {
        Some((system, value)) if system == super::URI_SYSTEM => value,
        Some(_) => return Ok(Some(None)),
        None => v,
    };
    Ok(Some(
        value
            .strip_prefix("urn:uuid:")
            .and_then(|id| Uuid::parse_str(id).ok()),
    ))
}

/// Every value of a string parameter (`name`), lower-cased, as `LIKE` prefixes: FHIR's
/// string search matches the start of a name part, ignoring case. An empty value, or one with
/// control characters, is a 400.
pub fn string_prefixes(q: &Query, name: &str) -> AppResult<Vec<String>> {
    q.all(name)
        .map(|v| {
            if v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control) {
                return Err(bad(format!(
                    "`{name}` must be 1 to 200 characters without control characters"
                )));
            }
            let escaped: String = v
                .to_lowercase()
                .chars()
                .flat_map(|c| match c {
                    '%' | '_' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            Ok(format!("{escaped}%"))
        })
        .collect()
}

/// What a page's cursor holds for searches ordered by a time and an id.
#[derive(Debug, Serialize, Deserialize)]
pub struct AtId(pub DateTime<Utc>, pub Uuid);

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(
            Some(raw),
            &["birthdate", "date", "name", "patient", "identifier"],
        )
        .expect("parses")
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn date_precision_and_prefixes_bound_the_range() {
        let r = date_range(&q("birthdate=1985"), "birthdate").expect("ok");
        assert_eq!(
            (r.from, r.to),
            (Some(d("1985-01-01")), Some(d("1986-01-01")))
        );
        let r = date_range(&q("birthdate=1985-12"), "birthdate").expect("ok");
        assert_eq!(
            (r.from, r.to),
            (Some(d("1985-12-01")), Some(d("1986-01-01")))
        );
        let r = date_range(&q("birthdate=gt1985-04-12"), "birthdate").expect("ok");
        assert_eq!((r.from, r.to), (Some(d("1985-04-13")), None));
        let r = date_range(&q("birthdate=le1985-04"), "birthdate").expect("ok");
        assert_eq!((r.from, r.to), (None, Some(d("1985-05-01"))));
        let r = date_range(&q("birthdate=ge1980&birthdate=lt1990"), "birthdate").expect("ok");
        assert_eq!(
            (r.from, r.to),
            (Some(d("1980-01-01")), Some(d("1990-01-01")))
        );
    }

    #[test]
    fn malformed_dates_and_unserved_prefixes_are_refused() {
        for bad in [
            "1985-13",
            "85",
            "1985-02-30",
            "ne1985",
            "ap1985",
            "1985-1-1",
            "x",
        ] {
            assert!(
                date_range(&q(&format!("birthdate={bad}")), "birthdate").is_err(),
                "{bad} was accepted"
            );
        }
        // A time is no birth date.
        assert!(date_range(&q("birthdate=1985-04-12T10:00:00Z"), "birthdate").is_err());
    }

    #[test]
    fn days_of_an_instant_search_are_the_clinics_days() {
        let zone: chrono_tz::Tz = "Europe/Berlin".parse().expect("zone");
        let r = instant_range(&q("date=2026-12-03"), "date", zone).expect("ok");
        assert_eq!(
            r.from.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-02T23:00:00+00:00")
        );
        assert_eq!(
            r.to.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-03T23:00:00+00:00")
        );
        let r = instant_range(&q("date=ge2026-12-03T10:00:00Z"), "date", zone).expect("ok");
        assert_eq!(
            r.from.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-03T10:00:00+00:00")
        );
        assert!(instant_range(&q("date=2026-12-03T10:00:00"), "date", zone).is_err());
    }

    #[test]
    fn references_tokens_and_unknown_parameters() {
        let id = Uuid::now_v7();
        let found = reference(&q(&format!("patient=Patient/{id}")), "patient", "Patient");
        assert_eq!(found.expect("ok"), Some(Some(id)));
        let bare = reference(&q(&format!("patient={id}")), "patient", "Patient");
        assert_eq!(bare.expect("ok"), Some(Some(id)));
        assert!(reference(
            &q(&format!("patient=Practitioner/{id}")),
            "patient",
            "Patient"
        )
        .is_err());
        assert_eq!(
            reference(&q("patient=nope"), "patient", "Patient").expect("ok"),
            Some(None)
        );
        assert!(reference(&q("patient="), "patient", "Patient").is_err());
        assert!(reference(&q("patient=Patient/"), "patient", "Patient").is_err());
        let token = format!("identifier=urn:ietf:rfc:3986%7Curn:uuid:{id}");
        assert_eq!(identifier(&q(&token)).expect("ok"), Some(Some(id)));
        assert_eq!(
            identifier(&q("identifier=other%7Cx")).expect("ok"),
            Some(None)
        );
        assert!(Query::parse(Some("gender=male"), &["name"]).is_err());
        assert!(Query::parse(Some("_format=xml"), &["name"]).is_err());
        assert!(Query::parse(Some("_count=5&name=x"), &["name"]).is_ok());
    }

    #[test]
    fn string_search_escapes_like_wildcards() {
        let p = string_prefixes(&q("name=50%25_o%5C"), "name").expect("ok");
        assert_eq!(p, vec!["50\\%\\_o\\\\%".to_owned()]);
        assert!(string_prefixes(&q("name="), "name").is_err());
        assert!(string_prefixes(&q("name=a%01"), "name").is_err());
    }

    #[test]
    fn the_canonical_search_ignores_order_and_cursor() {
        let a = q("name=b&birthdate=1980&_cursor=x");
        let b = q("birthdate=1980&name=b");
        assert_eq!(a.canonical(), b.canonical());
        let (start, end) = page(vec![1, 2, 3], 2)
            .0
            .iter()
            .fold((0, 0), |acc, x| (acc.0 + 1, acc.1 + x));
        assert_eq!((start, end), (2, 3));
        assert!(page(vec![1, 2, 3], 2).1);
        assert!(!page(vec![1, 2], 2).1);
    }
}
