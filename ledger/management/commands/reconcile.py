from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.reconcile import run_checks


class Command(BaseCommand):
    help = "Check the ledger invariants; exit non-zero and print the offending rows if any fail."

    def handle(self, *args: Any, **options: Any) -> None:
        findings = run_checks()
        failed = [f for f in findings if f.problems]
        for finding in failed:
            self.stdout.write(f"FAIL {finding.check}: {len(finding.problems)} problem(s)")
            for problem in finding.problems:
                self.stdout.write(f"  {problem}")
        if failed:
            problems = sum(len(f.problems) for f in failed)
            raise CommandError(
                f"{len(failed)} of {len(findings)} invariant checks failed ({problems} problems)"
            )
        self.stdout.write(f"OK: all {len(findings)} invariant checks hold")
