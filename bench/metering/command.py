"""``python -m bench metering``: the options, and the run from start to finish: the
database and data, the services, the client pool, each figure in turn, the checks, the
verdict and the docs."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable

from bench import env, options, report
from bench.metering import auth, compat, e2e, ingest, lag, rating
from bench.metering.analysis import analysis_text
from bench.metering.clients import HOST, ClientPool
from bench.metering.context import Context
from bench.metering.cpu import CpuMeter
from bench.metering.data import create_data, postgres_pids
from bench.metering.docs import compat_markdown, e2e_markdown, markdown, reserve_section
from bench.metering.results import Results, verdict_line
from bench.metering.stack import Broker, Services, pick_broker

FIGURES = ("ingest", "compat", "lag", "auth", "memory", "e2e")
# The "metering" section; compat and e2e have their own.
METERING_FIGURES = {"ingest", "lag", "auth", "memory"}
DEFAULT_LAYOUTS = ((8, 4), (32, 1))  # gunicorn workers x threads, besides the configured one
DEFAULT_LEVELS = (10_000, 100_000, 1_000_000)
QUICK_LEVELS = (10_000, 100_000)
QUICK = {
    "runs": 2,
    "duration": 3.0,
    "levels": list(QUICK_LEVELS),
    "lag_duration": 8.0,
    "backlog": 10_000,
    "auth_duration": 3.0,
    "layout_runs": 1,
    "memory_events": 200_000,
    "profile_requests": 3,
    "e2e_events": 100_000,
}
FULL = {
    "runs": 3,
    "duration": 5.0,
    "levels": list(DEFAULT_LEVELS),
    "lag_duration": 15.0,
    "backlog": 40_000,
    "auth_duration": 5.0,
    "layout_runs": 2,
    "memory_events": 1_000_000,
    "profile_requests": 5,
    "e2e_events": 1_000_000,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (about 3 minutes)")
    parser.add_argument("--runs", type=int, help="runs per figure; figures are medians (3)")
    parser.add_argument("--duration", type=float, help="measured seconds per ingest run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds (1)")
    parser.add_argument(
        "--levels",
        type=options.sizes,
        help="rows in the events table, comma-separated (10k,100k,1M)",
    )
    parser.add_argument("--clients", type=int, default=4, help="ingest client processes (4)")
    parser.add_argument("--batch", type=int, default=1000, help="events per ingest request")
    parser.add_argument("--customers", type=int, default=20, help="ingest customers (20)")
    parser.add_argument("--lag-rate", type=float, default=5000.0, help="paced events/s (5000)")
    parser.add_argument(
        "--lag-high-rate",
        type=float,
        default=10000.0,
        help="paced events/s of a second set of runs (10000; 0: none)",
    )
    parser.add_argument("--lag-batch", type=int, default=100, help="events per paced request")
    parser.add_argument("--lag-clients", type=int, default=4, help="paced client processes (4)")
    parser.add_argument("--lag-duration", type=float, help="paced seconds per run (15)")
    parser.add_argument(
        "--lag-timeout", type=float, default=45.0, help="seconds to wait for a sample (45)"
    )
    parser.add_argument("--backlog", type=int, help="events queued to time rating (40000)")
    parser.add_argument("--auth-clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--auth-duration", type=float, help="measured seconds per phase (5)")
    parser.add_argument(
        "--layouts",
        type=_layouts,
        default=list(DEFAULT_LAYOUTS),
        help="gunicorn layouts (workers x threads) the authorizations are also measured "
        "against, after the configured one; comma-separated, 'none' for none (8x4,32x1)",
    )
    parser.add_argument("--layout-runs", type=int, help="rounds per gunicorn layout (2)")
    parser.add_argument(
        "--layout-duration", type=float, help="measured seconds per layout round (5)"
    )
    parser.add_argument(
        "--memory-events",
        type=_events,
        help="events the rating worker rates between its memory samples in the memory "
        "figure, queued at once (1M; --quick 200k)",
    )
    parser.add_argument(
        "--e2e-events",
        type=_events,
        help="events sent per end-to-end run (1M; --quick 100k)",
    )
    parser.add_argument(
        "--e2e-batches",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1000, 100],
        help="events per request, one end-to-end run each (1000,100)",
    )
    parser.add_argument(
        "--e2e-customers", type=int, default=1000, help="end-to-end customers (1000)"
    )
    parser.add_argument(
        "--compat-clients",
        type=int,
        default=8,
        help="concurrent clients per ingest path in the compat figure (8)",
    )
    _add_service_arguments(parser)
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"figures to measure, comma-separated: {','.join(FIGURES)}",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-requests", type=int)
    options.add_output_arguments(parser)


def _events(text: str) -> int:
    """A count of events: ``1000000``, ``1_000_000``, ``200k`` or ``1M``."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a count of events: {text!r}")
    return int(digits) * scale


