"""Helpers of the metering API tests over real HTTP."""

from __future__ import annotations

from ledger import reconcile


def assert_reconciled() -> None:
    problems = {f.check: f.problems for f in reconcile.run_checks() if f.problems}
    assert problems == {}
