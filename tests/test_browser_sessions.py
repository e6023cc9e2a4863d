"""A browser test leaves no database session behind it: the run's test database can be
dropped at its end. Run in a pytest of its own, whose end is what this checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.dburl import database_url_for_subprocess
from tests.real_parts import chromium_executable

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
from typing import Any

import pytest

from plans.models import Meter


@pytest.mark.django_db(transaction=True)
def test_a_page_beside_the_orm(page: Any, live_server: Any) -> None:
    assert Meter.objects.count() == 0
    page.goto(live_server.url + "/healthz")
    assert Meter.objects.count() == 0
"""


def test_a_browser_test_leaves_no_session_on_the_test_database(tmp_path: Path) -> None:
    chromium_executable()  # fails under CI=true, skips elsewhere, without a browser
    probe = ROOT / "tests" / f"test_zz_sessions_probe_{os.getpid()}.py"
    probe.write_text(PROBE)
    try:
        # Its own test database: "test_" before this worker's.
        environ = {**os.environ, "DATABASE_URL": database_url_for_subprocess(), "DEBUG": "true"}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:randomly",
                "-p",
                "no:cacheprovider",
                str(probe.relative_to(ROOT)),
            ],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        probe.unlink()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
    assert "other sessions on the test database" not in output, output
    assert "is being accessed by other users" not in output, output
