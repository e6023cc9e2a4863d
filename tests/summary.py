"""Lines for the end-of-run summary, by section (e.g. the fault scenarios' figures).

The suite runs on pytest-xdist: a test runs in a worker process, whose own output nobody
sees. Each worker hands its lines to the controller when it finishes, and the controller
prints them all (tests/conftest.py).
"""

from __future__ import annotations

from collections import defaultdict

sections: defaultdict[str, list[str]] = defaultdict(list)


def add(section: str, line: str) -> None:
    sections[section].append(line)
