from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import time_machine

from tests.real_parts import CHROMIUM_ARGS, chromium_executable

if TYPE_CHECKING:
    from tests.metering.worker_support import Broker, StartWorker, Worker

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    # The network is blocked in tests: only this machine (loopback, Unix sockets) is reachable.
    if isinstance(address, tuple) and address[0] not in {"127.0.0.1", "::1", "localhost"}:
        raise RuntimeError(f"tests may not reach the network: {address!r}")
    return _real_connect(self, address)


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Iterator[time_machine.Traveller]:
    """The clock, stopped at the test module's ``START`` and moved by the test itself."""
    start = getattr(request.module, "START", None)
    if start is None:
        pytest.fail(f"{request.module.__name__} uses the clock: give it a START datetime")
    with time_machine.travel(start, tick=False) as traveller:
        yield traveller


@pytest.fixture(autouse=True, scope="session")
def _block_network() -> Iterator[None]:
    socket.socket.connect = _loopback_only  # type: ignore[method-assign,assignment]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


# Every test this process ran, with when (time.monotonic, which time_machine leaves
# alone): a session left on the test database is named with the test it was opened in.
_TESTS_RUN: list[tuple[float, float, str]] = []


@pytest.fixture(autouse=True)
def _test_times(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    _TESTS_RUN.append((started, time.monotonic(), request.node.nodeid))


def _test_at(moment: float) -> str:
    """The test running at ``moment`` (time.monotonic), or the last one started before."""
    before = [run for run in _TESTS_RUN if run[0] <= moment]
    if not before:
        return "before the first test"
    _, ended, nodeid = max(before)
    return nodeid if moment <= ended else f"after {nodeid}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test database; before it is dropped, a warning names any other
    session still on it, with this process's threads and the machine's other Python
    processes, so that the cause of "is being accessed by other users" can be read from
    the run that shows it. A connection only garbage in a reference cycle is collected
    first: that closes it, and it is no one's to report."""
    yield
    import gc
    import subprocess
    import threading
    import warnings

    from django.db import connection

    gc.collect()
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, application_name, client_addr, client_port, state, backend_start, "
            "state_change, left(query, 160), "
            "extract(epoch FROM clock_timestamp() - backend_start)::float8 "
            "FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        now = time.monotonic()
        others = [(*row[:-1], _test_at(now - row[-1])) for row in cursor.fetchall()]
    if others:
        threads = sorted(t.name for t in threading.enumerate())
        processes = subprocess.run(
            ["ps", "-eo", "pid,ppid,etimes,args", "--sort=pid"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
        python = [line[:160] for line in processes if "python" in line]
        warnings.warn(
            "other sessions on the test database before it is dropped (each with the test "
            f"it was opened in): {others}; "
            f"threads of this process (pid {os.getpid()}): {threads}; "
            f"Python processes: {python}",
            stacklevel=1,
        )


@pytest.fixture(scope="session")
def live_server(live_server: Any) -> Any:
    """pytest-django's live server, whose request threads close their database session
    after every request. Its server keeps HTTP connections alive, one thread each, and
    with CONN_MAX_AGE a thread keeps its database session open between requests: one
    whose client never closed its connection (a ``requests`` session left to the garbage
    collector) kept it open past the tests, and the test database could not be dropped
    ("is being accessed by other users"). The threads share the test connection's
    settings, so this reaches them."""
    from django.db import connections

    connections["default"].settings_dict["CONN_MAX_AGE"] = 0
    return live_server


# --- a real Celery worker (tests/metering/worker_support.py) ---------------------------


@pytest.fixture
def broker() -> Iterator[Broker]:
    from tests.metering.worker_support import broker_for_run
    from tests.real_parts import missing

    chosen = broker_for_run()
    try:
        with chosen.connection() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        missing(f"a Celery broker at {chosen.url}", f"start it or set CELERY_BROKER_URL ({exc})")
    yield chosen
    chosen.cleanup()


@pytest.fixture
def start_worker(transactional_db: None, broker: Broker, tmp_path: Path) -> Iterator[StartWorker]:
    from tests.metering.worker_support import Worker

    started: list[Worker] = []

    def start() -> Worker:
        number = len(started) + 1
        worker = Worker(broker, tmp_path / f"worker-{number}.log", f"{broker.queue}-w{number}")
        started.append(worker)
        return worker.start()

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import summary
    from tests.real_parts import skipped_for_missing_parts

    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # an xdist worker: the controller prints (pytest_testnodedown)
        output["summary"] = dict(summary.sections)
        output["missing_parts"] = list(skipped_for_missing_parts)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    from tests import summary
    from tests.real_parts import skipped_for_missing_parts

    output = getattr(node, "workeroutput", {})
    for section, lines in output.get("summary", {}).items():
        summary.sections[section].extend(lines)
    skipped_for_missing_parts.extend(output.get("missing_parts", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests import summary
    from tests.real_parts import skipped_for_missing_parts

    for section, lines in sorted(summary.sections.items()):
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.line(line)
    if skipped_for_missing_parts:
        terminalreporter.section("REAL PARTS MISSING: these tests proved nothing", red=True)
        for reason in sorted(set(skipped_for_missing_parts)):
            count = skipped_for_missing_parts.count(reason)
            terminalreporter.line(f"{count} skipped: {reason}", red=True)
        terminalreporter.line("With CI=true each of them fails instead.", red=True)


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A page of Debian's headless chromium at 1280 x 900 (browser tests)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test
    # makes between browser steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        yield context.new_page()
        context.close()
        browser.close()
        _close_this_contexts_connections()


def _close_this_contexts_connections() -> None:
    """Django keeps a connection per context (asgiref's Local), and a test run beside
    Playwright's sync API (an event loop in this thread) opens one of its own, which
    outlived the test and kept the test database from being dropped ("is being
    accessed by other users"). Closed here, unless a test transaction still holds it."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
