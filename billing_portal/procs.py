"""Runs the Procfile's processes for ``make run`` and keeps them running.

    python -m billing_portal.procs [-f Procfile] [-c worker=2,...] [--stop-timeout 10]

Each ``name: command`` line of the Procfile runs (once, or as many times as ``-c``
says, as ``name.1``, ``name.2``, ...) in a process group of its own, its output
prefixed with the time and its name. A process that exits is restarted: 1 s
later, doubling per exit in a row up to 30 s so that a crash loop does not spin, and
from 1 s again once it has run for 30 s. The other processes, and the embedded
PostgreSQL bin/run started, are left alone. SIGINT (Ctrl-C), SIGTERM or SIGHUP stops
them all: SIGTERM to each program, then SIGKILL to its whole group once it exited or
the stop timeout passed (at once on a second Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
# A process that ran this long before it exited was not crash-looping.
STABLE_SECONDS = 30.0
TICK_SECONDS = 0.1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


@dataclass
class Process:
    name: str
    command: str
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    delay: float = FIRST_DELAY

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Output:
    """Whole lines on stdout from every thread, each prefixed like honcho's."""

    def __init__(self, names: list[str]) -> None:
        self._width = max(len(name) for name in [*names, "system"])
        self._lock = threading.Lock()

    def line(self, name: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self._lock:
            sys.stdout.write(f"{stamp} {name:<{self._width}} | {text}\n")
            sys.stdout.flush()

    def system(self, text: str) -> None:
        self.line("system", text)

    def pump(self, name: str, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                self.line(name, raw.decode(errors="replace").rstrip("\r\n"))


class Supervisor:
    def __init__(self, processes: list[Process], *, stop_timeout: float) -> None:
        self.processes = processes
        self.stop_timeout = stop_timeout
        self.output = Output([process.name for process in processes])
        self._stopping = threading.Event()
        self._hurry = False
        self._pumps: list[threading.Thread] = []

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        while not self._stopping.is_set():
            self._tend(time.monotonic())
            self._stopping.wait(TICK_SECONDS)
        self._stop_all()
        return 0

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        # A second Ctrl-C while stopping means: do not wait for them.
        self._hurry = self._stopping.is_set()
        self._stopping.set()

    def _tend(self, now: float) -> None:
        for process in self.processes:
            if process.popen is None:
                if now >= process.restart_at:
                    self._start(process)
            elif process.popen.poll() is not None:
                self._schedule_restart(process, now)

    def _start(self, process: Process) -> None:
        # exec: the process watched and signalled is the program, not a shell around it.
        process.popen = subprocess.Popen(  # noqa: S603  (commands come from our Procfile)
            ["/bin/sh", "-c", f"exec {process.command}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # PS (foreman's name for it): "worker.2", e.g. for a distinct Celery node name.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PS": process.name},
        )
        process.started_at = time.monotonic()
        assert process.popen.stdout is not None
        pump = threading.Thread(
            target=self.output.pump, args=(process.name, process.popen.stdout), daemon=True
        )
        pump.start()
        self._pumps = [*(p for p in self._pumps if p.is_alive()), pump]
        self.output.system(f"{process.name} started (pid {process.popen.pid})")

    def _schedule_restart(self, process: Process, now: float) -> None:
        assert process.popen is not None
        code = process.popen.returncode
        # Children it left behind (a prefork pool, gunicorn workers) would hold the
        # port or the queue that its replacement needs.
        _signal_group(process.popen.pid, signal.SIGKILL)
        ran = now - process.started_at
        if ran >= STABLE_SECONDS:
            process.delay = FIRST_DELAY
        self.output.system(
            f"{process.name} exited with {_describe(code)} after {ran:.1f} s; "
            f"restarting in {process.delay:g} s"
        )
        process.popen = None
        process.restart_at = now + process.delay
        process.delay = min(process.delay * 2, MAX_DELAY)

    def _stop_all(self) -> None:
        started = [process for process in self.processes if process.popen is not None]
        running = [process for process in started if process.running]
        self.output.system(f"stopping {', '.join(p.name for p in running) or 'nothing'}")
        for process in running:
            assert process.popen is not None
            # The program alone: gunicorn's master and celery's main process stop their
            # own children gracefully, and a child signalled directly would drop its work.
            process.popen.terminate()
        self._await_stopped(started, deadline=time.monotonic() + self.stop_timeout)
        for pump in self._pumps:
            pump.join(timeout=1)

    def _await_stopped(self, pending: list[Process], *, deadline: float) -> None:
        while pending:
            late = self._hurry or time.monotonic() >= deadline
            for process in [p for p in pending if late or not p.running]:
                self._finish(process)
            pending = [p for p in pending if p.popen is not None]
            if pending:
                time.sleep(TICK_SECONDS)

    def _finish(self, process: Process) -> None:
        assert process.popen is not None
        if process.running:
            self.output.system(f"{process.name} did not stop in time: killing it")
        # Also what a process that exited on its own left behind.
        _signal_group(process.popen.pid, signal.SIGKILL)
        code = process.popen.wait()
        process.popen = None
        self.output.system(f"{process.name} stopped: {_describe(code)}")


def _signal_group(pgid: int, signum: int) -> None:
    # The group is gone when its leader exited and left nothing behind.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _describe(code: int) -> str:
    if code >= 0:
        return f"code {code}"
    try:
        return f"code {code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"code {code}"


def read_procfile(path: Path) -> dict[str, str]:
    """The Procfile's commands by name."""
    commands: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PROCFILE_LINE.match(line.strip())
        if match is None or match.group(1) in commands:
            raise SystemExit(f"{path}:{number}: expected 'name: command' with a new name")
        commands[match.group(1)] = match.group(2)
    return commands


def parse_concurrency(text: str) -> dict[str, int]:
    """``worker=2,web=1`` (honcho's syntax): how many copies of each to run."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if not count.isdigit():
            raise argparse.ArgumentTypeError(f"expected name=N, not {item!r}")
        counts[name.strip()] = int(count)
    return counts


def processes_to_run(commands: dict[str, str], counts: dict[str, int]) -> list[Process]:
    unknown = sorted(set(counts) - set(commands))
    if unknown:
        raise SystemExit(f"not in the Procfile: {', '.join(unknown)}")
    return [
        Process(f"{name}.{number}", command)
        for name, command in commands.items()
        for number in range(1, counts.get(name, 1) + 1)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--procfile", type=Path, default=Path("Procfile"))
    parser.add_argument("-c", "--concurrency", type=parse_concurrency, default={})
    parser.add_argument("--stop-timeout", type=float, default=10.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    processes = processes_to_run(read_procfile(args.procfile), args.concurrency)
    if not processes:
        raise SystemExit(f"{args.procfile}: nothing to run")
    return Supervisor(processes, stop_timeout=args.stop_timeout).run()


if __name__ == "__main__":
    sys.exit(main())
