//! Documents: streamed uploads recognised by their bytes, encrypted at rest per document,
//! streamed downloads with ranges, tamper detection, roles, tenancy, deletion, purge,
//! key rotation, orphan sweeping, restarts, and the S3 store against a local
//! S3-compatible server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::*;

const CHUNK: usize = 64 * 1024;
const HEADER: usize = 28;
const TAG: usize = 16;

/// A PNG signature followed by `n` bytes of a pattern that never repeats within a chunk.
fn png(n: usize, seed: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend((0..n).map(|i| ((i * 7 + i / 251) as u8).wrapping_add(seed)));
    v
}

fn jpeg() -> Vec<u8> {
    let mut v = vec![
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0,
    ];
    v.extend(std::iter::repeat_n(0x55, 500));
    v
}

/// Larger than the compression threshold, and very compressible.
fn pdf() -> Vec<u8> {
    let mut v = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n".to_vec();
    v.extend(std::iter::repeat_n(b' ', 4000));
    v.extend_from_slice(b"\n%%EOF\n");
    v
}

fn dicom() -> Vec<u8> {
    let mut v = vec![0u8; 128];
    v.extend_from_slice(b"DICM");
    v.extend(std::iter::repeat_n(1u8, 300));
    v
}

fn tiff() -> Vec<u8> {
    let mut v = b"II*\0\x08\0\0\0".to_vec();
    v.extend(std::iter::repeat_n(2u8, 300));
    v
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn form(kind: &str, title: &str, bytes: Vec<u8>) -> Form {
    Form::new()
        .text("kind", kind.to_owned())
        .text("title", title.to_owned())
        .part("file", Part::bytes(bytes).file_name("scan.bin"))
}

async fn upload_form(app: &TestApp, token: &str, patient: &str, form: Form) -> Response {
    app.client
        .post(app.url(&format!("/api/v2/patients/{patient}/documents")))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload reaches the server")
}

async fn upload(app: &TestApp, token: &str, patient: &str, kind: &str, bytes: Vec<u8>) -> Value {
    let res = upload_form(app, token, patient, form(kind, "Bitewing left", bytes)).await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "upload: {:?}",
        res.text().await
    );
    res.json().await.expect("json")
}

async fn content(app: &TestApp, token: &str, id: &str) -> Response {
    app.client
        .get(app.url(&format!("/api/v2/documents/{id}/content")))
        .bearer_auth(token)
        .send()
        .await
        .expect("download reaches the server")
}

fn storage(app: &TestApp) -> PathBuf {
    PathBuf::from(&app.vars["MEDICAL_RECORDS_STORAGE_PATH"])
}

fn object(app: &TestApp, clinic: &str, id: &str) -> PathBuf {
    storage(app).join(clinic).join(id)
}

/// Every file under the storage folder (staging files included).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn audit_count(app: &TestApp, action: &str, outcome: &str) -> i64 {
    let mut db = app.admin_db().await;
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = $1 AND outcome = $2")
        .bind(action)
        .bind(outcome)
        .fetch_one(&mut db)
        .await
        .expect("count audit events")
}

