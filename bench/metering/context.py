"""What every figure is measured with: the options, the data, the services, the client
pool and the CPU meter; and the load jobs and checks the figures share."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.metering.clients import ClientPool, Job, LoadResult
from bench.metering.cpu import CpuMeter, CpuUse
from bench.metering.data import Setup
from bench.metering.memory import Memory
from bench.metering.stack import Services


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


def ingest_jobs(ctx: Context, start_at: float, **overrides: Any) -> list[Job]:
    """One ingest job per client process; ``clients`` and ``phase_step`` (the offset
    between the processes' paced schedules) among the overrides."""
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


def check_load(result: LoadResult, what: str, ctx: Context) -> None:
    if result.failures or result.not_accepted:
        ctx.problems.append(
            f"{what}: unexpected answers {dict(result.failures)}, "
            f"{result.not_accepted} events not accepted"
        )


def measured_load(
    ctx: Context, jobs_at: Callable[[float], list[Job]], duration: float, what: str
) -> tuple[LoadResult, CpuUse, float]:
    """The jobs started half a second from now, the CPU tracked over their measured
    window, their results collected and checked; with the load average at the start."""
    load = os.getloadavg()[0]
    start_at = time.time() + 0.5
    ctx.pool.start(jobs_at(start_at))
    first = start_at + ctx.args.warmup
    cpu = ctx.meter.window(first, first + duration)
    result = ctx.pool.collect()
    check_load(result, what, ctx)
    return result, cpu, load
