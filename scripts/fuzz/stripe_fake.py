"""A local server that speaks enough of Stripe's API for scripts/fuzz-api: the server
under test creates PaymentIntents and refunds here (STRIPE_API_BASE) the way it would at
Stripe: form-encoded POSTs with a bearer key and an Idempotency-Key, JSON answers. The same
key gives the same answer, as at Stripe. Nothing leaves the machine.

Usage: python3 stripe_fake.py PORT SECRET_KEY
"""

import json
import secrets
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SECRET_KEY = sys.argv[2]
answers = {}
lock = threading.Lock()


class Stripe(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        if self.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return self.answer(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
        key = (self.path, self.headers.get("Idempotency-Key"))
        with lock:
            if key[1] and key in answers:
                return self.answer(200, answers[key])
            if self.path == "/v1/payment_intents":
                pi = "pi_" + secrets.token_hex(12)
                body = {
                    "id": pi,
                    "object": "payment_intent",
                    "amount": int(form.get("amount", "0")),
                    "currency": form.get("currency"),
                    "client_secret": f"{pi}_secret_{secrets.token_hex(12)}",
                    "status": "requires_payment_method",
                }
            elif self.path == "/v1/refunds":
                body = {
                    "id": "re_" + secrets.token_hex(12),
                    "object": "refund",
                    "amount": int(form.get("amount", "0")),
                    "payment_intent": form.get("payment_intent"),
                    "status": "succeeded",
                }
            else:
                return self.answer(404, {"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}})
            if key[1]:
                answers[key] = body
        self.answer(200, body)


ThreadingHTTPServer(("127.0.0.1", PORT), Stripe).serve_forever()
