//! The FHIR R4 view: every answer parses as the standard's typed resources (fhir-r4) and
//! validates, with the required elements present; every search parameter filters; searches
//! page by their `next` links; errors are OperationOutcomes; another clinic's ids are 404;
//! reads are audited as the native routes are, and a restricted record stays closed.

use fhir_r4::coded::Coded;
use fhir_r4::codes::{AdministrativeGender, Appointmentstatus, BundleType, EventStatus};
use fhir_r4::resources::{Bundle, Resource};
use fhir_r4::validate::Validate;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::treatment::{chart, code, expect_json, filling_code, id};

const ISO_3950: &str = "urn:iso:std:iso:3950";

struct Clinic {
    app: TestApp,
    owner: Registered,
    dentist: Registered,
    patient: String,
    operatory: String,
}

async fn clinic() -> Clinic {
    let app = spawn().await;
    let owner = app.register_clinic("Interop").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let res = app
        .post(
            "/api/v2/patients",
            Some(&owner.access),
            json!({"first_name": "Erika", "last_name": "Mustermann", "date_of_birth": "1964-08-12",
                   "sex": "female", "phone": "+49 30 1234567", "email": "erika@example.org",
                   "address": {"line1": "Heidestr. 17", "city": "Köln", "postal_code": "51147", "country": "DE"}}),
        )
        .await;
    let patient = id(&expect_json(res, StatusCode::CREATED).await);
    let res = app
        .post(
            "/api/v2/operatories",
            Some(&owner.access),
            json!({"name": "Chair 1"}),
        )
        .await;
    let operatory = id(&expect_json(res, StatusCode::CREATED).await);
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "07:00", "end": "20:00"}))
        .collect();
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v2/providers/{}/working-hours", dentist.user_id),
            Some(&owner.access),
            Some(json!({"weekly": weekly})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    Clinic {
        app,
        owner,
        dentist,
        patient,
        operatory,
    }
}

impl Clinic {
    /// Books an appointment (times in UTC) and returns its id.
    async fn book(&self, patient: &str, start: &str, end: &str) -> String {
        let res = self
            .app
            .post(
                "/api/v2/appointments",
                Some(&self.owner.access),
                json!({"patient_id": patient, "provider_id": self.dentist.user_id,
                       "operatory_id": self.operatory, "start_at": start, "end_at": end,
                       "reason": "Check-up"}),
            )
            .await;
        id(&expect_json(res, StatusCode::CREATED).await)
    }

    /// A FHIR GET as `token`: the status, and the body parsed as a resource (an error's
    /// body too: every answer is a resource).
    async fn fhir(&self, path: &str, token: Option<&str>) -> (StatusCode, Resource) {
        let res = self.app.get(&format!("/api/v2/fhir/{path}"), token).await;
        let status = res.status();
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(ct, "application/fhir+json", "{path}");
        let text = res.text().await.expect("body");
        let resource: Resource = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not an R4 resource ({e}): {text}"));
        let issues = resource.validate();
        assert!(issues.is_empty(), "{path}: invalid R4: {issues:?}\n{text}");
        (status, resource)
    }