/// Runs the `molar` binary with the server's configuration.
async fn molar(vars: &HashMap<String, String>, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .args(args)
        .env_clear()
        .envs(vars.iter())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("run molar");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn key(byte: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

#[tokio::test]
async fn an_upload_streams_in_encrypted_and_back_out_with_ranges() {
    let app = spawn().await;
    let owner = app.register_clinic("Docs").await;
    let patient = app.patient(&owner.access, "Dora", "Docs").await;
    let data = png(3 * CHUNK + 1234, 0);
    let doc = upload(&app, &owner.access, &patient, "xray", data.clone()).await;
    let id = doc["id"].as_str().expect("id");
    assert_eq!(doc["content_type"], "image/png");
    assert_eq!(doc["size_bytes"], json!(data.len()));
    assert_eq!(doc["sha256"], json!(sha(&data)));
    assert_eq!(doc["kind"], "xray");
    assert_eq!(doc["title"], "Bitewing left");
    assert_eq!(doc["created_by"], json!(owner.user_id));

    // At rest: the clinic's folder, sealed (no run of the plaintext survives), the length
    // of the chunked format.
    let stored = std::fs::read(object(&app, &owner.clinic_id, id)).expect("object on disk");
    let chunks = data.len().div_ceil(CHUNK);
    assert_eq!(stored.len(), HEADER + data.len() + chunks * TAG);
    assert!(!stored.windows(64).any(|w| w == &data[1000..1064]));

    let res = content(&app, &owner.access, id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{}\"", sha(&data)).as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    let disposition = h["content-disposition"].to_str().expect("ascii");
    assert!(
        disposition.starts_with("attachment; filename=\"Bitewing left.png\""),
        "{disposition}"
    );
    assert_eq!(res.bytes().await.expect("body").as_ref(), data.as_slice());

    // A range across a chunk boundary, a suffix range, and one outside the content.
    let ranged = |spec: &'static str| {
        app.client
            .get(app.url(&format!("/api/v2/documents/{id}/content")))
            .bearer_auth(&owner.access)
            .header("range", spec)
            .send()
    };
    let a = CHUNK - 10;
    let res = ranged("bytes=65526-65635").await.expect("range");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes {a}-{}/{}", a + 109, data.len()).as_str()
    );
    assert_eq!(res.bytes().await.expect("body").as_ref(), &data[a..a + 110]);
    let res = ranged("bytes=-100").await.expect("range");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.bytes().await.expect("body").as_ref(),
        &data[data.len() - 100..]
    );
    let res = ranged("bytes=99999999-").await.expect("range");
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );
    expect_problem(res, StatusCode::RANGE_NOT_SATISFIABLE).await;

    // The ETag answers If-None-Match.
    let res = app
        .client
        .get(app.url(&format!("/api/v2/documents/{id}/content")))
        .bearer_auth(&owner.access)
        .header("if-none-match", format!("\"{}\"", sha(&data)))
        .send()
        .await
        .expect("conditional");
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    let res = app
        .get(&format!("/api/v2/documents/{id}"), Some(&owner.access))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let meta: Value = res.json().await.expect("json");
    assert_eq!(meta, doc);
    let res = app
        .get(
            &format!("/api/v2/patients/{patient}/documents"),
            Some(&owner.access),
        )
        .await;
    let list: Value = res.json().await.expect("json");
    assert_eq!(list["items"], json!([doc]));
    assert_eq!(list["next_cursor"], Value::Null);

    // Every read is audited.
    assert_eq!(audit_count(&app, "document.upload", "success").await, 1);
    assert_eq!(audit_count(&app, "document.download", "success").await, 5);
    assert_eq!(audit_count(&app, "document.read", "success").await, 1);
    assert_eq!(audit_count(&app, "document.list", "success").await, 1);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn types_are_recognised_from_the_bytes_and_bad_forms_store_nothing() {
    let app = spawn().await;
    let owner = app.register_clinic("Types").await;
    let patient = app.patient(&owner.access, "Tia", "Types").await;
    for (bytes, mime) in [
        (jpeg(), "image/jpeg"),
        (pdf(), "application/pdf"),
        (dicom(), "application/dicom"),
        (tiff(), "image/tiff"),
    ] {
        let doc = upload(&app, &owner.access, &patient, "other", bytes).await;
        assert_eq!(doc["content_type"], mime);
    }
    let before = files_under(&storage(&app)).len();

    // Text named and declared as a PNG is still text.
    let fake = Form::new().text("kind", "xray").text("title", "Fake").part(
        "file",
        Part::bytes(b"just some text pretending".to_vec())
            .file_name("x.png")
            .mime_str("image/png")
            .expect("mime"),
    );
    expect_problem(
        upload_form(&app, &owner.access, &patient, fake).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    // JSON instead of a form.
    let res = app
        .post(
            &format!("/api/v2/patients/{patient}/documents"),
            Some(&owner.access),
            json!({"kind": "xray"}),
        )
        .await;
    expect_problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    // No file; no kind; an unknown kind; a bad date; an unknown field.
    let no_file = Form::new().text("kind", "xray").text("title", "T");
    let body = expect_problem(
        upload_form(&app, &owner.access, &patient, no_file).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "file");
    let no_kind = Form::new()
        .text("title", "T")
        .part("file", Part::bytes(png(10, 1)));
    let body = expect_problem(
        upload_form(&app, &owner.access, &patient, no_kind).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "kind");
    let bad = form("skull", "T", png(10, 1)).text("taken_on", "yesterday");
    let body = expect_problem(
        upload_form(&app, &owner.access, &patient, bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["kind", "taken_on"]);
    let extra = form("xray", "T", png(10, 1)).text("owner", "me");
    expect_problem(
        upload_form(&app, &owner.access, &patient, extra).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // An unknown patient: 404 before anything is read.
    let res = upload_form(
        &app,
        &owner.access,
        &uuid::Uuid::now_v7().to_string(),
        form("xray", "T", png(10, 1)),
    )
    .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;

    assert_eq!(
        files_under(&storage(&app)).len(),
        before,
        "refused uploads leave nothing behind"
    );
    let mut db = app.admin_db().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&mut db)
        .await
        .expect("count");
    assert_eq!(rows, 4);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_upload_past_the_limit_is_refused_while_it_streams_and_leaves_nothing() {
    let app = spawn_with(|v| {
        v.insert("MAX_UPLOAD_MB".into(), "1".into());
    })
    .await;
    let owner = app.register_clinic("Limits").await;
    let patient = app.patient(&owner.access, "Lia", "Limits").await;
    // Exactly the limit is fine.
    let limit = 1024 * 1024;
    let doc = upload(&app, &owner.access, &patient, "photo", png(limit - 16, 3)).await;
    assert_eq!(doc["size_bytes"], json!(limit));

    // A declared length over the limit is refused before any of the body is read: here
    // no body follows the headers at all, and the answer still comes.
    let mut socket = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v2/patients/{patient}/documents HTTP/1.1\r\nHost: molar.test\r\n\
         Authorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=x\r\n\
         Content-Length: {}\r\n\r\n",
        owner.access,
        2 * limit
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .expect("send");
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut socket, &mut answer),
    )
    .await
    .expect("answered without waiting for the body")
    .expect("read");
    assert_eq!(&answer, b"HTTP/1.1 413");

    // A streamed body (no Content-Length) one byte over the file limit but inside the
    // body's slack: refused by the file's own count while streaming.
    let data = png(limit - 15, 5);
    let stream = futures_util::stream::iter(
        data.chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let streamed = Form::new()
        .text("kind", "photo")
        .text("title", "Streamed")
        .part(
            "file",
            Part::stream(reqwest::Body::wrap_stream(stream)).file_name("s.png"),
        );
    let res = upload_form(&app, &owner.access, &patient, streamed).await;
    expect_problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;

    let files = files_under(&storage(&app));
    assert_eq!(
        files.len(),
        1,
        "only the accepted document remains: {files:?}"
    );
    app.stop().await.expect("stop");
}

/// Flips, cuts, swaps and moves stored content: each download is a 500 problem and an
/// audit event, never a byte of plaintext.
#[tokio::test]
async fn tampered_truncated_swapped_or_moved_content_is_an_error_and_audited() {
    let app = spawn().await;
    let a = app.register_clinic("Tamper A").await;
    let b = app.register_clinic("Tamper B").await;
    let pa = app.patient(&a.access, "Ann", "A").await;
    let pb = app.patient(&b.access, "Bob", "B").await;
    let size = 2 * CHUNK + 99;
    let mut ids = Vec::new();
    for seed in 0..4 {
        let doc = upload(&app, &a.access, &pa, "xray", png(size, seed)).await;
        ids.push(doc["id"].as_str().expect("id").to_owned());
    }
    let other = upload(&app, &b.access, &pb, "xray", png(size, 9)).await;
    let other_id = other["id"].as_str().expect("id").to_owned();
    let path = |i: usize| object(&app, &a.clinic_id, &ids[i]);

    // A byte flipped in the middle chunk.
    let mut bytes = std::fs::read(path(0)).expect("read");
    bytes[HEADER + CHUNK + TAG + 500] ^= 0x01;
    std::fs::write(path(0), &bytes).expect("write");
    // Cut short by the last chunk.
    let bytes = std::fs::read(path(1)).expect("read");
    std::fs::write(path(1), &bytes[..bytes.len() - 200]).expect("write");
    // Two documents' content swapped.
    std::fs::rename(path(2), path(2).with_extension("tmp")).expect("rename");
    std::fs::rename(path(3), path(2)).expect("rename");
    std::fs::rename(path(2).with_extension("tmp"), path(3)).expect("rename");
    // Clinic A's content copied into clinic B's folder over B's document.
    std::fs::copy(
        object(&app, &a.clinic_id, &ids[2]),
        object(&app, &b.clinic_id, &other_id),
    )
    .expect("copy");

    for (token, id) in [
        (&a.access, &ids[0]),
        (&a.access, &ids[1]),
        (&a.access, &ids[2]),
        (&a.access, &ids[3]),
        (&b.access, &other_id),
    ] {
        let res = content(&app, token, id).await;
        let body = expect_problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("integrity-failure")),
            "{body}"
        );
    }
    // A range inside an intact chunk of the flipped file is served; one that touches the
    // flipped chunk is not.
    let res = app
        .client
        .get(app.url(&format!("/api/v2/documents/{}/content", ids[0])))
        .bearer_auth(&a.access)
        .header("range", "bytes=0-99")
        .send()
        .await
        .expect("range");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.bytes().await.expect("body").as_ref(),
        &png(size, 0)[..100]
    );
    let res = app
        .client
        .get(app.url(&format!("/api/v2/documents/{}/content", ids[0])))
        .bearer_auth(&a.access)
        .header("range", format!("bytes={}-{}", CHUNK + 10, CHUNK + 20))
        .send()
        .await
        .expect("range");
    expect_problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;

    assert_eq!(
        audit_count(&app, "document.integrity_failure", "failure").await,
        6
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn another_clinics_documents_are_not_found() {
    let app = spawn().await;
    let a = app.register_clinic("Own").await;
    let b = app.register_clinic("Other").await;
    let pa = app.patient(&a.access, "Ola", "Own").await;
    let doc = upload(&app, &a.access, &pa, "photo", png(100, 1)).await;
    let id = doc["id"].as_str().expect("id");
    for path in [
        format!("/api/v2/documents/{id}"),
        format!("/api/v2/documents/{id}/content"),
        format!("/api/v2/patients/{pa}/documents"),
    ] {
        expect_problem(app.get(&path, Some(&b.access)).await, StatusCode::NOT_FOUND).await;
    }
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v2/documents/{id}"),
            Some(&b.access),
            Some(json!({"reason": "mine now"})),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    let res = upload_form(&app, &b.access, &pa, form("photo", "T", png(10, 1))).await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    // Still there for its own clinic.
    assert_eq!(content(&app, &a.access, id).await.status(), StatusCode::OK);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_front_desk_handles_forms_but_not_xrays_and_billing_sees_none() {
    let app = spawn().await;
    let owner = app.register_clinic("Roles").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let reception = app.staff(&owner.access, "receptionist").await;
    let billing = app.staff(&owner.access, "billing").await;
    let patient = app.patient(&owner.access, "Rae", "Roles").await;

    let xray = upload(&app, &dentist.access, &patient, "xray", png(100, 1)).await;
    let consent = upload(&app, &reception.access, &patient, "consent", pdf()).await;
    let before = files_under(&storage(&app)).len();
    let res = upload_form(
        &app,
        &reception.access,
        &patient,
        form("xray", "No", png(50, 2)),
    )
    .await;
    expect_problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(
        files_under(&storage(&app)).len(),
        before,
        "a refused kind is not kept"
    );

    let xid = xray["id"].as_str().expect("id");
    let cid = consent["id"].as_str().expect("id");
    expect_problem(
        content(&app, &reception.access, xid).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.get(&format!("/api/v2/documents/{xid}"), Some(&reception.access))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        content(&app, &reception.access, cid).await.status(),
        StatusCode::OK
    );
    let list: Value = app
        .get(
            &format!("/api/v2/patients/{patient}/documents"),
            Some(&reception.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"], json!([consent]));
    let list: Value = app
        .get(
            &format!("/api/v2/patients/{patient}/documents"),
            Some(&dentist.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    let list: Value = app
        .get(
            &format!("/api/v2/patients/{patient}/documents?kind=xray"),
            Some(&dentist.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"], json!([xray]));
    assert_eq!(
        content(&app, &dentist.access, cid).await.status(),
        StatusCode::OK
    );

    expect_problem(
        app.get(
            &format!("/api/v2/patients/{patient}/documents"),
            Some(&billing.access),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        content(&app, &billing.access, cid).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v2/documents/{xid}"),
            Some(&reception.access),
            Some(json!({"reason": "tidy"})),
        )
        .await;
    expect_problem(res, StatusCode::FORBIDDEN).await;
    assert!(audit_count(&app, "document.download", "failure").await >= 2);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn delete_hides_keeps_content_until_purge_and_cannot_be_undone() {
    let app = spawn().await;
    let owner = app.register_clinic("Purge").await;
    let patient = app.patient(&owner.access, "Pam", "Purge").await;
    let keep = upload(&app, &owner.access, &patient, "photo", png(100, 1)).await;
    let gone = upload(&app, &owner.access, &patient, "photo", png(100, 2)).await;
    let id = gone["id"].as_str().expect("id").to_owned();
    let path = format!("/api/v2/documents/{id}");

    let res = app
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(&owner.access),
            Some(json!({})),
        )
        .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    // Two deletes at once: one wins.
    let (r1, r2) = tokio::join!(
        app.call(
            reqwest::Method::DELETE,
            &path,
            Some(&owner.access),
            Some(json!({"reason": "wrong patient"}))
        ),
        app.call(
            reqwest::Method::DELETE,
            &path,
            Some(&owner.access),
            Some(json!({"reason": "wrong patient"}))
        )
    );
    let mut statuses = [r1.status().as_u16(), r2.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [204, 404]);
    expect_problem(
        app.get(&path, Some(&owner.access)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        content(&app, &owner.access, &id).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let list: Value = app
        .get(
            &format!("/api/v2/patients/{patient}/documents"),
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"], json!([keep]));
    assert!(
        object(&app, &owner.clinic_id, &id).exists(),
        "kept for the retention period"
    );

    // Not undone, not removed, not rewritten: by the server's role or the owner's.
    let mut db = app.admin_db().await;
    for sql in [
        "UPDATE documents SET deleted_at = NULL, deleted_by = NULL, delete_reason = NULL WHERE deleted_at IS NOT NULL",
        "UPDATE documents SET title = 'changed'",
        "DELETE FROM documents",
    ] {
        assert!(sqlx::query(sql).execute(&mut db).await.is_err(), "{sql}");
    }

    // Inside retention nothing is purged; past it (here: everything deleted before
    // tomorrow) the content goes and the row stays, marked.
    let (ok, out) = molar(&app.vars, &["documents", "purge"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("purged the content of 0 document"), "{out}");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .date_naive()
        .to_string();
    let (ok, out) = molar(&app.vars, &["documents", "purge", "--before", &tomorrow]).await;
    assert!(ok, "{out}");
    assert!(out.contains("purged the content of 1 document"), "{out}");
    assert!(!object(&app, &owner.clinic_id, &id).exists());
    let kid = keep["id"].as_str().expect("id");
    assert!(object(&app, &owner.clinic_id, kid).exists());
    let purged: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT purged_at FROM documents WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&mut db)
            .await
            .expect("row stays");
    assert!(purged.is_some());
    assert_eq!(audit_count(&app, "document.purge", "success").await, 1);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn rewrap_moves_every_key_to_the_new_key_while_a_server_runs() {
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    vars.insert("FILE_ENCRYPTION_KEY".into(), key(1));
    let app = spawn_on(db.clone(), vars.clone()).await;
    let owner = app.register_clinic("Rotate").await;
    let patient = app.patient(&owner.access, "Rob", "Rotate").await;
    let data = png(CHUNK + 5, 4);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            upload(&app, &owner.access, &patient, "xray", data.clone()).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let key_ids = |db: String| async move {
        let mut c = admin_connection(&db).await;
        sqlx::query_scalar::<_, String>("SELECT DISTINCT key_id FROM documents")
            .fetch_all(&mut c)
            .await
            .expect("keys")
    };
    let old = key_ids(db.clone()).await;
    assert_eq!(old.len(), 1);

    // The new key goes in first, the old one stays readable; then rewrap runs beside the
    // serving instance.
    let mut rotated = vars.clone();
    rotated.insert("FILE_ENCRYPTION_KEY".into(), key(2));
    rotated.insert("FILE_ENCRYPTION_KEYS".into(), key(1));
    let (ok, out) = molar(&rotated, &["documents", "rewrap"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("re-wrapped 3 document key(s)"), "{out}");
    let new = key_ids(db.clone()).await;
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    let (ok, out) = molar(&rotated, &["documents", "rewrap"]).await;
    assert!(ok && out.contains("re-wrapped 0"), "{out}");

    // The instance still on the old key alone reports the unknown key and cannot open.
    let check: Value = app
        .get("/api/v2/startup-check", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(check["checks"]["storage"]["status"], "fail", "{check}");
    expect_problem(
        content(&app, &owner.access, &ids[0]).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    app.stop().await.expect("stop");

    // With only the new key, everything opens.
    let mut only_new = vars.clone();
    only_new.insert("FILE_ENCRYPTION_KEY".into(), key(2));
    let app = spawn_on(db, only_new).await;
    for id in &ids {
        let res = content(&app, &owner.access, id).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.bytes().await.expect("body").as_ref(), data.as_slice());
    }
    let check: Value = app
        .get("/api/v2/startup-check", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(check["checks"]["storage"]["status"], "ok", "{check}");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_document_survives_a_restart_and_production_needs_its_key() {
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    vars.insert("FILE_ENCRYPTION_KEY".into(), key(7));
    let app = spawn_on(db.clone(), vars.clone()).await;
    let owner = app.register_clinic("Restart").await;
    let patient = app.patient(&owner.access, "Ray", "Restart").await;
    let data = pdf();
    let id = upload(&app, &owner.access, &patient, "referral", data.clone()).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.stop().await.expect("stop");

    let app = spawn_on(db.clone(), vars.clone()).await;
    let res = content(&app, &owner.access, &id).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.expect("body").as_ref(), data.as_slice());
    // A client that accepts gzip still gets the PDF as stored, with its length.
    let res = app
        .client
        .get(app.url(&format!("/api/v2/documents/{id}/content")))
        .bearer_auth(&owner.access)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("download");
    assert!(res.headers().get("content-encoding").is_none());
    assert_eq!(
        res.headers()["content-length"],
        data.len().to_string().as_str()
    );
    app.stop().await.expect("stop");

    // Production with documents on record and no key refuses to start; with the key it
    // starts.
    let mut prod = vars.clone();
    prod.insert("ENVIRONMENT".into(), "production".into());
    prod.remove("FILE_ENCRYPTION_KEY");
    let config = molar::config::Config::from_map(prod.clone()).expect("valid production config");
    let err = match molar::Server::prepare(config).await {
        Ok(_) => panic!("production must not start without the documents' key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("FILE_ENCRYPTION_KEY"), "{err}");
    prod.insert("FILE_ENCRYPTION_KEY".into(), "c2hvcnQ=".into());
    let err = molar::config::Config::from_map(prod.clone()).expect_err("a short key is refused");
    assert!(
        err.to_string()
            .contains("FILE_ENCRYPTION_KEY must be exactly 32 bytes"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("c2hvcnQ"),
        "the key is not echoed: {err}"
    );
}

#[tokio::test]
async fn objects_no_document_describes_are_swept_and_replays_keep_one_copy() {
    let app = spawn_with(|v| {
        // The sweep's grace is twice this (at least an hour); the orphans below are older.
        v.insert("UPLOAD_TIMEOUT_SECONDS".into(), "30".into());
    })
    .await;
    let owner = app.register_clinic("Sweep").await;
    let patient = app.patient(&owner.access, "Sue", "Sweep").await;

    // The same Idempotency-Key and file twice: one document, one object.
    let send = || {
        app.client
            .post(app.url(&format!("/api/v2/patients/{patient}/documents")))
            .bearer_auth(&owner.access)
            .header("idempotency-key", "scan-42")
            .multipart(form("photo", "Smile", png(500, 8)))
            .send()
    };
    let first: Value = send().await.expect("first").json().await.expect("json");
    let second = send().await.expect("second");
    assert_eq!(second.status(), StatusCode::CREATED);
    let second: Value = second.json().await.expect("json");
    assert_eq!(first["id"], second["id"]);
    let kept = first["id"].as_str().expect("id");
    let folder = storage(&app).join(&owner.clinic_id);
    assert_eq!(
        files_under(&folder).len(),
        1,
        "the replay's copy was discarded"
    );

    // An object from an upload that never got its row, and a staged part of one that
    // never completed, both from two hours ago; and a fresh orphan, left alone.
    let orphan = folder.join(uuid::Uuid::now_v7().to_string());
    let staged = folder.join(format!("{}#1", uuid::Uuid::now_v7()));
    let fresh = folder.join(uuid::Uuid::now_v7().to_string());
    for p in [&orphan, &staged, &fresh] {
        std::fs::write(p, b"leftover").expect("write");
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for p in [&orphan, &staged] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(two_hours_ago))
            .expect("age");
    }
    let (ok, out) = molar(&app.vars, &["documents", "purge"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("swept 2 object(s)"), "{out}");
    assert!(!orphan.exists() && !staged.exists());
    assert!(fresh.exists());
    assert!(
        folder.join(kept).exists(),
        "a recorded document is never swept"
    );
    let res = content(&app, &owner.access, kept).await;
    assert_eq!(res.status(), StatusCode::OK);
    app.stop().await.expect("stop");
}

/// The S3 path, against a local S3-compatible server (moto) that the test starts.
struct S3Server {
    child: tokio::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn s3_server() -> S3Server {
    let bin = std::env::var("MOLAR_TEST_S3_SERVER").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.molar/tools/moto/bin/moto_server"
        )
        .to_owned()
    });
    assert!(
        Path::new(&bin).exists(),
        "no S3-compatible test server at {bin}: scripts/test installs it (or set MOLAR_TEST_S3_SERVER)"
    );
    let port = free_port();
    let child = tokio::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the S3 test server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Moto accepts unsigned bucket creation.
        if let Ok(r) = client.put(format!("{endpoint}/molar-docs")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the S3 test server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    S3Server { child, endpoint }
}

#[tokio::test]
async fn the_s3_store_keeps_documents_for_every_instance() {
    let s3 = s3_server().await;
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    for (k, v) in [
        ("DOCUMENT_STORE_URL", "s3://molar-docs/records".to_owned()),
        ("AWS_ENDPOINT", s3.endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "molar-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "molar-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
    ] {
        vars.insert(k.into(), v);
    }
    let one = spawn_on(db.clone(), vars.clone()).await;
    let two = spawn_on(db.clone(), vars.clone()).await;
    let owner = one.register_clinic("Bucket").await;
    let patient = one.patient(&owner.access, "Sam", "Three").await;
    // Larger than one S3 part (5 MiB), so the upload is a real multipart upload.
    let data = png(6 * 1024 * 1024 + 17, 6);
    let doc = upload(&one, &owner.access, &patient, "xray", data.clone()).await;
    let id = doc["id"].as_str().expect("id").to_owned();
    assert!(
        files_under(&storage(&one)).is_empty(),
        "nothing on local disk"
    );

    // Another instance reads it.
    let res = content(&two, &owner.access, &id).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.expect("body").len(), data.len());
    let res = two
        .client
        .get(two.url(&format!("/api/v2/documents/{id}/content")))
        .bearer_auth(&owner.access)
        .header("range", "bytes=5000000-5000099")
        .send()
        .await
        .expect("range");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.bytes().await.expect("body").as_ref(),
        &data[5_000_000..5_000_100]
    );
    let check: Value = two
        .get("/api/v2/startup-check", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(check["checks"]["storage"]["status"], "ok", "{check}");
    assert_eq!(check["checks"]["storage"]["details"]["store"], "s3");

    // The object in the bucket is sealed; replaced by other bytes it fails.
    let key = format!(
        "{}/molar-docs/records/{}/{}",
        s3.endpoint, owner.clinic_id, id
    );
    let stored = reqwest::get(&key)
        .await
        .expect("get object")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        stored.len(),
        HEADER + data.len() + data.len().div_ceil(CHUNK) * TAG
    );
    assert!(!stored.windows(32).any(|w| w == &data[100..132]));
    let mut tampered = stored.to_vec();
    tampered[HEADER + 10] ^= 0x80;
    let put = reqwest::Client::new()
        .put(&key)
        .body(tampered)
        .send()
        .await
        .expect("put");
    assert!(put.status().is_success());
    expect_problem(
        content(&one, &owner.access, &id).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    one.stop().await.expect("stop");
    two.stop().await.expect("stop");
}
