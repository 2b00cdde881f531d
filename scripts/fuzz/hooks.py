"""schemathesis hooks of scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS=hooks).

Some rules of the contract depend on the server's state or tie two fields together, which
a JSON Schema cannot say (the document says them in words). Cases meant to be valid follow
them as a client would, so that they reach the logic behind them; cases meant to be
invalid are left exactly as drawn, and must still be refused.

- A list cursor is opaque: only a `next_cursor` (or a FHIR `next` link's `_cursor`) the
  server issued is one, and anything else is a 400 whatever its shape. A valid case carries no invented cursor (the server's own
  cursors are covered by the integration tests).
- An `Idempotency-Key` promises that a request with it is the same request again: reusing
  one with another body is a 422 by contract, and generated cases reuse the few keys they
  draw with ever new bodies. A valid case gets a key of its own.
- An appointment ends after it starts and lasts at most APPOINTMENT_MAX_MINUTES. A valid
  booking or move that gives a start ends 5 to 240 minutes after it.
- A document's type is recognised from its bytes (JPEG, PNG, PDF, DICOM, TIFF); a valid
  upload's file starts with a PNG signature, followed by the bytes drawn.
- Ending a session ends its tokens: a valid case never ends the run's own sign-in (the
  owner's current session), whose id the stateful phase finds in `GET /auth/sessions`.
- Changing a user's `is_provider` ends their access tokens (the flag rides in them). The
  run has one token, the owner's: a valid case leaves the owner's own flag alone, so that
  the rest of the run is not all 401s.
"""

import datetime
import hashlib
import os
import uuid

import schemathesis

TIMED = {"book_appointment", "reschedule_appointment"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"


@schemathesis.hook
def map_case(context, case):
    # Whatever the mode: the run's own sign-in is never ended.
    if case.operation.definition.raw.get("operationId") == "end_session" and (
        case.path_parameters or {}
    ).get("id") == os.environ.get("OWNER_SESSION_ID"):
        case.path_parameters["id"] = str(uuid.uuid4())
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    if case.query:
        case.query.pop("cursor", None)
        case.query.pop("_cursor", None)
    if case.headers:
        for name in list(case.headers):
            if name.lower() == "idempotency-key":
                case.headers[name] = f"fuzz-{uuid.uuid4()}"
    operation = case.operation.definition.raw.get("operationId")
    if operation in TIMED:
        case.body = _sensible_interval(case.body)
    if operation == "upload_document" and isinstance(case.body, dict):
        drawn = case.body.get("file", b"")
        if isinstance(drawn, str):
            drawn = drawn.encode()
        case.body["file"] = PNG_SIGNATURE + bytes(drawn)
    if (
        operation == "update_user"
        and isinstance(case.body, dict)
        and (case.path_parameters or {}).get("id") == os.environ.get("OWNER_ID")
    ):
        case.body.pop("is_provider", None)
    return case


def _sensible_interval(body):
    if not isinstance(body, dict) or not isinstance(body.get("start_at"), str):
        return body
    # The length follows from the start, so that a seed replays the same cases.
    minutes = 5 * (1 + hashlib.sha256(body["start_at"].encode()).digest()[0] % 48)
    try:
        start = datetime.datetime.fromisoformat(body["start_at"].replace("Z", "+00:00"))
        end = start + datetime.timedelta(minutes=minutes)
    except (ValueError, OverflowError):
        return body
    return {**body, "end_at": end.isoformat()}
