"""The running stack the fault tests share, and the figures they print at the end."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests import summary
from tests.faults.stack import Figures, Stack, catalog_prices, stack_running

SECTION = "fault scenarios"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A fresh folder per session: the test may kill its postmaster and start it again
    # without disturbing the database the test process itself (or anybody else) uses.
    with stack_running(tmp_path_factory.mktemp("faults")) as running:
        summary.add(SECTION, f"FAULT stack: started in {running.setup_s:.1f} s")
        yield running


@pytest.fixture(scope="session")
def prices() -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    return catalog_prices()


@pytest.fixture
def record_figures() -> Any:
    def record(figures: Figures) -> None:
        summary.add(SECTION, figures.line())

    return record
