"""A webhook receiver that checks every delivery's signature.

    AOS_WEBHOOK_SECRET=whsec_... python docs/examples/webhook_receiver.py 9000

Point a namespace (or a job) at it: ``"webhookUrl": "http://127.0.0.1:9000/hooks"``.
Each authentic delivery is printed as one JSON line and answered 204; a
forged or replayed one is answered 401 (and will be retried, then dead).
Deduplicate on ``webhook-id``: a delivery can arrive more than once.

Only the standard library and ``webhooks.verify`` (from this project) are
used; the reference implementation (``pip install standardwebhooks``) accepts
the same signatures.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from webhooks import WebhookVerificationError, verify

SECRET = os.environ["AOS_WEBHOOK_SECRET"]
seen: set[str] = set()


class Hooks(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            event = verify(SECRET, dict(self.headers), body)
        except WebhookVerificationError as exc:
            self.send_response(401)
            self.end_headers()
            print(json.dumps({"rejected": str(exc)}), flush=True)
            return
        delivery_id = self.headers["webhook-id"]
        if delivery_id not in seen:  # at-least-once: act once per webhook-id
            seen.add(delivery_id)
            print(json.dumps({"id": delivery_id, **event}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the JSON lines above are the log


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    ThreadingHTTPServer(("127.0.0.1", port), Hooks).serve_forever()
