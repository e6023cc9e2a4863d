"""The test suite's live server leaves no database session behind it."""

from __future__ import annotations

import time
from typing import Any

import requests
from django.db import connection


def _sessions_opened_since(started: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_start >= %s",
            [started],
        )
        return int(cursor.fetchone()[0])


def test_a_kept_alive_client_holds_no_database_session_between_requests(
    live_server: Any,
) -> None:
    # The server gives each HTTP connection a thread, and a kept-alive connection keeps
    # its thread. Were the thread to keep its database session until the client closed
    # (CONN_MAX_AGE), a client never closed would hold it past the tests, and the test
    # database could not be dropped at the end of the run.
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        started = cursor.fetchone()[0]
    with requests.Session() as client:
        answer = client.get(f"{live_server.url}/healthz", timeout=30)
        assert answer.status_code == 200, answer.text
        assert _sessions_opened_since(started) <= 1  # the request's own, closing
        deadline = time.monotonic() + 5
        while _sessions_opened_since(started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sessions_opened_since(started) == 0
