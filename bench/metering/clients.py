"""HTTP load: client processes that talk to 127.0.0.1 and never load Django.

A :class:`ClientPool` keeps a few spawned processes; each run hands each one a
:class:`Job`, which it runs as ``threads`` clients, every request on a new connection.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import re
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

HOST = "127.0.0.1"  # every request goes here and nowhere else
MODELS = (("large", "input"), ("large", "output"), ("small", "input"), ("small", "output"))
AUTH_VALUE = 1000  # tokens per authorization estimate: 0.5 credits on the demo rate card


JSON = "application/json"


def http(
    port: int,
    method: str,
    path: str,
    key: str,
    body: bytes | None = None,
    timeout: float = 60.0,
    content_type: str = JSON,
) -> tuple[int, bytes]:
    """One request on a new connection, as gunicorn's sync workers serve them; status 0
    when the connection fails."""
    lines = [f"{method} {path} HTTP/1.0", f"Host: {HOST}:{port}", f"Authorization: Bearer {key}"]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
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
AUTHORIZATION = (
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


# --- the same usage, as each ingest path takes it -----------------------------------------

Built = tuple[bytes, str, str]  # body, and the last event's customer and identifier
_CALL = (
    '{"identifier":"%s","event_name":"llm.call","customer":"%s","timestamp":"%s",'
    '"properties":{"model":"%s","input_tokens":%d,"output_tokens":%d,"cached_tokens":%d}}'
)
_CLOUDEVENT = (
    '{"specversion":"1.0","id":"%s","source":"bench","type":"llm.tokens","subject":"%s",'
    '"time":"%s","data":{"value":%d,"model":"%s","token_type":"%s"}}'
)
_LAGO_EVENT = (
    '{"transaction_id":"%s","external_customer_id":"%s","code":"llm.tokens","timestamp":%d,'
    '"properties":{"value":%d,"model":"%s","token_type":"%s"}}'
)


def _usage(
    customers: tuple[str, ...], batch: int, rng: random.Random
) -> list[tuple[str, str, int, str, str]]:
    """``batch`` new events: identifier, customer, value, model and token type."""
    usage = []
    for i in range(batch):
        model, token = MODELS[i & 3]
        identifier = f"{rng.getrandbits(128):032x}"
        customer = customers[rng.randrange(len(customers))]
        usage.append((identifier, customer, rng.randint(1, 4000), model, token))
    return usage


def _rfc3339_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def native_single_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    """One native event object, not wrapped in ``events`` (``batch`` is 1)."""
    identifier, customer, value, model, token = _usage(customers, 1, rng)[0]
    body = _EVENT % (identifier, customer, _rfc3339_now(), value, model, token)
    return body.encode(), customer, identifier


def calls_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    """Native ``llm.call`` events with ``properties``: each feeds three meters."""
    stamp = _rfc3339_now()
    usage = _usage(customers, batch, rng)
    parts = [_CALL % (i, c, stamp, model, v, v // 7 + 1, v // 3) for i, c, v, model, _ in usage]
    return ('{"events":[' + ",".join(parts) + "]}").encode(), usage[-1][1], usage[-1][0]


def stripe_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    """Stripe's meter event, form-encoded as stripe-python sends it (one per request)."""
    identifier, customer, value, model, token = _usage(customers, 1, rng)[0]
    form = {
        "event_name": "llm.tokens",
        "identifier": identifier,
        "timestamp": str(int(time.time())),
        "payload[stripe_customer_id]": customer,
        "payload[value]": str(value),
        "payload[model]": model,
        "payload[token_type]": token,
    }
    return urlencode(form).encode(), customer, identifier


def _cloudevents(customers: tuple[str, ...], batch: int, rng: random.Random) -> list[str]:
    stamp = _rfc3339_now()
    return [_CLOUDEVENT % (i, c, stamp, v, m, t) for i, c, v, m, t in _usage(customers, batch, rng)]


def openmeter_batch_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    """A CloudEvents batch (a JSON array), as the OpenMeter SDK sends it."""
    return ("[" + ",".join(_cloudevents(customers, batch, rng)) + "]").encode(), "", ""


def openmeter_single_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    """One structured CloudEvent."""
    return _cloudevents(customers, 1, rng)[0].encode(), "", ""


def _lago_events(customers: tuple[str, ...], batch: int, rng: random.Random) -> list[str]:
    stamp = int(time.time())
    return [_LAGO_EVENT % (i, c, stamp, v, m, t) for i, c, v, m, t in _usage(customers, batch, rng)]


def lago_batch_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    return ('{"events":[' + ",".join(_lago_events(customers, batch, rng)) + "]}").encode(), "", ""


def lago_single_body(customers: tuple[str, ...], batch: int, rng: random.Random) -> Built:
    return ('{"event":' + _lago_events(customers, 1, rng)[0] + "}").encode(), "", ""


