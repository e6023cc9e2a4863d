"""How a benchmark ends: its verdict and problems printed, and its section of
docs/benchmarks.md written, replacing the previous one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.env import ROOT

DOC = ROOT / "docs" / "benchmarks.md"

HEADER = """# Benchmarks

Rerun everything with `make bench` (or one benchmark, e.g. `make bench BENCH_ARGS=ledger`,
which is `python -m bench ledger`). Each benchmark creates its own data in its own
database and refreshes its section below; the targets are in the performance notes. The
machines are shared and noisy: compare medians and ratios measured in the same run, not
single absolute times.
"""


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def write_section(key: str, body: str, path: Path = DOC) -> Path:
    """Replace the text between this benchmark's markers, or append a new section."""
    start, end = _markers(key)
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def finish(
    key: str, verdict: str, problems: list[str], body: Callable[[], str], write: bool
) -> int:
    """Print the verdict and the first problems, write the section when asked; the exit
    status: 1 when there were problems."""
    print(verdict, flush=True)
    for problem in problems[:20]:
        print(f"  problem: {problem}")
    if write:
        path = write_section(key, body())
        print(f"{key}: results written to {path.relative_to(ROOT)}")
    return 1 if problems else 0
