"""The per-key rate limit holds exactly across processes: gunicorn with two worker
processes, hit concurrently, lets exactly the limit through per key and window."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from billing_portal.api.models import ApiKeyRateWindow
from plans.apikeys import api_key_create
from tests.billing_portal.api.server_support import gunicorn
from tests.dburl import database_url_for_subprocess
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 12
WINDOW = 60


def _wait_for_a_fresh_window(needed: float) -> None:
    # A burst that straddles two windows may rightly get twice the limit through.
    left = WINDOW - time.time() % WINDOW
    if left < needed:
        time.sleep(left + 0.2)


def test_the_limit_holds_exactly_across_worker_processes(tmp_path: Path) -> None:
    customer("acme")
    key, secret = api_key_create(name="shared", scopes=["read"])
    _, other = api_key_create(name="other", scopes=["read"])

    with gunicorn(
        tmp_path,
        database_url=database_url_for_subprocess(),
        workers=2,
        API_RATE_LIMIT=f"{LIMIT}/minute",
    ) as server:

        def get(secret: str) -> requests.Response:
            return requests.get(
                f"{server.url}/api/v1/customers/acme",
                headers={"Authorization": f"Bearer {secret}"},
                timeout=30,
            )

        _wait_for_a_fresh_window(needed=20)
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(get, [secret] * (LIMIT * 6)))
        other_answer = get(other)
        pids = server.worker_pids()

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: LIMIT, 429: LIMIT * 5}, statuses
    assert len(pids) == 2, "both worker processes should have answered"
    for refused in (r for r in responses if r.status_code == 429):
        assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert other_answer.status_code == 200
    window = ApiKeyRateWindow.objects.get(api_key=key)
    assert window.count == LIMIT * 6
    assert window.window_start % WINDOW == 0


def test_a_new_window_starts_the_count_again_and_drops_the_old_one(tmp_path: Path) -> None:
    customer("acme")
    key, secret = api_key_create(name="shared", scopes=["read"])
    _, warm_up = api_key_create(name="warm-up", scopes=["read"])
    headers = {"Authorization": f"Bearer {secret}"}

    with gunicorn(
        tmp_path, database_url=database_url_for_subprocess(), workers=2, API_RATE_LIMIT="2/second"
    ) as server:
        url = f"{server.url}/api/v1/customers/acme"
        for _ in range(4):  # both workers connected to the database
            requests.get(url, headers={"Authorization": f"Bearer {warm_up}"}, timeout=30)
        _wait_for_a_fresh_window_of_a_second()
        first = [requests.get(url, headers=headers, timeout=30).status_code for _ in range(3)]
        time.sleep(1.1)
        later = requests.get(url, headers=headers, timeout=30).status_code

    assert first == [200, 200, 429]
    assert later == 200
    assert ApiKeyRateWindow.objects.filter(api_key=key).count() == 1


def _wait_for_a_fresh_window_of_a_second() -> None:
    time.sleep(1 - time.time() % 1 + 0.01)
