//! Properties over HTTP, for parsers that the unit tests cannot reach on their own: the
//! bearer header of every signed-in route, and the working-hours body as the database
//! keeps it. Cases come from proptest strategies and run against one server; a failing
//! case is shrunk to a small one.

use std::sync::Arc;

use crate::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Runs `check` on `cases` values of `strategy`, from a blocking thread that drives the
/// requests on the test's runtime, so proptest can shrink a failure.
pub async fn check_all<S, F, Fut>(cases: u32, strategy: S, check: F)
where
    S: Strategy + Send + 'static,
    S::Value: Send,
    F: Fn(S::Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), TestCaseError>>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |v| handle.block_on(check(v)));
        if let Err(e) = result {
            panic!("{e}");
        }
    })
    .await
    .expect("the property ran");
}

/// Header values a client could send: near the bearer scheme, and any bytes at all.
fn authorization() -> impl Strategy<Value = Vec<u8>> {
    let scheme = prop::sample::select(vec![
        "Bearer ", "bearer ", "BEARER ", "Bearer", "Bearer  ", "Basic ", "Bearer\t", "",
    ]);
    let token = prop_oneof![
        "[A-Za-z0-9_.-]{0,80}",
        "eyJ[A-Za-z0-9_-]{10,40}\\.eyJ[A-Za-z0-9_-]{10,60}\\.[A-Za-z0-9_-]{43}",
        "mrt_[A-Za-z0-9_-]{86}",
        any::<String>(),
    ];
    prop_oneof![
        3 => (scheme, token).prop_map(|(s, t)| format!("{s}{t}").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
    .prop_filter("a header value", |b| HeaderValue::from_bytes(b).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authorization_header_but_a_valid_token_signs_in() {
    let app = Arc::new(
        spawn_with(|v| {
            v.insert("RATE_LIMIT_ANON_PER_MINUTE".into(), "100000".into());
        })
        .await,
    );
    let owner = app.register_clinic("Headers").await;
    let url = app.url("/api/v2/auth/me");
    let client = app.client.clone();
    check_all(192, authorization(), move |raw| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let value = HeaderValue::from_bytes(&raw).expect("filtered");
            let res = client
                .get(&url)
                .header(AUTHORIZATION, value)
                .send()
                .await
                .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            prop_assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
            let ct = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            prop_assert!(ct.starts_with("application/problem+json"), "{}", ct);
            Ok(())
        }
    })
    .await;
    // The scheme is case-insensitive and blanks around the token are tolerated.
    for scheme in ["Bearer ", "bearer ", "BEARER "] {
        let res = app
            .client
            .get(app.url("/api/v2/auth/me"))
            .header(AUTHORIZATION, format!("{scheme} {} ", owner.access))
            .send()
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::OK, "{scheme:?}");
    }
}

/// A local time as a client might type one: mostly `HH:MM`, sometimes with seconds, a
/// leap second, out of range, or not a time at all.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u32..24, 0u32..60).prop_map(|(h, m)| format!("{h:02}:{m:02}")),
        1 => (0u32..24, 0u32..60, 0u32..61).prop_map(|(h, m, s)| format!("{h:02}:{m:02}:{s:02}")),
        1 => Just("23:59:60".to_owned()),
        1 => "[0-9]{1,2}:[0-9]{1,2}|[0-9: apm]{0,6}|\\PC{0,6}",
    ]
}

/// `HH:MM` with a real hour and minute: the only spelling the API shows.
fn canonical(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit())
        && s[..2] < *"24"
        && s[3..] < *"60"
}

#[derive(Debug, Clone)]
struct Hours {
    weekly: Vec<(u32, String, String)>,
    exceptions: Vec<(u32, Option<(String, String)>)>,
}

impl Hours {
    fn body(&self) -> Value {
        json!({
            "weekly": self.weekly.iter().map(|(d, s, e)| json!({"weekday": d, "start": s, "end": e})).collect::<Vec<_>>(),
            "exceptions": self.exceptions.iter().map(|(day, times)| match times {
                Some((s, e)) => json!({"date": format!("2031-03-{:02}", day), "start": s, "end": e}),
                None => json!({"date": format!("2031-03-{:02}", day), "reason": "closed"}),
            }).collect::<Vec<_>>(),
        })
    }

    /// Whether a server must accept it: every time `HH:MM`, a weekday 1–7, each end after
    /// its start, no two intervals of a day overlapping, no day both off and with hours.
    fn plainly_valid(&self) -> bool {
        let times_ok = self
            .weekly
            .iter()
            .all(|(d, s, e)| (1..=7).contains(d) && canonical(s) && canonical(e) && s < e)
            && self.exceptions.iter().all(|(_, t)| {
                t.as_ref()
                    .is_none_or(|(s, e)| canonical(s) && canonical(e) && s < e)
            });
        let apart = |list: Vec<(&String, &String)>| {
            list.iter()
                .enumerate()
                .all(|(i, a)| list.iter().skip(i + 1).all(|b| a.1 <= b.0 || b.1 <= a.0))
        };
        let weekly_apart = (1..=7).all(|day| {
            apart(
                self.weekly
                    .iter()
                    .filter(|w| w.0 == day)
                    .map(|w| (&w.1, &w.2))
                    .collect(),
            )
        });
        let exceptions_apart = self.exceptions.iter().all(|(day, _)| {
            let same: Vec<_> = self.exceptions.iter().filter(|e| e.0 == *day).collect();
            (same.len() == 1 || same.iter().all(|e| e.1.is_some()))
                && apart(
                    same.iter()
                        .filter_map(|e| e.1.as_ref().map(|(s, e)| (s, e)))
                        .collect(),
                )
        });
        times_ok && weekly_apart && exceptions_apart
    }
}

