"""Memory: a service's resident memory as events go through it.

Target (performance notes): ingesting a million events does not grow a worker's memory.
The web server is sampled after every ingest run (figure 1), the rating worker after the
rating backlog and after every paced run (figure 2).
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


def section(memory: list[Memory]) -> list[str]:
    """The docs' memory table, for the services sampled more than once."""
    sampled = [mem for mem in memory if len(mem.samples) > 1]
    if not sampled:
        return []
    lines = [
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
    return lines
