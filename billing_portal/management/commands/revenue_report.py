from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing_portal.invoicing.models import RevenueKind
from billing_portal.invoicing.revenue import revenue_recognize_all, revenue_report


def _month(value: str) -> date:
    try:
        year, month = (int(part) for part in value.split("-"))
        return date(year, month, 1)
    except ValueError as exc:
        raise CommandError(f"--month must look like 2026-11, not {value!r}") from exc


class Command(BaseCommand):
    help = "Print recognized revenue by kind for a month and the deferred balance at its end."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", required=True, help="YYYY-MM")
        parser.add_argument(
            "--no-refresh", action="store_true", help="do not recognize pending items first"
        )

    def handle(self, *args: Any, month: str, no_refresh: bool, **options: Any) -> None:
        when = _month(month)
        if not no_refresh:
            revenue_recognize_all()
        report = revenue_report(month=when)
        self.stdout.write(f"Revenue for {when:%Y-%m} ({report.currency})")
        total = sum(report.recognized.values(), start=report.deferred_balance * 0)
        for kind in RevenueKind:
            if kind == RevenueKind.DEFERRED:
                continue
            value = report.recognized.get(kind, report.deferred_balance * 0)
            self.stdout.write(f"  {kind.label:<18} {value:>14.2f}")
        self.stdout.write(f"  {'Total recognized':<18} {total:>14.2f}")
        self.stdout.write(f"Deferred balance at month end: {report.deferred_balance:.2f}")
