"""Real servers that receive what the alerts send: an HTTP server for webhooks (Slack's and a generic one) and
an SMTP server (aiosmtpd) for email. Both record everything, with the time it arrived."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    at: float  # time.time()
    path: str
    body: Any  # parsed JSON for webhooks; {"subject", "to", "text"} for mail


class WebhookReceiver:
    """POSTs to any path are recorded; answers `status` (200 by default, as Slack does, with "ok")."""

    def __init__(self, status: int = 200, host: str = "127.0.0.1") -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                with receiver._lock:
                    receiver.received.append(Received(time.time(), self.path, body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST  # noqa: N815

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def stop(self) -> None:
        self.server.shutdown()


class MailReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1; every message is parsed and kept."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.received: list[Received] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                part = message.get_body(preferencelist=("plain",))
                text = part.get_content() if part is not None else ""
                receiver.received.append(
                    Received(
                        time.time(), "smtp", {"subject": str(message["Subject"]), "to": envelope.rcpt_tos, "text": text}
                    )
                )
                return "250 OK"

        self.port = port
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
