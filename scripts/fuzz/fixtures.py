"""Sets up what scripts/fuzz-api fuzzes against: a clinic and its owner (whose token
schemathesis uses), dentists with working hours (the first one's token is the one the
clinical writes use), operatories, patients and an appointment, procedure codes,
procedures, a treatment plan and a recall type.
Prints shell assignments (TOKEN=..., PATIENT_ID=...) for the caller to eval.

Also writes the ids as schemathesis dictionaries (libFuzzer format) into DICT_DIR, which
scripts/fuzz/schemathesis.toml binds to the parameters and fields that take them.

Usage: python3 fixtures.py BASE_URL DICT_DIR   (BASE_URL like http://127.0.0.1:8000/api/v2)
"""

import json
import os
import sys
import urllib.error
import urllib.request

BASE = sys.argv[1].rstrip("/")
DICT_DIR = sys.argv[2]


def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            text = res.read().decode()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        sys.exit(f"fixtures: {method} {path} answered {e.code}: {e.read().decode()}")


registered = call(
    "POST",
    "/auth/register-clinic",
    {
        "clinic": {"name": "Fuzz Dental", "timezone": "Europe/Berlin", "currency": "EUR"},
        "owner": {
            "email": "owner@fuzz.example",
            "password": "fuzz-owner-password-2030",
            "full_name": "Olga Owner",
        },
    },
)
token = registered["tokens"]["access_token"]
# Three of each, as the fuzzer deactivates, renames and rewrites what it finds: bookings
# keep finding a provider with hours and an active operatory.
dentists = []
for i in range(3):
    dentist = call(
        "POST",
        "/users",
        {
            "email": f"dentist{i}@fuzz.example",
            "password": "fuzz-dentist-password-2030",
            "full_name": f"Dana Dentist {i}",
            "role": "dentist",
        },
        token,
    )
    call(
        "PUT",
        f"/providers/{dentist['id']}/working-hours",
        {
            "weekly": [{"weekday": d, "start": "00:00", "end": "23:59"} for d in range(1, 8)],
            "exceptions": [],
        },
        token,
    )
    dentists.append(dentist)
dentist = dentists[0]
dentist_token = call(
    "POST",
    "/auth/login",
    {"email": "dentist0@fuzz.example", "password": "fuzz-dentist-password-2030"},
)["access_token"]
operatories = [call("POST", "/operatories", {"name": f"Chair {i}"}, token) for i in range(3)]
operatory = operatories[0]
patients = [
    call(
        "POST",
        "/patients",
        {"first_name": "Max", "last_name": f"Mustermann {i}", "date_of_birth": "1985-04-12"},
        token,
    )
    for i in range(3)
]
patient = patients[0]
appointment = call(
    "POST",
    "/appointments",
    {
        "patient_id": patient["id"],
        "provider_id": dentist["id"],
        "operatory_id": operatory["id"],
        "start_at": "2031-01-06T09:00:00Z",
        "end_at": "2031-01-06T09:30:00Z",
    },
    token,
)
# A catalogue with each tooth rule, planned procedures of the first patient, a plan of
# them and a recall type.
codes = [
    call("POST", "/procedure-codes", body, token)
    for body in [
        {"code": "F-EXAM", "description": "Examination", "fee_cents": 4500},
        {"code": "F-XTR", "description": "Extraction", "fee_cents": 12000, "requires_tooth": True},
        {
            "code": "F-FILL",
            "description": "Filling",
            "fee_cents": 9500,
            "requires_tooth": True,
            "requires_surfaces": True,
        },
    ]
]
procedures = [
    call("POST", f"/patients/{patient['id']}/procedures", body, token)
    for body in [
        {"procedure_code_id": codes[0]["id"]},
        {"procedure_code_id": codes[1]["id"], "tooth": "16"},
        {"procedure_code_id": codes[2]["id"], "tooth": "26", "surfaces": ["M", "O"]},
    ]
]
call(
    "POST",
    f"/patients/{patient['id']}/treatment-plans",
    {"title": "Fuzz plan", "items": [{"procedure_id": p["id"]} for p in procedures]},
    token,
)
# One completed (charged) procedure on an invoice, so that payments can be allocated.
call("POST", f"/procedures/{procedures[0]['id']}/complete", {}, token)
invoice = call("POST", "/invoices", {"patient_id": patient["id"]}, token)
call(
    "POST",
    "/recall-types",
    {"name": "Check-up", "interval_months": 6, "trigger_procedure_code_ids": [codes[0]["id"]]},
    token,
)
# The sign-in schemathesis runs as: ending it would end the run's access (see hooks.py).
owner_session = next(
    s["id"] for s in call("GET", "/auth/sessions", None, token)["items"] if s["current"]
)
os.makedirs(DICT_DIR, exist_ok=True)
for name, values in [
    ("providers", [d["id"] for d in dentists]),
    ("operatories", [o["id"] for o in operatories]),
    ("patients", [p["id"] for p in patients]),
    ("procedure_codes", [c["id"] for c in codes]),
    ("procedures", [p["id"] for p in procedures[1:]]),
    ("invoices", [invoice["id"]]),
]:
    with open(os.path.join(DICT_DIR, f"{name}.dict"), "w", encoding="utf-8") as f:
        f.writelines(f'"{v}"\n' for v in values)

for name, value in [
    ("TOKEN", token),
    ("DENTIST_TOKEN", dentist_token),
    ("OWNER_ID", registered["user"]["id"]),
    ("OWNER_SESSION_ID", owner_session),
    ("DENTIST_ID", dentist["id"]),
    ("OPERATORY_ID", operatory["id"]),
    ("PATIENT_ID", patient["id"]),
    ("APPOINTMENT_ID", appointment["id"]),
]:
    print(f"{name}={value}")
