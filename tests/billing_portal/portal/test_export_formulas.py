"""The usage export opens in a spreadsheet as data: no cell a customer controls can start
a formula, and numbers stay numbers."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing_portal.csv_safe import cell_text
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans.models import Customer

FORMULAS = ["=1+2", "@SUM(A1)", "+x", "-x"]


def _ingest(acme: Customer, identifier: str, workspace: str, dimensions: dict[str, str]) -> None:
    outcome = events_ingest(
        events=[
            {
                "identifier": identifier,
                "event_name": "llm.tokens",
                "customer": acme.external_id,
                "timestamp": (timezone.now() - timedelta(hours=1)).isoformat(),
                "value": "20000",
                "workspace": workspace,
                "dimensions": dimensions,
            }
        ]
    )
    assert outcome.count("accepted") == 1, outcome.as_dict()


def _export(client: Client) -> list[dict[str, str]]:
    today = timezone.now().date()
    response = client.get(
        "/portal/activity/export.csv", {"start": f"{today - timedelta(days=1)}", "end": f"{today}"}
    )
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(body)))


def test_text_that_would_start_a_formula_is_written_as_text(
    client_owner: Client, acme: Customer
) -> None:
    for n, formula in enumerate(FORMULAS):
        dimensions = {"model": "small", "token_type": formula}
        _ingest(acme, formula, workspace=f"{formula}-ws{n}", dimensions=dimensions)
    _ingest(acme, "tabbed", workspace="\tws", dimensions={"model": "small"})
    _ingest(acme, "returned", workspace="\rws", dimensions={"model": "small"})
    events_rate_pending()
    rows = {row["identifier"]: row for row in _export(client_owner)}
    for n, formula in enumerate(FORMULAS):
        row = rows[f"'{formula}"]
        assert row["workspace"] == f"'{formula}-ws{n}"
        # Dimensions are one JSON cell: it starts with "{", and its values stay exact.
        assert row["dimensions"].startswith("{")
        assert json.loads(row["dimensions"])["token_type"] == formula
        assert (row["value"], row["credits"]) == ("20000", "10.000000")
    assert rows["tabbed"]["workspace"] == "'\tws"
    assert rows["returned"]["workspace"] == "'\rws"


def test_ordinary_cells_and_numbers_are_unchanged(client_owner: Client, acme: Customer) -> None:
    [row] = _export(client_owner)
    assert row["identifier"] == "evt-1"
    assert row["event_name"] == "llm.tokens"
    assert (row["value"], row["credits"], row["status"]) == ("160000", "2400.000000", "rated")
    assert row["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("-5"), "-5"),
        (-5, "-5"),
        (Decimal("1E+4"), "10000"),
        (Decimal("0.000001"), "0.000001"),
        ("-5", "'-5"),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
    ],
)
def test_numbers_are_written_as_numbers_and_only_text_is_escaped(
    value: str | int | Decimal | None, text: str
) -> None:
    assert cell_text(value) == text


def test_a_float_is_refused() -> None:
    with pytest.raises(TypeError, match="as text or a Decimal"):
        cell_text(1.5)  # type: ignore[arg-type]
