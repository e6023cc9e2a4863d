from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing_portal.invoicing.margin import MarginRow, margin_report, money_text, percent_text
from billing_portal.invoicing.revenue import revenue_recognize_all
from billing_portal.management.commands.revenue_report import _month
from ledger.units import credits_exact, credits_text

HEADER = ("Meter", "Model", "Customer", "Units", "Credits", "Revenue", "Cost", "Margin", "Margin %")
LEFT = 3  # the first columns are text, the others numbers (right-aligned)


def _cells(row: MarginRow) -> list[str]:
    units = "" if row.units is None or not row.usage else credits_exact(row.units)
    counted = [units, credits_text(row.credits) if row.usage else ""]
    return [
        row.meter,
        row.model,
        row.customer,
        *counted,
        money_text(row.revenue),
        money_text(row.cost),
        money_text(row.margin),
        percent_text(row.margin_percent),
    ]


class Command(BaseCommand):
    help = (
        "Print units, credits, recognized revenue, provider cost and gross margin by meter, "
        "model and customer for a month; the revenue total is revenue_report's."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", required=True, help="YYYY-MM")
        parser.add_argument(
            "--no-refresh", action="store_true", help="do not recognize pending items first"
        )

    def handle(self, *args: Any, month: str, no_refresh: bool, **options: Any) -> None:
        when = _month(month)
        if not no_refresh:
            revenue_recognize_all()
        report = margin_report(month=when)
        if not report.currencies:
            self.stdout.write(f"Margin for {when:%Y-%m}: no usage and no revenue")
        for section in report.currencies:
            self.stdout.write(f"Margin for {when:%Y-%m} ({section.currency})")
            self._table([_cells(row) for row in section.rows] + [_cells(section.total)])
            if section.total.uncosted_events:
                self.stdout.write(
                    f"{section.total.uncosted_events} events have no provider cost on their "
                    "rate: their cost counts as 0"
                )

    def _table(self, rows: list[list[str]]) -> None:
        widths = [max(len(r[i]) for r in [list(HEADER), *rows]) for i in range(len(HEADER))]
        for row in [list(HEADER), *rows]:
            cells = [
                cell.ljust(width) if i < LEFT else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            self.stdout.write("  " + "  ".join(cells).rstrip())
