"""CPU accounting from /proc: CPU seconds per group of processes over a window."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_CLOCK = os.sysconf("SC_CLK_TCK")
GROUPS = ("web", "worker", "postgres", "clients", "bench")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _CLOCK


def descendants(roots: set[int]) -> set[int]:
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


def _grown(base: dict[str, dict[int, float]], now: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds per group since ``base``; a process not in ``base`` started inside
    the window, so all its CPU counts."""
    return {
        name: sum(max(0.0, s - base.get(name, {}).get(pid, 0.0)) for pid, s in pids.items())
        for name, pids in now.items()
    }


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
        return CpuUse(wall=b.at - a.at, busy=b.busy - a.busy, groups=_grown(a.groups, b.groups))

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
        return CpuUse(
            wall=self.last.at - self.first.at,
            busy=self.last.busy - self.first.busy,
            groups=_grown(self.first.groups, self.seen),
        )
