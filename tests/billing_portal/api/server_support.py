"""The product served by gunicorn in a subprocess (several worker processes, its own
database connections), and a TCP relay to PostgreSQL that a test can cut and restore."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests
from django.conf import settings
from django.db import connection

ROOT = Path(settings.BASE_DIR)


@dataclass
class Server:
    url: str
    access_log: Path
    log_from: int = 0  # where the test's requests start in the access log (bytes)

    def worker_pids(self) -> set[str]:
        """The gunicorn workers that answered the test's requests (the start-up probes
        left out), from the access log (pid first)."""
        return _pids(self.access_log, self.log_from)


def _pids(log: Path, start: int = 0) -> set[str]:
    with log.open("rb") as lines:
        lines.seek(start)
        return {line.split()[0].decode() for line in lines if line.strip()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def gunicorn(tmp_path: Path, *, database_url: str, workers: int, **env: str) -> Iterator[Server]:
    """gunicorn on a free loopback port, in local mode on ``database_url``."""
    port = free_port()
    log = tmp_path / "access.log"
    log.touch()
    environment = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}},
        "DEBUG": "true",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_DIR": str(tmp_path / "celery"),
        **env,
    }
    command = [
        sys.executable, "-m", "gunicorn", "billing_portal.wsgi",
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--access-logfile", str(log), "--access-logformat", "%(p)s %(s)s %(r)s",
        "--no-control-socket",  # its default path is shared by every gunicorn of the user
    ]  # fmt: skip
    output = tmp_path / "gunicorn.out"
    with output.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=sink, stderr=sink)
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}", process, output, log, workers)
        yield Server(f"http://127.0.0.1:{port}", log, log.stat().st_size)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_until_serving(
    url: str, process: subprocess.Popen[bytes], output: Path, log: Path, workers: int
) -> None:
    """Until every worker has answered: each loads the app after it is forked, and on a
    slow machine the first can take every request before the others are ready."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, output.read_text()
        with suppress(requests.ConnectionError):
            # An unknown API path: answered without the database.
            requests.get(f"{url}/api/v1/ping-unknown", timeout=5)
            if len(_pids(log)) >= workers:
                return
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not start {workers} workers:\n{output.read_text()}")


class DatabaseRelay:
    """Forwards TCP connections on a loopback port to the test database. ``cut`` closes
    the port and every relayed connection, as an outage would; ``restore`` reopens it."""

    def __init__(self) -> None:
        settings = connection.settings_dict
        host = settings.get("HOST") or settings.get("OPTIONS", {}).get("host", "")
        port = int(settings.get("PORT") or 5432)
        self._unix = host.startswith("/")
        self._target: str | tuple[str, int] = (
            f"{host}/.s.PGSQL.{port}" if self._unix else (host, port)
        )
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def database_url(self) -> str:
        settings = connection.settings_dict
        user, password = settings["USER"], settings.get("PASSWORD") or ""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{settings['NAME']}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            doomed, self._open = self._open, []
            if self._listener is not None:
                doomed.append(self._listener)
                self._listener = None
        for sock in doomed:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            family = socket.AF_UNIX if self._unix else socket.AF_INET
            server = socket.socket(family)
            server.connect(self._target)
            with self._lock:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
