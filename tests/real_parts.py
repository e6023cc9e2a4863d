"""The real parts some tests drive (a browser, a broker for a worker), found one way.

When a part is missing the test cannot prove anything. Under ``CI=true`` that is a
failure that says what to install; on a developer's machine the test is skipped, and the
session ends with a notice listing what did not run and why.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

# Debian's chromium, headless, with its calls home switched off (the network is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

skipped_for_missing_parts: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(part: str, fix: str) -> NoReturn:
    message = f"{part} is missing: {fix}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a test whose real part is missing fails)", pytrace=False)
    skipped_for_missing_parts.append(message)
    pytest.skip(message)


def chromium_executable() -> str:
    """The browser bin/ensure-chromium looks for: $CHROMIUM, else `chromium` on PATH."""
    wanted = os.environ.get("CHROMIUM") or "chromium"
    found = shutil.which(wanted)
    if found is None:
        missing(
            f"the browser {wanted!r}",
            "run bin/ensure-chromium (Debian: apt-get install chromium), "
            "or point CHROMIUM at a chromium executable",
        )
    return found