    async fn ok(&self, path: &str) -> Resource {
        let (status, r) = self.fhir(path, Some(&self.owner.access)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {r:?}");
        r
    }

    async fn bundle(&self, path: &str) -> Bundle {
        match self.ok(path).await {
            Resource::Bundle(b) => {
                assert_eq!(b.r#type, Coded::Known(BundleType::Searchset));
                *b
            }
            other => panic!("{path}: not a Bundle: {other:?}"),
        }
    }

    /// The ids a search finds, on its first page.
    async fn ids(&self, path: &str) -> Vec<String> {
        entries(&self.bundle(path).await)
            .iter()
            .map(resource_id)
            .collect()
    }

    /// Expects an OperationOutcome with `status`; returns its diagnostics.
    async fn outcome(&self, path: &str, token: Option<&str>, status: StatusCode) -> String {
        let (got, r) = self.fhir(path, token).await;
        assert_eq!(got, status, "{path}: {r:?}");
        match r {
            Resource::OperationOutcome(o) => o
                .issue
                .first()
                .diagnostics
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
            other => panic!("{path}: not an OperationOutcome: {other:?}"),
        }
    }
}

fn entries(b: &Bundle) -> Vec<Resource> {
    b.entry
        .iter()
        .map(|e| {
            let r = e.resource.clone().expect("an entry holds its resource");
            let r: Resource = serde_json::from_value(r).expect("an R4 resource");
            assert!(r.validate().is_empty(), "invalid entry: {r:?}");
            let full = e.full_url.as_ref().expect("fullUrl").0.clone();
            assert!(full.ends_with(&resource_id(&r)), "{full}");
            r
        })
        .collect()
}

fn resource_id(r: &Resource) -> String {
    let id = match r {
        Resource::Patient(p) => p.id.clone(),
        Resource::Practitioner(p) => p.id.clone(),
        Resource::Appointment(a) => a.id.clone(),
        Resource::Procedure(p) => p.id.clone(),
        Resource::Condition(c) => c.id.clone(),
        other => panic!("unexpected {other:?}"),
    };
    id.expect("an id").0
}

fn next_link(b: &Bundle) -> Option<String> {
    b.link
        .iter()
        .find(|l| l.relation.0 == "next")
        .map(|l| l.url.0.clone())
}

#[tokio::test]
async fn every_resource_parses_as_r4_with_its_required_elements() {
    let c = clinic().await;
    let app = &c.app;
    let appointment = c
        .book(&c.patient, "2030-01-07T09:00:00Z", "2030-01-07T09:30:00Z")
        .await;
    let filling = filling_code(app, &c.owner.access, 9500).await;
    let done = chart(
        app,
        &c.dentist.access,
        &c.patient,
        json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["M", "O"], "status": "completed"}),
    )
    .await;
    let cdt = id(&code(
        app,
        &c.owner.access,
        json!({"code": "D0120", "system": "CDT", "description": "Periodic oral evaluation", "fee_cents": 4500}),
    )
    .await);
    // Planned work is not a Procedure.
    chart(
        app,
        &c.dentist.access,
        &c.patient,
        json!({"procedure_code_id": cdt, "status": "planned"}),
    )
    .await;
    let res = app
        .post(
            &format!("/api/v2/patients/{}/chart/entries", c.patient),
            Some(&c.dentist.access),
            json!({"tooth": "46", "surfaces": ["O"], "condition": "caries", "note": "Deep"}),
        )
        .await;
    let entry = id(&expect_json(res, StatusCode::CREATED).await);

