"""The portal dashboard at growing history sizes.

Target (performance notes): with 10 million events and 1,000 customers in the database,
the dashboard's p95 is under 150 ms and does not grow with history size.

The benchmark database is filled with ``manage.py generate_load_data`` (COPY, not the
ORM) in steps, e.g. 100k, then up to 1M, then up to 10M events over the same customers.
After each step, a sample of customers, each with a signed-in portal owner (Django test
client, ``force_login``, in this process, no network), requests the full page
``GET /portal/`` and its htmx partial (the chart and table, ``HX-Request: true``) in
several rounds; p50 and p95 per round, the median over rounds is reported. Measuring
waits while ``python -m bench metering`` runs, up to a deadline.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench import env, report
from bench.stats import median, ms, percentile

if TYPE_CHECKING:
    from django.test import Client

TARGET_P95 = 0.150  # seconds
DEFAULT_LEVELS = (100_000, 1_000_000, 10_000_000)
QUICK_LEVELS = (10_000, 100_000, 1_000_000)
KINDS = ("page", "partial")


@dataclass
class Level:
    events: int
    load_seconds: float
    p50: dict[str, list[float]] = field(default_factory=dict)  # kind -> one per round
    p95: dict[str, list[float]] = field(default_factory=dict)
    requests: int = 0
    load_average: str = ""
    waited: str = ""
    queries: list[tuple[float, str]] = field(default_factory=list)  # (seconds, sql)
    query_count: int = 0
    # The first request of each sampled customer after the load step, before any warm-up:
    # their rows read by no request yet (kind -> one time per customer).
    cold: dict[str, list[float]] = field(default_factory=dict)

    def cold_p95(self, kind: str) -> float:
        return percentile(self.cold.get(kind, []), 95)

    def med(self, which: str, kind: str) -> float:
        return median(getattr(self, which).get(kind, []))

    def spread(self, kind: str) -> str:
        values = self.p95.get(kind, [])
        return f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f}" if values else "-"


def _load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def _metering_running() -> bool:
    out = subprocess.run(["pgrep", "-f", "bench metering"], capture_output=True, text=True)
    return any(int(pid) != os.getpid() for pid in out.stdout.split())


def _wait_for_quiet(until: datetime | None) -> str:
    """Wait while the metering benchmark runs, up to ``until`` (UTC)."""
    started = time.monotonic()
    while _metering_running():
        if until is None or datetime.now(UTC) >= until:
            return "measured while `bench metering` was running"
        time.sleep(5)
    waited = time.monotonic() - started
    return f"waited {waited:.0f} s for `bench metering` to finish" if waited > 1 else ""


def _generate(events: int, customers: int, first: bool) -> float:
    from django.core.management import call_command

    out = io.StringIO()
    started = time.monotonic()
    options = {"events": events, "stdout": out}
    if first:
        call_command("generate_load_data", customers=customers, **options)
    else:
        call_command("generate_load_data", more=True, **options)
    elapsed = time.monotonic() - started
    print(out.getvalue().rstrip().splitlines()[-1], flush=True)
    return elapsed


def _clients(sample: int, seed: int) -> list[Client]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from billing_portal.portal.models import PortalMembership
    from plans.models import Customer

    if "testserver" not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    ids = list(
        Customer.objects.filter(external_id__startswith="load-")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    chosen = random.Random(seed).sample(ids, min(sample, len(ids)))
    users = get_user_model()
    clients = []
    for customer_id in chosen:
        name = f"owner-{customer_id}@load.test"
        user = users.objects.filter(username=name).first()
        if user is None:
            user = users.objects.create_user(username=name, email=name, password=None)
            PortalMembership.objects.create(user=user, customer_id=customer_id, role="owner")
        client = Client()
        client.force_login(user)
        clients.append(client)
    return clients


def _request(client: Client, kind: str) -> float:
    headers = {"HX-Request": "true", "HX-Target": "usage"} if kind == "partial" else {}
    started = time.perf_counter()
    response = client.get("/portal/", {"range": "30"}, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET /portal/ ({kind}): HTTP {response.status_code}")
    return elapsed


def _measure(level: Level, clients: list[Client], rounds: int, repeat: int) -> None:
    for client in clients:  # cold, then it is the warm-up: connections, templates, caches
        for kind in KINDS:
            level.cold.setdefault(kind, []).append(_request(client, kind))
    print(
        f"  cold (first request per customer): page p95 {ms(level.cold_p95('page'))}, "
        f"partial p95 {ms(level.cold_p95('partial'))}",
        flush=True,
    )
    for n in range(rounds):
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(repeat):
            for client in clients:
                for kind in KINDS:
                    times[kind].append(_request(client, kind))
        for kind in KINDS:
            level.p50.setdefault(kind, []).append(percentile(times[kind], 50))
            level.p95.setdefault(kind, []).append(percentile(times[kind], 95))
            level.requests += len(times[kind])
        print(
            f"  round {n + 1}: page p95 {ms(level.p95['page'][-1])}, "
            f"partial p95 {ms(level.p95['partial'][-1])}",
            flush=True,
        )


def _profile(level: Level, client: Client) -> None:
    """The statements of one full-page request, slowest first."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        _request(client, "page")
    timed = [(float(q["time"]), " ".join(q["sql"].split())) for q in captured.captured_queries]
    level.query_count = len(timed)
    level.queries = sorted(timed, reverse=True)[:4]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=None,
        help="history sizes to measure at, ascending (default: 100k 1M 10M)",
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="10k, 100k and 1M events")
    parser.add_argument("--sample", type=int, default=20, help="customers measured")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2, help="requests per customer and round")
    parser.add_argument(
        "--wait-until",
        default="",
        help="HH:MM UTC: wait for `bench metering` to finish before measuring, up to then",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("-v", "--verbose", action="store_true")


def _deadline(text: str) -> datetime | None:
    if not text:
        return None
    hour, minute = (int(part) for part in text.split(":"))
    return datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)


