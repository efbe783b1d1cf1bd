#!/usr/bin/env python3
"""The inventory service of the causeway example: receives OrderPlaced, reserves stock from a
small in-memory catalogue and publishes StockReserved.

It speaks only HTTP, and only to its own sidecar (CAUSEWAY_URL). Python 3 standard library only.

  POST /events/order-placed    a delivery from the sidecar (subscription to OrderPlaced, major 2)
                               200: reserved, StockReserved published
                               422: an unknown SKU or not enough stock; never going to work, so
                                    the sidecar dead-letters the event (reason rejected)
                               503: StockReserved could not be published; the sidecar retries
  GET  /stock                  -> 200 what is left in the catalogue
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

SERVICE = "inventory"
HOST = os.environ.get("HOST", "127.0.0.1")
CAUSEWAY_URL = os.environ.get("CAUSEWAY_URL", "http://127.0.0.1:7070").rstrip("/")
PORT = int(os.environ.get("PORT", "8080"))
JOURNAL = os.environ.get("JOURNAL")

# The sidecar is on loopback: never send these requests through an HTTP proxy.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

stock = {"kettle": 20, "mug": 200, "teapot": 10}
# Reservations by the id of the OrderPlaced event that asked for them. The app, too, treats
# X-Event-ID as an idempotency key: the sidecar removes almost every duplicate, not all (see
# docs/delivery.md, "Duplicates").
reservations = {}
stock_lock = threading.Lock()
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


def reserve(event_id, items):
    """Reserves every item, or none. Returns (reservation id, None) or (None, why not)."""
    with stock_lock:
        if event_id in reservations:
            return reservations[event_id], None
        for item in items:
            sku, quantity = item.get("sku"), item.get("quantity")
            if sku not in stock:
                return None, f"unknown SKU {sku!r}"
            if not isinstance(quantity, int) or quantity < 1:
                return None, f"bad quantity {quantity!r} for {sku!r}"
            if stock[sku] < quantity:
                return None, f"only {stock[sku]} of {sku!r} left, {quantity} asked"
        for item in items:
            stock[item["sku"]] -= item["quantity"]
        reservations[event_id] = "res-" + uuid.uuid4().hex[:8]
        return reservations[event_id], None


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
        if self.path == "/stock":
            with stock_lock:
                return self.answer(200, dict(stock))
        self.problem(404, f"no route for {self.path}")

    def do_POST(self):
        if self.path == "/events/order-placed":
            return self.order_placed()
        self.read_json()
        self.problem(404, f"no route for {self.path}")

    def order_placed(self):
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
        if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
            return 422, "not an OrderPlaced 2.x payload: items missing", None
        version = self.headers.get("X-Schema-Version") or ""
        if not version.startswith("2."):
            return 422, f"schema version {version!r} is not handled here", None

        reservation_id, refused = reserve(event_id, payload["items"])
        if refused:
            return 422, refused, None

        reserved = {
            "order_id": payload.get("order_id"),
            "reservation_id": reservation_id,
            "items": payload["items"],
            "total_cents": payload.get("total_cents"),
            "currency": payload.get("currency"),
        }
        # X-Causation-ID is the event being handled. The correlation id is not sent: the
        # sidecar, which delivered that event, fills in its correlation id. The trace goes on.
        # The Idempotency-Key makes a redelivery of the same OrderPlaced publish nothing new.
        headers = {"X-Causation-ID": event_id, "Idempotency-Key": f"stock-reserved-{event_id}"}
        for name in ("traceparent", "tracestate"):
            if self.headers.get(name):
                headers[name] = self.headers[name]
        status, published = publish("StockReserved", reserved, headers)
        if status != 202:
            # The reservation stays, keyed by the event id; the sidecar retries the delivery.
            detail = f"StockReserved was not published ({status}): {published.get('detail')}"
            return 503, detail, None
        return 200, {"reservation_id": reservation_id}, published


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"{SERVICE}: listening on {HOST}:{server.server_address[1]}, "
                     f"sidecar {CAUSEWAY_URL}\n")
    sys.stderr.flush()
    server.serve_forever()
