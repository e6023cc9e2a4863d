"""What the browser tests share besides the ``page`` fixture (tests/conftest.py): where
their screenshots go, for people to look at after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


def screenshot(page: Any, name: str) -> None:
    """The whole page as test-artifacts/<name>."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
