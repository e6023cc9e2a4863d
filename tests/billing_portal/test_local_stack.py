"""make run's supervisor (billing_portal.procs): a process that dies is restarted with
back-off while the others keep running; a stop signal stops every process it started.

Each test runs ``python -m billing_portal.procs`` in a session of its own, with its
output in a file, and reads the PIDs it started from its ``started (pid N)`` lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.metering.worker_support import WorkerError, database_url_for, wait_until

PYTHON = shlex.quote(sys.executable)
STOP_TIMEOUT = 15.0


class Supervisor:
    def __init__(self, procfile: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = procfile.with_suffix(".log")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "billing_portal.procs", "-f", str(procfile), *args],
                cwd=settings.BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        """The PID of each start of ``name``, in order."""
        pattern = rf"system +\| {re.escape(name)} started \(pid (\d+)\)"
        return [int(pid) for pid in re.findall(pattern, self.output())]

    def all_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"started \(pid (\d+)\)", self.output())]

    def wait(self, condition: Callable[[], Any], *, what: str, timeout: float = 30.0) -> Any:
        """wait_until, with the supervisor's output when it times out."""
        try:
            return wait_until(condition, timeout=timeout, what=what)
        except WorkerError as exc:
            raise AssertionError(f"{exc}; the supervisor's output:\n{self.output()}") from None

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 30.0) -> list[str]:
        """The first groups of ``pattern`` in the output, once it matched ``count`` times."""

        def found() -> list[str] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the supervisor exited:\n{self.output()}")
            matches = re.findall(pattern, self.output())
            return matches if len(matches) >= count else None

        result: list[str] = self.wait(found, what=f"{count} x {pattern!r}", timeout=timeout)
        return result

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def kill_everything(self) -> None:
        """After a failed test: nothing it started may outlive it."""
        for pid in [self.process.pid, *self.all_pids()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def supervise() -> Iterator[Callable[..., Supervisor]]:
    started: list[Supervisor] = []

    def start(procfile: Path, *args: str, env: dict[str, str] | None = None) -> Supervisor:
        started.append(Supervisor(procfile, *args, env=env))
        return started[-1]

    yield start
    for supervisor in started:
        if supervisor.process.poll() is None:
            supervisor.kill_everything()


def _stat(pid: int) -> list[str] | None:
    """State, parent, group, ... of a process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces.
    return stat.rsplit(")", 1)[-1].split()


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting for init to reap it."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _group_alive(pgid: int) -> bool:
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return any(_alive(pid) and (_stat(pid) or ["", "", ""])[2] == str(pgid) for pid in pids)


def _procfile(tmp_path: Path, lines: dict[str, str]) -> Path:
    path = tmp_path / "Procfile"
    path.write_text("".join(f"{name}: {command}\n" for name, command in lines.items()))
    return path


@pytest.mark.timeout(60)
def test_it_restarts_a_crashing_process_with_back_off_and_leaves_the_others(
    tmp_path: Path, supervise: Callable[..., Supervisor]
) -> None:
    procfile = _procfile(
        tmp_path,
        {
            "steady": f'{PYTHON} -c \'import os, time; print(os.environ["PS"], flush=True); '
            "time.sleep(120)'",
            "family": f"{PYTHON} -c 'import subprocess, time; "
            'child = subprocess.Popen(["sleep", "120"]); '
            'print("grandchild", child.pid, flush=True); time.sleep(120)\'',
            "crash": f"{PYTHON} -c 'import time; time.sleep(0.5); raise SystemExit(3)'",
        },
    )
    began = time.monotonic()
    supervisor = supervise(procfile, "-c", "steady=2")

    delays = supervisor.wait_for(
        r"crash\.1 exited with code 3 after [\d.]+ s; restarting in (\d+) s", count=3
    )
    took = time.monotonic() - began
    assert delays[:3] == ["1", "2", "4"]
    # Three runs of 0.5 s and waits of 1 and 2 s: it waited, it did not spin.
    assert took > 4.0
    assert 3 <= len(supervisor.pids("crash.1")) <= 4
    (grandchild,) = map(int, supervisor.wait_for(r"family\.1 +\| grandchild (\d+)"))
    steady = [*supervisor.pids("steady.1"), *supervisor.pids("steady.2")]
    family = supervisor.pids("family.1")
    assert len(steady) == 2 and len(family) == 1, supervisor.output()
    assert all(_alive(pid) for pid in [*steady, *family, grandchild])
    supervisor.wait_for(r"steady\.2 +\| steady\.2")

    assert supervisor.stop(signal.SIGINT) == 0
    leftovers = [pid for pid in [*supervisor.all_pids(), grandchild] if _alive(pid)]
    assert not leftovers, supervisor.output()


@pytest.mark.timeout(60)
def test_it_kills_a_process_that_ignores_sigterm_after_the_stop_timeout(
    tmp_path: Path, supervise: Callable[..., Supervisor]
) -> None:
    procfile = _procfile(
        tmp_path,
        {
            "stubborn": f"{PYTHON} -c 'import signal, time; "
            'signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ignoring", flush=True); '
            "time.sleep(120)'"
        },
    )
    supervisor = supervise(procfile, "--stop-timeout", "1")
    supervisor.wait_for(r"stubborn\.1 +\| ignoring")

    began = time.monotonic()
    assert supervisor.stop(signal.SIGTERM) == 0
    assert 1.0 <= time.monotonic() - began < 10.0
    assert "stubborn.1 did not stop in time: killing it" in supervisor.output()
    assert not any(_alive(pid) for pid in supervisor.all_pids())


# --- the real Procfile ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            status: int = response.status
            return status
    except OSError:
        return None


def _stack_procfile(tmp_path: Path) -> Path:
    """The product's Procfile, with beat's schedule file in this test's folder so that it
    never shares one with a `make run` of the same checkout."""
    lines = (Path(settings.BASE_DIR) / "Procfile").read_text().splitlines()
    schedule = tmp_path / "beat-schedule"
    lines = [
        f"{line} --schedule {schedule}" if line.startswith("beat:") else line for line in lines
    ]
    path = tmp_path / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stack_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        # What bin/run does: the Procfile names the environment's gunicorn and celery.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url_for(connection.settings_dict, f"stack-{uuid.uuid4().hex[:8]}"),
        "DEBUG": "true",
        "CELERY_BROKER_URL": "filesystem://",
        # A broker folder of its own: its worker takes no one else's tasks.
        "CELERY_BROKER_DIR": str(tmp_path / "broker"),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "2",
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_the_stack_restarts_a_killed_worker_and_web_while_the_rest_run_on(
    tmp_path: Path, supervise: Callable[..., Supervisor]
) -> None:
    port = _free_port()
    supervisor = supervise(_stack_procfile(tmp_path), env=_stack_env(tmp_path, port))
    supervisor.wait(lambda: _healthz(port) == 200, what="web to answer /healthz", timeout=40)
    supervisor.wait_for(r"worker\.1@\S+ ready\.", timeout=40)
    (web,), (worker,), (beat,) = (supervisor.pids(n) for n in ("web.1", "worker.1", "beat.1"))

    os.kill(worker, signal.SIGKILL)
    assert _healthz(port) == 200
    supervisor.wait_for(r"worker\.1 exited with code -9 \(SIGKILL\)")
    assert _healthz(port) == 200
    supervisor.wait_for(r"worker\.1@\S+ ready\.", count=2, timeout=40)
    assert supervisor.pids("worker.1")[1] != worker and not _alive(worker)
    assert supervisor.pids("web.1") == [web] and supervisor.pids("beat.1") == [beat]

    os.kill(web, signal.SIGKILL)
    supervisor.wait_for(r"web\.1 started \(pid \d+\)", count=2)
    # Its gunicorn workers went with it: none of them holds the port or answers.
    assert not _group_alive(web)
    supervisor.wait(lambda: _healthz(port) == 200, what="the new web to answer", timeout=40)
    assert len(supervisor.pids("worker.1")) == 2 and supervisor.pids("beat.1") == [beat]

    assert supervisor.stop(signal.SIGINT) == 0
    assert not any(_alive(pid) for pid in supervisor.all_pids()), supervisor.output()