fn hours() -> impl Strategy<Value = Hours> {
    (
        prop::collection::vec((0u32..=8, time_text(), time_text()), 0..6),
        prop::collection::vec(
            (
                1u32..4,
                prop::option::weighted(0.7, (time_text(), time_text())),
            ),
            0..4,
        ),
    )
        .prop_map(|(weekly, exceptions)| Hours { weekly, exceptions })
}

/// The intervals of a working-hours document, as `(day, start, end)`.
fn intervals(doc: &Value) -> Vec<(String, String, String)> {
    let weekly = doc["weekly"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            (
                w["weekday"].to_string(),
                w["start"].as_str().unwrap_or("").to_owned(),
                w["end"].as_str().unwrap_or("").to_owned(),
            )
        });
    let exceptions = doc["exceptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !e["start"].is_null())
        .map(|e| {
            (
                e["date"].as_str().unwrap_or("").to_owned(),
                e["start"].as_str().unwrap_or("").to_owned(),
                e["end"].as_str().unwrap_or("").to_owned(),
            )
        });
    weekly.chain(exceptions).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_hours_are_kept_as_shown_or_refused() {
    let app = Arc::new(
        spawn_with(|v| {
            v.insert("RATE_LIMIT_PER_MINUTE".into(), "100000".into());
            v.insert("RATE_LIMIT_CLINIC_PER_MINUTE".into(), "100000".into());
        })
        .await,
    );
    let owner = app.register_clinic("Hours").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let path = format!("/api/v2/providers/{}/working-hours", dentist.user_id);
    let (a, token) = (app.clone(), owner.access.clone());
    check_all(128, hours(), move |h| {
        let (app, path, token) = (a.clone(), path.clone(), token.clone());
        async move {
            let res = app
                .call(Method::PUT, &path, Some(&token), Some(h.body()))
                .await;
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            match status {
                StatusCode::OK => {
                    // What is shown is what is kept, in the API's own spelling, and sound.
                    let shown = app
                        .get(&path, Some(&token))
                        .await
                        .json::<Value>()
                        .await
                        .unwrap_or(Value::Null);
                    prop_assert_eq!(&shown, &body);
                    let kept = intervals(&body);
                    let sent =
                        h.weekly.len() + h.exceptions.iter().filter(|e| e.1.is_some()).count();
                    prop_assert_eq!(kept.len(), sent, "{}", body);
                    for (day, s, e) in &kept {
                        prop_assert!(
                            canonical(s) && canonical(e) && s < e,
                            "{} {}–{} kept from {:?}",
                            day,
                            s,
                            e,
                            h
                        );
                    }
                    for (i, a) in kept.iter().enumerate() {
                        for b in kept.iter().skip(i + 1) {
                            prop_assert!(
                                a.0 != b.0 || a.2 <= b.1 || b.2 <= a.1,
                                "{:?} overlaps {:?}",
                                a,
                                b
                            );
                        }
                    }
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    prop_assert!(
                        !h.plainly_valid(),
                        "valid hours refused: {:?} → {}",
                        h,
                        body
                    );
                    let errors = body["errors"].as_array().cloned().unwrap_or_default();
                    prop_assert!(!errors.is_empty(), "{}", body);
                    for e in &errors {
                        let field = e["field"].as_str().unwrap_or("");
                        prop_assert!(
                            field.starts_with("weekly") || field.starts_with("exceptions"),
                            "{}",
                            body
                        );
                    }
                }
                other => prop_assert!(false, "{} for {:?}: {}", other, h, body),
            }
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn dates_beyond_four_digit_years_are_refused_not_failed() {
    let app = spawn().await;
    let owner = app.register_clinic("Edges").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let path = format!("/api/v2/providers/{}/working-hours", dentist.user_id);
    let late: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "20:00", "end": "23:59"}))
        .collect();
    for date in ["+262142-12-31", "-262143-01-01", "10000-01-01"] {
        let res = app
            .call(
                Method::PUT,
                &path,
                Some(&owner.access),
                Some(json!({"weekly": late, "exceptions": [{"date": date}]})),
            )
            .await;
        let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], "exceptions[0].date", "{date}");
    }
    let res = app
        .call(
            Method::PUT,
            &path,
            Some(&owner.access),
            Some(json!({"weekly": late})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Late evening hours west of UTC reach past the end of the calendar in UTC.
    for zone in ["America/New_York", "UTC", "Pacific/Kiritimati"] {
        let res = app
            .patch(
                "/api/v2/clinic",
                Some(&owner.access),
                json!({"timezone": zone}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{zone}");
        for (date, status) in [
            ("%2B262142-12-31", StatusCode::UNPROCESSABLE_ENTITY),
            ("262142-12-31", StatusCode::BAD_REQUEST),
            ("-262143-01-01", StatusCode::UNPROCESSABLE_ENTITY),
            ("9999-12-31", StatusCode::OK),
            ("0001-01-01", StatusCode::OK),
        ] {
            let res = app
                .get(
                    &format!(
                        "/api/v2/availability?provider_id={}&date={date}&duration_minutes=5",
                        dentist.user_id
                    ),
                    Some(&owner.access),
                )
                .await;
            assert_eq!(
                res.status(),
                status,
                "{zone} {date}: {:?}",
                res.text().await
            );
        }
    }
}