def _native_accepted(payload: bytes, batch: int) -> int:
    found = _COUNTS.search(payload, 0, 200)
    return int(found[1]) if found else 0


def _stripe_accepted(payload: bytes, batch: int) -> int:
    return 1 if b'"billing.meter_event"' in payload else 0


def _all_accepted(payload: bytes, batch: int) -> int:
    """204 without a body: OpenMeter's answer when no event was rejected."""
    return batch


def _lago_accepted(payload: bytes, batch: int) -> int:
    """Lago echoes every stored event (a batch's, or the single ``event``)."""
    return payload.count(b'"transaction_id"')


@dataclass(frozen=True)
class Route:
    """One ingest path: where it is, what it is sent, and what it answers on success."""

    path: str
    build: Callable[[tuple[str, ...], int, random.Random], Built]
    status: int
    accepted: Callable[[bytes, int], int]  # events stored, read from a successful answer
    content_type: str = JSON


ROUTES = {
    "native": Route("/api/v1/events", events_body, 202, _native_accepted),
    "native-single": Route("/api/v1/events", native_single_body, 202, _native_accepted),
    "native-calls": Route("/api/v1/events", calls_body, 202, _native_accepted),
    "stripe": Route(
        "/compat/stripe/v1/billing/meter_events",
        stripe_body,
        200,
        _stripe_accepted,
        "application/x-www-form-urlencoded",
    ),
    "openmeter-batch": Route(
        "/compat/openmeter/api/v1/events",
        openmeter_batch_body,
        204,
        _all_accepted,
        "application/cloudevents-batch+json",
    ),
    "openmeter-single": Route(
        "/compat/openmeter/api/v1/events",
        openmeter_single_body,
        204,
        _all_accepted,
        "application/cloudevents+json",
    ),
    "lago-batch": Route("/compat/lago/api/v1/events/batch", lago_batch_body, 200, _lago_accepted),
    "lago-single": Route("/compat/lago/api/v1/events", lago_single_body, 200, _lago_accepted),
}


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
    route: str = "native"  # ingest: which path of ROUTES, and so the body and its type

    @property
    def content_type(self) -> str:
        return ROUTES[self.route].content_type if self.kind == "ingest" else JSON

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
        route = ROUTES[job.route]
        body, customer, identifier = route.build(job.customers, job.batch, rng)
        return "POST", route.path, body, (customer, identifier)
    if job.kind == "auth":
        identifier = f"{job.tag}-{client}-{n}"
        body = (AUTHORIZATION % (job.customers[0], identifier, job.value)).encode()
        return "POST", "/api/v1/authorizations", body, None
    return "GET", f"/api/v1/customers/{job.customers[0]}", None, None


def _account(job: Job, status: int, payload: bytes, result: LoadResult) -> int:
    """Count the answer; return the events it accepted (ingest) or 1 (others), 0 on failure."""
    route = ROUTES[job.route] if job.kind == "ingest" else None
    expected = route.status if route else 200
    if status != expected:
        result.failures[str(status)] += 1
        return 0
    if route:
        accepted = route.accepted(payload, job.batch)
        result.accepted_total += accepted
        result.not_accepted += job.batch - accepted
        return accepted
    if job.kind == "auth":
        if json.loads(payload).get("decision") == "allow":
            result.allowed += 1
        else:
            result.denied += 1
    return 1


def _wait_turn(job: Job, n: int, result: LoadResult) -> bool:
    """Wait for request ``n``'s slot when paced; False once the window has closed."""
    last = job.window[1]
    now = time.time()
    if not job.interval:
        return now < last
    slot = job.start_at + job.phase + n * job.interval
    if slot >= last:
        return False
    if slot > now:
        time.sleep(slot - now)
    else:
        result.late = max(result.late, now - slot)
    return True


def _send(
    job: Job, client: int, n: int, rng: random.Random, result: LoadResult, samples: Any
) -> None:
    """One request, counted; those answered inside the window are measured."""
    first, last = job.window
    method, path, body, sample = _request(job, client, n, rng)
    began = time.time()
    started = time.perf_counter()
    status, payload = http(job.port, method, path, job.key, body, content_type=job.content_type)
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


def _client(job: Job, client: int, result: LoadResult, samples: Any) -> None:
    rng = random.Random(os.urandom(16))
    try:
        time.sleep(max(0.0, job.start_at - time.time()))
        for n in range(job.max_requests):
            if not _wait_turn(job, n, result):
                break
            _send(job, client, n, rng, result, samples)
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

    def collect(self, every: Callable[[], None] | None = None, interval: float = 0.5) -> LoadResult:
        """The jobs' results, once every client has answered; ``every`` is called about
        each ``interval`` seconds meanwhile."""
        total = LoadResult()
        while self.pending:
            left = max(1.0, self.deadline - time.time())
            try:
                _, _, result = self.outbox.get(timeout=min(left, interval) if every else left)
            except queue.Empty:
                if every is None or time.time() > self.deadline:
                    raise
                every()
                continue
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
