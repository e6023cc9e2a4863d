"""Metering over HTTP, against a gunicorn and a Celery worker that the benchmark starts.

Three figures, targets from the performance notes:

1. durable ingest through ``POST /api/v1/events``: 1000 events per request, every
   identifier new (the unique index that deduplicates decides each one), several client
   processes in a closed loop for a fixed time. Next to it, in the same run, a raw
   ``COPY`` of the very rows the API stored into a scratch copy of the events table, and
   the same figure with 1x, 10x and 100x rows already in the table. Target: 25,000
   events/s.
2. accepted -> reflected in the balance: ingest paced at 5,000 events/s while the worker
   rates what the API enqueues; for sampled events, the time from the 202 until the
   event's rating is visible (it commits in the transaction that writes the event's
   ledger debit and period usage, which ``GET .../balance`` reads). Target: p99 under 2 s.
3. ``POST /api/v1/authorizations`` on one hot customer (hard-stop plan), 32 concurrent
   clients, next to a trivial ``GET /api/v1/customers/{id}`` served by the same gunicorn
   in the same rounds. Target: at least half the GET rate, zero overdraw.

Load goes only to 127.0.0.1, from client processes that do not load Django; each is
bounded by a request count and a deadline. The web server and the worker run in
production mode (``DEBUG=false``) on the benchmark database, with the per-key rate limit
raised; they are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

from bench import env, report
from bench.stats import median, ms, percentile, rate

HOST = "127.0.0.1"  # every request goes here and nowhere else
INGEST_TARGET = 25_000.0  # events/s
COPY_REFERENCE = 140_000.0  # rows/s, raw COPY on this machine (performance notes)
LAG_TARGET = 2.0  # seconds, p99 accepted -> reflected
HOLD_PHASE = "hold_create (the ledger's batch)"  # a profile phase of the authorization
GET_REFERENCE = 1_600.0  # requests/s, gunicorn + DRF trivial GET, 2 workers
AUTH_RATIO_TARGET = 0.5  # authorizations/s over trivial GETs/s
DEFAULT_LEVELS = (10_000, 100_000, 1_000_000)
QUICK_LEVELS = (10_000, 100_000)
MODELS = (("large", "input"), ("large", "output"), ("small", "input"), ("small", "output"))
AUTH_VALUE = 1000  # tokens per authorization estimate: 0.5 credits on the demo rate card
EXHAUST_VALUE = 8000  # 4 credits: the starter plan's 2,000 included credits allow 500
EXHAUST_PER_CLIENT = 25
REDIS_PORT = 6379
OWNER_KEY = "bench:metering:owner"
SCRATCH = "bench_meterevent_copy"
COLUMNS = (
    "customer_id, identifier, event_name, meter_id, timestamp, value, dimensions, "
    "workspace, authorization_id, content_hash, received_at"
)


# --- HTTP load: client processes that talk to 127.0.0.1 and never load Django -----------


def http(
    port: int, method: str, path: str, key: str, body: bytes | None = None, timeout: float = 60.0
) -> tuple[int, bytes]:
    """One request on a new connection, as gunicorn's sync workers serve them; status 0
    when the connection fails."""
    lines = [f"{method} {path} HTTP/1.0", f"Host: {HOST}:{port}", f"Authorization: Bearer {key}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(1 << 18):
                chunks.append(chunk)
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head[9:12]), payload
    except (OSError, ValueError):
        return 0, b""


_EVENT = (
    '{"identifier":"%s","event_name":"llm.tokens","customer":"%s","timestamp":"%s",'
    '"value":"%d","dimensions":{"model":"%s","token_type":"%s"}}'
)
_AUTHORIZATION = (
    '{"customer":"%s","identifier":"%s","event_name":"llm.tokens","value":"%d",'
    '"dimensions":{"model":"small"}}'
)
_COUNTS = re.compile(rb'"accepted":(\d+),"duplicates":(\d+),"rejected":(\d+)')


def events_body(
    customers: tuple[str, ...], batch: int, rng: random.Random
) -> tuple[bytes, str, str]:
    """A batch of new events (random 128-bit identifiers, as SDKs make them), spread over
    the customers; returns the body and the last event's customer and identifier."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = []
    customer = identifier = ""
    for i in range(batch):
        model, token = MODELS[i & 3]
        customer = customers[rng.randrange(len(customers))]
        identifier = f"{rng.getrandbits(128):032x}"
        parts.append(_EVENT % (identifier, customer, stamp, rng.randint(1, 4000), model, token))
    return ('{"events":[' + ",".join(parts) + "]}").encode(), customer, identifier


@dataclass(frozen=True)
class Job:
    """What one client process does in one run, with ``threads`` clients of its own."""

    kind: str  # "ingest", "auth" or "get"
    port: int
    key: str
    start_at: float  # wall clock, the same instant for every process
    warmup: float
    duration: float
    threads: int
    max_requests: int  # per client: a bound on the count as well as on the time
    customers: tuple[str, ...]
    batch: int = 1000
    interval: float = 0.0  # per client, seconds between request starts; 0: closed loop
    phase: float = 0.0  # this process' offset in the paced schedule
    sample: bool = False  # report the last event of every request, for the lag figure
    value: int = AUTH_VALUE
    tag: str = ""

    @property
    def window(self) -> tuple[float, float]:
        first = self.start_at + self.warmup
        return first, first + self.duration


