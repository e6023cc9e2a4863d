"""Memory: a service's resident memory as events go through it.

Target (performance notes): a million events through a worker do not grow its memory.
The web server is sampled after every ingest run (figure 1), the rating worker after the
rating backlog and after every paced run (figure 2); the memory figure (``--only
memory``, ``bench.metering.rating.run_memory_figure``) has the rating worker rate a
backlog of ``--memory-events`` events queued at once, sampled before, during and after.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


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
    between: str = ""  # when the first and the last sample were taken, for the docs
    backlog: bool = False  # the memory figure's: a backlog rated between first and last
    seconds: float = 0.0  # the backlog's: from the first rating task to an empty queue

    def sample(self, events: int, pids: set[int]) -> None:
        self.samples.append((events, rss_mib(pids)))

    @property
    def events(self) -> int:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0

    def largest(self, index: int) -> float:
        """The largest process (the worker, not its parent) at a sample."""
        return max(self.samples[index][1].values(), default=0.0)

    @property
    def highest(self) -> float:
        """The largest process at the sample where it was largest."""
        return max((self.largest(i) for i in range(len(self.samples))), default=0.0)

    @property
    def growth(self) -> float:
        first = self.largest(0)
        return self.largest(-1) / first - 1 if first else 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        if len(self.samples) < 2:
            return f"metering memory, {self.service}: not sampled"
        drained = f" in {self.seconds:.0f} s ({self.rate:,.0f} events/s)" if self.seconds else ""
        return (
            f"metering memory, {self.service}: largest process {self.largest(0):.1f} MiB once "
            f"warm, {self.largest(-1):.1f} MiB after {self.events:,} more events{drained} "
            f"({self.growth * 100:+.1f}%; highest of {len(self.samples)} samples "
            f"{self.highest:.1f} MiB)"
        )


def backlog(memory: list[Memory]) -> Memory | None:
    """The memory figure's sampling, when it ran."""
    return next((mem for mem in memory if mem.backlog and len(mem.samples) > 1), None)


def verdict(mem: Memory) -> str:
    return f"rating worker memory {mem.growth * 100:+.1f}% over {mem.events:,} events rated"


def section(memory: list[Memory]) -> list[str]:
    """The docs' memory table, for the services sampled more than once."""
    sampled = [mem for mem in memory if len(mem.samples) > 1]
    if not sampled:
        return []
    lines = [
        "",
        "### Memory",
        "",
        "Target: a million events through a worker do not grow its memory. Resident "
        "memory (`VmRSS`) of the largest process of each service (gunicorn's and "
        "Celery's pool processes, not their parent), sampled once it is warm and again "
        "at the end; `highest` is the largest of every sample taken between the two.",
        "",
        "| service | sampled | warm | highest | at the end | events between | growth |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mem in sampled:
        lines.append(
            f"| {mem.service} | {mem.between} | {mem.largest(0):.1f} MiB "
            f"| {mem.highest:.1f} MiB | {mem.largest(-1):.1f} MiB "
            f"| {mem.events:,} | {mem.growth * 100:+.1f}% |"
        )
    return lines
