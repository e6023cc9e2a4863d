"""A real HTTP receiver on loopback that checks signatures, and an eager Celery."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from billing_portal.celery import app as celery_app
from billing_portal.outbound.models import WebhookEndpoint
from billing_portal.outbound.services import SignatureError, signature_verify


@dataclass
class Receiver:
    """Answers with the queued status codes, then 200; records what it accepted."""

    url: str
    secret: str = ""
    codes: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.bodies]

    def endpoint(self, **fields: Any) -> WebhookEndpoint:
        endpoint = WebhookEndpoint.objects.create(url=self.url, **fields)
        self.secret = endpoint.secret
        return endpoint


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                signature_verify(
                    payload=body,
                    header=self.headers.get("Billing-Signature", ""),
                    secret=receiver.secret,
                )
            except SignatureError as exc:
                receiver.refused.append(str(exc))
                self._answer(400, b"bad signature")
                return
            receiver.bodies.append(body)
            receiver.headers.append(dict(self.headers.items()))
            code = receiver.codes.pop(0) if receiver.codes else 200
            self._answer(code, b"x" * 5000 if code >= 500 else b'{"received":true}')

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def no_backoff(settings: Any) -> None:
    settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS = 0


@pytest.fixture
def eager_celery() -> Iterator[None]:
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, True
    yield
    conf.task_always_eager, conf.task_eager_propagates = saved