@dataclass
class LoadResult:
    requests: int = 0  # answered inside the measured window
    events: int = 0  # accepted inside the window
    latencies: list[float] = field(default_factory=list)  # inside the window
    sent: int = 0  # every request, warm-up included
    accepted_total: int = 0  # every accepted event, warm-up included
    not_accepted: int = 0  # answered duplicate or rejected: there should be none
    failures: Counter[str] = field(default_factory=Counter)  # unexpected HTTP status
    allowed: int = 0  # authorizations, warm-up included
    denied: int = 0
    samples: int = 0
    late: float = 0.0  # paced: the most a request started after its slot
    error: str = ""

    def add(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.events += other.events
        self.latencies += other.latencies
        self.sent += other.sent
        self.accepted_total += other.accepted_total
        self.not_accepted += other.not_accepted
        self.failures.update(other.failures)
        self.allowed += other.allowed
        self.denied += other.denied
        self.samples += other.samples
        self.late = max(self.late, other.late)
        self.error = self.error or other.error


def _request(
    job: Job, client: int, n: int, rng: random.Random
) -> tuple[str, str, bytes | None, tuple[str, str] | None]:
    if job.kind == "ingest":
        body, customer, identifier = events_body(job.customers, job.batch, rng)
        return "POST", "/api/v1/events", body, (customer, identifier)
    if job.kind == "auth":
        identifier = f"{job.tag}-{client}-{n}"
        body = (_AUTHORIZATION % (job.customers[0], identifier, job.value)).encode()
        return "POST", "/api/v1/authorizations", body, None
    return "GET", f"/api/v1/customers/{job.customers[0]}", None, None


def _account(job: Job, status: int, payload: bytes, result: LoadResult) -> int:
    """Count the answer; return the events it accepted (ingest) or 1 (others), 0 on failure."""
    expected = 202 if job.kind == "ingest" else 200
    if status != expected:
        result.failures[str(status)] += 1
        return 0
    if job.kind == "ingest":
        found = _COUNTS.search(payload, 0, 200)
        accepted = int(found[1]) if found else 0
        result.accepted_total += accepted
        result.not_accepted += job.batch - accepted
        return accepted
    if job.kind == "auth":
        if json.loads(payload).get("decision") == "allow":
            result.allowed += 1
        else:
            result.denied += 1
    return 1


def _client(job: Job, client: int, result: LoadResult, samples: Any) -> None:
    rng = random.Random(os.urandom(16))
    first, last = job.window
    try:
        time.sleep(max(0.0, job.start_at - time.time()))
        for n in range(job.max_requests):
            now = time.time()
            if job.interval:
                slot = job.start_at + job.phase + n * job.interval
                if slot >= last:
                    break
                if slot > now:
                    time.sleep(slot - now)
                else:
                    result.late = max(result.late, now - slot)
            elif now >= last:
                break
            method, path, body, sample = _request(job, client, n, rng)
            began = time.time()
            started = time.perf_counter()
            status, payload = http(job.port, method, path, job.key, body)
            elapsed = time.perf_counter() - started
            result.sent += 1
            counted = _account(job, status, payload, result)
            done = began + elapsed
            if counted and first <= done < last:
                result.requests += 1
                result.events += counted if job.kind == "ingest" else 0
                result.latencies.append(elapsed)
                if job.sample and sample is not None and counted == job.batch:
                    samples.put((sample[0], sample[1], done))
                    result.samples += 1
    except Exception:
        result.error = traceback.format_exc()


def _run_job(job: Job, index: int, samples: Any) -> LoadResult:
    results = [LoadResult() for _ in range(job.threads)]
    threads = [
        threading.Thread(target=_client, args=(job, index * 1000 + i, results[i], samples))
        for i in range(job.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = LoadResult()
    for result in results:
        total.add(result)
    return total


def _client_main(index: int, inbox: Any, outbox: Any, samples: Any) -> None:
    outbox.put(("ready", index, None))
    while (job := inbox.get()) is not None:
        try:
            result = _run_job(job, index, samples)
        except BaseException:
            result = LoadResult(error=traceback.format_exc())
        outbox.put(("result", index, result))


class ClientPool:
    """Long-lived client processes (spawned, without Django); each run hands each a Job."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.processes: list[Any] = []
        self.inboxes: list[Any] = []
        self.outbox: Any = None
        self.samples: Any = None
        self.pending = 0
        self.deadline = 0.0

    def __enter__(self) -> ClientPool:
        ctx = multiprocessing.get_context("spawn")
        self.outbox = ctx.Queue()
        self.samples = ctx.Queue()
        for i in range(self.size):
            inbox: Any = ctx.Queue()
            process: Any = ctx.Process(
                target=_client_main,
                args=(i, inbox, self.outbox, self.samples),
                name=f"bench-http-client-{i}",
                daemon=True,
            )
            process.start()
            self.inboxes.append(inbox)
            self.processes.append(process)
        for _ in range(self.size):
            self.outbox.get(timeout=120)
        return self

    def pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def start(self, jobs: list[Job]) -> None:
        assert len(jobs) <= self.size and not self.pending
        for inbox, job in zip(self.inboxes, jobs, strict=False):
            inbox.put(job)
        self.pending = len(jobs)
        self.deadline = max(job.window[1] for job in jobs) + 90

    def collect(self) -> LoadResult:
        total = LoadResult()
        while self.pending:
            _, _, result = self.outbox.get(timeout=max(1.0, self.deadline - time.time()))
            total.add(result)
            self.pending -= 1
        if total.error:
            raise RuntimeError(f"a benchmark client failed:\n{total.error}")
        return total

    def run(self, jobs: list[Job]) -> LoadResult:
        self.start(jobs)
        return self.collect()

    def __exit__(self, *exc: object) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


# --- CPU accounting from /proc -----------------------------------------------------------

_CLOCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _CLOCK


def _descendants(roots: set[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def _machine_busy() -> float:
    """CPU seconds spent busy by the whole machine since boot (every CPU, every tenant)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _CLOCK


@dataclass
class CpuSnapshot:
    at: float
    busy: float
    groups: dict[str, dict[int, float]]


@dataclass
class CpuUse:
    """CPU seconds per group over a window, and the machine's busy seconds in it."""

    wall: float = 0.0
    busy: float = 0.0
    groups: dict[str, float] = field(default_factory=dict)

    @property
    def others(self) -> float:
        return max(0.0, self.busy - sum(self.groups.values()))

    def utilisation(self) -> float:
        return self.busy / (self.wall * (os.cpu_count() or 1)) if self.wall else 0.0


GROUPS = ("web", "worker", "postgres", "clients", "bench")


class CpuMeter:
    def __init__(self, groups: Callable[[], dict[str, set[int]]]) -> None:
        self.groups = groups

    def snapshot(self) -> CpuSnapshot:
        groups = {
            name: {pid: s for pid in pids if (s := _cpu_seconds(pid)) is not None}
            for name, pids in self.groups().items()
        }
        return CpuSnapshot(time.time(), _machine_busy(), groups)

    @staticmethod
    def between(a: CpuSnapshot, b: CpuSnapshot) -> CpuUse:
        # A process first seen at the end started inside the window: all its CPU counts.
        groups = {
            name: sum(max(0.0, s - a.groups.get(name, {}).get(pid, 0.0)) for pid, s in pids.items())
            for name, pids in b.groups.items()
        }
        return CpuUse(wall=b.at - a.at, busy=b.busy - a.busy, groups=groups)

    def window(self, start: float, end: float) -> CpuUse:
        """Wait for ``start``, then track the CPU until ``end`` (while the clients run)."""
        time.sleep(max(0.0, start - time.time()))
        tracker = CpuTracker(self)
        tracker.wait_until(end)
        return tracker.result()


class CpuTracker:
    """Snapshots at the start of a window, every ``interval`` and at its end, so that a
    process leaving inside the window (a worker's database session, which Celery closes
    after every task) keeps the CPU it was last seen with."""

    def __init__(self, meter: CpuMeter, interval: float = 0.2) -> None:
        self.meter = meter
        self.interval = interval
        self.first = meter.snapshot()
        self.last = self.first
        self.seen = {name: dict(pids) for name, pids in self.first.groups.items()}

    def sample(self) -> None:
        self.last = self.meter.snapshot()
        for name, pids in self.last.groups.items():
            seen = self.seen.setdefault(name, {})
            for pid, seconds in pids.items():
                seen[pid] = max(seen.get(pid, 0.0), seconds)

    def wait_until(self, moment: float) -> None:
        while (now := time.time()) < moment:
            time.sleep(min(self.interval, moment - now))
            self.sample()

    def result(self) -> CpuUse:
        self.sample()
        base = self.first.groups
        groups = {
            name: sum(max(0.0, s - base.get(name, {}).get(pid, 0.0)) for pid, s in pids.items())
            for name, pids in self.seen.items()
        }
        return CpuUse(
            wall=self.last.at - self.first.at, busy=self.last.busy - self.first.busy, groups=groups
        )


# --- the services: gunicorn and a Celery worker ---------------------------------------------


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


def pick_broker(choice: str) -> Broker:
    """Redis on this machine when it answers (an empty database this run claims, so no
    other worker takes the benchmark's tasks), else kombu's file-system transport."""
    if choice in ("auto", "redis"):
        try:
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
    options = {k: str(v) for k, v in (settings.get("OPTIONS") or {}).items()}
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
        return _descendants({self.process.pid}) if self.running and self.process else set()

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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # children outlive the leader by a moment
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.process = None


def shared_cache_url(broker: Broker, logs: Path) -> str:
    """The broker's Redis database when there is one, else a cache in files."""
    return broker.url if broker.redis_db is not None else f"file://{logs / 'cache'}"


class Services:
    """gunicorn (the Procfile's command line, 2 workers) and, when asked, a worker."""

    def __init__(self, args: argparse.Namespace, database: dict[str, Any], broker: Broker) -> None:
        self.port = free_port()
        self.logs = Path(tempfile.mkdtemp(prefix="bench-metering-"))
        self.node = f"bench-metering-{os.getpid()}"
        self.environ = {
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
        self.web = Service(
            "gunicorn",
            [
                *[sys.executable, "-m", "gunicorn", "billing_portal.wsgi"],
                *["--bind", f"{HOST}:{self.port}", "--workers", str(args.web_workers)],
                *["--threads", str(args.web_threads)],
                *["--access-logfile", "-", "--no-control-socket"],
            ],
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

    def start_web(self) -> None:
        self.web.start()
        self.web.wait_until(lambda: http(self.port, "GET", "/healthz", "-")[0] == 200, 90)

    def start_worker(self) -> None:
        self.worker.start()
        ready = re.compile(rf"{re.escape(self.node)}@\S+ ready\.")
        self.worker.wait_until(lambda: ready.search(self.worker.log_text()) is not None, 90)

    def stop(self) -> None:
        self.worker.stop()
        self.web.stop()

    def drop_logs(self) -> None:
        """After a clean run the services' logs are of no further use."""
        shutil.rmtree(self.logs, ignore_errors=True)


# --- the benchmark database: data, SQL helpers ----------------------------------------------


def _sql(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def _raw() -> Any:
    """The psycopg connection under Django's (autocommit: each statement commits)."""
    from django.db import connection

    connection.ensure_connection()
    return connection.connection


@dataclass
class Setup:
    key: str
    tenants: list[tuple[str, int]]  # external id, pk: the ingest customers (postpaid plan)
    meter_id: int


def create_data(args: argparse.Namespace) -> Setup:
    from plans import catalog
    from plans.apikeys import api_key_create
    from plans.models import Meter, Plan
    from plans.services import customer_create, subscription_start

    catalog.load((env.ROOT / "docs" / "examples" / "catalog.yaml").read_text())
    _, key = api_key_create(name="bench-metering")
    pro = Plan.objects.get(code="pro")
    tenants = []
    for i in range(args.customers):
        customer = customer_create(
            external_id=f"tenant-{i:03d}", name=f"Tenant {i}", email=f"billing@t{i}.test"
        )
        subscription_start(customer=customer, plan=pro, actor="bench:setup")
        tenants.append((customer.external_id, customer.pk))
    meter = Meter.objects.get(event_name="llm.tokens")
    return Setup(key=key, tenants=tenants, meter_id=meter.pk)


def hot_customer(name: str, paid: Decimal | None) -> tuple[str, int, Decimal]:
    """A customer on the hard-stop plan; returns its id, pk and available credits."""
    from ledger import services as ledger
    from ledger.selectors import account_balance
    from plans.models import Plan
    from plans.services import customer_create, subscription_start

    customer = customer_create(external_id=name, name=name, email=f"billing@{name}.test")
    subscription_start(customer=customer, plan=Plan.objects.get(code="starter"), actor="bench")
    if paid:
        ledger.credit_grant_create(
            account=customer.account, amount=paid, category="paid", actor="bench:setup"
        )
    return name, customer.pk, account_balance(account=customer.account).available


def _max_event_id() -> int:
    return int(_sql("SELECT COALESCE(MAX(id), 0) FROM metering_meterevent")[0][0])


def _queued() -> int:
    return int(_sql("SELECT count(*) FROM metering_ratingqueue")[0][0])


def _preload_chunks(rows: int, customer_ids: list[int], meter_id: int) -> Iterator[str]:
    """Past events in COPY text format: random identifiers, 30 days of timestamps."""
    rng = random.Random(rows)
    now = int(time.time())
    stamps = [
        time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(now - 86400 * 30 + 600 * i))
        for i in range(4300)
    ]
    dims = [json.dumps({"model": m, "token_type": t}) for m, t in MODELS]
    for start in range(0, rows, 20_000):
        lines = []
        for _ in range(min(20_000, rows - start)):
            stamp = rng.choice(stamps)
            lines.append(
                f"{rng.choice(customer_ids)}\t{rng.getrandbits(128):032x}\tllm.tokens\t"
                f"{meter_id}\t{stamp}\t{rng.randint(1, 4000)}\t{rng.choice(dims)}\t\\N\t\\N\t"
                f"{rng.getrandbits(256):064x}\t{stamp}\n"
            )
        yield "".join(lines)


def preload(rows: int, setup: Setup) -> float:
    """COPY ``rows`` past events into the events table; return rows/s."""
    started = time.perf_counter()
    with (
        _raw().cursor() as cursor,
        cursor.copy(f"COPY metering_meterevent ({COLUMNS}) FROM STDIN") as copy,
    ):
        for chunk in _preload_chunks(rows, [pk for _, pk in setup.tenants], setup.meter_id):
            copy.write(chunk)
    return rows / (time.perf_counter() - started)


def copy_reference(watermark: int, meter: CpuMeter) -> DbPath:
    """COPY the rows the API stored in this run into the scratch table."""
    blocks: list[bytes] = []
    with _raw().cursor() as cursor:
        with cursor.copy(
            f"COPY (SELECT id, {COLUMNS} FROM metering_meterevent WHERE id > {int(watermark)} "
            "ORDER BY id) TO STDOUT (FORMAT BINARY)"
        ) as copy:
            blocks.extend(bytes(block) for block in copy)
        counted = cursor.execute(
            "SELECT count(*) FROM metering_meterevent WHERE id > %s", [watermark]
        ).fetchone()
        rows = int(counted[0]) if counted else 0
        first = meter.snapshot()
        started = time.perf_counter()
        with cursor.copy(f"COPY {SCRATCH} (id, {COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            for block in blocks:
                copy.write(block)
        elapsed = time.perf_counter() - started
        last = meter.snapshot()
    return DbPath(COPY_PATH, rows, rows / elapsed if elapsed else 0.0, meter.between(first, last))


@dataclass
class DbPath:
    """One way of writing a run's rows, from one connection: rows/s and its CPU."""

    label: str
    rows: int
    rate: float
    cpu: CpuUse

    def postgres_ms(self) -> float:
        return _cpu_ms(self.cpu, self.rows / 1000, "postgres")


COPY_PATH = "raw `COPY` (binary) into the scratch table: no foreign keys, no queue"
_QUEUE_CTE = re.compile(r"\), queued AS \(.*?FROM inserted\s*\)", re.DOTALL)


def _statement_path(
    label: str, sql: str, rows: list[tuple[Any, ...]], batch: int, meter: CpuMeter
) -> DbPath:
    """The ingest's INSERT, one batch per transaction, from this process (no HTTP)."""
    import psycopg
    from django.utils import timezone

    raw = _raw()
    first = meter.snapshot()
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        columns = [list(column) for column in zip(*rows[i : i + batch], strict=True)]
        now = timezone.now()
        with psycopg.Cursor(raw) as cursor:
            params = [*columns, now, now][: sql.count("%b")]
            cursor.execute(sql, params, binary=True)
            cursor.fetchall()
    elapsed = time.perf_counter() - started
    last = meter.snapshot()
    return DbPath(
        label, len(rows), len(rows) / elapsed if elapsed else 0.0, meter.between(first, last)
    )


def _combine(paths: list[DbPath]) -> DbPath:
    """Repeats of one way: the median rate, CPU summed over every row written."""
    groups: dict[str, float] = defaultdict(float)
    for path in paths:
        for name, seconds in path.cpu.groups.items():
            groups[name] += seconds
    cpu = CpuUse(
        wall=sum(p.cpu.wall for p in paths), busy=sum(p.cpu.busy for p in paths), groups=groups
    )
    return DbPath(paths[0].label, sum(p.rows for p in paths), median([p.rate for p in paths]), cpu)


def measure_db_paths(ctx: Context, watermark: int, copy: DbPath, rounds: int = 2) -> list[DbPath]:
    """The same rows written several ways, each adding one cost of the ingest's
    statement: COPY; the statement without foreign keys and without the rating queue;
    with the queue; the statement as it runs on the real tables (foreign keys checked).
    Each way runs ``rounds`` times, the order reversed every other round."""
    from metering import ingest

    rows = _sql(
        "SELECT customer_id, identifier, event_name, meter_id, timestamp, value, "
        "dimensions::text, workspace, authorization_id, content_hash "
        "FROM metering_meterevent WHERE id > %s ORDER BY customer_id, identifier",
        [watermark],
    )
    discard_since(watermark)
    events, queue_table = "bench_meterevent_nofk", "bench_ratingqueue_nofk"
    no_fk = ingest._INSERT.replace("metering_meterevent", events).replace(
        "metering_ratingqueue", queue_table
    )
    without_queue, found = _QUEUE_CTE.subn(")", no_fk)

    def reset_copies() -> None:
        _sql(f"DELETE FROM {events} WHERE id > %s", [watermark])
        _sql(f"DELETE FROM {queue_table}")
        _sql(f"VACUUM (ANALYZE) {events}, {queue_table}")

    ways: list[tuple[str, str, Callable[[], None]]] = []
    if no_fk.count(events) == 1 and no_fk.count(queue_table) == 1:
        if found == 1:
            ways.append(
                (
                    "the ingest statement without foreign keys and without its queue rows",
                    without_queue,
                    reset_copies,
                )
            )
        ways.append(
            (
                "the ingest statement without foreign keys (events and queue rows)",
                no_fk,
                reset_copies,
            )
        )
    ways.append(
        (
            "the ingest statement as it runs (`metering.ingest._INSERT`, foreign keys checked)",
            ingest._INSERT,
            lambda: discard_since(watermark),
        )
    )
    measured: dict[str, list[DbPath]] = defaultdict(list)
    _sql(f"CREATE TABLE {events} (LIKE metering_meterevent INCLUDING ALL)")
    _sql(f"CREATE TABLE {queue_table} (LIKE metering_ratingqueue INCLUDING ALL)")
    try:
        _sql(f"INSERT INTO {events} SELECT * FROM metering_meterevent")
        # Its own identity sequence: start it well past the real table's.
        _sql(f"ALTER TABLE {events} ALTER COLUMN id RESTART WITH {_max_event_id() + 10**9}")
        _sql(f"VACUUM (ANALYZE) {events}, {queue_table}")
        for round_no in range(rounds):
            for label, sql, reset in ways if round_no % 2 == 0 else ways[::-1]:
                measured[label].append(_statement_path(label, sql, rows, ctx.args.batch, ctx.meter))
                reset()
    finally:
        _sql(f"DROP TABLE {queue_table}, {events}")
    return [copy] + [_combine(measured[label]) for label, _, _ in ways]


def discard_since(watermark: int) -> None:
    """Delete a run's events (and their queue rows), so every run sees the same table."""
    _sql("DELETE FROM metering_ratingqueue WHERE event_id > %s", [watermark])
    _sql("DELETE FROM metering_meterevent WHERE id > %s", [watermark])
    _sql(f"DELETE FROM {SCRATCH} WHERE id > %s", [watermark])
    _sql("DELETE FROM metering_rejectedevent")
    _sql(f"VACUUM (ANALYZE) metering_meterevent, metering_ratingqueue, {SCRATCH}")


def postgres_pids() -> set[int]:
    """The benchmark database's sessions and the server's WAL writer and checkpointer."""
    rows = _sql(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
    )
    return {int(r[0]) for r in rows}


# --- a profile of one request, in this process, through Django's test client -------------


class PhaseProbe:
    """Wraps named functions with timers (nested calls are subtracted from their caller)
    and counts the SQL statements each runs through Django's cursors."""

    def __init__(self) -> None:
        self.inclusive: dict[str, float] = defaultdict(float)
        self.nested: dict[str, float] = defaultdict(float)
        self.sql: dict[str, float] = defaultdict(float)
        self.statements: Counter[str] = Counter()
        self.order: list[str] = []
        self.top = 0.0
        self.stack: list[str] = []
        self._patches: list[tuple[Any, str, Any, bool]] = []

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        if name not in self.order:
            self.order.append(name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.stack.append(name)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.stack.pop()
                self.inclusive[name] += elapsed
                if self.stack:
                    self.nested[self.stack[-1]] += elapsed
                else:
                    self.top += elapsed

        return wrapper

    def replace(self, owner: Any, attr: str, value: Any) -> None:
        own = attr in vars(owner)
        self._patches.append((owner, attr, vars(owner).get(attr), own))
        setattr(owner, attr, value)

    def patch(self, owner: Any, attr: str, name: str) -> None:
        self.replace(owner, attr, self.timed(name, getattr(owner, attr)))

    def restore(self) -> None:
        for owner, attr, original, own in reversed(self._patches):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)
        self._patches.clear()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, ctx)
        finally:
            where = self.stack[-1] if self.stack else ""
            self.sql[where] += time.perf_counter() - started
            self.statements[where] += 1


@dataclass
class Phase:
    name: str
    seconds: float  # per request, nested phases excluded
    sql: float
    statements: float


@dataclass
class RequestProfile:
    label: str
    requests: int
    total: float  # per unit
    phases: list[Phase]
    unit: str = "request"
    intro: str = ""
    statements_per: str = ""  # what the statements column counts, if not per unit

    def phase(self, name: str) -> Phase:
        return next((p for p in self.phases if p.name == name), Phase(name, 0.0, 0.0, 0.0))

    @property
    def statements(self) -> float:
        return sum(p.statements for p in self.phases)

    @property
    def sql(self) -> float:
        return sum(p.sql for p in self.phases)


REST = "the rest (Django, DRF, middleware, response)"


def _profile(
    label: str, probe: PhaseProbe, send: Callable[[int], Any], requests: int
) -> RequestProfile:
    from django.db import connection

    totals = 0.0
    try:
        with connection.execute_wrapper(probe):
            for i in range(requests):
                started = time.perf_counter()
                send(i)
                totals += time.perf_counter() - started
    finally:
        probe.restore()
    phases = [
        Phase(
            name,
            (probe.inclusive[name] - probe.nested[name]) / requests,
            probe.sql[name] / requests,
            probe.statements[name] / requests,
        )
        for name in probe.order
    ]
    phases.append(
        Phase(
            REST,
            (totals - probe.top) / requests,
            probe.sql[""] / requests,
            probe.statements[""] / requests,
        )
    )
    return RequestProfile(label, requests, totals / requests, phases)


def _client_for(key: str) -> Any:
    from django.test import Client

    return Client(HTTP_AUTHORIZATION=f"Bearer {key}", SERVER_NAME="localhost")


def _common_phases(probe: PhaseProbe) -> None:
    from plans import api_support

    probe.patch(api_support, "api_key_authenticate", "authenticate the key")
    probe.patch(api_support.ApiKeyRateThrottle, "allow_request", "rate limit")


def profile_ingest(setup: Setup, batch: int, requests: int) -> RequestProfile:
    """Where a 1000-event POST spends its time (the rows it stores are left for the
    caller to discard; the worker is not running)."""
    from django.db import connection

    from metering import ingest, tasks
    from plans.api_support import FastJSONRenderer

    client = _client_for(setup.key)
    rng = random.Random(7)
    customers = tuple(t for t, _ in setup.tenants)
    bodies = [events_body(customers, batch, rng)[0] for _ in range(requests + 1)]
    probe = PhaseProbe()

    def send(i: int) -> None:
        response = client.post("/api/v1/events", data=bodies[i], content_type="application/json")
        assert response.status_code == 202, response.content[:300]

    send(-1)  # warm: imports and caches, not measured
    _common_phases(probe)
    probe.patch(ingest, "parse_body", "parse the JSON body")
    probe.patch(ingest, "_Lookups", "look up customers and meters")
    probe.patch(ingest, "validate", "validate each event")
    probe.patch(ingest, "_content_hash", "content hash (SHA-256) per event")
    probe.patch(ingest, "events_ingest", "events_ingest (its own loop)")
    probe.patch(ingest, "_insert", "INSERT ... ON CONFLICT + queue rows (psycopg)")
    probe.patch(ingest, "_classify_existing", "classify skipped rows")
    probe.patch(ingest, "_store_rejections", "store rejections")
    probe.patch(connection, "_commit", "COMMIT")
    probe.patch(ingest.IngestOutcome, "as_dict", "build the 1000 results")
    probe.patch(FastJSONRenderer, "render", "render JSON")
    task = tasks.events_rate_pending
    probe.replace(
        tasks,
        "events_rate_pending",
        SimpleNamespace(delay_on_commit=probe.timed("enqueue rating task", task.delay_on_commit)),
    )
    return _profile(f"POST /api/v1/events, {batch} events", probe, send, requests)


def profile_auth(setup: Setup, customer: str, requests: int) -> list[RequestProfile]:
    from ledger import services as ledger
    from metering import api as metering_api
    from metering import services
    from plans import api as plans_api

    client = _client_for(setup.key)
    tag = secrets.token_hex(4)

    def authorize(i: int) -> None:
        body = _AUTHORIZATION % (customer, f"profile-{tag}-{i}", AUTH_VALUE)
        response = client.post("/api/v1/authorizations", data=body, content_type="application/json")
        assert response.status_code == 200, response.content[:300]

    def get(i: int) -> None:
        response = client.get(f"/api/v1/customers/{customer}")
        assert response.status_code == 200, response.content[:300]

    authorize(-1)  # warm: imports and caches, not measured
    get(-1)
    probe = PhaseProbe()
    _common_phases(probe)
    probe.patch(metering_api.AuthorizationsApi.InputSerializer, "is_valid", "validate the body")
    probe.patch(services, "authorization_create_for", "authorization_create (own work)")
    probe.patch(services, "_context", "read customer, earlier answer and plan (one query)")
    probe.patch(services, "_price", "price the estimate (rate card)")
    probe.patch(ledger, "hold_create", HOLD_PHASE)
    probe.patch(services, "_store", "store the authorization")
    auth = _profile("POST /api/v1/authorizations", probe, authorize, requests)
    probe = PhaseProbe()
    _common_phases(probe)
    probe.patch(plans_api, "customer_or_404", "look up the customer")
    return [auth, _profile("GET /api/v1/customers/{id}", probe, get, requests)]


def profile_rating(setup: Setup, customers: int) -> RequestProfile:
    """Where rating spends its time: one batch per customer, run here while no worker
    runs; figures per 1000 events rated."""
    from django.db import connection

    from ledger import services as ledger
    from metering import rating

    probe = PhaseProbe()
    probe.patch(rating, "events_rate_for_customer", "claim, load and dequeue the batch")
    probe.patch(rating._Rater, "__init__", "load periods and the rate table")
    probe.patch(rating._Rater, "_price", "price each event")
    probe.patch(ledger, "credits_consume_batch", "ledger: lock the account, operation")
    probe.patch(ledger.Drawer, "__init__", "ledger: lock and read the grants")
    probe.patch(ledger.Drawer, "debit", "ledger: draw down per event")
    probe.patch(ledger.Drawer, "flush", "ledger: write grants and entries")
    probe.patch(rating, "_ratings_insert", "INSERT the ratings")
    probe.patch(rating, "_rollups_add", "hourly usage rollups")
    probe.patch(rating, "_period_usage_add", "period usage")
    probe.patch(rating.usage_rated, "send", "usage_rated receivers")
    probe.patch(connection, "_commit", "COMMIT")
    events = 0
    total = 0.0
    try:
        with connection.execute_wrapper(probe):
            for _, pk in setup.tenants[:customers]:
                started = time.perf_counter()
                events += rating.events_rate_for_customer(customer_id=pk)
                total += time.perf_counter() - started
    finally:
        probe.restore()
    per = max(1, events) / 1000
    batches = max(1, customers)
    phases = [
        Phase(
            name,
            (probe.inclusive[name] - probe.nested[name]) / per,
            probe.sql[name] / per,
            probe.statements[name] / batches,
        )
        for name in probe.order
    ]
    return RequestProfile(
        "rating (events_rate_for_customer)",
        customers,
        total / per,
        phases,
        unit="1000 events",
        statements_per="batch",
        intro=f"{events:,} queued events rated in one batch per customer for {customers} "
        "customers, in this process while no worker runs (the code the worker runs; the "
        "timers cost a little)",
    )


# --- figure 1: durable ingest ----------------------------------------------------------------


@dataclass
class IngestRun:
    rate: float
    events: int
    p50: float
    p99: float
    copy: DbPath
    cpu: CpuUse
    load: float

    @property
    def copy_rows(self) -> int:
        return self.copy.rows

    @property
    def copy_rate(self) -> float:
        return self.copy.rate

    @property
    def of_copy(self) -> float:
        return self.rate / self.copy_rate if self.copy_rate else 0.0


@dataclass
class Level:
    rows: int
    preload_rate: float = 0.0
    runs: list[IngestRun] = field(default_factory=list)

    def med(self, name: str) -> float:
        return median([float(getattr(r, name)) for r in self.runs])

    def values(self, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in self.runs]


def rss_mib(pids: set[int]) -> dict[int, float]:
    """Resident memory of each process, in MiB (from /proc/PID/status)."""
    found = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            found[pid] = int(match.group(1)) / 1024
    return found


@dataclass
class Memory:
    """A service's resident memory as events go through it: one sample per measured run,
    the first taken once the processes are warm."""

    service: str
    samples: list[tuple[int, dict[int, float]]] = field(default_factory=list)

    def sample(self, events: int, pids: set[int]) -> None:
        self.samples.append((events, rss_mib(pids)))

    @property
    def events(self) -> int:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0

    def largest(self, index: int) -> float:
        """The largest process (the worker, not its parent) at a sample."""
        return max(self.samples[index][1].values(), default=0.0)

    @property
    def growth(self) -> float:
        first = self.largest(0)
        return self.largest(-1) / first - 1 if first else 0.0

    def line(self) -> str:
        if len(self.samples) < 2:
            return f"metering memory, {self.service}: not sampled"
        return (
            f"metering memory, {self.service}: largest process {self.largest(0):.1f} MiB once "
            f"warm, {self.largest(-1):.1f} MiB after {self.events:,} more events "
            f"({self.growth * 100:+.1f}%)"
        )


@dataclass
class Context:
    args: argparse.Namespace
    setup: Setup
    services: Services
    pool: ClientPool
    meter: CpuMeter
    problems: list[str] = field(default_factory=list)
    web_memory: Memory = field(default_factory=lambda: Memory("gunicorn (web)"))
    worker_memory: Memory = field(default_factory=lambda: Memory("celery worker (rating)"))
    rated: int = 0  # events rated so far (approximately, for the memory samples)

    @property
    def port(self) -> int:
        return self.services.port


def _ingest_jobs(ctx: Context, start_at: float, **overrides: Any) -> list[Job]:
    args = ctx.args
    values: dict[str, Any] = {
        "kind": "ingest",
        "port": ctx.port,
        "key": ctx.setup.key,
        "start_at": start_at,
        "warmup": args.warmup,
        "duration": args.duration,
        "threads": 1,
        "max_requests": int((args.warmup + args.duration) * 200) + 1,
        "customers": tuple(t for t, _ in ctx.setup.tenants),
        "batch": args.batch,
    }
    values.update(overrides)
    clients = values.pop("clients", args.clients)
    phase = values.pop("phase_step", 0.0)
    return [Job(**values, phase=i * phase) for i in range(clients)]


def _check_load(result: LoadResult, what: str, ctx: Context) -> None:
    if result.failures or result.not_accepted:
        ctx.problems.append(
            f"{what}: unexpected answers {dict(result.failures)}, "
            f"{result.not_accepted} events not accepted"
        )


def ingest_run(ctx: Context, paths: list[DbPath] | None = None) -> IngestRun:
    """One closed-loop run, then the COPY reference of its rows; with ``paths``, also
    the statement decomposition on the same rows."""
    args = ctx.args
    watermark = _max_event_id()
    load = os.getloadavg()[0]
    start_at = time.time() + 0.5
    ctx.pool.start(_ingest_jobs(ctx, start_at))
    cpu = ctx.meter.window(start_at + args.warmup, start_at + args.warmup + args.duration)
    result = ctx.pool.collect()
    _check_load(result, "ingest", ctx)
    copy = copy_reference(watermark, ctx.meter)
    if paths is not None:
        paths += measure_db_paths(ctx, watermark, copy)
    else:
        discard_since(watermark)
    return IngestRun(
        rate=result.events / args.duration,
        events=result.events,
        p50=percentile(result.latencies, 50),
        p99=percentile(result.latencies, 99),
        copy=copy,
        cpu=cpu,
        load=load,
    )


def measure_ingest(ctx: Context) -> tuple[list[Level], RequestProfile | None, list[DbPath]]:
    args = ctx.args
    paths: list[DbPath] = []
    _sql(f"DROP TABLE IF EXISTS {SCRATCH}")
    _sql(f"CREATE TABLE {SCRATCH} (LIKE metering_meterevent INCLUDING ALL)")
    levels: list[Level] = []
    profile = None
    loaded = 0
    done = 0  # events accepted so far
    for rows in args.levels:
        level = Level(rows)
        if rows > loaded:
            level.preload_rate = preload(rows - loaded, ctx.setup)
            _sql(
                f"INSERT INTO {SCRATCH} SELECT * FROM metering_meterevent WHERE id > "
                f"(SELECT COALESCE(MAX(id), 0) FROM {SCRATCH})"
            )
            loaded = rows
        _sql(f"VACUUM (ANALYZE) metering_meterevent, {SCRATCH}")
        for run in range(args.runs):
            last_of_first = not levels and run == args.runs - 1
            level.runs.append(ingest_run(ctx, paths if last_of_first and args.profile else None))
            done += level.runs[-1].events
            ctx.web_memory.sample(done, ctx.services.web.pids())
            if args.verbose:
                r = level.runs[-1]
                print(
                    f"  ingest, {_count(rows)} rows, run {run + 1}: {rate(r.rate)} "
                    f"(p99 {ms(r.p99)}), COPY {rate(r.copy_rate)} of {r.copy_rows:,} rows, "
                    f"load {r.load:.1f}",
                    flush=True,
                )
        levels.append(level)
        if profile is None and args.profile:
            watermark = _max_event_id()
            profile = profile_ingest(ctx.setup, args.batch, args.profile_requests)
            discard_since(watermark)
    _sql(f"DROP TABLE {SCRATCH}")
    # The pre-loaded rows were never queued for rating: clear them for what follows.
    _sql(
        "TRUNCATE metering_ratingqueue, metering_eventrating, metering_eventcancellation, "
        "metering_meterevent, metering_rejectedevent"
    )
    _purge_broker()
    return levels, profile, paths


def _purge_broker() -> None:
    """Drop the rating tasks the API enqueued while no worker ran."""
    from billing_portal.celery import app

    app.control.purge()


# --- figure 2: accepted -> reflected -------------------------------------------------------


@dataclass
class Drain:
    events: int
    seconds: float
    cpu: CpuUse
    profile: RequestProfile | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def measure_drain(ctx: Context) -> Drain:
    """Rating capacity: queue a backlog with the worker stopped, then time its drain."""
    args = ctx.args
    per_client = max(1, math.ceil(args.backlog / (args.clients * args.batch)))
    start_at = time.time() + 0.5
    result = ctx.pool.run(
        _ingest_jobs(ctx, start_at, warmup=0.0, duration=300.0, max_requests=per_client)
    )
    _check_load(result, "backlog ingest", ctx)
    profile = profile_rating(ctx.setup, 3) if args.profile else None
    queued = _queued()
    ctx.services.start_worker()
    tracker = CpuTracker(ctx.meter)
    deadline = time.monotonic() + 600
    while _queued() and time.monotonic() < deadline:
        tracker.wait_until(time.time() + 0.1)
    cpu = tracker.result()
    if _queued():
        ctx.problems.append("rating did not drain the backlog within 10 minutes")
    ctx.rated += queued
    ctx.worker_memory.sample(ctx.rated, ctx.services.worker.pids())  # warm: a backlog rated
    return Drain(queued, cpu.wall, cpu, profile)


class LagPoller(threading.Thread):
    """Takes the clients' sampled events and polls for their ratings every ``interval``;
    the lag is from the 202 to the start of the query that first sees the rating."""

    def __init__(self, samples: Any, pks: dict[str, int], interval: float = 0.02) -> None:
        super().__init__(name="bench-lag-poller", daemon=True)
        self.samples = samples
        self.pks = pks
        self.interval = interval
        self.pending: dict[tuple[int, str], float] = {}
        self.lags: list[float] = []
        self.received = 0
        self.expected: int | None = None
        self.deadline: float | None = None
        self.backlog: list[int] = []
        self.error = ""

    def finish(self, expected: int, timeout: float) -> None:
        self.deadline = time.time() + timeout
        self.expected = expected
        self.join(timeout + 30)

    def _take_samples(self) -> None:
        while True:
            try:
                customer, identifier, accepted_at = self.samples.get_nowait()
            except queue.Empty:
                return
            self.pending[(self.pks[customer], identifier)] = accepted_at
            self.received += 1

    def _poll(self) -> None:
        keys = list(self.pending)
        started = time.time()
        rows = _sql(
            "SELECT e.customer_id, e.identifier FROM metering_meterevent e "
            "JOIN metering_eventrating r ON r.event_id = e.id "
            "WHERE (e.customer_id, e.identifier) IN "
            "(SELECT * FROM unnest(%s::bigint[], %s::text[]))",
            [[k[0] for k in keys], [k[1] for k in keys]],
        )
        for customer_id, identifier in rows:
            self.lags.append(started - self.pending.pop((customer_id, identifier)))

    def run(self) -> None:
        from django.db import connections

        counted = 0.0
        try:
            while True:
                self._take_samples()
                if self.pending:
                    self._poll()
                now = time.time()
                if now - counted >= 0.25:
                    self.backlog.append(_queued())
                    counted = now
                done = self.expected is not None and self.received >= self.expected
                if done and not self.pending:
                    break
                if self.deadline is not None and now > self.deadline:
                    break
                time.sleep(self.interval)
        except Exception:
            self.error = traceback.format_exc()
        finally:
            connections["default"].close()


@dataclass
class LagRun:
    lags: list[float]
    unresolved: int
    achieved: float  # events/s accepted in the window
    p99_request: float
    late: float
    backlog: int  # the most events waiting for rating, sampled every 0.25 s
    cpu: CpuUse
    load: float

    def p(self, q: float) -> float:
        values = self.lags + [math.inf] * self.unresolved
        return percentile(values, q)


def lag_run(ctx: Context) -> LagRun:
    args = ctx.args
    interval = args.lag_clients * args.lag_batch / args.lag_rate
    poller = LagPoller(ctx.pool.samples, {t: pk for t, pk in ctx.setup.tenants})
    poller.start()
    load = os.getloadavg()[0]
    start_at = time.time() + 0.5
    jobs = _ingest_jobs(
        ctx,
        start_at,
        duration=args.lag_duration,
        batch=args.lag_batch,
        interval=interval,
        phase_step=interval / args.lag_clients,
        sample=True,
        clients=args.lag_clients,
        max_requests=math.ceil((args.warmup + args.lag_duration) / interval) + 1,
    )
    ctx.pool.start(jobs)
    cpu = ctx.meter.window(start_at + args.warmup, start_at + args.warmup + args.lag_duration)
    result = ctx.pool.collect()
    _check_load(result, "paced ingest", ctx)
    poller.finish(result.samples, args.lag_timeout)
    if poller.error:
        raise RuntimeError(f"lag poller failed:\n{poller.error}")
    _wait_drained(ctx, "paced ingest")
    return LagRun(
        lags=poller.lags,
        unresolved=len(poller.pending) + max(0, result.samples - poller.received),
        achieved=result.events / args.lag_duration,
        p99_request=percentile(result.latencies, 99),
        late=result.late,
        backlog=max(poller.backlog or [0]),
        cpu=cpu,
        load=load,
    )


def _wait_drained(ctx: Context, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _queued() and time.monotonic() < deadline:
        time.sleep(0.2)
    if _queued():
        ctx.problems.append(f"{what}: rating queue not drained after {timeout:g} s")


def balance_check(ctx: Context) -> list[float]:
    """Every tenant's ``GET .../balance`` shows what rating stored: period used =
    PeriodUsage = the sum of the period's event ratings. Returns the GET latencies."""
    from django.db.models import Sum

    from metering.models import EventRating, PeriodUsage
    from plans import selectors
    from plans.models import Customer

    latencies = []
    for external_id, pk in ctx.setup.tenants:
        started = time.perf_counter()
        status, body = http(
            ctx.port, "GET", f"/api/v1/customers/{external_id}/balance", ctx.setup.key
        )
        latencies.append(time.perf_counter() - started)
        if status != 200:
            ctx.problems.append(f"GET balance of {external_id}: HTTP {status}")
            continue
        shown = Decimal(json.loads(body)["period"]["used"])
        period = selectors.period_current(customer=Customer.objects.get(pk=pk))
        usage = PeriodUsage.objects.filter(period=period).first()
        stored = usage.credits if usage else Decimal(0)
        rated = EventRating.objects.filter(event__customer_id=pk, period=period).aggregate(
            total=Sum("credits")
        )["total"] or Decimal(0)
        if not shown == stored == rated:
            ctx.problems.append(
                f"balance of {external_id}: shows used {shown}, period usage {stored}, "
                f"ratings sum {rated}"
            )
    return latencies


@dataclass
class BalanceCost:
    events: int  # rated events in the period of the busy customer
    busy: float  # median GET balance latency, busy customer
    fresh: float  # the same for a customer with none


def balance_cost(ctx: Context, requests: int = 20) -> BalanceCost:
    from metering.models import PeriodUsage
    from plans.models import Plan
    from plans.services import customer_create, subscription_start

    busy_id, busy_pk = ctx.setup.tenants[0]
    fresh = customer_create(external_id="fresh-balance", name="Fresh", email="f@fresh.test")
    subscription_start(customer=fresh, plan=Plan.objects.get(code="pro"), actor="bench")

    def timed(external_id: str) -> float:
        values = []
        for _ in range(requests):
            started = time.perf_counter()
            http(ctx.port, "GET", f"/api/v1/customers/{external_id}/balance", ctx.setup.key)
            values.append(time.perf_counter() - started)
        return median(values)

    events = sum(PeriodUsage.objects.filter(customer_id=busy_pk).values_list("events", flat=True))
    return BalanceCost(int(events), timed(busy_id), timed(fresh.external_id))


# --- figure 3: authorizations on one hot customer ------------------------------------------


@dataclass
class HttpRun:
    rate: float
    p50: float
    p99: float
    cpu: CpuUse
    load: float


@dataclass
class AuthRound:
    get: HttpRun
    auth: HttpRun
    allowed: int
    denied: int
    overdraw: Decimal

    @property
    def ratio(self) -> float:
        return self.auth.rate / self.get.rate if self.get.rate else 0.0


def _http_jobs(
    ctx: Context, kind: str, customer: str, start_at: float, duration: float, **extra: Any
) -> list[Job]:
    clients = ctx.args.auth_clients
    processes = min(ctx.pool.size, clients)
    threads = [
        clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
    ]
    tag = secrets.token_hex(4)
    values: dict[str, Any] = {
        "port": ctx.port,
        "key": ctx.setup.key,
        "start_at": start_at,
        "warmup": ctx.args.warmup,
        "duration": duration,
        "max_requests": int((ctx.args.warmup + duration) * 5000),
        "customers": (customer,),
        "tag": tag,
    }
    values.update(extra)
    return [Job(kind=kind, threads=n, **values) for n in threads]


def http_run(ctx: Context, kind: str, customer: str) -> tuple[HttpRun, LoadResult]:
    duration = ctx.args.auth_duration
    load = os.getloadavg()[0]
    start_at = time.time() + 0.5
    ctx.pool.start(_http_jobs(ctx, kind, customer, start_at, duration))
    cpu = ctx.meter.window(start_at + ctx.args.warmup, start_at + ctx.args.warmup + duration)
    result = ctx.pool.collect()
    _check_load(result, kind, ctx)
    run = HttpRun(
        rate=result.requests / duration,
        p50=percentile(result.latencies, 50),
        p99=percentile(result.latencies, 99),
        cpu=cpu,
        load=load,
    )
    return run, result


def check_authorizations(
    ctx: Context, pk: int, available: Decimal, result: LoadResult, what: str
) -> tuple[int, Decimal, Decimal]:
    """Allowed holds never exceed what was available, and the ledger agrees with what
    the clients were told. Returns allowed, their credits and the overdraw."""
    from django.db.models import Count, Sum

    from ledger.models import Account, Hold, HoldStatus
    from ledger.selectors import account_balance
    from metering.models import Authorization
    from plans.models import Customer

    customer = Customer.objects.select_related("account").get(pk=pk)
    rows: dict[str, tuple[int, Decimal]] = {
        row["decision"]: (int(row["n"]), Decimal(row["credits"] or 0))
        for row in Authorization.objects.filter(customer_id=pk)
        .values("decision")
        .annotate(n=Count("id"), credits=Sum("credits"))
    }
    allowed, allowed_credits = rows.get("allow", (0, Decimal(0)))
    denied = rows.get("deny", (0, Decimal(0)))[0]
    overdraw = max(Decimal(0), allowed_credits - available)
    held = Account.objects.get(pk=customer.account_id).held
    open_holds = Hold.objects.filter(
        account_id=customer.account_id, status=HoldStatus.OPEN
    ).aggregate(total=Sum("credits"))["total"] or Decimal(0)
    after = account_balance(account=customer.account).available
    checks = {
        "allowed credits above what was available": overdraw > 0,
        f"clients were allowed {result.allowed} times, stored {allowed}": allowed != result.allowed,
        f"clients were denied {result.denied} times, stored {denied}": denied != result.denied,
        f"account held {held} but open holds total {open_holds} and allowed {allowed_credits}": (
            not held == open_holds == allowed_credits
        ),
        f"available went negative: {after}": after < 0,
    }
    ctx.problems += [f"{what}: {text}" for text, failed in checks.items() if failed]
    return allowed, allowed_credits, overdraw


def measure_auth(ctx: Context) -> list[AuthRound]:
    rounds = []
    for run in range(ctx.args.runs):
        name, pk, available = hot_customer(f"hot-{run}", Decimal(1_000_000))
        order = ("get", "auth") if run % 2 == 0 else ("auth", "get")
        runs: dict[str, tuple[HttpRun, LoadResult]] = {}
        for kind in order:
            runs[kind] = http_run(ctx, kind, name)
        allowed, _, overdraw = check_authorizations(
            ctx, pk, available, runs["auth"][1], f"authorizations, round {run + 1}"
        )
        rounds.append(
            AuthRound(runs["get"][0], runs["auth"][0], allowed, runs["auth"][1].denied, overdraw)
        )
        if ctx.args.verbose:
            r = rounds[-1]
            print(
                f"  round {run + 1}: authorizations {rate(r.auth.rate)} (p99 {ms(r.auth.p99)}), "
                f"GET {rate(r.get.rate)} (p99 {ms(r.get.p99)}), ratio {r.ratio:.2f}, "
                f"load {r.auth.load:.1f}",
                flush=True,
            )
    return rounds


@dataclass
class Exhaustion:
    available: Decimal
    per: Decimal
    requests: int
    allowed: int
    allowed_credits: Decimal
    overdraw: Decimal

    @property
    def expected(self) -> int:
        return min(self.requests, int(self.available // self.per))


def measure_exhaustion(ctx: Context) -> Exhaustion:
    """32 clients race for the last credits of a hard-stop customer: 800 requests of 4
    credits against 2,000 available."""
    name, pk, available = hot_customer("hot-exhaust", None)
    start_at = time.time() + 0.5
    jobs = _http_jobs(
        ctx,
        "auth",
        name,
        start_at,
        120.0,
        warmup=0.0,
        max_requests=EXHAUST_PER_CLIENT,
        value=EXHAUST_VALUE,
    )
    result = ctx.pool.run(jobs)
    _check_load(result, "exhaustion", ctx)
    allowed, credits, overdraw = check_authorizations(ctx, pk, available, result, "exhaustion")
    per = Decimal(EXHAUST_VALUE) / 1000 * Decimal("0.5")
    exhaustion = Exhaustion(available, per, result.sent, allowed, credits, overdraw)
    if exhaustion.allowed != exhaustion.expected:
        ctx.problems.append(
            f"exhaustion: {allowed} allowed where {exhaustion.expected} fit in {available}"
        )
    return exhaustion


# --- output ---------------------------------------------------------------------------------


def _count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if values else "n/a"


def _times(value: float, target: float) -> str:
    return f"{value / target:.2f}x" if math.isfinite(value) else "n/a"


def _credits(value: Decimal) -> str:
    return f"{value.normalize():,f}"


def _secs(value: float) -> str:
    if math.isinf(value):
        return "not seen"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _cpu_ms(cpu: CpuUse, units: float, group: str) -> float:
    seconds = cpu.others if group == "others" else cpu.groups.get(group, 0.0)
    return seconds * 1000 / units if units else 0.0


def _cpu_parts(cpus: list[CpuUse], units: list[float], per: str) -> str:
    parts = [
        f"{group} {median([_cpu_ms(c, u, group) for c, u in zip(cpus, units, strict=True)]):.2f}"
        for group in (*GROUPS, "others")
    ]
    busy = median([c.utilisation() for c in cpus]) * 100
    server = server_ms(cpus, units)
    scale = 1000 if per.startswith("1000") else 1
    return (
        f"CPU ms per {per}: "
        + ", ".join(parts)
        + f"; machine {busy:.0f}% busy; server {server:.2f} ms per {per}, so at most "
        f"{rate(ceiling(server, scale))} with all CPUs to itself"
    )


@dataclass
class Results:
    machine: env.Machine
    broker: Broker
    problems: list[str]
    levels: list[Level] = field(default_factory=list)
    ingest_profile: RequestProfile | None = None
    paths: list[DbPath] = field(default_factory=list)
    drain: Drain | None = None
    lags: list[LagRun] = field(default_factory=list)
    balance: BalanceCost | None = None
    balance_latencies: list[float] = field(default_factory=list)
    rounds: list[AuthRound] = field(default_factory=list)
    auth_profiles: list[RequestProfile] = field(default_factory=list)
    exhaustion: Exhaustion | None = None
    loads: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    memory: list[Memory] = field(default_factory=list)

    @property
    def lag_p99(self) -> float:
        return median([r.p(99) for r in self.lags])

    @property
    def auth_ratio(self) -> float:
        return median([r.ratio for r in self.rounds])

    @property
    def overdraw(self) -> Decimal:
        total = sum((r.overdraw for r in self.rounds), Decimal(0))
        return total + (self.exhaustion.overdraw if self.exhaustion else Decimal(0))


def ingest_line(level: Level, base: Level) -> str:
    med = level.med("rate")
    return (
        f"metering ingest, {_count(level.rows)} rows in the table: {rate(med)} median of "
        f"{len(level.runs)} runs ({_spread(level.values('rate'))}), "
        f"{med / INGEST_TARGET:.2f}x of target {rate(INGEST_TARGET)}, "
        f"{med / base.med('rate'):.2f}x of the {_count(base.rows)} rate; raw COPY "
        f"{rate(level.med('copy_rate'))} ({_spread(level.values('copy_rate'))}), ingest = "
        f"{level.med('of_copy'):.3f}x of COPY; request p50 {ms(level.med('p50'))}, "
        f"p99 {ms(level.med('p99'))}"
    )


def path_line(path: DbPath) -> str:
    return (
        f"metering ingest, the database alone: {path.label}: {rate(path.rate)} from one "
        f"connection ({path.rows:,} rows), postgres CPU {path.postgres_ms():.1f} ms per 1000 rows"
    )


def ingest_cpu_line(level: Level) -> str:
    cpus = [r.cpu for r in level.runs]
    units = [r.events / 1000 for r in level.runs]
    return f"metering ingest, {_count(level.rows)} rows: " + _cpu_parts(cpus, units, "1000 events")


def lag_line(res: Results, args: argparse.Namespace) -> str:
    pooled = [x for r in res.lags for x in r.lags]
    unresolved = sum(r.unresolved for r in res.lags)
    return (
        f"metering accepted -> reflected, paced at {rate(args.lag_rate)} "
        f"({args.lag_batch} per request): p99 {_secs(res.lag_p99)} median of {len(res.lags)} "
        f"runs ({', '.join(_secs(r.p(99)) for r in res.lags)}), "
        f"{_times(res.lag_p99, LAG_TARGET)} of target 2 s; p50 "
        f"{_secs(median([r.p(50) for r in res.lags]))}, max "
        f"{_secs(max(pooled + [math.inf] * unresolved) if pooled or unresolved else math.nan)}; "
        f"{len(pooled) + unresolved} samples, {unresolved} not seen within "
        f"{args.lag_timeout:g} s; achieved {rate(median([r.achieved for r in res.lags]))}, "
        f"most waiting for rating {max(r.backlog for r in res.lags):,} events"
    )


def drain_line(drain: Drain) -> str:
    return (
        f"metering rating capacity (backlog of {drain.events:,} events, worker alone): "
        f"{rate(drain.rate)} ({drain.seconds:.1f} s), "
        + _cpu_parts([drain.cpu], [drain.events / 1000], "1000 events")
    )


def auth_line(res: Results) -> str:
    auth = [r.auth.rate for r in res.rounds]
    get = [r.get.rate for r in res.rounds]
    return (
        f"metering authorizations, one hot customer, {len(res.rounds)} rounds: "
        f"{rate(median(auth))} ({_spread(auth)}), p50 "
        f"{ms(median([r.auth.p50 for r in res.rounds]))}, p99 "
        f"{ms(median([r.auth.p99 for r in res.rounds]))}; trivial GET {rate(median(get))} "
        f"({_spread(get)}), p99 {ms(median([r.get.p99 for r in res.rounds]))}, "
        f"{median(get) / GET_REFERENCE:.2f}x of the 1,600/s reference; authorizations = "
        f"{res.auth_ratio:.2f}x of GET (target >= {AUTH_RATIO_TARGET}, "
        f"{res.auth_ratio / AUTH_RATIO_TARGET:.2f}x of it); overdraw {res.overdraw}"
    )


def auth_cpu_lines(res: Results) -> list[str]:
    return [
        f"metering {label}: "
        + _cpu_parts(
            [getattr(r, attr).cpu for r in res.rounds],
            [getattr(r, attr).rate * getattr(r, attr).cpu.wall for r in res.rounds],
            "request",
        )
        for label, attr in (("authorizations", "auth"), ("trivial GET", "get"))
    ]


def lag_cpu_line(res: Results) -> str:
    return "metering paced ingest + rating: " + _cpu_parts(
        [r.cpu for r in res.lags], [r.achieved * r.cpu.wall / 1000 for r in res.lags], "1000 events"
    )


def exhaustion_line(ex: Exhaustion) -> str:
    return (
        f"metering hard stop: {ex.requests} authorizations of {_credits(ex.per)} credits raced "
        f"for {_credits(ex.available)} available: {ex.allowed} allowed "
        f"({_credits(ex.allowed_credits)} credits; {ex.expected} fit), overdraw "
        f"{_credits(ex.overdraw)}"
    )


def profile_line(profile: RequestProfile) -> str:
    top = sorted(profile.phases, key=lambda p: -p.seconds)[:5]
    return (
        f"metering profile, {profile.label}: {ms(profile.total)} per {profile.unit} in one "
        "process, "
        f"{profile.statements:.0f} SQL statements through Django ({ms(profile.sql)}); "
        + "; ".join(f"{p.name} {ms(p.seconds)}" for p in top)
    )


def _met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def verdict_line(res: Results) -> str:
    base = res.levels[0] if res.levels else None
    parts = []
    if base:
        parts.append(
            f"ingest {_met(base.med('rate') >= INGEST_TARGET)} "
            f"({base.med('rate') / INGEST_TARGET:.2f}x of 25,000/s at {_count(base.rows)} rows"
            + "".join(
                f", {level.med('rate') / INGEST_TARGET:.2f}x at {_count(level.rows)}"
                for level in res.levels[1:]
            )
            + ")"
        )
    if res.lags:
        parts.append(
            f"accepted -> reflected {_met(res.lag_p99 < LAG_TARGET)} (p99 {_secs(res.lag_p99)})"
        )
    if res.rounds:
        parts.append(
            f"authorizations {_met(res.auth_ratio >= AUTH_RATIO_TARGET and res.overdraw == 0)} "
            f"({res.auth_ratio:.2f}x of GET, overdraw {res.overdraw})"
        )
    return "metering verdict: " + "; ".join(parts) + f"; {len(res.problems)} correctness problems"


def _profile_table(profiles: list[RequestProfile]) -> list[str]:
    lines = []
    for profile in profiles:
        lines += [
            "",
            f"Profile of `{profile.label}`: "
            + (
                profile.intro
                or f"{profile.requests} requests one after another in one process through "
                "Django's test client (the view, middleware and SQL that gunicorn runs; the "
                "timers cost a little)"
            )
            + f": {ms(profile.total)} per {profile.unit}, {profile.statements:.1f} SQL "
            f"statements per {profile.statements_per or profile.unit} through Django's cursors "
            f"({ms(profile.sql)} per {profile.unit}).",
            "",
            f"| step | time per {profile.unit} | of which SQL | statements per "
            f"{profile.statements_per or profile.unit} |",
            "| --- | ---: | ---: | ---: |",
        ]
        for phase in profile.phases:
            if phase.seconds >= 0.00005 or phase.statements:
                lines.append(
                    f"| {phase.name} | {ms(phase.seconds)} | {ms(phase.sql)} "
                    f"| {phase.statements:.1f} |"
                )
    return lines


SERVER = ("web", "worker", "postgres")


def server_ms(cpus: list[CpuUse], units: list[float]) -> float:
    """Median CPU milliseconds per unit of the server side: web, worker and postgres."""
    return median([sum(_cpu_ms(c, u, g) for g in SERVER) for c, u in zip(cpus, units, strict=True)])


def ceiling(per_unit_ms: float, scale: float) -> float:
    """Units/s if the server had every CPU of the machine to itself."""
    return (os.cpu_count() or 1) * 1000 / per_unit_ms * scale if per_unit_ms else 0.0


def _cpu_row(label: str, cpus: list[CpuUse], units: list[float], scale: float) -> str:
    cells = [
        f"{median([_cpu_ms(c, u, g) for c, u in zip(cpus, units, strict=True)]):.2f}"
        for g in (*GROUPS, "others")
    ]
    busy = median([c.utilisation() for c in cpus]) * 100
    server = server_ms(cpus, units)
    return (
        f"| {label} | "
        + " | ".join(cells)
        + f" | {busy:.0f}% | {server:.2f} | {ceiling(server, scale):,.0f}/s |"
    )


CPU_HEADER = [
    "| CPU ms per unit | web (gunicorn) | worker (celery) | postgres | clients | bench | others "
    "| machine busy | server (web + worker + postgres) | server alone on all CPUs, at most |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def markdown(res: Results, args: argparse.Namespace, analysis: list[str]) -> str:
    m = res.machine
    lines = [
        "## Metering over HTTP: ingest, accepted -> balance, authorizations",
        "",
        "Targets: durable ingest through `POST /api/v1/events` (1000 per request, dedup on) "
        "at least 25,000 events/s, also shown as a ratio to raw `COPY` in the same run; "
        "accepted -> reflected in `GET .../balance` p99 under 2 s while ingesting 5,000 "
        "events/s; `POST /api/v1/authorizations` on one hot customer with 32 concurrent "
        "clients at least half the rate of a trivial DRF GET served by the same server in "
        "the same run, zero overdraw.",
        "",
        f"- Date: {m.date}",
        f"- Machine: {m.describe()}",
        f"- Load average (1 min) at the start of the measured runs: median "
        f"{median(res.loads):.1f}, {_spread(res.loads, '{:.1f}')} (the machine is shared: "
        "the `others` column below is CPU that no process of this benchmark used)",
        f"- Command: `{args.command_line}` (or `make bench BENCH_ARGS=metering`); "
        f"{res.elapsed / 60:.1f} minutes",
        f"- Services, started by the benchmark on its own database and stopped at the end: "
        f"`gunicorn billing_portal.wsgi --workers {args.web_workers} --threads "
        f"{args.web_threads} --access-logfile -` (the Procfile's line, its control socket "
        "off; each request on a new connection) "
        f"on a free loopback port and `celery -A "
        f"billing_portal worker --concurrency {args.worker_concurrency}`, both with "
        f"`DEBUG=false` and `API_RATE_LIMIT={args.rate_limit}`; broker: "
        f"{res.broker.description}; `CACHE_URL`: the broker's Redis database (or files "
        "without Redis), shared by both as in production",
        "- Clients: separate processes without Django, speaking HTTP/1.0 to 127.0.0.1, each "
        "bounded by a request count and a deadline; every figure is the median of the runs "
        "and the spread is min-max.",
    ]
    if res.levels:
        base = res.levels[0]
        lines += [
            "",
            "### 1. Durable ingest",
            "",
            f"{args.clients} client processes in a closed loop, {args.batch} new events per "
            f"request (random 128-bit identifiers, spread over {args.customers} customers), "
            f"{args.runs} runs of {args.duration:g} s (after {args.warmup:g} s warm-up) at "
            "each table size. The table is first filled by `COPY` to the size shown; each "
            "run's events are deleted after it, so every run of a size starts from the same "
            "table. Reference, in the same run: the rows the API just stored, `COPY`ed "
            "(binary, one stream) into a scratch table created `LIKE metering_meterevent "
            "INCLUDING ALL` (same columns, unique and other indexes; no foreign keys) that "
            "holds the same pre-loaded rows. No worker runs during these runs (rating is "
            "figure 2).",
            "",
            "| rows in table | events/s | spread | vs 25,000/s | vs "
            f"{_count(base.rows)} | raw COPY rows/s | ingest / COPY | request p50 | request "
            "p99 |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for level in res.levels:
            med = level.med("rate")
            lines.append(
                f"| {level.rows:,} | {med:,.0f} | {_spread(level.values('rate'))} "
                f"| {med / INGEST_TARGET:.2f}x | {med / base.med('rate'):.2f}x "
                f"| {level.med('copy_rate'):,.0f} | {level.med('of_copy'):.3f} "
                f"| {ms(level.med('p50'))} | {ms(level.med('p99'))} |"
            )
        lines += [
            "",
            "CPU per 1000 events accepted, in milliseconds, measured from `/proc` over the "
            "measured window (`others`: the machine's busy time that none of these processes "
            "used, i.e. other tenants):",
            "",
            *CPU_HEADER,
        ]
        for level in res.levels:
            lines.append(
                _cpu_row(
                    f"ingest, {_count(level.rows)} rows, per 1000 events",
                    [r.cpu for r in level.runs],
                    [r.events / 1000 for r in level.runs],
                    1000,
                )
            )
        if res.drain:
            lines.append(
                _cpu_row(
                    "rating (backlog drain), per 1000 events",
                    [res.drain.cpu],
                    [res.drain.events / 1000],
                    1000,
                )
            )
        if res.paths:
            lines += [
                "",
                f"Where the database's share goes: the rows of the last {_count(base.rows)} "
                "run written again from the benchmark's own connection (no HTTP, no "
                f"validation), {args.batch} per statement and transaction, each way adding one "
                "cost of the ingest's statement; postgres CPU from `/proc` (its backends, WAL "
                "writer and checkpointer).",
                "",
                "| how | rows/s, one connection | postgres CPU per 1000 rows |",
                "| --- | ---: | ---: |",
            ]
            lines += [
                f"| {p.label} | {p.rate:,.0f} | {p.postgres_ms():.1f} ms |" for p in res.paths
            ]
        if res.ingest_profile:
            lines += _profile_table([res.ingest_profile])
    if res.lags:
        lines += [
            "",
            "### 2. Accepted -> reflected in the balance",
            "",
            f"{args.lag_clients} client processes send {args.lag_batch}-event requests on a "
            f"fixed schedule adding up to {args.lag_rate:,.0f} events/s for "
            f"{args.lag_duration:g} s (after {args.warmup:g} s warm-up); the worker rates what "
            "each accepted batch enqueues (no beat). The last event of every request is a "
            "sample: its lag runs from the client receiving the 202 to the start of the first "
            "query (every 20 ms) that sees its `EventRating`, which commits in the "
            "transaction that writes the event's ledger entries and `PeriodUsage`, the rows "
            "`GET .../balance` reads. After each run every customer's `GET .../balance` is "
            "checked: period `used` = `PeriodUsage` = the sum of the period's ratings.",
            "",
            "| run | samples | p50 | p99 | max | not seen | achieved events/s | most waiting "
            "for rating | request p99 | load |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for i, run in enumerate(res.lags):
            lines.append(
                f"| {i + 1} | {len(run.lags) + run.unresolved} | {_secs(run.p(50))} "
                f"| {_secs(run.p(99))} | {_secs(run.p(100))} | {run.unresolved} "
                f"| {run.achieved:,.0f} | {run.backlog:,} | {ms(run.p99_request)} "
                f"| {run.load:.1f} |"
            )
        lines += [
            "",
            f"p99 (median of runs): {_secs(res.lag_p99)} = {_times(res.lag_p99, LAG_TARGET)} of "
            "the 2 s target.",
        ]
        if res.drain:
            lines.append(
                f"Rating capacity, measured first: a backlog of {res.drain.events:,} events "
                f"queued with the worker stopped drained in {res.drain.seconds:.1f} s once it "
                f"started: {res.drain.rate:,.0f} events/s."
            )
        lines += ["", *CPU_HEADER]
        lines.append(
            _cpu_row(
                "paced ingest + rating, per 1000 events",
                [r.cpu for r in res.lags],
                [r.achieved * r.cpu.wall / 1000 for r in res.lags],
                1000,
            )
        )
        if res.drain and res.drain.profile:
            lines += _profile_table([res.drain.profile])
        if res.balance:
            lines += [
                "",
                f"`GET .../balance` (median of 20, one at a time): {ms(res.balance.busy)} for "
                f"a customer with {res.balance.events:,} rated events in the period, "
                f"{ms(res.balance.fresh)} for one with none.",
            ]
    if res.rounds:
        auth = [r.auth.rate for r in res.rounds]
        get = [r.get.rate for r in res.rounds]
        auth_p99 = median([r.auth.p99 for r in res.rounds])
        get_p99 = median([r.get.p99 for r in res.rounds])
        lines += [
            "",
            "### 3. Authorizations on one hot customer",
            "",
            f"{args.auth_clients} concurrent clients (threads in "
            f"{min(max(args.clients, args.lag_clients, 4), args.auth_clients)} processes), "
            f"each request on a new connection. Per round, for {args.auth_duration:g} s each "
            f"(after {args.warmup:g} s warm-up), in alternating order: "
            f"`POST /api/v1/authorizations` (an estimate of {AUTH_VALUE} `llm.tokens`, "
            "model small: 0.5 credits, held; a new identifier each) on one fresh customer on "
            "the hard-stop plan with 1,000,000 paid credits, and `GET /api/v1/customers/{id}` "
            "of the same customer, served by the same gunicorn.",
            "",
            "| round | authorizations/s | p50 | p99 | trivial GET/s | p50 | p99 | ratio | "
            "allowed | load |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for i, r in enumerate(res.rounds):
            lines.append(
                f"| {i + 1} | {r.auth.rate:,.0f} | {ms(r.auth.p50)} | {ms(r.auth.p99)} "
                f"| {r.get.rate:,.0f} | {ms(r.get.p50)} | {ms(r.get.p99)} | {r.ratio:.2f} "
                f"| {r.allowed:,} | {r.auth.load:.1f} |"
            )
        lines += [
            f"| **median** | **{median(auth):,.0f}** | | **{ms(auth_p99)}** "
            f"| **{median(get):,.0f}** | | **{ms(get_p99)}** | **{res.auth_ratio:.2f}** | | |",
            "",
            f"Ratio {res.auth_ratio:.2f} = {res.auth_ratio / AUTH_RATIO_TARGET:.2f}x of the 0.5 "
            f"target; the trivial GET ran at {median(get) / GET_REFERENCE:.2f}x of the "
            "1,600/s reference.",
            "",
            *CPU_HEADER,
            _cpu_row(
                "authorization, per request",
                [r.auth.cpu for r in res.rounds],
                [r.auth.rate * r.auth.cpu.wall for r in res.rounds],
                1,
            ),
            _cpu_row(
                "trivial GET, per request",
                [r.get.cpu for r in res.rounds],
                [r.get.rate * r.get.cpu.wall for r in res.rounds],
                1,
            ),
        ]
        if res.exhaustion:
            ex = res.exhaustion
            lines += [
                "",
                f"Zero overdraw: after every round, the credits of the allowed "
                f"authorizations are at most what was available, the account's `held` equals "
                "its open holds and the allowed credits, available is not negative, and the "
                "clients' allow/deny counts equal the stored ones. Hard stop under a race: "
                f"{args.auth_clients} clients sent {ex.requests} authorizations of "
                f"{_credits(ex.per)} credits against {_credits(ex.available)} available: "
                f"{ex.allowed} allowed ({_credits(ex.allowed_credits)} credits; {ex.expected} "
                f"fit), overdraw {_credits(ex.overdraw)}.",
            ]
        lines += _profile_table(res.auth_profiles)
    sampled = [mem for mem in res.memory if len(mem.samples) > 1]
    if sampled:
        lines += [
            "",
            "### Memory",
            "",
            "Target: ingesting a million events in one run does not grow a worker's memory. "
            "Resident memory (`VmRSS`) of the largest process of each service, sampled once "
            "it is warm (after the first ingest run; after the rating backlog) and again at "
            "the end of its figure:",
            "",
            "| service | warm | at the end | events between | growth |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for mem in sampled:
            lines.append(
                f"| {mem.service} | {mem.largest(0):.1f} MiB | {mem.largest(-1):.1f} MiB "
                f"| {mem.events:,} | {mem.growth * 100:+.1f}% |"
            )
    lines += [
        "",
        "Checked at the end: `ledger.reconcile.run_checks()` over the whole benchmark "
        "database (ledger invariants, every event rated exactly once and charged as rated): "
        + (
            "all clean."
            if not res.problems
            else f"**{len(res.problems)} problems**: {'; '.join(res.problems[:5])}"
        ),
    ]
    if analysis:
        lines += ["", *analysis]
    return "\n".join(lines)


def _group(cpus: list[CpuUse], units: list[float], group: str) -> float:
    return median([_cpu_ms(c, u, group) for c, u in zip(cpus, units, strict=True)])


def _path(res: Results, start: str) -> DbPath | None:
    return next((p for p in res.paths if p.label.startswith(start)), None)


def _ingest_analysis(res: Results, args: argparse.Namespace) -> list[str]:
    base = res.levels[0]
    cpus = [r.cpu for r in base.runs]
    units = [r.events / 1000 for r in base.runs]
    web, pg = _group(cpus, units, "web"), _group(cpus, units, "postgres")
    server = server_ms(cpus, units)
    cap = ceiling(server, 1000)
    others = median([c.others / c.busy * 100 if c.busy else 0.0 for c in cpus])
    budget = (os.cpu_count() or 1) * 1000 / (INGEST_TARGET / 1000)
    missed = [level for level in res.levels if level.med("rate") < INGEST_TARGET]
    status = ", ".join(
        f"{'met' if level.med('rate') >= INGEST_TARGET else 'missed'} at "
        f"{_count(level.rows)} rows ({level.med('rate') / INGEST_TARGET:.2f}x)"
        for level in res.levels
    )
    lines = [
        f"**Ingest: {status}.** Per 1000 events accepted with {_count(base.rows)} rows in the "
        "table the server "
        f"spent {web:.0f} ms of CPU in gunicorn and {pg:.0f} ms in PostgreSQL ({server:.0f} "
        f"ms). {os.cpu_count()} CPUs give {budget * INGEST_TARGET / 1000:,.0f} ms of CPU per "
        f"second, so with the machine to itself the server could accept at most about "
        f"{cap:,.0f} events/s ({cap / INGEST_TARGET:.2f}x of the target), before the load "
        f"generator and, here, other tenants ({others:.0f}% of the busy CPU time in these "
        f"runs) take their share. The target needs the server's cost below {budget:.0f} ms "
        "per 1000 events with nothing else running, and well below it to leave headroom."
        + (
            f" The margin is thin: the ceiling is {cap / INGEST_TARGET:.2f}x of the target, so "
            "other load on the machine (other tenants, or rating the same events) takes the "
            "rate below 25,000/s."
            if not missed and cap < 1.5 * INGEST_TARGET
            else ""
        ),
    ]
    copy, noq = _path(res, "raw"), _path(res, "the ingest statement without foreign keys and")
    nofk, prod = (
        _path(res, "the ingest statement without foreign keys ("),
        _path(res, "the ingest statement as"),
    )
    if copy and nofk and prod:
        fk = prod.postgres_ms() - nofk.postgres_ms()
        queue_cost = f"{nofk.postgres_ms() - noq.postgres_ms():.1f}" if noq else "n/a"
        lines += [
            "",
            f"- Database: raw `COPY` costs {copy.postgres_ms():.1f} ms of PostgreSQL CPU per "
            f"1000 rows, the ingest statement without foreign keys "
            f"{nofk.postgres_ms():.1f} ms (its rating-queue rows {queue_cost} ms of that), and "
            f"as it runs, with the foreign keys checked, {prod.postgres_ms():.1f} ms. The "
            "foreign-key checks (three per event: `customer` and `meter` on the event, "
            "`event` on its queue row, each a per-row trigger running a `SELECT ... FOR KEY "
            f"SHARE` on the parent row) are {fk / max(prod.postgres_ms(), 1e-9) * 100:.0f}% "
            f"of the statement's database CPU; from one connection the statement writes "
            f"{prod.rate:,.0f} rows/s with them and {nofk.rate:,.0f} without (`COPY`: "
            f"{copy.rate:,.0f}).",
        ]
    profile = res.ingest_profile
    if profile:
        validate = profile.phase("validate each event").seconds
        digest = profile.phase("content hash (SHA-256) per event").seconds
        insert = profile.phase("INSERT ... ON CONFLICT + queue rows (psycopg)").seconds
        commit = profile.phase("COMMIT").seconds
        lines.append(
            f"- Web worker (the profile, one 1000-event request): validating each event in "
            f"Python {ms(validate + digest)} (the SHA-256 content hash {ms(digest)} of it), the "
            f"INSERT call {ms(insert)} (building ten Python lists, encoding them and waiting "
            f"for the server), COMMIT {ms(commit)} (waiting for the WAL flush, the worker "
            f"idle), out of {ms(profile.total)}."
        )
    last = res.levels[-1]
    if len(res.levels) > 1:
        growth = last.med("rate") / base.med("rate")
        copy_growth = last.med("copy_rate") / base.med("copy_rate")
        ratios = ", ".join(f"{level.med('of_copy'):.3f}" for level in res.levels)
        lines.append(
            f"- Cost growth: with {last.rows:,} rows in the table the rate is {growth:.2f}x "
            f"the {base.rows:,}-row rate, and `COPY` into a scratch table of the same size, "
            f"in the same runs, {copy_growth:.2f}x; ingest / `COPY` is {ratios} at "
            + ", ".join(_count(level.rows) for level in res.levels)
            + " rows. "
            + (
                "Ingest slows no more than a raw `COPY` does: what changes between the sizes "
                "is the table (deeper indexes, less of them cached) and this shared "
                "machine's load, not the ingest path."
                if growth >= 0.85 * copy_growth
                else "Ingest slows more than a raw `COPY` into a table of the same size: the "
                "extra per-row work grows with the table (the `ON CONFLICT` probe of the "
                "unique (customer, identifier) index, which random identifiers hit all over)."
            )
        )
    thin = cap < 1.5 * INGEST_TARGET
    if missed or thin:
        fix = []
        if copy and nofk and prod:
            fix.append(
                "1. Take the per-row foreign-key checks off the hot insert: "
                "`RatingQueue.event` with `db_constraint=False` (the queue row is written by "
                "the statement that writes its event), and the same for `MeterEvent.customer` "
                "and `MeterEvent.meter` (the batch was just validated against both, and both "
                "are `PROTECT` references to rows never deleted while events exist; a "
                "reconcile check can look for orphans instead). Expected: about "
                f"{prod.postgres_ms() - nofk.postgres_ms():.0f} ms less PostgreSQL CPU per "
                f"1000 events, {(prod.postgres_ms() - nofk.postgres_ms()) / server * 100:.0f}% "
                "of the server's cost, which would raise the all-CPU ceiling from about "
                f"{cap:,.0f} to about "
                f"{ceiling(server - (prod.postgres_ms() - nofk.postgres_ms()), 1000):,.0f} "
                "events/s."
            )
        fix += [
            f"{len(fix) + 1}. Validate in C: decode the body with a typed `msgspec.Struct` per "
            "event (required fields, types, the decimal value and the timestamp parsed by "
            "msgspec) and keep Python only for the checks against the batch's customers, "
            "meters and dimensions.",
            f"{len(fix) + 2}. Once the CPU cost is down, let waits overlap: more gunicorn "
            f"workers than CPUs (`WEB_CONCURRENCY` 4-5 on {os.cpu_count()} CPUs, gunicorn's "
            "2 x CPUs + 1), so a worker waiting for its INSERT or its COMMIT's WAL flush does "
            f"not leave a CPU idle; with {args.web_workers} workers on "
            f"{os.cpu_count()} CPUs it does whenever nothing else is runnable. This helps "
            "only on a machine with CPU to spare, which this shared one rarely has.",
        ]
        heading = "What would fix it:" if missed else "What would give it headroom:"
        lines += ["", heading, "", *fix]
    return lines


def _lag_analysis(res: Results, args: argparse.Namespace) -> list[str]:
    p99 = res.lag_p99
    met = p99 < LAG_TARGET
    cpus = [r.cpu for r in res.lags]
    units = [r.achieved * r.cpu.wall / 1000 for r in res.lags]
    server = server_ms(cpus, units)
    need = args.lag_rate * server / 1_000_000
    backlog = max(r.backlog for r in res.lags)
    achieved = median([r.achieved for r in res.lags])
    short = (
        f" The clients achieved only {achieved:,.0f} of the {args.lag_rate:,.0f} events/s "
        "asked for: the server could not take requests as fast as the schedule sent them."
        if achieved < 0.95 * args.lag_rate
        else ""
    )
    lines = [
        f"**Accepted -> reflected: {'met' if met else 'missed'}.** The lag is the wait for "
        f"rating. In the paced runs the events waiting for rating grew to {backlog:,} and the "
        f"lag with them (p50 {_secs(median([r.p(50) for r in res.lags]))}, p99 "
        f"{_secs(p99)}). Ingest at {args.lag_batch} per request plus rating cost the server "
        f"{server:.0f} ms of CPU per 1000 events (web "
        f"{_group(cpus, units, 'web'):.0f}, worker {_group(cpus, units, 'worker'):.0f}, "
        f"PostgreSQL {_group(cpus, units, 'postgres'):.0f}), so {args.lag_rate:,.0f} events/s "
        f"need {need:.2f} of the machine's {os.cpu_count()} CPUs before anyone else runs. "
        "Rating needs headroom to keep the lag short: with capacity at twice the arrival rate "
        "an event waits about one batch; below the arrival rate the queue, and the lag, grow "
        "for as long as the load lasts." + short,
    ]
    if res.drain:
        d = res.drain
        lines.append("")
        lines.append(
            f"- Rating alone drained a backlog at {d.rate:,.0f} events/s "
            f"({d.rate / args.lag_rate:.2f}x of the arrival rate), costing "
            f"{_cpu_ms(d.cpu, d.events / 1000, 'worker'):.0f} ms of worker CPU and "
            f"{_cpu_ms(d.cpu, d.events / 1000, 'postgres'):.0f} ms of PostgreSQL CPU per 1000 "
            "events: rating, not ingest, is the expensive half."
        )
    profile = res.drain.profile if res.drain else None
    if profile:
        top = sorted((p for p in profile.phases if p.name != "COMMIT"), key=lambda p: -p.seconds)[
            :4
        ]
        python = profile.total - profile.sql - profile.phase("COMMIT").seconds
        lines.append(
            f"- Where rating's time goes (profile, per 1000 events, {ms(profile.total)}): "
            + "; ".join(f"{p.name} {ms(p.seconds)} (SQL {ms(p.sql)})" for p in top)
            + f"; COMMIT {ms(profile.phase('COMMIT').seconds)}. "
            f"{python / profile.total * 100 if profile.total else 0:.0f}% of it is Python. "
            "Rating reads its events as tuples in the statement that dequeues them and "
            "writes ratings, rollups and the ledger's entries as arrays (`unnest`); what "
            "is left per event is Python: pricing, the draw-down over the account's "
            "grants and one or two `LedgerEntry` objects."
        )
    if not met:
        web_1000 = (
            _group(
                [r.cpu for r in res.levels[0].runs],
                [r.events / 1000 for r in res.levels[0].runs],
                "web",
            )
            if res.levels
            else None
        )
        lines += [
            "",
            "What would fix it:",
            "",
            "1. Write the ledger entries set-based, as rating now writes its ratings and "
            "rollups: the array `INSERT ... SELECT FROM unnest(...)` instead of a "
            "`LedgerEntry` instance per entry and `bulk_create`.",
            "2. Book the ledger per batch where the invariants allow it: one consume entry per "
            "grant and one overage entry per batch, each event's `EventRating` keeping its "
            "credits and the batch operation (the `event_credits_equal_its_entries` check "
            "would then compare per operation).",
            "3. Keep the worker's connection: ingest sends a rating task only when none is "
            "waiting (a flag in the shared cache), but Celery's Django fixup still closes the "
            "worker's database connection after every task unless `CELERY_DB_REUSE_MAX` is "
            "set, so each task opens a new one.",
        ]
        if web_1000 is not None:
            web_100 = _group(cpus, units, "web")
            lines.append(
                f"4. Clients that can should send bigger batches: at {args.lag_batch} events "
                f"per request the web spent {web_100:.0f} ms of CPU per 1000 events, at "
                f"{args.batch} per request (figure 1) {web_1000:.0f} ms."
            )
    return lines


def _auth_analysis(res: Results, args: argparse.Namespace) -> list[str]:
    auth_cpus = [r.auth.cpu for r in res.rounds]
    auth_units = [r.auth.rate * r.auth.cpu.wall for r in res.rounds]
    get_cpus = [r.get.cpu for r in res.rounds]
    get_units = [r.get.rate * r.get.cpu.wall for r in res.rounds]
    auth_ms, get_ms = server_ms(auth_cpus, auth_units), server_ms(get_cpus, get_units)
    met = res.auth_ratio >= AUTH_RATIO_TARGET and res.overdraw == 0
    lines = [
        f"**Authorizations: {'met' if met else 'missed'}, overdraw {res.overdraw}.** An "
        f"authorization cost {auth_ms:.1f} ms of server CPU against {get_ms:.1f} ms for the "
        f"trivial GET ({auth_ms / get_ms if get_ms else 0:.1f}x): as each rate is at most the "
        "CPUs divided by its cost, the ratio would be about "
        f"{get_ms / auth_ms if auth_ms else 0:.2f} even with the machine to themselves; "
        f"measured {res.auth_ratio:.2f}. (The GET itself tops out near "
        f"{ceiling(get_ms, 1):,.0f}/s here even alone: API-key authentication, a customer "
        "read and a new connection per request.) The hot account's row lock is not what "
        "limits it "
        f"over HTTP: the {args.web_threads} threads of a worker that authorize for one "
        "customer at once share the ledger's transactions (`ledger.combiner`), so at most "
        f"{args.web_workers} transactions, one per worker, wait for it.",
    ]
    if len(res.auth_profiles) == 2:
        auth, get = res.auth_profiles
        lines.append("")
        lines.append(
            f"- The profile: {auth.statements:.0f} statements per authorization through "
            f"Django's cursors against {get.statements:.0f} for the GET: the API key, then "
            "one query for the customer, an earlier answer for the identifier and the plan "
            "in force; the rate table comes from a 5-second cache; the hold is the ledger's "
            "batch (its own four round trips: the account lock with BEGIN, one pipelined "
            "read, one pipelined write that also stores the authorization, and the COMMIT, "
            f"{ms(auth.phase(HOLD_PHASE).seconds)}); "
            f"{ms(auth.total)} per authorization against "
            f"{ms(get.total)} per GET in one process."
        )
    if not met:
        lines += [
            "",
            "What would fix it:",
            "",
            "1. Decide once: pass the locked account and the available credits `_decide` "
            "computed into `hold_create` (or let `hold_create` decide and return the denial), "
            "dropping the second account lock, the second grant sum and the savepoint pair.",
            "2. Cache what rarely changes, per process for a few seconds or until a change "
            "signal: the rate table (three statements), the customer's active subscription "
            "and current period (two), the API key row (one).",
            "3. One round trip under the lock: write the hold, its operation, its entry, the "
            "account's `held` and the authorization in one statement (a CTE) or one PL/pgSQL "
            "function, as the ledger notes propose for hold + capture.",
            "",
            "Together these take an authorization from about 22 round trips to about 5 "
            "(customer, lock + decide + write, commit), which is what it takes to come within "
            "2x of a GET that needs two plus the connection handling both pay.",
        ]
    return lines


def analysis_text(res: Results, args: argparse.Namespace) -> list[str]:
    """Why each figure lands where it does, from this run's own measurements."""
    lines = ["### Why, and what would fix it", "", "From this run's figures above."]
    if res.levels:
        lines += ["", *_ingest_analysis(res, args)]
    if res.lags:
        lines += ["", *_lag_analysis(res, args)]
    if res.rounds:
        lines += ["", *_auth_analysis(res, args)]
    return lines


# --- entry point -------------------------------------------------------------------------------


def _levels(value: str) -> list[int]:
    return [int(x.replace("_", "")) for x in value.split(",") if x.strip()]


QUICK = {
    "runs": 2,
    "duration": 3.0,
    "levels": list(QUICK_LEVELS),
    "lag_duration": 8.0,
    "backlog": 10_000,
    "auth_duration": 3.0,
    "profile_requests": 3,
}
FULL = {
    "runs": 3,
    "duration": 5.0,
    "levels": list(DEFAULT_LEVELS),
    "lag_duration": 15.0,
    "backlog": 40_000,
    "auth_duration": 5.0,
    "profile_requests": 5,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (about 3 minutes)")
    parser.add_argument("--runs", type=int, help="runs per figure; figures are medians (3)")
    parser.add_argument("--duration", type=float, help="measured seconds per ingest run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds (1)")
    parser.add_argument(
        "--levels", type=_levels, help="rows in the events table, comma-separated (10k,100k,1M)"
    )
    parser.add_argument("--clients", type=int, default=4, help="ingest client processes (4)")
    parser.add_argument("--batch", type=int, default=1000, help="events per ingest request")
    parser.add_argument("--customers", type=int, default=20, help="ingest customers (20)")
    parser.add_argument("--lag-rate", type=float, default=5000.0, help="paced events/s (5000)")
    parser.add_argument("--lag-batch", type=int, default=100, help="events per paced request")
    parser.add_argument("--lag-clients", type=int, default=4, help="paced client processes (4)")
    parser.add_argument("--lag-duration", type=float, help="paced seconds per run (15)")
    parser.add_argument(
        "--lag-timeout", type=float, default=45.0, help="seconds to wait for a sample (45)"
    )
    parser.add_argument("--backlog", type=int, help="events queued to time rating (40000)")
    parser.add_argument("--auth-clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--auth-duration", type=float, help="measured seconds per phase (5)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument(
        "--web-threads",
        type=int,
        default=8,
        help="gunicorn threads per worker (8, as the Procfile)",
    )
    parser.add_argument(
        "--worker-concurrency", type=int, default=2, help="celery worker processes (2)"
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "redis", "filesystem"),
        default="auto",
        help="Celery broker: Redis on 127.0.0.1 if it answers (auto), or the file system",
    )
    parser.add_argument(
        "--rate-limit", default="1000000/second", help="API_RATE_LIMIT for the server"
    )
    parser.add_argument(
        "--only",
        default="ingest,lag,auth",
        help="figures to measure, comma-separated: ingest,lag,auth",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-requests", type=int)
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")


def _fill_defaults(args: argparse.Namespace) -> None:
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.levels = sorted(args.levels)
    args.figures = {f.strip() for f in args.only.split(",") if f.strip()}


def run(args: argparse.Namespace) -> int:
    _fill_defaults(args)
    started = time.monotonic()
    broker = pick_broker(args.broker)
    os.environ["CELERY_BROKER_URL"] = broker.url
    os.environ.setdefault("API_RATE_LIMIT", args.rate_limit)
    try:
        return _run(args, broker, started)
    finally:
        broker.release()


def _run(args: argparse.Namespace, broker: Broker, started: float) -> int:
    env.django_setup()
    from django.db import connection

    from ledger.reconcile import run_checks

    with env.bench_database() as database_name, contextlib.ExitStack() as stack:
        machine = env.machine()
        setup = create_data(args)
        services = Services(args, dict(connection.settings_dict), broker)
        stack.callback(services.stop)
        print(
            f"metering: gunicorn on {HOST}:{services.port}, database {database_name} on "
            f"{machine.postgres} ({machine.database}), broker {broker.url}; logs in "
            f"{services.logs}",
            flush=True,
        )
        services.start_web()
        pool = stack.enter_context(ClientPool(max(args.clients, args.lag_clients, 4)))

        def groups() -> dict[str, set[int]]:
            return {
                "web": services.web.pids(),
                "worker": services.worker.pids(),
                "postgres": postgres_pids(),
                "clients": pool.pids(),
                "bench": {os.getpid()},
            }

        ctx = Context(args, setup, services, pool, CpuMeter(groups))
        res = Results(machine=machine, broker=broker, problems=ctx.problems)
        res.memory = [ctx.web_memory, ctx.worker_memory]
        if "ingest" in args.figures:
            res.levels, res.ingest_profile, res.paths = measure_ingest(ctx)
            res.loads += [r.load for level in res.levels for r in level.runs]
            base = res.levels[0]
            for level in res.levels:
                print(ingest_line(level, base), flush=True)
            for level in res.levels:
                print(ingest_cpu_line(level), flush=True)
            for db_path in res.paths:
                print(path_line(db_path), flush=True)
            if res.ingest_profile:
                print(profile_line(res.ingest_profile), flush=True)
            print(ctx.web_memory.line(), flush=True)
        if "lag" in args.figures:
            res.drain = measure_drain(ctx)
            print(drain_line(res.drain), flush=True)
            if res.drain.profile:
                print(profile_line(res.drain.profile), flush=True)
                if args.verbose:
                    for phase in res.drain.profile.phases:
                        print(
                            f"  {phase.name}: {ms(phase.seconds)} (SQL {ms(phase.sql)}, "
                            f"{phase.statements:.1f} statements per batch)",
                            flush=True,
                        )
            for i in range(args.runs):
                res.lags.append(lag_run(ctx))
                ctx.rated += round(res.lags[-1].achieved * args.lag_duration)
                ctx.worker_memory.sample(ctx.rated, services.worker.pids())
                res.balance_latencies += balance_check(ctx)
                if args.verbose:
                    r = res.lags[-1]
                    print(
                        f"  lag run {i + 1}: p50 {_secs(r.p(50))}, p99 {_secs(r.p(99))}, "
                        f"{len(r.lags)} samples, {r.unresolved} not seen, achieved "
                        f"{rate(r.achieved)}, most waiting {r.backlog:,}, load {r.load:.1f}",
                        flush=True,
                    )
            res.loads += [r.load for r in res.lags]
            print(ctx.worker_memory.line(), flush=True)
            res.balance = balance_cost(ctx)
            services.worker.stop()  # figure 3 needs no rating
            print(lag_line(res, args), flush=True)
            print(lag_cpu_line(res), flush=True)
            print(
                f"metering GET balance: {ms(res.balance.busy)} with {res.balance.events:,} "
                f"rated events in the period, {ms(res.balance.fresh)} with none",
                flush=True,
            )
        if "auth" in args.figures:
            res.rounds = measure_auth(ctx)
            res.loads += [r.auth.load for r in res.rounds]
            res.exhaustion = measure_exhaustion(ctx)
            print(auth_line(res), flush=True)
            for line in auth_cpu_lines(res):
                print(line, flush=True)
            print(exhaustion_line(res.exhaustion), flush=True)
            if args.profile:
                name, _, _ = hot_customer("hot-profile", Decimal(1_000_000))
                res.auth_profiles = profile_auth(setup, name, args.profile_requests * 10)
                for profile in res.auth_profiles:
                    print(profile_line(profile), flush=True)
        services.stop()
        ctx.problems += [f"{f.check}: {p}" for f in run_checks() for p in f.problems]
        if not ctx.problems:
            services.drop_logs()
    res.elapsed = time.monotonic() - started
    print(verdict_line(res), flush=True)
    for problem in res.problems[:20]:
        print(f"  problem: {problem}")
    if not args.no_docs:
        path = report.write_section("metering", markdown(res, args, analysis_text(res, args)))
        print(f"metering: results written to {path.relative_to(env.ROOT)}")
    return 1 if res.problems else 0