    // The capability statement: no token needed, exactly the five resources.
    let (status, r) = c.fhir("metadata", None).await;
    assert_eq!(status, StatusCode::OK);
    let Resource::CapabilityStatement(cs) = r else {
        panic!("not a CapabilityStatement")
    };
    assert_eq!(
        serde_json::to_value(&cs.fhir_version).expect("json"),
        json!("4.0.1")
    );
    let served: Vec<(String, Vec<String>, Vec<String>)> = cs.rest[0]
        .resource
        .iter()
        .map(|r| {
            (
                serde_json::to_value(&r.r#type)
                    .expect("json")
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r.interaction.iter().map(|i| i.code.0.clone()).collect(),
                r.search_param.iter().map(|p| p.name.0.clone()).collect(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        served,
        vec![
            (
                "Patient".into(),
                s(&["read", "search-type"]),
                s(&["name", "birthdate", "identifier"])
            ),
            (
                "Practitioner".into(),
                s(&["read", "search-type"]),
                s(&["name", "identifier"])
            ),
            (
                "Appointment".into(),
                s(&["read", "search-type"]),
                s(&["date", "patient", "practitioner"])
            ),
            ("Procedure".into(), s(&["search-type"]), s(&["patient"])),
            ("Condition".into(), s(&["search-type"]), s(&["patient"])),
        ]
    );

    // Patient.
    let Resource::Patient(p) = c.ok(&format!("Patient/{}", c.patient)).await else {
        panic!("not a Patient")
    };
    assert_eq!(
        p.id.as_ref().map(|i| i.0.as_str()),
        Some(c.patient.as_str())
    );
    assert_eq!(
        p.name[0].family.as_ref().map(|f| f.0.as_str()),
        Some("Mustermann")
    );
    assert_eq!(
        p.name[0]
            .given
            .clone()
            .into_iter()
            .flatten()
            .map(|g| g.0)
            .collect::<Vec<_>>(),
        vec!["Erika"]
    );
    assert_eq!(
        p.birth_date.as_ref().map(|d| d.0.as_str()),
        Some("1964-08-12")
    );
    assert_eq!(p.gender, Some(Coded::Known(AdministrativeGender::Female)));
    assert_eq!(p.telecom.len(), 2);
    assert_eq!(
        p.address[0].city.as_ref().map(|c| c.0.as_str()),
        Some("Köln")
    );
    assert_eq!(
        p.identifier[0].value.as_ref().map(|v| v.0.clone()),
        Some(format!("urn:uuid:{}", c.patient))
    );

    // Practitioner.
    let Resource::Practitioner(pr) = c.ok(&format!("Practitioner/{}", c.dentist.user_id)).await
    else {
        panic!("not a Practitioner")
    };
    assert_eq!(
        pr.name[0].text.as_ref().map(|t| t.0.as_str()),
        Some("A dentist")
    );
    assert_eq!(pr.active.as_ref().map(|a| a.0), Some(true));
    // Staff who do not treat patients are not practitioners.
    let receptionist = app.staff(&c.owner.access, "receptionist").await;
    c.outcome(
        &format!("Practitioner/{}", receptionist.user_id),
        Some(&c.owner.access),
        StatusCode::NOT_FOUND,
    )
    .await;

    // Appointment.
    let Resource::Appointment(a) = c.ok(&format!("Appointment/{appointment}")).await else {
        panic!("not an Appointment")
    };
    assert_eq!(a.status, Coded::Known(Appointmentstatus::Booked));
    assert_eq!(
        a.start.as_ref().map(|s| s.0.as_str()),
        Some("2030-01-07T09:00:00.000Z")
    );
    assert_eq!(a.minutes_duration.as_ref().map(|m| m.0), Some(30));
    let actors: Vec<String> = a
        .participant
        .iter()
        .filter_map(|p| p.actor.as_ref()?.reference.as_ref().map(|r| r.0.clone()))
        .collect();
    assert_eq!(
        actors,
        vec![
            format!("Patient/{}", c.patient),
            format!("Practitioner/{}", c.dentist.user_id)
        ]
    );

    // Procedure: the completed one only, its tooth in ISO 3950.
    let procedures = entries(
        &c.bundle(&format!("Procedure?patient=Patient/{}", c.patient))
            .await,
    );
    assert_eq!(procedures.len(), 1, "{procedures:?}");
    let Resource::Procedure(pc) = &procedures[0] else {
        panic!("not a Procedure")
    };
    assert_eq!(pc.id.as_ref().map(|i| i.0.clone()), Some(id(&done)));
    assert_eq!(pc.status, Coded::Known(EventStatus::Completed));
    assert_eq!(
        pc.subject.reference.as_ref().map(|r| r.0.clone()),
        Some(format!("Patient/{}", c.patient))
    );
    let site = &pc.body_site[0].coding[0];
    assert_eq!(site.system.as_ref().map(|s| s.0.as_str()), Some(ISO_3950));
    assert_eq!(site.code.as_ref().map(|s| s.0.as_str()), Some("36"));
    assert_eq!(
        pc.code
            .as_ref()
            .map(|cc| cc.coding[0].code.clone().map(|c| c.0)),
        Some(Some("X-FILL".into()))
    );

    // Condition: the chart entry, its tooth in ISO 3950.
    let conditions = entries(&c.bundle(&format!("Condition?patient={}", c.patient)).await);
    assert_eq!(conditions.len(), 1);
    let Resource::Condition(cd) = &conditions[0] else {
        panic!("not a Condition")
    };
    assert_eq!(cd.id.as_ref().map(|i| i.0.clone()), Some(entry.clone()));
    let site = &cd.body_site[0].coding[0];
    assert_eq!(site.system.as_ref().map(|s| s.0.as_str()), Some(ISO_3950));
    assert_eq!(site.code.as_ref().map(|s| s.0.as_str()), Some("46"));
    assert!(cd.clinical_status.is_some());

    // A voided entry is entered-in-error, without a clinical status.
    let res = app
        .post(
            &format!("/api/v2/chart-entries/{entry}/void"),
            Some(&c.dentist.access),
            json!({"reason": "Wrong tooth"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    let conditions = entries(&c.bundle(&format!("Condition?patient={}", c.patient)).await);
    let Resource::Condition(cd) = &conditions[0] else {
        panic!("not a Condition")
    };
    assert!(cd.clinical_status.is_none());
    assert_eq!(
        cd.verification_status
            .as_ref()
            .and_then(|v| v.coding[0].code.clone())
            .map(|c| c.0),
        Some("entered-in-error".into())
    );
}

#[tokio::test]
async fn every_search_parameter_filters() {
    let c = clinic().await;
    let app = &c.app;
    let t = &c.owner.access;
    let mut born = vec![];
    for (first, last, dob) in [
        ("Anna", "Schmidt", "1980-03-01"),
        ("Anton", "Schmied", "1990-07-15"),
        ("Berta", "Anders", "1990-12-31"),
    ] {
        let res = app
            .post(
                "/api/v2/patients",
                Some(t),
                json!({"first_name": first, "last_name": last, "date_of_birth": dob}),
            )
            .await;
        born.push(id(&expect_json(res, StatusCode::CREATED).await));
    }
    let (anna, anton, berta) = (born[0].clone(), born[1].clone(), born[2].clone());
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // name: the start of either name or the whole name, any case; repeated, each must match.
    assert_eq!(
        sorted(c.ids("Patient?name=schmi").await),
        sorted(vec![anna.clone(), anton.clone()])
    );
    assert_eq!(c.ids("Patient?name=ANTON").await, vec![anton.clone()]);
    assert_eq!(c.ids("Patient?name=anna%20sch").await, vec![anna.clone()]);
    assert_eq!(
        c.ids("Patient?name=an&name=schmied").await,
        vec![anton.clone()]
    );
    assert!(
        c.ids("Patient?name=midt").await.is_empty(),
        "not a substring search"
    );
    assert!(
        c.ids("Patient?name=%25").await.is_empty(),
        "% is not a wildcard"
    );
    // birthdate: precision and prefixes.
    assert_eq!(
        c.ids("Patient?birthdate=1980-03-01").await,
        vec![anna.clone()]
    );
    assert_eq!(
        sorted(c.ids("Patient?birthdate=1990").await),
        sorted(vec![anton.clone(), berta.clone()])
    );
    assert_eq!(
        c.ids("Patient?birthdate=1990-12").await,
        vec![berta.clone()]
    );
    assert_eq!(
        c.ids("Patient?birthdate=ge1985&birthdate=lt1990-12-31")
            .await,
        vec![anton.clone()]
    );
    assert_eq!(
        c.ids("Patient?birthdate=gt1990-07-15&name=b").await,
        vec![berta.clone()]
    );
    assert_eq!(
        sorted(c.ids("Patient?birthdate=le1980-03").await),
        sorted(vec![anna.clone(), c.patient.clone()])
    );
    // identifier: with and without the system; another system finds nothing.
    assert_eq!(
        c.ids(&format!(
            "Patient?identifier=urn:ietf:rfc:3986%7Curn:uuid:{berta}"
        ))
        .await,
        vec![berta.clone()]
    );
    assert_eq!(
        c.ids(&format!("Patient?identifier=urn:uuid:{anna}")).await,
        vec![anna.clone()]
    );
    assert!(c
        .ids(&format!(
            "Patient?identifier=http://example.org/mrn%7Curn:uuid:{anna}"
        ))
        .await
        .is_empty());

    // Appointments: by the clinic's day (Europe/Berlin), a range, patient and practitioner.
    let hygienist = app.staff(t, "hygienist").await;
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "07:00", "end": "20:00"}))
        .collect();
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v2/providers/{}/working-hours", hygienist.user_id),
            Some(t),
            Some(json!({"weekly": weekly})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // 07:30 Berlin on 8 January is 06:30 UTC: the 8th in the clinic.
    let a1 = c
        .book(&anna, "2030-01-08T06:30:00Z", "2030-01-08T07:00:00Z")
        .await;
    let a2 = c
        .book(&anton, "2030-01-09T10:00:00Z", "2030-01-09T10:30:00Z")
        .await;
    let res = app
        .post(
            "/api/v2/appointments",
            Some(t),
            json!({"patient_id": anna, "provider_id": hygienist.user_id,
                   "operatory_id": c.operatory, "start_at": "2030-01-10T10:00:00Z",
                   "end_at": "2030-01-10T10:30:00Z"}),
        )
        .await;
    let a3 = id(&expect_json(res, StatusCode::CREATED).await);
    assert_eq!(c.ids("Appointment?date=2030-01-08").await, vec![a1.clone()]);
    assert_eq!(
        c.ids("Appointment?date=ge2030-01-09&date=lt2030-01-11")
            .await,
        vec![a2.clone(), a3.clone()]
    );
    assert_eq!(
        c.ids("Appointment?date=2030-01").await,
        vec![a1.clone(), a2.clone(), a3.clone()]
    );
    assert_eq!(
        c.ids("Appointment?date=gt2030-01-09T10:00:00Z").await,
        vec![a3.clone()]
    );
    assert_eq!(
        c.ids(&format!("Appointment?patient=Patient/{anna}")).await,
        vec![a1.clone(), a3.clone()]
    );
    assert_eq!(
        c.ids(&format!("Appointment?practitioner={}", hygienist.user_id))
            .await,
        vec![a3.clone()]
    );
    assert_eq!(
        c.ids(&format!(
            "Appointment?patient={anna}&practitioner=Practitioner/{}",
            c.dentist.user_id
        ))
        .await,
        vec![a1.clone()]
    );

    // Practitioners: by any word of the name, and by identifier.
    assert_eq!(
        c.ids("Practitioner?name=hyg").await,
        vec![hygienist.user_id.clone()]
    );
    assert_eq!(
        c.ids(&format!(
            "Practitioner?identifier=urn:uuid:{}",
            c.dentist.user_id
        ))
        .await,
        vec![c.dentist.user_id.clone()]
    );
    assert!(c.ids("Practitioner?name=ygien").await.is_empty());
}

#[tokio::test]
async fn searches_page_by_their_next_links() {
    let c = clinic().await;
    let app = &c.app;
    let mut made = vec![c.patient.clone()];
    for i in 0..6 {
        made.push(
            app.patient(&c.owner.access, &format!("P{i}"), "Pager")
                .await,
        );
    }
    let mut seen = vec![];
    let mut path = "Patient?_count=3".to_owned();
    let mut pages = 0;
    loop {
        let b = c.bundle(&path).await;
        let page = entries(&b);
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(resource_id));
        pages += 1;
        match next_link(&b) {
            Some(next) => {
                let prefix = "http://localhost:8000/api/v2/fhir/";
                path = next
                    .strip_prefix(prefix)
                    .expect("an absolute link")
                    .to_owned();
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    sorted_seen.dedup();
    made.sort();
    assert_eq!(sorted_seen, made, "each patient exactly once");
    // A cursor belongs to its search.
    let b = c.bundle("Patient?_count=2&name=p").await;
    let next = next_link(&b).expect("a next page");
    let cursor = next.split("_cursor=").nth(1).expect("a cursor").to_owned();
    let why = c
        .outcome(
            &format!("Patient?_count=2&name=q&_cursor={cursor}"),
            Some(&c.owner.access),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(why.contains("another search"), "{why}");
    for bad in [
        "Patient?_count=0",
        "Patient?_count=201",
        "Patient?_count=x",
        "Patient?_cursor=abc",
    ] {
        c.outcome(bad, Some(&c.owner.access), StatusCode::BAD_REQUEST)
            .await;
    }
}

#[tokio::test]
async fn errors_are_operation_outcomes_and_other_clinics_are_404() {
    let c = clinic().await;
    let app = &c.app;
    let appointment = c
        .book(&c.patient, "2030-01-07T09:00:00Z", "2030-01-07T09:30:00Z")
        .await;
    let other = app.register_clinic("Elsewhere").await;
    let o = Some(other.access.as_str());
    for path in [
        format!("Patient/{}", c.patient),
        format!("Practitioner/{}", c.dentist.user_id),
        format!("Appointment/{appointment}"),
        format!("Procedure?patient={}", c.patient),
        format!("Condition?patient={}", c.patient),
    ] {
        c.outcome(&path, o, StatusCode::NOT_FOUND).await;
    }
    // Searches in the other clinic find none of this clinic's records.
    let b = match c
        .fhir(&format!("Appointment?patient={}", c.patient), o)
        .await
    {
        (StatusCode::OK, Resource::Bundle(b)) => b,
        other => panic!("{other:?}"),
    };
    assert!(b.entry.is_empty());
    let b = match c.fhir("Patient?name=muster", o).await {
        (StatusCode::OK, Resource::Bundle(b)) => b,
        other => panic!("{other:?}"),
    };
    assert!(b.entry.is_empty());

    let t = Some(c.owner.access.as_str());
    c.outcome("Patient?name=x", None, StatusCode::UNAUTHORIZED)
        .await;
    c.outcome(
        "Patient?name=x",
        Some("not-a-token"),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    c.outcome("Patient?gender=male", t, StatusCode::BAD_REQUEST)
        .await;
    c.outcome("Patient?birthdate=1980-13", t, StatusCode::BAD_REQUEST)
        .await;
    c.outcome("Patient?birthdate=ne1980", t, StatusCode::BAD_REQUEST)
        .await;
    c.outcome("Patient/not-a-uuid", t, StatusCode::BAD_REQUEST)
        .await;
    c.outcome(
        &format!("Patient/{}", uuid::Uuid::now_v7()),
        t,
        StatusCode::NOT_FOUND,
    )
    .await;
    c.outcome("Observation?patient=x", t, StatusCode::NOT_FOUND)
        .await;
    let why = c.outcome("Procedure", t, StatusCode::BAD_REQUEST).await;
    assert!(why.contains("patient"), "{why}");
    c.outcome(
        "Condition?patient=Practitioner/x",
        t,
        StatusCode::BAD_REQUEST,
    )
    .await;
    c.outcome(
        "Appointment?date=2030-01-07T09:00:00",
        t,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Roles: billing staff may read neither the chart nor the appointment book.
    let billing = app.staff(&c.owner.access, "billing").await;
    for path in [
        format!("Condition?patient={}", c.patient),
        format!("Appointment/{appointment}"),
        "Appointment?date=2030".to_owned(),
        "Practitioner".to_owned(),
    ] {
        c.outcome(&path, Some(&billing.access), StatusCode::FORBIDDEN)
            .await;
    }
    // A non-FHIR path keeps problem+json.
    let res = app.get("/api/v2/nowhere", t).await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn reads_are_audited_and_a_restricted_record_stays_closed() {
    let c = clinic().await;
    let app = &c.app;
    let audited = |rid: String| {
        let app = &c.app;
        async move {
            let mut db = app.admin_db().await;
            let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
                "SELECT action, patient_id::text, outcome FROM audit_events WHERE request_id = $1",
            )
            .bind(&rid)
            .fetch_all(&mut db)
            .await
            .expect("audit");
            rows
        }
    };
    let get = |path: String, token: String| {
        let app = &c.app;
        async move {
            let rid = format!("rid-{}", uuid::Uuid::new_v4().simple());
            let res = app
                .client
                .get(app.url(&format!("/api/v2/fhir/{path}")))
                .bearer_auth(token)
                .header("x-request-id", &rid)
                .send()
                .await
                .expect("send");
            (res.status(), rid)
        }
    };
    let dentist = c.dentist.access.clone();
    for (path, action) in [
        (format!("Patient/{}", c.patient), "patient.read"),
        (format!("Condition?patient={}", c.patient), "chart.read"),
        (format!("Procedure?patient={}", c.patient), "procedure.list"),
    ] {
        let (status, rid) = get(path.clone(), dentist.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            audited(rid).await,
            vec![(
                action.to_owned(),
                Some(c.patient.clone()),
                "success".to_owned()
            )],
            "{path}"
        );
    }
    let (status, rid) = get("Patient?name=erika".into(), dentist.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let mut db = app.admin_db().await;
    let ids: Value = sqlx::query_scalar("SELECT to_jsonb(ids) FROM audit_events WHERE request_id = $1 AND action = 'patient.search'")
        .bind(&rid)
        .fetch_one(&mut db)
        .await
        .expect("the search is audited with the ids shown");
    assert_eq!(ids, json!([c.patient]));

    // Restricted to another dentist's care: the chart is a 404 for this one, and audited.
    let carer = app.staff(&c.owner.access, "dentist").await;
    let res = app
        .patch(
            &format!("/api/v2/patients/{}", c.patient),
            Some(&c.owner.access),
            json!({"restricted": true, "care_team": [carer.user_id]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    let (status, rid) = get(format!("Condition?patient={}", c.patient), dentist.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let rows = audited(rid).await;
    assert!(
        rows.iter().any(|r| r.0 == "patient.record_denied"),
        "{rows:?}"
    );
    let (status, _) = get(
        format!("Condition?patient={}", c.patient),
        carer.access.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Demographics stay visible, marked restricted.
    let Resource::Patient(p) = c.ok(&format!("Patient/{}", c.patient)).await else {
        panic!("not a Patient")
    };
    let security = p
        .meta
        .as_ref()
        .map(|m| m.security.clone())
        .unwrap_or_default();
    assert_eq!(security[0].code.as_ref().map(|c| c.0.as_str()), Some("R"));
}