def run(args: argparse.Namespace) -> int:
    env.django_setup()
    levels_wanted = args.events or list(QUICK_LEVELS if args.quick else DEFAULT_LEVELS)
    until = _deadline(args.wait_until)
    results: list[Level] = []
    machine = None
    with env.bench_database(verbosity=1 if args.verbose else 0):
        machine = env.machine()
        print(f"portal: {machine.describe()}", flush=True)
        have = 0
        for target in levels_wanted:
            print(f"portal: loading up to {target:,} events", flush=True)
            seconds = _generate(target - have, args.customers, first=have == 0)
            have = target
            level = Level(events=target, load_seconds=seconds)
            clients = _clients(args.sample, seed=target)
            level.waited = _wait_for_quiet(until)
            level.load_average = _load_average()
            _measure(level, clients, args.rounds, args.repeat)
            _profile(level, clients[0])
            results.append(level)
            _print(level, results[0])
            if not args.no_write:
                _write(results, args, machine.describe(), machine.date, levels_wanted)
    return 0 if results and results[-1].med("p95", "page") < TARGET_P95 else 1


def _print(level: Level, base: Level) -> None:
    for kind in KINDS:
        p95 = level.med("p95", kind)
        growth = p95 / base.med("p95", kind)
        print(
            f"portal {kind} @ {level.events:,} events: p50 {ms(level.med('p50', kind))}, "
            f"p95 {ms(p95)} (spread {level.spread(kind)} ms) = {p95 / TARGET_P95:.2f}x of "
            f"150 ms; {growth:.2f}x the {base.events:,}-event p95; cold p95 "
            f"{ms(level.cold_p95(kind))}",
            flush=True,
        )


def _row(level: Level, base: Level, kind: str) -> str:
    p95 = level.med("p95", kind)
    return (
        f"| {level.events:,} | {kind} | {ms(level.med('p50', kind))} | {ms(p95)} | "
        f"{level.spread(kind)} ms | {p95 / TARGET_P95:.2f}x | "
        f"{p95 / base.med('p95', kind):.2f}x | {ms(level.cold_p95(kind))} | "
        f"{level.cold_p95(kind) / TARGET_P95:.2f}x |"
    )


def _write(
    results: list[Level],
    args: argparse.Namespace,
    machine: str,
    date: str,
    wanted: list[int],
) -> None:
    base, last = results[0], results[-1]
    table = "\n".join(_row(level, base, kind) for level in results for kind in KINDS)
    notes = "\n".join(
        f"- {level.events:,} events: loaded in {level.load_seconds:.0f} s; load average "
        f"{level.load_average} while measuring" + (f"; {level.waited}" if level.waited else "")
        for level in results
    )
    queries = "\n".join(
        f"| {seconds * 1000:.1f} ms | `{sql[:160]}{'...' if len(sql) > 160 else ''}` |"
        for seconds, sql in last.queries
    )
    page = last.med("p95", "page")
    partial = last.med("p95", "partial")
    met = page < TARGET_P95 and partial < TARGET_P95
    growth = page / base.med("p95", "page")
    partial_note = "" if len(results) == len(wanted) else " (partial: run still going)"
    cold = ms(last.cold_p95("page"))
    header = (
        "| events in the database | request | p50 | p95 (warm) | p95 spread (rounds) "
        "| p95 vs 150 ms | p95 vs 1x | p95 cold | cold vs 150 ms |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    body = f"""## Portal: dashboard at 1x, 10x and 100x history{partial_note}

Target: with 10 million events and 1,000 customers in the database, the dashboard's p95
is under 150 ms and does not grow with history size.

- Date: {date}
- Machine: {machine}
- Command: `{args.command_line}`
- Data: `manage.py generate_load_data` into the benchmark database, {args.customers:,} customers
  (Starter, Pro and Team in turn) and the events spread over the past 27 days (one billing
  period), each with its rating, the hourly usage rollups and period usage. Ledger debits are
  summarized: one consume entry per customer and load step, not one per event.
- Load: {args.sample} customers, each with a signed-in portal owner (Django test client,
  `force_login`, in-process, no network); per round, {args.repeat} requests per customer of
  the full page `GET /portal/?range=30` and of its htmx partial (chart and table,
  `HX-Request: true`); {args.rounds} rounds; p50 and p95 per round, median over rounds.
  "Cold" is the first request of each sampled customer after the load step, before any
  warm-up (their rows read by no request yet; one request per customer and kind).

{header}
{table}

{notes}

Statements of one full-page request at {last.events:,} events: {last.query_count}; the slowest:

| time | statement |
| ---: | --- |
{queries}

Result: target **{"met" if met else "not met"}** at {last.events:,} events: page p95
{ms(page)} = {page / TARGET_P95:.2f}x of 150 ms (cold {cold}), partial p95 {ms(partial)} =
{partial / TARGET_P95:.2f}x; the page p95 at {last.events:,} events is {growth:.2f}x the
p95 at {base.events:,}.
"""
    path = report.write_section("portal", body)
    print(f"portal: wrote {path}", flush=True)
