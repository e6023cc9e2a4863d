from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import CommandError, call_command
from django.db import connection

from plans.apikeys import api_key_authenticate
from plans.models import ApiKey
from tests.dburl import database_url_for_subprocess

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def _create(*args: str) -> str:
    out = StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue()


def _row_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM plans_apikey t")
        return " ".join(row[0] for row in cursor.fetchall())


def test_it_prints_the_key_on_the_last_line_and_stores_only_its_hash() -> None:
    output = _create("--name", "ingest service")
    secret = output.splitlines()[-1]
    api_key = ApiKey.objects.get()
    assert api_key.name == "ingest service"
    assert api_key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(api_key.prefix)
    # The prefix is the one part kept in clear; nothing after it is in any column.
    assert secret[len(api_key.prefix) :] not in _row_text()
    assert secret not in _row_text()


def test_it_grants_every_scope_by_default() -> None:
    _create("--name", "all")
    assert ApiKey.objects.get().scopes == ["ingest", "read", "write"]


def test_it_takes_the_scopes_given() -> None:
    _create("--name", "reader", "--scopes", "read, ingest")
    assert ApiKey.objects.get().scopes == ["ingest", "read"]


@pytest.mark.parametrize("scopes", ["read,admin", ""])
def test_it_refuses_a_bad_scope_naming_the_allowed_ones(scopes: str) -> None:
    with pytest.raises(CommandError, match="ingest, read, write"):
        _create("--name", "x", "--scopes", scopes)
    assert not ApiKey.objects.exists()


def test_each_key_is_different() -> None:
    first = _create("--name", "a").splitlines()[-1]
    second = _create("--name", "b").splitlines()[-1]
    assert first != second


@pytest.mark.urls("tests.billing_portal.api.api_test_urls")
def test_the_printed_key_authenticates_over_http(live_server: Any) -> None:
    secret = _create("--name", "http", "--scopes", "read").splitlines()[-1]
    response = requests.get(
        f"{live_server.url}/api/test/read",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=15,
    )
    assert response.status_code == 200
    assert response.json()["key"] == "http"


def test_it_works_from_the_command_line() -> None:
    # In a process of its own, so anything else printed to stdout would come last.
    env = {**os.environ, "DATABASE_URL": database_url_for_subprocess(), "DEBUG": "true"}
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "--name", "cli"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    secret = result.stdout.splitlines()[-1]
    api_key = api_key_authenticate(secret=secret)
    assert api_key is not None
    assert api_key.name == "cli"
