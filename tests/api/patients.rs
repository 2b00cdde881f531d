//! Patients: create, read, search, update, archive; idempotency and optimistic
//! concurrency; hostile input; cross-clinic ids; and one audit event per access.

use std::collections::HashSet;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn a_patient_is_created_read_and_audited_once_with_the_request_id() {
    let app = spawn().await;
    let owner = app.register_clinic("Patients").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let res = app
        .post(
            "/api/v2/patients",
            Some(&owner.access),
            json!({
                "first_name": "Ada", "last_name": "Lovelace", "date_of_birth": "1990-12-10",
                "sex": "female", "email": "ada@example.test", "phone": "+49 30 1234567",
                "address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country": "DE"},
                "preferred_provider_id": dentist.user_id,
                "medical_alerts": [{"kind": "allergy", "description": "Penicillin", "severity": "high"}],
                "emergency_contact": {"name": "Charles", "relationship": "friend", "phone": "+44 20 7946 0000"}
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let location = res.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let created: Value = res.json().await.expect("json");
    assert_eq!(
        location,
        format!("/api/v2/patients/{}", created["id"].as_str().expect("id"))
    );
    assert_eq!(created["medical_alerts"][0]["severity"], "high");
    assert_eq!(created["archived"], false);

    let read = app
        .client
        .get(app.url(&location))
        .bearer_auth(&owner.access)
        .header("x-request-id", "read-ada-1")
        .send()
        .await
        .expect("send");
    assert_eq!(read.status(), StatusCode::OK);
    let body: Value = read.json().await.expect("json");
    assert_eq!(body, created);

    let mut db = app.admin_db().await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, patient_id::text FROM audit_events WHERE request_id = 'read-ada-1'",
    )
    .fetch_all(&mut db)
    .await
    .expect("audit");
    assert_eq!(
        rows,
        vec![(
            "patient.read".to_owned(),
            created["id"].as_str().expect("id").to_owned()
        )]
    );
}

#[tokio::test]
async fn invalid_patients_are_422_naming_the_field() {
    let app = spawn().await;
    let owner = app.register_clinic("Invalid").await;
    let cases = [
        (
            json!({"last_name": "X", "date_of_birth": "1990-01-01"}),
            "first_name",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "2999-01-01"}),
            "date_of_birth",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-02-30"}),
            "date_of_birth",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-01-01", "sex": "robot"}),
            "sex",
        ),
        (
            json!({"first_name": "x".repeat(10_000), "last_name": "X", "date_of_birth": "1990-01-01"}),
            "first_name",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-01-01", "email": "nope"}),
            "email",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-01-01",
                "medical_alerts": [{"kind": "allergy", "description": "x", "severity": "extreme"}]}),
            "medical_alerts[0].severity",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-01-01",
                "address": {"country": "Germany"}}),
            "address.country",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-01-01",
                "preferred_provider_id": uuid::Uuid::now_v7()}),
            "preferred_provider_id",
        ),
        (
            json!({"first_name": "A", "last_name": "X", "date_of_birth": "1990-01-01",
                "responsible_party_id": uuid::Uuid::now_v7()}),
            "responsible_party_id",
        ),
        (
            json!({"first_name": "A\u{0007}", "last_name": "X", "date_of_birth": "1990-01-01"}),
            "first_name",
        ),
    ];
    for (body, field) in cases {
        let res = app
            .post("/api/v2/patients", Some(&owner.access), body)
            .await;
        let problem = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
}

