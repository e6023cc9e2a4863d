"""Fixtures of the API tests over real HTTP: the live server with a key per scope, the demo
catalog, and Celery tasks run in place (no broker in tests). Helpers: http_support."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache

from billing_portal.celery import app as celery_app
from plans.apikeys import api_key_create
from tests.billing_portal.api.http_support import Api
from tests.plans.factories import load_demo_catalog


@pytest.fixture
def http_api_environment() -> Iterator[None]:
    """The demo catalog, an empty cache (rate limits), and Celery tasks run in place: no
    broker in tests, so the rating task the API enqueues runs inline."""
    eager = {"task_always_eager": True, "task_eager_propagates": True}
    saved = {name: celery_app.conf.get(name) for name in eager}
    celery_app.conf.update(eager)
    cache.clear()
    load_demo_catalog()
    yield
    cache.clear()
    celery_app.conf.update(saved)


@pytest.fixture
def api_server(live_server: Any, http_api_environment: None) -> tuple[str, str]:
    """The live server's URL and a new API key's secret, in the API tests' environment."""
    # Django's test server listens with a backlog of 10 connections; 32 clients at once
    # would be reset by the kernel before the server sees them.
    live_server.thread.httpd.socket.listen(128)
    _, secret = api_key_create(name="backend")
    return live_server.url, secret


@pytest.fixture
def api(live_server: Any, http_api_environment: None) -> Api:
    return Api(
        base_url=live_server.url,
        all=api_key_create(name="backend", scopes=["ingest", "read", "write"])[1],
        read=api_key_create(name="dashboard", scopes=["read"])[1],
        write=api_key_create(name="admin", scopes=["write"])[1],
        ingest=api_key_create(name="gateway", scopes=["ingest"])[1],
    )
