"""What the operator API tests over real HTTP share: a client for the live server with a
key per scope, the demo catalog, and Celery tasks run in place (no broker in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from django.core.cache import cache

from billing_portal.celery import app as celery_app
from plans.apikeys import api_key_create
from tests.plans.factories import load_demo_catalog

API = "/api/v1"


@dataclass
class Api:
    """Calls the live server with the key holding every scope, unless told another one
    (``key=""`` sends no Authorization header)."""

    base_url: str
    all: str
    read: str
    write: str
    ingest: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> requests.Response:
        secret = self.all if key is None else key
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return requests.request(
            method,
            self.base_url + API + path,
            json=body,
            params=params,
            headers=headers,
            timeout=30,
        )

    def get(self, path: str, key: str | None = None, **params: Any) -> requests.Response:
        return self.request("GET", path, params=params, key=key)

    def post(self, path: str, body: Any = None, key: str | None = None) -> requests.Response:
        return self.request("POST", path, body, key=key)

    def patch(self, path: str, body: Any = None, key: str | None = None) -> requests.Response:
        return self.request("PATCH", path, body, key=key)

    def ok(self, path: str, **params: Any) -> dict[str, Any]:
        """A GET that must answer 200 with a JSON object."""
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def pages(self, path: str, **params: Any) -> list[list[dict[str, Any]]]:
        """Every page of a list, following starting_after until has_more is false."""
        pages: list[list[dict[str, Any]]] = []
        while True:
            body = self.ok(path, **params)
            assert set(body) == {"data", "has_more"}, body
            pages.append(body["data"])
            if not body["has_more"]:
                return pages
            params = {**params, "starting_after": body["data"][-1]["id"]}


def error_of(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The envelope's error, after checking the status, the envelope and the code."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "code", "message", "param"}, error
    assert error["code"] == code, error
    assert error["message"]
    return error


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def api(live_server: Any) -> Iterator[Api]:
    eager = {"task_always_eager": True, "task_eager_propagates": True}
    saved = {name: celery_app.conf.get(name) for name in eager}
    celery_app.conf.update(eager)
    cache.clear()
    load_demo_catalog()
    yield Api(
        base_url=live_server.url,
        all=api_key_create(name="backend", scopes=["ingest", "read", "write"])[1],
        read=api_key_create(name="dashboard", scopes=["read"])[1],
        write=api_key_create(name="admin", scopes=["write"])[1],
        ingest=api_key_create(name="gateway", scopes=["ingest"])[1],
    )
    cache.clear()
    celery_app.conf.update(saved)
