"""The metering section of docs/benchmarks.md: how the run was made, each figure's
tables, the checks, and why each figure lands where it does."""

from __future__ import annotations

import argparse

from bench.metering import auth, ingest, lag, memory
from bench.metering.results import Results
from bench.stats import median, spread


def _header(res: Results, args: argparse.Namespace) -> list[str]:
    m = res.machine
    return [
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
        f"{median(res.loads):.1f}, {spread(res.loads, '{:.1f}')} (the machine is shared: "
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


def _checked(problems: list[str]) -> list[str]:
    return [
        "",
        "Checked at the end: `ledger.reconcile.run_checks()` over the whole benchmark "
        "database (ledger invariants, every event rated exactly once and charged as rated): "
        + (
            "all clean."
            if not problems
            else f"**{len(problems)} problems**: {'; '.join(problems[:5])}"
        ),
    ]


def markdown(res: Results, args: argparse.Namespace, analysis: list[str]) -> str:
    lines = _header(res, args)
    if res.levels:
        lines += ingest.section(res, args)
    if res.lags:
        lines += lag.section(res, args)
    if res.rounds:
        lines += auth.section(res, args)
    lines += memory.section(res.memory)
    lines += _checked(res.problems)
    if analysis:
        lines += ["", *analysis]
    return "\n".join(lines)
