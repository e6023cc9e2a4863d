"""Process faults against the real running product: nothing accepted is lost or charged
twice, and rating resumes.

Each scenario loads the stack of ``conftest.stack`` (gunicorn, two Celery workers, beat,
PostgreSQL, a broker: see ``stack.py``) with batches of events from a client that resends
what failed, strikes it with one fault while it works, and then checks, from the
database alone: every event answered ``accepted`` is stored once and charged once at
the catalog's price, every event whose answer was lost answers ``duplicate`` when sent
again, rating resumed within 30 s, and ``manage.py reconcile`` passes. Each prints a
``FAULT <scenario>: ...`` line with its figures (docs/reliability.md keeps one run's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.faults.stack import (
    Load,
    Proc,
    Stack,
    StackError,
    assert_nothing_lost_or_doubled,
    run_scenario,
    unused_redis_url,
)
from tests.metering.worker_support import wait_until
from tests.real_parts import missing

# `make test` runs every test; `slow` is the registered marker for tests like these.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

Prices = dict[tuple[str, str], tuple[Decimal, Decimal]]
# The pause a supervisor leaves before starting a replacement.
RESTART_DELAY = 1.0
CATCH_TIMEOUT = 15.0


def _filesystem(stack: Stack) -> Stack:
    stack.use_broker("filesystem://")
    return stack


def _catch_worker_mid_rating(stack: Stack, application_names: list[str]) -> tuple[str, int]:
    """Wait (polling every few ms) for a worker session inside a write transaction."""
    return wait_until(
        lambda: stack.worker_in_transaction(application_names),
        timeout=CATCH_TIMEOUT,
        what="a worker inside a rating transaction",
        interval=0.002,
    )


def _wait_rolled_back(stack: Stack, backend: int, notes: list[str]) -> None:
    # The server ends the session of a dead client and rolls its transaction back: the
    # claimed queue rows come back for the next worker.
    wait_until(
        lambda: not stack.backend_alive(backend),
        timeout=10,
        what=f"backend {backend} of the killed process to end",
    )
    notes.append(f"its backend {backend} ended, transaction rolled back")


def test_a_worker_killed_while_rating_is_replaced_and_nothing_is_lost(
    stack: Stack, prices: Prices, record_figures: Any
) -> None:
    stack = _filesystem(stack)
    restarted_workers: list[str] = []

    def kill_one(stack: Stack, load: Load, notes: list[str]) -> datetime:
        names = {f"faults-{w.name}": w for w in stack.workers()}
        application, backend = _catch_worker_mid_rating(stack, list(names))
        worker = names[application]
        killed = time.monotonic()
        worker.kill9()
        notes.append(f"killed {worker.name} (pid {worker.pid}) inside a rating transaction")
        _wait_rolled_back(stack, backend, notes)
        time.sleep(max(0.0, RESTART_DELAY - (time.monotonic() - killed)))
        worker.start()
        restarted = datetime.now(UTC)
        started = time.monotonic()
        worker.wait_ready()
        notes.append(f"replacement ready {time.monotonic() - started:.1f} s after its start")
        restarted_workers.append(worker.name)
        return restarted

    def replacement_figures(notes: list[str]) -> None:
        # The other worker rates meanwhile; this says when the new process took part.
        for name in restarted_workers:
            seconds = stack.procs[name].first_rating_s()
            shown = "no batch" if seconds is None else f"its first batch {seconds:.1f} s"
            notes.append(f"{name}'s replacement finished {shown} after its start")

    outcome = run_scenario(stack, "worker-killed", kill_one, prices, epilogue=replacement_figures)
    record_figures(outcome.figures)
    assert_nothing_lost_or_doubled(outcome)
    assert all(worker.alive for worker in stack.workers())


def test_both_workers_killed_at_once_then_restarted_rate_the_backlog(
    stack: Stack, prices: Prices, record_figures: Any
) -> None:
    stack = _filesystem(stack)

    def kill_both(stack: Stack, load: Load, notes: list[str]) -> datetime:
        workers = stack.workers()
        names = [f"faults-{w.name}" for w in workers]
        _catch_worker_mid_rating(stack, names)
        killed = time.monotonic()
        for worker in workers:
            os.killpg(worker.pid, signal.SIGKILL)
        for worker in workers:
            worker.kill9()
        notes.append(f"killed {', '.join(w.name for w in workers)} at once")
        # Events keep arriving with no worker running: the backlog grows meanwhile.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - killed)))
        backlog = stack.queued(load.customers)
        for worker in workers:
            worker.start()
        restarted = datetime.now(UTC)
        for worker in workers:
            worker.wait_ready()
        notes.append(f"{backlog} events queued when the workers were restarted")
        return restarted

    def replacement_figures(notes: list[str]) -> None:
        for worker in stack.workers():
            seconds = worker.first_rating_s()
            shown = "no batch" if seconds is None else f"its first batch {seconds:.1f} s"
            notes.append(f"new {worker.name} finished {shown} after its start")

    outcome = run_scenario(
        stack, "both-workers-killed", kill_both, prices, epilogue=replacement_figures
    )
    record_figures(outcome.figures)
    assert_nothing_lost_or_doubled(outcome)


def test_postgres_killed_and_restarted_web_and_workers_recover_on_their_own(
    stack: Stack, prices: Prices, record_figures: Any
) -> None:
    stack = _filesystem(stack)
    stack.ensure_running()
    before = {name: (proc.pid, proc.starts) for name, proc in stack.procs.items()}

    def kill_postgres(stack: Stack, load: Load, notes: list[str]) -> datetime:
        _catch_worker_mid_rating(stack, [f"faults-{w.name}" for w in stack.workers()])
        killed = time.monotonic()
        pid = stack.pg.kill9()
        notes.append(f"killed the postmaster (pid {pid}) with a rating transaction open")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - killed)))
        stack.pg.start()
        notes.append(f"PostgreSQL down {time.monotonic() - killed:.1f} s")
        return datetime.now(UTC)

    outcome = run_scenario(stack, "postgres-killed", kill_postgres, prices)
    record_figures(outcome.figures)
    assert_nothing_lost_or_doubled(outcome)
    # While the database is down the API says so (503, retry later), never 500.
    assert set(outcome.load.failures) <= {"HTTP 503", "connection error"}, outcome.load.failures
    # Recovered by themselves: the same processes, none restarted by the harness.
    after = {name: (proc.pid, proc.starts) for name, proc in stack.procs.items()}
    assert after == before
    dead = [name for name, proc in stack.procs.items() if not proc.alive]
    assert dead == [], {name: stack.procs[name].log_tail() for name in dead}


def _one_message(queue: Path) -> bytes | None:
    for path in sorted(queue.glob("*.msg")):
        with contextlib.suppress(OSError):
            content = path.read_bytes()
            if content:
                return content
    return None


def _message_name() -> str:
    # kombu's own naming: a millisecond clock first, so the files sort into the queue.
    return f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.celery.msg"


def _set_aside(stack: Stack) -> set[str]:
    """The message files the broker moved to ``bad/`` because it could not read them."""
    bad = stack.broker_dir / "bad"
    return {path.name for path in bad.iterdir()} if bad.is_dir() else set()


def _exited(worker: Proc) -> Callable[[], bool]:
    return lambda: not worker.alive


def test_broker_files_deleted_or_corrupted_lose_no_event(
    stack: Stack, prices: Prices, record_figures: Any
) -> None:
    stack = _filesystem(stack)
    corrupt_names: list[str] = []

    def break_the_queue(stack: Stack, load: Load, notes: list[str]) -> datetime:
        queue = stack.queue_dir
        sample = wait_until(
            lambda: _one_message(queue), timeout=CATCH_TIMEOUT, what="a message file to copy"
        )
        deleted = 0
        for path in queue.glob("*.msg"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
        corrupt = [queue / _message_name(), queue / _message_name()]
        corrupt_names.extend(path.name for path in corrupt)
        corrupt[0].write_bytes(b"")
        corrupt[1].write_bytes(sample[: len(sample) // 2])
        notes.append(
            f"deleted {deleted} message files, wrote an empty one and a copy of a real one "
            f"cut to {len(sample) // 2} of {len(sample)} bytes"
        )
        wait_until(
            lambda: not any(path.exists() for path in corrupt),
            timeout=CATCH_TIMEOUT,
            what="the workers to take the corrupt files",
        )
        # Should a worker die on a file, it logs why at once and takes a moment more to
        # exit: wait for that, so that the figures count from the supervisor's restart.
        time.sleep(1.0)
        for worker in stack.workers():
            if "Unrecoverable error" in worker.log():
                exiting = time.monotonic()
                wait_until(_exited(worker), timeout=30, what=f"{worker.name} to exit")
                notes.append(f"{worker.name} took {time.monotonic() - exiting:.1f} s more to exit")
        notes.append(f"{len(_set_aside(stack))} file(s) set aside in bad/")
        return datetime.now(UTC)

    # A worker that dies on a corrupt file is restarted as a supervisor would, so that
    # the events' checks below still say whether anything was lost; the death itself
    # then fails the test (billing_portal.broker promises the worker carries on).
    outcome = run_scenario(
        stack, "broker-files-deleted-or-corrupt", break_the_queue, prices, supervise=True
    )
    record_figures(outcome.figures)
    assert_nothing_lost_or_doubled(outcome)
    assert outcome.worker_deaths == [], outcome.worker_deaths
    assert set(corrupt_names) <= _set_aside(stack), (corrupt_names, _set_aside(stack))


def test_a_prefork_pool_child_killed_on_redis_is_replaced_by_its_worker(
    stack: Stack, prices: Prices, record_figures: Any
) -> None:
    if shutil.which("ss") is None:
        # It pairs each pool child with its database session (see unix_socket_peers).
        missing("the ss command", "install iproute2 (apt-get install iproute2)")
    # Claims an empty database (a key in it); the fixture empties it again at the end.
    url = unused_redis_url()
    if url is None:
        missing(
            "Redis at 127.0.0.1:6379 (with an empty database)",
            "start it: redis-server --daemonize yes --bind 127.0.0.1",
        )
    stack.use_broker(url)
    stack.ensure_running()
    main = stack.procs["wp"]
    main_pid, starts = main.pid, main.starts
    killed_children: list[int] = []

    def kill_child(stack: Stack, load: Load, notes: list[str]) -> datetime:
        children = {c.pid for c in psutil.Process(main.pid).children()}
        assert len(children) == 2, children
        owners = wait_until(
            lambda: stack.backend_owners("faults-wp", children) or None,
            timeout=CATCH_TIMEOUT,
            what="the pool children's database sessions",
        )
        deadline = time.monotonic() + CATCH_TIMEOUT
        while True:
            caught = stack.worker_in_transaction(["faults-wp"])
            if caught is not None:
                if caught[1] in owners:
                    break
                # A session opened since the map was made (a new connection).
                owners = stack.backend_owners("faults-wp", children)
            if time.monotonic() > deadline:
                raise StackError("no pool child caught inside a rating transaction")
            time.sleep(0.002)
        child = owners[caught[1]]
        os.kill(child, signal.SIGKILL)
        killed_children.append(child)
        notes.append(f"killed pool child {child} inside the transaction of backend {caught[1]}")
        _wait_rolled_back(stack, caught[1], notes)
        # The worker's main process forks the replacement: no restart from outside.
        replaced = wait_until(
            lambda: len({c.pid for c in psutil.Process(main.pid).children()} - children) == 1,
            timeout=30,
            what="the worker to fork a new pool child",
        )
        assert replaced
        return datetime.now(UTC)

    outcome = run_scenario(stack, "pool-child-killed-redis", kill_child, prices)
    record_figures(outcome.figures)
    assert_nothing_lost_or_doubled(outcome)
    assert (main.alive, main.pid, main.starts) == (True, main_pid, starts)
    children_now = psutil.Process(main.pid).children()
    assert len(children_now) == 2, children_now
    # The worker saw its child die (and, acks_late with reject_on_worker_lost, put the
    # task back on the queue).
    (child,) = killed_children
    assert f"pid:{child} exited with 'signal 9 (SIGKILL)'" in main.log(), main.log_tail()
