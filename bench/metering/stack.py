"""The services under test: gunicorn and a Celery worker, each a process group of its own,
on the benchmark database, with a broker this run claims."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from bench import env
from bench.metering.clients import HOST, http
from bench.metering.cpu import CpuMeter, descendants

REDIS_PORT = 6379
OWNER_KEY = "bench:metering:owner"


@dataclass
class Broker:
    url: str
    description: str
    redis_db: int | None = None

    def release(self) -> None:
        """Drop what this run left on its Redis database (it owned the database)."""
        if self.redis_db is None:
            return
        import redis

        client: Any = redis.Redis(host=HOST, port=REDIS_PORT, db=self.redis_db, socket_timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            keys = [k for k in client.scan_iter(count=1000)]
            if keys:
                client.delete(*keys)
        client.close()


def _claim_redis_db() -> Broker | None:
    """The first empty Redis database, from 15 down, that this run can mark as its own."""
    import redis

    for db in range(15, 0, -1):
        client: Any = redis.Redis(host=HOST, port=REDIS_PORT, db=db, socket_timeout=2)
        try:
            claimed = client.dbsize() == 0 and client.set(
                OWNER_KEY, str(os.getpid()), nx=True, ex=7200
            )
        finally:
            client.close()
        if claimed:
            return Broker(
                f"redis://{HOST}:{REDIS_PORT}/{db}",
                f"Redis {HOST}:{REDIS_PORT}, database {db} (claimed empty for the run)",
                db,
            )
    return None


def pick_broker(choice: str) -> Broker:
    """Redis on this machine when it answers (an empty database this run claims, so no
    other worker takes the benchmark's tasks), else kombu's file-system transport."""
    if choice in ("auto", "redis"):
        try:
            if claimed := _claim_redis_db():
                return claimed
        except Exception as exc:
            if choice == "redis":
                raise RuntimeError(f"no usable Redis database at {HOST}:{REDIS_PORT}") from exc
    return Broker("filesystem://", "kombu file-system transport (var/celery, polled every 1 s)")


def database_url(settings: dict[str, Any]) -> str:
    """The benchmark database as a DATABASE_URL for the services."""
    user = quote(str(settings.get("USER") or ""), safe="")
    if settings.get("PASSWORD"):
        user += ":" + quote(str(settings["PASSWORD"]), safe="")
    host = quote(str(settings.get("HOST") or ""), safe="")
    if settings.get("PORT"):
        host += f":{settings['PORT']}"
    # prepare_threshold is not a libpq parameter: the services' settings set it.
    options = {
        k: str(v) for k, v in (settings.get("OPTIONS") or {}).items() if k != "prepare_threshold"
    }
    query = f"?{urlencode(options)}" if options else ""
    return f"postgres://{user}@{host}/{quote(str(settings['NAME']), safe='')}{query}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Service:
    """A process group of our own: the command and everything it forks."""

    def __init__(self, name: str, command: list[str], environ: dict[str, str], log: Path) -> None:
        self.name = name
        self.command = command
        self.environ = environ
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=env.ROOT,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> set[int]:
        return descendants({self.process.pid}) if self.running and self.process else set()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the group (graceful), SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        pgid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.process.wait(timeout=10)
        _reap_group(pgid)
        self.process = None


def _reap_group(pgid: int) -> None:
    """Children outlive the leader by a moment: wait for the group, then kill what is left."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def shared_cache_url(broker: Broker, logs: Path) -> str:
    """The broker's Redis database when there is one, else a cache in files."""
    return broker.url if broker.redis_db is not None else f"file://{logs / 'cache'}"


class Services:
    """gunicorn (the Procfile's command line, 2 workers x 8 threads unless told; the
    authorization figure restarts it in other layouts) and, when asked, a worker and
    beat."""

    def __init__(self, args: argparse.Namespace, database: dict[str, Any], broker: Broker) -> None:
        self.port = free_port()
        self.logs = Path(tempfile.mkdtemp(prefix="bench-metering-"))
        self.node = f"bench-metering-{os.getpid()}"
        self.environ = self._environ(args, database, broker)
        self.web_layout = (args.web_workers, args.web_threads)
        self.web = Service(
            "gunicorn",
            self._web_command(*self.web_layout),
            self.environ,
            self.logs / "gunicorn.log",
        )
        self.worker = Service(
            "celery worker",
            [
                *[sys.executable, "-m", "celery", "-A", "billing_portal", "worker"],
                *["--loglevel", "INFO", "--concurrency", str(args.worker_concurrency)],
                *["--hostname", f"{self.node}@%h"],
                *["--without-gossip", "--without-mingle", "--without-heartbeat"],
            ],
            self.environ,
            self.logs / "worker.log",
        )

        self.beat = Service(
            "celery beat",
            [
                *[sys.executable, "-m", "celery", "-A", "billing_portal", "beat"],
                *["--loglevel", "INFO", "--schedule", str(self.logs / "celerybeat-schedule")],
            ],
            self.environ,
            self.logs / "beat.log",
        )

    def _web_command(self, workers: int, threads: int) -> list[str]:
        """The Procfile's gunicorn line with ``workers`` processes of ``threads`` threads
        (one thread: gunicorn's sync worker; more: its threaded worker)."""
        return [
            *[sys.executable, "-m", "gunicorn", "billing_portal.wsgi"],
            *["--bind", f"{HOST}:{self.port}", "--workers", str(workers)],
            *["--threads", str(threads)],
            *["--access-logfile", "-", "--no-control-socket"],
        ]

    def _environ(
        self, args: argparse.Namespace, database: dict[str, Any], broker: Broker
    ) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
            "DATABASE_URL": database_url(database),
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": f"{HOST},localhost",
            "SECURE_SSL_REDIRECT": "false",
            "API_RATE_LIMIT": args.rate_limit,
            "CELERY_BROKER_URL": broker.url,
            # Shared by web and worker, as in production: it holds the rate limiter's
            # counters and the flag that stops ingest sending a rating task when one waits.
            "CACHE_URL": shared_cache_url(broker, self.logs),
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "PYTHONUNBUFFERED": "1",
        }

    def start_web(self) -> None:
        self.web.start()
        self.web.wait_until(lambda: http(self.port, "GET", "/healthz", "-")[0] == 200, 90)

    def restart_web(self, workers: int, threads: int) -> None:
        """gunicorn stopped and started again as ``workers`` x ``threads`` on the same
        port; back once every worker has loaded the application."""
        if (workers, threads) == self.web_layout and self.web.running:
            return
        self.web.stop()
        self.web.command = self._web_command(workers, threads)
        self.web_layout = (workers, threads)
        self.start_web()
        self._web_settled(workers)

    def _web_settled(self, workers: int, timeout: float = 180.0) -> None:
        """Wait for the master and all its workers, and for their start-up (each worker
        loads Django itself) to be over: under a tenth of a CPU in half a second."""
        meter = CpuMeter(lambda: {"web": self.web.pids()})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = meter.snapshot()
            time.sleep(0.5)
            use = CpuMeter.between(before, meter.snapshot())
            if len(self.web.pids()) >= workers + 1 and use.groups.get("web", 0.0) < 0.05:
                return
        raise RuntimeError(f"gunicorn ({workers} workers) not settled after {timeout:g} s")

    def start_worker(self) -> None:
        """Start the worker; back once it logs that it is ready (this start's line: the
        log goes on from any earlier start)."""
        offset = len(self.worker.log_text())
        self.worker.start()
        ready = re.compile(rf"{re.escape(self.node)}@\S+ ready\.")
        self.worker.wait_until(lambda: ready.search(self.worker.log_text(), offset) is not None, 90)

    def start_beat(self) -> None:
        """Start beat (the Procfile's third process), its schedule file with the logs;
        back once it has started."""
        if self.beat.running:
            return
        offset = len(self.beat.log_text())
        self.beat.start()
        self.beat.wait_until(lambda: "beat: Starting" in self.beat.log_text()[offset:], 90)

    def stop_beat(self) -> None:
        self.beat.stop()

    def stop(self) -> None:
        self.beat.stop()
        self.worker.stop()
        self.web.stop()

    def drop_logs(self) -> None:
        """After a clean run the services' logs are of no further use."""
        shutil.rmtree(self.logs, ignore_errors=True)
