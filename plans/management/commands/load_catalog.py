from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plans.catalog import CatalogError, load


class Command(BaseCommand):
    help = "Create or update meters, rate cards, plans and credit packs from a catalog file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, file: Path, **options: Any) -> None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from exc
        try:
            changes = load(text)
        except CatalogError as exc:
            for problem in exc.problems:
                self.stderr.write(f"{file}: {problem}")
            raise CommandError(
                f"{file}: refused, nothing was changed ({len(exc.problems)} problem(s))"
            ) from exc
        for change in changes:
            self.stdout.write(change)
        self.stdout.write(f"{file}: {len(changes) or 'no'} change(s)")
