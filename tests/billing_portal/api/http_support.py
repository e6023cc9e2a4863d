"""Helpers of the API tests over real HTTP: a client with a key per scope, the error
envelope check, the reconcile check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from ledger import reconcile


def assert_reconciled() -> None:
    problems = {f.check: f.problems for f in reconcile.run_checks() if f.problems}
    assert problems == {}


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