def _layouts(text: str) -> list[tuple[int, int]]:
    """``8x4,32x1`` -> [(8, 4), (32, 1)]; ``none`` -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    layouts = []
    for part in text.split(","):
        workers, sep, threads = part.strip().lower().partition("x")
        if not sep or not workers.isdigit() or not threads.isdigit():
            raise argparse.ArgumentTypeError(f"not WORKERSxTHREADS: {part!r}")
        if int(workers) < 1 or int(threads) < 1:
            raise argparse.ArgumentTypeError(f"workers and threads start at 1: {part!r}")
        layouts.append((int(workers), int(threads)))
    return layouts


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
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


def _fill_defaults(args: argparse.Namespace) -> None:
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.levels = sorted(args.levels)
    if args.layout_duration is None:
        args.layout_duration = args.auth_duration
    args.figures = {f.strip() for f in args.only.split(",") if f.strip()}
    unknown = args.figures - set(FIGURES)
    if unknown or not args.figures:
        raise SystemExit(f"--only: choose among {','.join(FIGURES)} (not {args.only!r})")


def _live_rate_limit(rate: str) -> None:
    """The in-process profiles' limit: when another benchmark ran first in this process
    (``make bench``), Django read its settings before API_RATE_LIMIT was set above, and
    the profiles would meet the default limit (429)."""
    from django.conf import settings

    if settings.configured:
        from rest_framework.settings import api_settings

        api_settings.DEFAULT_THROTTLE_RATES["api_key"] = rate  # type: ignore[assignment]


def run(args: argparse.Namespace) -> int:
    _fill_defaults(args)
    started = time.monotonic()
    broker = pick_broker(args.broker)
    os.environ["CELERY_BROKER_URL"] = broker.url
    os.environ.setdefault("API_RATE_LIMIT", args.rate_limit)
    _live_rate_limit(os.environ["API_RATE_LIMIT"])
    try:
        return _run(args, broker, started)
    finally:
        broker.release()


def _cpu_groups(services: Services, pool: ClientPool) -> Callable[[], dict[str, set[int]]]:
    """The processes whose CPU each column counts, looked up afresh at every snapshot."""

    def groups() -> dict[str, set[int]]:
        return {
            "web": services.web.pids(),
            "worker": services.worker.pids(),
            "postgres": postgres_pids(),
            "clients": pool.pids(),
            "bench": {os.getpid()},
        }

    return groups


def _start(
    args: argparse.Namespace,
    broker: Broker,
    stack: contextlib.ExitStack,
    database: str,
    machine: env.Machine,
) -> Context:
    """Data, gunicorn and the client pool, each stopped by ``stack``."""
    from django.db import connection

    setup = create_data(args)
    services = Services(args, dict(connection.settings_dict), broker)
    stack.callback(services.stop)
    print(
        f"metering: gunicorn on {HOST}:{services.port}, database {database} on "
        f"{machine.postgres} ({machine.database}), broker {broker.url}; logs in "
        f"{services.logs}",
        flush=True,
    )
    services.start_web()
    pool = stack.enter_context(ClientPool(max(args.clients, args.lag_clients, 4)))
    return Context(args, setup, services, pool, CpuMeter(_cpu_groups(services, pool)))


def _measure(ctx: Context, res: Results) -> None:
    figures = ctx.args.figures
    if "ingest" in figures:
        ingest.run_figure(ctx, res)
    if "compat" in figures:
        compat.run_figure(ctx, res)
    if "lag" in figures:
        rating.run_figure(ctx, res)
        lag.run_figure(ctx, res)
    if "auth" in figures:
        auth.run_figure(ctx, res)
    if "memory" in figures:
        rating.run_memory_figure(ctx, res)
    if "e2e" in figures:
        e2e.run_figure(ctx, res)


def _run(args: argparse.Namespace, broker: Broker, started: float) -> int:
    env.django_setup()
    from ledger.reconcile import run_checks

    with env.bench_database() as database_name, contextlib.ExitStack() as stack:
        machine = env.machine()
        ctx = _start(args, broker, stack, database_name, machine)
        res = Results(machine=machine, broker=broker, problems=ctx.problems)
        ctx.web_memory.between = "after the first ingest run -> after the last (figure 1)"
        ctx.worker_memory.between = "after the rating backlog -> after the paced runs (figure 2)"
        res.memory = [ctx.web_memory, ctx.worker_memory]
        _measure(ctx, res)
        ctx.services.stop()
        ctx.problems += [f"{f.check}: {p}" for f in run_checks() for p in f.problems]
        if not ctx.problems:
            ctx.services.drop_logs()
    res.elapsed = time.monotonic() - started
    return _finish(res, args)


def _finish(res: Results, args: argparse.Namespace) -> int:
    """The verdict, and the sections of the figures measured: the metering section (the
    figures ingest, lag and auth) and the compat figure's own, each written only when its
    figures ran, so ``--only compat`` leaves the other figures' section as it was."""
    sections: list[tuple[str, Callable[[], str]]] = []
    if args.figures & METERING_FIGURES:
        sections.append(("metering", lambda: markdown(res, args, analysis_text(res, args))))
    if "compat" in args.figures:
        if not args.no_docs:
            reserve_section(compat.SECTION, after="metering")
        sections.append((compat.SECTION, lambda: compat_markdown(res, args)))
    if "e2e" in args.figures:
        if not args.no_docs:
            reserve_section(e2e.SECTION, after=compat.SECTION)
        sections.append((e2e.SECTION, lambda: e2e_markdown(res, args)))
    (key, body), *others = sections
    status = report.finish(key, verdict_line(res), res.problems, body, write=not args.no_docs)
    for key, body in others:
        if not args.no_docs:
            path = report.write_section(key, body())
            print(f"{key}: results written to {path.relative_to(env.ROOT)}")
    return status
