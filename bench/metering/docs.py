"""The metering section of docs/benchmarks.md: how the run was made, each figure's
tables, the checks, and why each figure lands where it does."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import report
from bench.metering import auth, compat, e2e, ingest, lag, memory
from bench.metering.results import Results
from bench.stats import median, spread


def _header(res: Results, args: argparse.Namespace) -> list[str]:
    return [
        "## Metering over HTTP: ingest, accepted -> balance, authorizations",
        "",
        "Targets: durable ingest through `POST /api/v1/events` (1000 per request, dedup on) "
        "at least 25,000 events/s, also shown as a ratio to raw `COPY` in the same run; "
        "accepted -> reflected in `GET .../balance` p99 under 2 s while ingesting 5,000 "
        "events/s; `POST /api/v1/authorizations` on one hot customer with 32 concurrent "
        "clients at least half the rate of a trivial DRF GET served by the same server in "
        "the same run, zero overdraw; a million events rated do not grow the rating "
        "worker's memory. The vendor-compatible ingest paths are measured next to the "
        "native one in their own section below.",
        "",
        *_facts(res, args),
    ]


def _facts(res: Results, args: argparse.Namespace, cpu_table: bool = True) -> list[str]:
    """When, where and how the run was made: the machine, the command and the services."""
    m = res.machine
    shared = (
        "the `others` column below is CPU that no process of this benchmark used"
        if cpu_table
        else "hence ratios within a run"
    )
    make_args = "metering" if cpu_table else "'metering --only compat'"
    return [
        f"- Date: {m.date}",
        f"- Machine: {m.describe()}",
        f"- Load average (1 min) at the start of the measured runs: median "
        f"{median(res.loads):.1f}, {spread(res.loads, '{:.1f}')} (the machine is shared: "
        f"{shared})",
        f"- Command: `{args.command_line}` (or `make bench BENCH_ARGS={make_args}`); "
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


def compat_markdown(res: Results, args: argparse.Namespace) -> str:
    """The vendor-compatible paths' own section: writing it alone (``--only compat``)
    leaves the other figures' section as it was."""
    lines = [
        "## Metering over HTTP: vendor-compatible ingest next to the native one",
        "",
        "Target: each vendor-compatible ingest path (Stripe meter events, OpenMeter "
        "CloudEvents, Lago events, all under `/compat/<vendor>/` and translated into the one "
        f"native ingest) at least {compat.COMPAT_TARGET}x the native `POST /api/v1/events` "
        "rate at the same batch size, measured in the same run; the native `llm.call` "
        "events with `properties` (one event, three meters) are shown against native plain "
        "events the same way.",
        "",
        *_facts(res, args, cpu_table=False),
        *compat.section(res, args),
        *_checked(res.problems),
    ]
    return "\n".join(lines)


def e2e_markdown(res: Results, args: argparse.Namespace) -> str:
    """The end-to-end figure's own section (``--only e2e`` writes it alone)."""
    lines = [
        "## Metering end to end: accepted and charged",
        "",
        f"Target: {e2e.E2E_TARGET:,.0f} events/s accepted *and* reflected in their "
        "customers' balances, sustained over a million events on this machine, with batches "
        "of 1,000 and of 100 events per request.",
        "",
        *_facts(res, args),
        "- Beat (`celery -A billing_portal beat`) runs beside them in this figure, as in the "
        "Procfile.",
        *e2e.section(res, args),
        *_checked(res.problems),
    ]
    return "\n".join(lines)


def reserve_section(key: str, after: str, path: Path = report.DOC) -> None:
    """Put ``key``'s (empty) markers right after the ``after`` section, when ``key`` has
    none yet, so that its first writing lands there rather than at the end."""
    start, end = (f"<!-- bench:{key}:{edge} -->" for edge in ("start", "end"))
    after_end = f"<!-- bench:{after}:end -->"
    text = path.read_text() if path.exists() else ""
    if start in text or after_end not in text:
        return
    path.write_text(text.replace(after_end, f"{after_end}\n\n{start}\n{end}", 1))


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