#[tokio::test]
async fn hostile_strings_are_stored_verbatim() {
    let app = spawn().await;
    let owner = app.register_clinic("Hostile").await;
    for name in [
        "O'Brien",
        "Robert'); DROP TABLE patients;--",
        "<script>alert('x')</script>",
        "Zoë 😀 Ünicode",
        "محمد",
        "\u{202E}evil\u{202C}",
        "%_\\",
    ] {
        let res = app
            .post(
                "/api/v2/patients",
                Some(&owner.access),
                patient_body(name, name),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{name}");
        let created: Value = res.json().await.expect("json");
        assert_eq!(created["first_name"], name);
        let found: Value = app
            .get(
                &format!("/api/v2/patients?q={}", urlencode(name)),
                Some(&owner.access),
            )
            .await
            .json()
            .await
            .expect("json");
        assert!(found["items"].is_array(), "search with {name:?} answers");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn references_to_another_clinic_are_422_naming_the_field() {
    let app = spawn().await;
    let alpha = app.register_clinic("Alpha").await;
    let beta = app.register_clinic("Beta").await;
    let beta_dentist = app.staff(&beta.access, "dentist").await;
    let beta_patient = app.patient(&beta.access, "Bea", "Beta").await;
    for (field, value) in [
        ("preferred_provider_id", beta_dentist.user_id.clone()),
        ("responsible_party_id", beta_patient.clone()),
    ] {
        let mut body = patient_body("Al", "Alpha");
        body[field] = json!(value);
        let problem = expect_problem(
            app.post("/api/v2/patients", Some(&alpha.access), body)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], field);
    }
    // A provider must be bookable.
    let reception = app.staff(&alpha.access, "receptionist").await;
    let mut body = patient_body("Al", "Alpha");
    body["preferred_provider_id"] = json!(reception.user_id);
    expect_problem(
        app.post("/api/v2/patients", Some(&alpha.access), body)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

#[tokio::test]
async fn idempotent_creates_replay_and_refuse_a_different_body() {
    let app = spawn().await;
    let owner = app.register_clinic("Idem").await;
    let send = |body: Value, key: &str| {
        app.client
            .post(app.url("/api/v2/patients"))
            .bearer_auth(&owner.access)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send(patient_body("Ida", "Empotent"), "key-1")
        .await
        .expect("send");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    // Same body with keys in another order is the same request.
    let replay = send(
        json!({"date_of_birth": "1985-04-12", "last_name": "Empotent", "first_name": "Ida"}),
        "key-1",
    )
    .await
    .expect("send");
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert!(replay.headers().contains_key("location"));
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(replay["id"], first["id"]);
    let other = send(patient_body("Someone", "Else"), "key-1")
        .await
        .expect("send");
    expect_problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    let list: Value = app
        .get("/api/v2/patients", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().expect("items").len(), 1);
    // A failed create frees its key for a corrected retry.
    let bad = send(json!({"first_name": "N", "last_name": "N", "date_of_birth": "1990-01-01", "responsible_party_id": uuid::Uuid::now_v7()}), "key-2")
        .await
        .expect("send");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let good = send(patient_body("N", "N"), "key-2").await.expect("send");
    assert_eq!(good.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_concurrent_patch_race_with_one_etag_has_exactly_one_winner() {
    let app = spawn().await;
    let owner = app.register_clinic("Race").await;
    let id = app.patient(&owner.access, "Rae", "Cing").await;
    let url = app.url(&format!("/api/v2/patients/{id}"));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = app.client.clone();
        let url = url.clone();
        let token = owner.access.clone();
        tasks.push(tokio::spawn(async move {
            client
                .patch(url)
                .bearer_auth(token)
                .header("if-match", "\"1\"")
                .json(&json!({"phone": format!("+1 555 000 00{i}")}))
                .send()
                .await
                .expect("send")
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::PRECONDITION_FAILED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
    let now: Value = app
        .get(&format!("/api/v2/patients/{id}"), Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(now["version"], 2);
}

#[tokio::test]
async fn patch_is_a_merge_patch() {
    let app = spawn().await;
    let owner = app.register_clinic("Merge").await;
    let res = app
        .post("/api/v2/patients", Some(&owner.access), json!({"first_name": "Mo", "last_name": "Erge", "date_of_birth": "2015-06-01", "phone": "+1 555 1234", "guardian": {"name": "Pa Erge", "relationship": "father"}}))
        .await;
    let id = res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("/api/v2/patients/{id}");
    let res = app
        .patch(
            &path,
            Some(&owner.access),
            json!({"phone": null, "email": "mo@example.test"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["phone"], Value::Null);
    assert_eq!(body["email"], "mo@example.test");
    assert_eq!(body["guardian"]["name"], "Pa Erge", "absent fields stay");
    let problem = expect_problem(
        app.patch(&path, Some(&owner.access), json!({"first_name": null}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "first_name");
    expect_problem(
        app.patch(
            &path,
            Some(&owner.access),
            json!({"responsible_party_id": id}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    expect_problem(
        app.patch(&path, Some(&owner.access), json!({"nickname": "Mo"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

#[tokio::test]
async fn archived_patients_leave_lists_and_their_address_but_are_kept() {
    let app = spawn().await;
    let owner = app.register_clinic("Archive").await;
    let keep = app.patient(&owner.access, "Kee", "Pme").await;
    let gone = app.patient(&owner.access, "Arch", "Ived").await;
    let res = app
        .delete(&format!("/api/v2/patients/{gone}"), Some(&owner.access))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let ids = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| p["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let list = ids(app
        .get("/api/v2/patients", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json"));
    assert_eq!(list, vec![keep.clone()]);
    let all = ids(app
        .get(
            "/api/v2/patients?include_archived=true",
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("json"));
    assert_eq!(all.len(), 2);
    let searched = ids(app
        .get("/api/v2/patients?q=ived", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json"));
    assert!(searched.is_empty());
    // Kept, and listed on request, with the whole record.
    let all: Value = app
        .get(
            "/api/v2/patients?include_archived=true",
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("json");
    let archived = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["id"] == gone.as_str())
        .expect("the archived patient is listed");
    assert_eq!(archived["archived"], true);
    assert_eq!(archived["last_name"], "Ived");
    // Gone from its address and everything under it, as after any DELETE.
    for path in [
        format!("/api/v2/patients/{gone}"),
        format!("/api/v2/patients/{gone}/chart"),
        format!("/api/v2/patients/{gone}/notes"),
        format!("/api/v2/patients/{gone}/perio-exams"),
    ] {
        let res = app.get(&path, Some(&owner.access)).await;
        expect_problem(res, StatusCode::NOT_FOUND).await;
    }
    let res = app
        .patch(
            &format!("/api/v2/patients/{gone}"),
            Some(&owner.access),
            json!({"first_name": "Back"}),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    let res = app
        .delete(&format!("/api/v2/patients/{gone}"), Some(&owner.access))
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn search_finds_names_with_typos_phones_emails_and_birth_dates_best_first() {
    let app = spawn().await;
    let owner = app.register_clinic("Search").await;
    let mk = |first: &str, last: &str, dob: &str, phone: &str, email: &str| json!({"first_name": first, "last_name": last, "date_of_birth": dob, "phone": phone, "email": email});
    for body in [
        mk(
            "John",
            "Smith",
            "1980-01-02",
            "+49 30 1234567",
            "john@smith.example",
        ),
        mk(
            "Jon",
            "Smithers",
            "1975-05-05",
            "+1 (555) 987-6543",
            "jon@smithers.example",
        ),
        mk(
            "Maria",
            "Garcia",
            "1992-09-30",
            "030 555 000",
            "maria@garcia.example",
        ),
        mk(
            "Johanna",
            "Schmidt",
            "1980-01-02",
            "0171 2345678",
            "jo@schmidt.example",
        ),
    ] {
        assert_eq!(
            app.post("/api/v2/patients", Some(&owner.access), body)
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p["first_name"].as_str().unwrap_or(""),
                    p["last_name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let search = |q: &str| {
        let path = format!("/api/v2/patients?q={}", urlencode(q));
        let (app, token) = (&app, owner.access.clone());
        async move { app.get(&path, Some(&token)).await }
    };
    let typo: Value = search("Jonh Smiht").await.json().await.expect("json");
    assert_eq!(
        names(&typo).first().map(String::as_str),
        Some("John Smith"),
        "{typo}"
    );
    let partial: Value = search("smith").await.json().await.expect("json");
    let found = names(&partial);
    assert!(found.contains(&"John Smith".to_owned()) && found.contains(&"Jon Smithers".to_owned()));
    assert!(!found.contains(&"Maria Garcia".to_owned()));
    let phone: Value = search("987-6543").await.json().await.expect("json");
    assert_eq!(names(&phone), vec!["Jon Smithers"]);
    let email: Value = search("MARIA@garcia.example")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&email), vec!["Maria Garcia"]);
    let dob: Value = search("1980-01-02").await.json().await.expect("json");
    let mut by_dob = names(&dob);
    by_dob.sort();
    assert_eq!(by_dob, vec!["Johanna Schmidt", "John Smith"]);
    // Without q: by last name, then first name.
    let all: Value = app
        .get("/api/v2/patients", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        names(&all),
        vec![
            "Maria Garcia",
            "Johanna Schmidt",
            "John Smith",
            "Jon Smithers"
        ]
    );
    // One audit event per search, with the ids it returned.
    let mut db = app.admin_db().await;
    let ids: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(ids) FROM audit_events WHERE action = 'patient.search' ORDER BY at",
    )
    .fetch_all(&mut db)
    .await
    .expect("audit");
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[2].as_array().expect("ids").len(), 1);
    // A page's event holds exactly the ids shown, in order: not the row fetched only to
    // learn that another page follows.
    let page: Value = app
        .get("/api/v2/patients?limit=2", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert!(page["next_cursor"].is_string(), "{page}");
    let shown: Vec<Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    let listed: Value = sqlx::query_scalar(
        "SELECT to_jsonb(ids) FROM audit_events WHERE action = 'patient.list' ORDER BY at DESC LIMIT 1",
    )
    .fetch_one(&mut db)
    .await
    .expect("audit");
    assert_eq!(listed, Value::Array(shown));
}

#[tokio::test]
async fn name_search_reads_only_the_callers_clinic_words_and_follows_renames() {
    let app = spawn().await;
    let owner = app.register_clinic("Words").await;
    let other = app.register_clinic("Other words").await;
    let id = app.patient(&owner.access, "John", "Smith").await;
    let elsewhere = app.patient(&other.access, "John", "Smithson").await;
    let mut db = app.admin_db().await;
    // Many more patients elsewhere, with words the search must not mistake for the caller's.
    sqlx::query(
        "INSERT INTO patients (clinic_id, id, first_name, last_name, date_of_birth) \
         SELECT $1::uuid, gen_random_uuid(), 'John' || g % 7, 'Smith' || chr(97 + g % 26), DATE '1980-01-01' + g % 9000 \
         FROM generate_series(1, 3000) g",
    )
    .bind(&other.clinic_id)
    .execute(&mut db)
    .await
    .expect("seed");
    let search = |q: &'static str| found_ids(&app, &owner.access, q, 50);
    assert_eq!(search("jonh smiht").await, vec![id.clone()]);
    assert_eq!(
        search("smithson").await,
        vec![id.clone()],
        "only the caller's clinic"
    );
    assert!(!search("john").await.contains(&elsewhere));

    // A rename moves the patient's words: the old name no longer finds them.
    let res = app
        .patch(
            &format!("/api/v2/patients/{id}"),
            Some(&owner.access),
            json!({"last_name": "Okafor-Jones"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(search("okafor").await, vec![id.clone()]);
    assert_eq!(search("jones").await, vec![id.clone()]);
    assert!(search("smith").await.is_empty(), "the old name is gone");
    let words: Vec<String> = sqlx::query_scalar(
        "SELECT word FROM patient_name_words WHERE patient_id = $1::uuid ORDER BY word",
    )
    .bind(&id)
    .fetch_all(&mut db)
    .await
    .expect("words");
    assert_eq!(words, ["john", "jones", "okafor"]);

    // The words tables are the search function's alone: the server's role cannot read them.
    let mut server = app.server_db().await;
    for table in ["name_lexicon", "patient_name_words"] {
        let err = sqlx::query(&format!("SELECT * FROM {table} LIMIT 1"))
            .fetch_all(&mut server)
            .await
            .expect_err("no access");
        assert!(
            err.to_string().contains("permission denied"),
            "{table}: {err}"
        );
    }

    // Inside the search function, the trigram operator reaches the lexicon's index (under
    // the server's row-level security it could not: pg_trgm's operators are not
    // leakproof), and a clinic's words are read from the B-tree alone.
    sqlx::query("ANALYZE name_lexicon, patient_name_words")
        .execute(&mut db)
        .await
        .expect("analyze");
    let mut tx = sqlx::Connection::begin(&mut db).await.expect("begin");
    for sql in [
        "SET LOCAL ROLE molar_auth",
        "SET LOCAL cpu_operator_cost = 1",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.expect("setup");
    }
    let lexicon = explain(&mut tx, "SELECT word FROM name_lexicon WHERE word % 'jonh'").await;
    assert!(
        lexicon
            .lines()
            .any(|l| l.contains("Index Cond") && l.contains('%')),
        "{lexicon}"
    );
    let clinic_words = explain(
        &mut tx,
        &format!(
            "SELECT patient_id FROM patient_name_words WHERE clinic_id = '{}' AND word = 'john'",
            owner.clinic_id
        ),
    )
    .await;
    assert!(clinic_words.contains("Index Only Scan"), "{clinic_words}");
}

#[tokio::test]
async fn other_clinics_names_and_archived_patients_never_crowd_out_a_match() {
    let app = spawn().await;
    let owner = app.register_clinic("Crowded").await;
    let other = app.register_clinic("Crowding").await;
    let anna = app.patient(&owner.access, "Anna", "Klefordneu").await;
    let zed = app.patient(&owner.access, "Zed", "Active").await;
    let mut db = app.admin_db().await;
    // Elsewhere, names far closer to the query than the caller's one real match.
    sqlx::query(
        "INSERT INTO patients (clinic_id, id, first_name, last_name, date_of_birth) \
         SELECT $1::uuid, gen_random_uuid(), 'Kelfordneu', 'Kelfordneu' || chr(96 + g), DATE '1980-01-01' \
         FROM generate_series(1, 26) g",
    )
    .bind(&other.clinic_id)
    .execute(&mut db)
    .await
    .expect("other clinic");
    // In the caller's clinic, 150 archived namesakes that sort before the active one.
    sqlx::query(
        "INSERT INTO patients (clinic_id, id, first_name, last_name, date_of_birth, archived_at) \
         SELECT $1::uuid, ('ffffffff-ffff-4fff-8fff-' || lpad(g::text, 12, '0'))::uuid, 'Zed', 'Active', \
                DATE '1980-01-01', now() \
         FROM generate_series(1, 150) g",
    )
    .bind(&owner.clinic_id)
    .execute(&mut db)
    .await
    .expect("archived");
    let ids = |q: &'static str| found_ids(&app, &owner.access, q, 5);
    assert_eq!(ids("kelfordneu").await, vec![anna]);
    assert_eq!(ids("zed active").await, vec![zed.clone()]);
    // Archived patients come back when asked for.
    let found: Value = app
        .get(
            "/api/v2/patients?q=zed%20active&include_archived=true&limit=20",
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("json");
    let items = found["items"].as_array().expect("items");
    assert_eq!(items.len(), 20);
    assert!(items.iter().any(|p| p["archived"] == true), "{found}");
}

#[tokio::test]
async fn lookalike_names_count_only_when_no_name_begins_with_the_word_typed() {
    let app = spawn().await;
    let owner = app.register_clinic("Lookalikes").await;
    let emma = app.patient(&owner.access, "Emma", "Okoro").await;
    let emmerich = app.patient(&owner.access, "Emmerich", "Adeyemi").await;
    let emmi = app.patient(&owner.access, "Emmi", "Lindqvist").await;
    let ids = |q: &'static str| found_ids(&app, &owner.access, q, 10);
    // "emma" is carried: Emmi is one edit away and still comes, after Emma; Emmerich only
    // shares trigrams with it and does not.
    assert_eq!(ids("emma").await, vec![emma.clone(), emmi.clone()]);
    // No name begins with "emmy": every resembling name is offered.
    let found = ids("emmy").await;
    for id in [&emma, &emmerich, &emmi] {
        assert!(found.contains(id), "{found:?}");
    }
}

/// The ids a name search returns, best first.
async fn found_ids(app: &TestApp, token: &str, q: &str, limit: u32) -> Vec<String> {
    let found: Value = app
        .get(
            &format!("/api/v2/patients?q={}&limit={limit}", urlencode(q)),
            Some(token),
        )
        .await
        .json()
        .await
        .expect("json");
    found["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn explain(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .fetch_all(conn)
        .await
        .expect("explain");
    lines.join("\n")
}

#[tokio::test]
async fn pagination_never_repeats_or_skips_while_rows_are_inserted() {
    let app = spawn().await;
    let owner = app.register_clinic("Pages").await;
    let mut originals = HashSet::new();
    for i in 0..23 {
        originals.insert(
            app.patient(
                &owner.access,
                &format!("P{i:02}"),
                &format!("Last{:02}", (i * 7) % 23),
            )
            .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v2/patients?limit=5&cursor={c}"),
            None => "/api/v2/patients?limit=5".to_owned(),
        };
        let page: Value = app
            .get(&path, Some(&owner.access))
            .await
            .json()
            .await
            .expect("json");
        for p in page["items"].as_array().expect("items") {
            seen.push(p["id"].as_str().expect("id").to_owned());
        }
        // Someone registers patients between our pages, before and after our position.
        app.patient(&owner.access, "New", &format!("Aaa{inserted}"))
            .await;
        app.patient(&owner.access, "New", &format!("Zzz{inserted}"))
            .await;
        inserted += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    for id in &originals {
        assert!(seen.contains(id), "no existing row skipped");
    }
    let tampered = format!("{}x", cursor.unwrap_or_else(|| "abc.def".into()));
    expect_problem(
        app.get(
            &format!("/api/v2/patients?cursor={tampered}"),
            Some(&owner.access),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // A page is at most 200: a larger limit is refused, not capped.
    expect_problem(
        app.get("/api/v2/patients?limit=1000", Some(&owner.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let most: Value = app
        .get("/api/v2/patients?limit=200", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert!(most["items"].as_array().expect("items").len() <= 200);
}

#[tokio::test]
async fn another_clinics_patient_is_404_on_every_route() {
    let app = spawn().await;
    let alpha = app.register_clinic("Alpha").await;
    let beta = app.register_clinic("Beta").await;
    let beta_dentist = app.staff(&beta.access, "dentist").await;
    let alpha_dentist = app.staff(&alpha.access, "dentist").await;
    let theirs = app.patient(&beta.access, "Their", "Patient").await;
    let entry: Value = app
        .post(
            &format!("/api/v2/patients/{theirs}/chart/entries"),
            Some(&beta_dentist.access),
            json!({"tooth": "36", "surfaces": ["O"], "condition": "caries"}),
        )
        .await
        .json()
        .await
        .expect("json");
    let note: Value = app
        .post(
            &format!("/api/v2/patients/{theirs}/notes"),
            Some(&beta_dentist.access),
            json!({"body": "private"}),
        )
        .await
        .json()
        .await
        .expect("json");
    let t = Some(alpha_dentist.access.as_str());
    let p = format!("/api/v2/patients/{theirs}");
    expect_problem(app.get(&p, t).await, StatusCode::NOT_FOUND).await;
    expect_problem(
        app.patch(&p, t, json!({"phone": "+1 555 0000"})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(app.delete(&p, t).await, StatusCode::NOT_FOUND).await;
    expect_problem(
        app.get(&format!("{p}/chart"), t).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.get(&format!("{p}/chart/entries"), t).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.post(
            &format!("{p}/chart/entries"),
            t,
            json!({"tooth": "11", "condition": "missing"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.get(&format!("{p}/notes"), t).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.post(&format!("{p}/notes"), t, json!({"body": "x"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.get(&format!("{p}/perio-exams"), t).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.post(
            &format!("{p}/perio-exams"),
            t,
            json!({"teeth": [{"tooth": "16", "sites": [{"site": "MB", "probing_depth": 3}]}]}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.post(
            &format!(
                "/api/v2/chart-entries/{}/void",
                entry["id"].as_str().expect("id")
            ),
            t,
            json!({"reason": "x"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let note_path = format!("/api/v2/notes/{}", note["id"].as_str().expect("id"));
    expect_problem(
        app.patch(&note_path, t, json!({"body": "pwned"})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.post(&format!("{note_path}/sign"), t, json!({})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn receptionists_edit_demographics_and_alerts_and_billing_only_reads() {
    let app = spawn().await;
    let owner = app.register_clinic("Roles").await;
    let reception = app.staff(&owner.access, "receptionist").await;
    let billing = app.staff(&owner.access, "billing").await;
    let id = app.patient(&reception.access, "Rec", "Eption").await;
    let p = format!("/api/v2/patients/{id}");
    let res = app
        .patch(&p, Some(&reception.access), json!({"medical_alerts": [{"kind": "medication", "description": "Warfarin", "severity": "high"}]}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    for path in [
        format!("{p}/chart"),
        format!("{p}/notes"),
        format!("{p}/perio-exams"),
    ] {
        expect_problem(
            app.get(&path, Some(&reception.access)).await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    assert_eq!(
        app.get(&p, Some(&billing.access)).await.status(),
        StatusCode::OK
    );
    expect_problem(
        app.patch(&p, Some(&billing.access), json!({"phone": "+1 555 1111"}))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.post(
            "/api/v2/patients",
            Some(&billing.access),
            patient_body("B", "B"),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.delete(&p, Some(&billing.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.get(&format!("{p}/chart"), Some(&billing.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn billing_sees_demographics_but_not_medical_alerts() {
    let app = spawn().await;
    let owner = app.register_clinic("Alerts").await;
    let billing = app.staff(&owner.access, "billing").await;
    let res = app
        .post(
            "/api/v2/patients",
            Some(&owner.access),
            json!({"first_name": "Al", "last_name": "Lergic", "date_of_birth": "1980-01-01",
                   "medical_alerts": [{"kind": "allergy", "description": "Latex", "severity": "high"}]}),
        )
        .await;
    let id = res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let seen: Value = app
        .get(&format!("/api/v2/patients/{id}"), Some(&billing.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(seen["last_name"], "Lergic");
    assert_eq!(
        seen["medical_alerts"],
        Value::Null,
        "hidden, not an empty list"
    );
    let listed: Value = app
        .get("/api/v2/patients", Some(&billing.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["items"][0]["medical_alerts"], Value::Null);
    let owner_view: Value = app
        .get(&format!("/api/v2/patients/{id}"), Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(owner_view["medical_alerts"][0]["description"], "Latex");
}

#[tokio::test]
async fn nested_objects_merge_instead_of_being_replaced() {
    let app = spawn().await;
    let owner = app.register_clinic("Nested").await;
    let res = app
        .post(
            "/api/v2/patients",
            Some(&owner.access),
            json!({"first_name": "Ne", "last_name": "Sted", "date_of_birth": "1980-01-01",
                   "address": {"line1": "Hauptstr. 1", "city": "Berlin", "country": "DE"},
                   "emergency_contact": {"name": "Kim", "phone": "+49 30 111"}}),
        )
        .await;
    let id = res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("/api/v2/patients/{id}");
    let body: Value = app
        .patch(&path, Some(&owner.access), json!({"address": {"city": "Hamburg", "line2": null}, "emergency_contact": {"relationship": "sister"}}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["address"]["line1"], "Hauptstr. 1");
    assert_eq!(body["address"]["city"], "Hamburg");
    assert_eq!(body["emergency_contact"]["name"], "Kim");
    assert_eq!(body["emergency_contact"]["relationship"], "sister");
    let problem = expect_problem(
        app.patch(
            &path,
            Some(&owner.access),
            json!({"emergency_contact": {"name": null}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "emergency_contact");
    let cleared: Value = app
        .patch(&path, Some(&owner.access), json!({"address": null}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cleared["address"], Value::Null);
}

#[tokio::test]
async fn an_idempotency_key_reused_on_another_patient_is_not_a_replay() {
    let app = spawn().await;
    let owner = app.register_clinic("Keys").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let a = app.patient(&owner.access, "Ay", "One").await;
    let b = app.patient(&owner.access, "Bee", "Two").await;
    let send = |patient: &str| {
        app.client
            .post(app.url(&format!("/api/v2/patients/{patient}/notes")))
            .bearer_auth(&dentist.access)
            .header("idempotency-key", "note-1")
            .json(&json!({"body": "Routine check, no findings"}))
            .send()
    };
    assert_eq!(send(&a).await.expect("send").status(), StatusCode::CREATED);
    let other = send(&b).await.expect("send");
    expect_problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    let notes: Value = app
        .get(
            &format!("/api/v2/patients/{b}/notes"),
            Some(&dentist.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(
        notes["items"].as_array().expect("items").is_empty(),
        "nothing was written to B"
    );
}

#[tokio::test]
async fn nul_characters_in_search_and_addresses_are_refused_before_the_database() {
    let app = spawn().await;
    let owner = app.register_clinic("Nul").await;
    for q in [
        "Ann%00a",
        "%00",
        "2001-01-01%00",
        "a%40b.example%00",
        "030%001234",
    ] {
        let body = expect_problem(
            app.get(&format!("/api/v2/patients?q={q}"), Some(&owner.access))
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(
            body["detail"].as_str().expect("detail").contains("`q`"),
            "{body}"
        );
    }
    let mut create = patient_body("Nul", "Address");
    create["address"] = json!({"line1": "Hauptstr.\u{0} 1", "city": "Berlin"});
    let body = expect_problem(
        app.post("/api/v2/patients", Some(&owner.access), create)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "address.line1");
    let id = app.patient(&owner.access, "Nul", "Patch").await;
    let path = format!("/api/v2/patients/{id}");
    for (patch, field) in [
        (json!({"address": {"city": "Ber\u{0}lin"}}), "address.city"),
        (
            json!({"address": {"postal_code": "\u{0}"}}),
            "address.postal_code",
        ),
        (json!({"last_name": "Pa\u{0}tch"}), "last_name"),
        (
            json!({"medical_alerts": [{"kind": "allergy", "description": "latex\u{0}", "severity": "high"}]}),
            "medical_alerts[0].description",
        ),
    ] {
        let body = expect_problem(
            app.patch(&path, Some(&owner.access), patch).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    // Other control characters are refused in an address as they are in names.
    let body = expect_problem(
        app.patch(
            &path,
            Some(&owner.access),
            json!({"address": {"line1": "a\u{7}b"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "address.line1");
    // A NUL elsewhere in a body is refused the same way.
    let body = expect_problem(
        app.post(
            "/api/v2/patients",
            Some(&owner.access),
            json!({"first_name": "A", "last_name": "B", "date_of_birth": "1985-04-12", "notes\u{0}": 1}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(body["errors"][0]["field"].is_string(), "{body}");
    // The patient is unchanged.
    let unchanged: Value = app
        .get(&path, Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(unchanged["last_name"], "Patch");
    assert_eq!(unchanged["address"], Value::Null);
}
