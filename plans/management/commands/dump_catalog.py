from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from plans.catalog import dump


class Command(BaseCommand):
    help = "Print the current catalog in the load_catalog format."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(dump(), ending="")
