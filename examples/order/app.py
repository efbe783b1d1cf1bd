#!/usr/bin/env python3
"""The order service of the causeway example: takes orders, publishes OrderPlaced, and answers
where each order stands from its flow, which its sidecar knows (GET /v1/flows/<order id>): the
order id is the flow's correlation id, and the sidecar's [[flows]] definition "order" says
whether the flow is complete (paid), failed, late or still in progress.

It speaks only HTTP, and only to its own sidecar (CAUSEWAY_URL). Python 3 standard library only.

  POST /orders                 {"sku", "quantity", "total_cents", "currency"}
                               -> 202 {"order_id", "status": "processing", "poll": "/orders/<id>"}
  GET  /orders/<id>            -> 200 the order, its status (processing, paid, failed, late)
                                  and its flow (state, outcome, reason), or 404
  POST /events/payment-taken   a delivery from the sidecar (subscription to PaymentTaken):
                               keeps the payment id
  GET  /healthz                -> 200

Environment: HOST (default 127.0.0.1; 0.0.0.0 in a container), PORT (default 8080), CAUSEWAY_URL (default http://127.0.0.1:7070), JOURNAL (a file
that gets one JSON line per event this service publishes or receives; unset: no journal).
Orders live in memory: a restart forgets them.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = "order"
HOST = os.environ.get("HOST", "127.0.0.1")
CAUSEWAY_URL = os.environ.get("CAUSEWAY_URL", "http://127.0.0.1:7070").rstrip("/")
PORT = int(os.environ.get("PORT", "8080"))
JOURNAL = os.environ.get("JOURNAL")

# The sidecar is on loopback: never send these requests through an HTTP proxy.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

orders = {}
orders_lock = threading.Lock()
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


# The flow definition's outcome, as an order's status.
STATUS = {"complete": "paid", "failed": "failed", "late": "late", "in_progress": "processing"}


def flow_of(correlation_id):
    """The flow from the sidecar, or None when it has none (yet) or cannot be asked."""
    url = f"{CAUSEWAY_URL}/v1/flows/{urllib.parse.quote(correlation_id, safe='')}"
    try:
        with HTTP.open(url, timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


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


def publish_with_retries(event_type, payload, headers, attempts=3):
    """503 (nothing was published) and 504 (outcome unknown) are worth a retry. Every retry
    carries the same Idempotency-Key, so the event is published at most once."""
    for attempt in range(1, attempts + 1):
        status, body = publish(event_type, payload, headers)
        if status not in (0, 503, 504) or attempt == attempts:
            return status, body
        time.sleep(0.5 * attempt)
    return status, body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        sys.stderr.write(f"{SERVICE}: {format % args}\n")

    def answer(self, status, body, content_type="application/json", headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def problem(self, status, detail, headers=None, **extra):
        self.answer(status, {"status": status, "detail": detail, **extra},
                    "application/problem+json", headers)

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, {"status": "ok"})
        if self.path.startswith("/orders/"):
            order_id = self.path[len("/orders/"):]
            with orders_lock:
                order = orders.get(order_id)
                order = dict(order) if order else None
            if order is None:
                return self.problem(404, f"there is no order {order_id}")
            if order["status"] == "processing":
                # Where it stands is the flow's business, not a journal of this app's.
                flow = flow_of(order_id)
                definition = (flow or {}).get("definition") or {}
                order["status"] = STATUS.get(definition.get("outcome"), "processing")
                order["flow"] = flow and {"state": flow["state"],
                                          "outcome": definition.get("outcome"),
                                          "reason": definition.get("reason") or flow.get("reason")}
            return self.answer(200, order)
        self.problem(404, f"no route for {self.path}")

    def do_POST(self):
        if self.path == "/orders":
            return self.place_order()
        if self.path == "/events/payment-taken":
            return self.payment_taken()
        self.read_json()
        self.problem(404, f"no route for {self.path}")

    def place_order(self):
        body = self.read_json()
        wrong = [] if isinstance(body, dict) else ["the body must be a JSON object"]
        if not wrong:
            if not isinstance(body.get("sku"), str) or not body["sku"]:
                wrong.append("sku must be a non-empty string")
            for field in ("quantity", "total_cents"):
                if not isinstance(body.get(field), int) or isinstance(body.get(field), bool):
                    wrong.append(f"{field} must be a whole number")
            if not isinstance(body.get("currency"), str):
                wrong.append("currency must be a string")
        if wrong:
            return self.problem(400, "; ".join(wrong))

        order_id = "ord-" + uuid.uuid4().hex[:8]
        payload = {
            "order_id": order_id,
            "total_cents": body["total_cents"],
            "currency": body["currency"],
            "items": [{"sku": body["sku"], "quantity": body["quantity"]}],
        }
        # The order id names the flow: "where is order X?" is GET /v1/flows/X.
        headers = {"X-Schema-Version": "2.0", "Idempotency-Key": order_id,
                   "X-Correlation-ID": order_id}
        for name in ("traceparent", "tracestate"):
            if self.headers.get(name):
                headers[name] = self.headers[name]
        # Stored before the publish: PaymentTaken may come back before this request ends.
        with orders_lock:
            orders[order_id] = {
                "order_id": order_id,
                "status": "processing",
                "sku": body["sku"],
                "quantity": body["quantity"],
                "total_cents": body["total_cents"],
                "currency": body["currency"],
            }
        status, published = publish_with_retries("OrderPlaced", payload, headers)
        if status != 202:
            # Kept as "failed": after a 504 the event may still be on the broker, and a
            # PaymentTaken for it must find its order.
            with orders_lock:
                orders[order_id]["status"] = "failed"
            # 422 from the sidecar names every field that does not fit the OrderPlaced 2.0
            # schema; pass it on. Anything else means the order could not be placed now.
            if status in (400, 422):
                return self.answer(422, {**published, "order_id": order_id},
                                   "application/problem+json")
            return self.problem(503, "the order could not be placed; try again",
                                headers={"Retry-After": "1"}, order_id=order_id,
                                sidecar=published)

        with orders_lock:
            orders[order_id]["correlation_id"] = published["correlation_id"]
            orders[order_id]["order_placed_event_id"] = published["event_id"]
        journal("published", "OrderPlaced", published["event_id"], published["causation_id"],
                published["correlation_id"], order_id=order_id)
        # The flow goes on without this request: the client polls the order.
        self.answer(202, {"order_id": order_id, "status": "processing",
                          "poll": f"/orders/{order_id}"})

    def payment_taken(self):
        envelope = self.read_json()
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
        order_id = payload.get("order_id") if isinstance(payload, dict) else None
        with orders_lock:
            order = orders.get(order_id)
            if order is not None:
                order["payment_id"] = payload.get("payment_id")
        status = 200 if order is not None else 422
        journal("received", self.headers.get("X-Event-Type"), self.headers.get("X-Event-ID"),
                self.headers.get("X-Causation-ID"), self.headers.get("X-Correlation-ID"),
                order_id=order_id, status=status, envelope=envelope,
                **({} if status == 200 else {"detail": f"there is no order {order_id!r}"}))
        if order is None:
            # Never going to succeed here: the sidecar dead-letters it (reason rejected).
            return self.problem(422, f"there is no order {order_id!r}")
        self.answer(200, {"order_id": order_id, "payment_id": order["payment_id"]})


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"{SERVICE}: listening on {HOST}:{server.server_address[1]}, "
                     f"sidecar {CAUSEWAY_URL}\n")
    sys.stderr.flush()
    server.serve_forever()
