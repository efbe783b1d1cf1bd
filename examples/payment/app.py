#!/usr/bin/env python3
"""The payment service of the causeway example: receives StockReserved, "charges" the order
(nothing is charged; a payment id is made up) and publishes PaymentTaken.

It speaks only HTTP, and only to its own sidecar (CAUSEWAY_URL). Python 3 standard library only.

  POST /events/stock-reserved  a delivery from the sidecar (subscription to StockReserved)
                               200: charged, PaymentTaken published
                               422: the event has no order id or amount (never going to work)
                               503: PaymentTaken could not be published; the sidecar retries
  GET  /healthz                -> 200

Environment: HOST (default 127.0.0.1; 0.0.0.0 in a container), PORT (default 8080), CAUSEWAY_URL (default http://127.0.0.1:7070), JOURNAL (a file
that gets one JSON line per event this service publishes or receives; unset: no journal).
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = "payment"
HOST = os.environ.get("HOST", "127.0.0.1")
CAUSEWAY_URL = os.environ.get("CAUSEWAY_URL", "http://127.0.0.1:7070").rstrip("/")
PORT = int(os.environ.get("PORT", "8080"))
JOURNAL = os.environ.get("JOURNAL")

# The sidecar is on loopback: never send these requests through an HTTP proxy.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Payments by the id of the StockReserved event that asked for them: a redelivered event is
# not charged twice.
payments = {}
payments_lock = threading.Lock()
journal_lock = threading.Lock()


def journal(action, event_type, event_id, causation_id, correlation_id, **extra):
    """Appends one line about an event this service published or received."""
    if not JOURNAL:
        return
    line = {
        "service": SERVICE,
        "action": action,
        "event_type": event_type,
        "event_id": event_id,
        "causation_id": causation_id,
        "correlation_id": correlation_id,
    }
    line.update(extra)
    with journal_lock, open(JOURNAL, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def publish(event_type, payload, headers):
    """POSTs an event to the sidecar. Returns (status, parsed answer); status 0 when the
    sidecar could not be reached."""
    request = urllib.request.Request(
        f"{CAUSEWAY_URL}/v1/publish/{event_type}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with HTTP.open(request, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        try:
            body = json.load(error)
        except ValueError:
            body = {"detail": f"the sidecar answered {error.code}"}
        return error.code, body
    except (urllib.error.URLError, OSError) as error:
        return 0, {"detail": f"the sidecar is unreachable: {error}"}


def charge(event_id, order_id, amount_cents, currency):
    """Pretends to charge the customer, once per event. Returns the payment id."""
    with payments_lock:
        if event_id not in payments:
            payments[event_id] = "pay-" + uuid.uuid4().hex[:8]
        return payments[event_id]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        sys.stderr.write(f"{SERVICE}: {format % args}\n")

    def answer(self, status, body, content_type="application/json"):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def problem(self, status, detail):
        self.answer(status, {"status": status, "detail": detail}, "application/problem+json")

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, {"status": "ok"})
        self.problem(404, f"no route for {self.path}")

    def do_POST(self):
        if self.path == "/events/stock-reserved":
            return self.stock_reserved()
        self.read_json()
        self.problem(404, f"no route for {self.path}")

    def stock_reserved(self):
        envelope = self.read_json()
        event_id = self.headers.get("X-Event-ID")
        status, detail, published = self.process(envelope, event_id)
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
        order_id = payload.get("order_id") if isinstance(payload, dict) else None
        journal("received", self.headers.get("X-Event-Type"), event_id,
                self.headers.get("X-Causation-ID"), self.headers.get("X-Correlation-ID"),
                order_id=order_id, status=status, envelope=envelope,
                **({} if status == 200 else {"detail": detail}))
        if published:
            journal("published", published["event_type"], published["event_id"],
                    published["causation_id"], published["correlation_id"], order_id=order_id)
        if status == 200:
            self.answer(200, detail)
        else:
            self.problem(status, detail)

    def process(self, envelope, event_id):
        """Returns (status, answer body or problem detail, the 202 answer of the publish)."""
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
        if not isinstance(payload, dict) or not payload.get("order_id"):
            return 422, "not a StockReserved payload: order_id missing", None
        amount_cents = payload.get("total_cents")
        if not isinstance(amount_cents, int) or amount_cents < 0:
            return 422, f"cannot charge {amount_cents!r} cents", None

        payment_id = charge(event_id, payload["order_id"], amount_cents, payload.get("currency"))
        taken = {
            "order_id": payload["order_id"],
            "payment_id": payment_id,
            "amount_cents": amount_cents,
            "currency": payload.get("currency"),
        }
        # The same three headers as in inventory: the cause, a key that makes a redelivery
        # publish nothing new, and the trace context.
        headers = {"X-Causation-ID": event_id, "Idempotency-Key": f"payment-taken-{event_id}"}
        for name in ("traceparent", "tracestate"):
            if self.headers.get(name):
                headers[name] = self.headers[name]
        status, published = publish("PaymentTaken", taken, headers)
        if status != 202:
            detail = f"PaymentTaken was not published ({status}): {published.get('detail')}"
            return 503, detail, None
        return 200, {"payment_id": payment_id}, published


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"{SERVICE}: listening on {HOST}:{server.server_address[1]}, "
                     f"sidecar {CAUSEWAY_URL}\n")
    sys.stderr.flush()
    server.serve_forever()
