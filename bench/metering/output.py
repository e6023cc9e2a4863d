"""How the figures are written: sizes, ratios, credits, lags and CPU per unit of work,
for the printed lines and the docs' tables alike."""

from __future__ import annotations

import math
import os
from decimal import Decimal

from bench.metering.cpu import GROUPS, CpuUse
from bench.stats import median, rate

SERVER = ("web", "worker", "postgres")
CPU_HEADER = [
    "| CPU ms per unit | web (gunicorn) | worker (celery) | postgres | clients | bench | others "
    "| machine busy | server (web + worker + postgres) | server alone on all CPUs, at most |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def times(value: float, target: float) -> str:
    return f"{value / target:.2f}x" if math.isfinite(value) else "n/a"


def credits(value: Decimal) -> str:
    return f"{value.normalize():,f}"


def secs(value: float) -> str:
    if math.isinf(value):
        return "not seen"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def cpu_ms(cpu: CpuUse, units: float, group: str) -> float:
    seconds = cpu.others if group == "others" else cpu.groups.get(group, 0.0)
    return seconds * 1000 / units if units else 0.0


def group_ms(cpus: list[CpuUse], units: list[float], group: str) -> float:
    """Median CPU milliseconds per unit of one group over runs."""
    return median([cpu_ms(c, u, group) for c, u in zip(cpus, units, strict=True)])


def server_ms(cpus: list[CpuUse], units: list[float]) -> float:
    """Median CPU milliseconds per unit of the server side: web, worker and postgres."""
    return median([sum(cpu_ms(c, u, g) for g in SERVER) for c, u in zip(cpus, units, strict=True)])


def ceiling(per_unit_ms: float, scale: float) -> float:
    """Units/s if the server had every CPU of the machine to itself."""
    return (os.cpu_count() or 1) * 1000 / per_unit_ms * scale if per_unit_ms else 0.0


def _busy_percent(cpus: list[CpuUse]) -> float:
    return median([c.utilisation() for c in cpus]) * 100


def cpu_parts(cpus: list[CpuUse], units: list[float], per: str) -> str:
    """CPU per unit by group, for a printed line."""
    parts = [f"{group} {group_ms(cpus, units, group):.2f}" for group in (*GROUPS, "others")]
    server = server_ms(cpus, units)
    scale = 1000 if per.startswith("1000") else 1
    return (
        f"CPU ms per {per}: "
        + ", ".join(parts)
        + f"; machine {_busy_percent(cpus):.0f}% busy; server {server:.2f} ms per {per}, so at "
        f"most {rate(ceiling(server, scale))} with all CPUs to itself"
    )


def cpu_row(label: str, cpus: list[CpuUse], units: list[float], scale: float) -> str:
    """CPU per unit by group, a row under :data:`CPU_HEADER`."""
    cells = [f"{group_ms(cpus, units, g):.2f}" for g in (*GROUPS, "others")]
    server = server_ms(cpus, units)
    return (
        f"| {label} | "
        + " | ".join(cells)
        + f" | {_busy_percent(cpus):.0f}% | {server:.2f} | {ceiling(server, scale):,.0f}/s |"
    )
