"""The ledger benchmark's scarcity phase gives only the credits that last until the
middle of its measured window, so the race for the last credits is measured."""

from __future__ import annotations

from decimal import Decimal

from bench.ledger import CAPTURE_AMOUNTS, SCARCE_MINIMUM, scarce_grants


def _total(grants: tuple[tuple[str, str, int, int | None], ...]) -> Decimal:
    return sum((Decimal(amount) for amount, *_ in grants), Decimal(0))


def test_the_scarce_credits_last_the_warm_up_and_half_the_window_at_the_measured_rate() -> None:
    mean_capture = sum(CAPTURE_AMOUNTS, Decimal(0)) / len(CAPTURE_AMOUNTS)

    grants = scarce_grants(2_000.0, warmup=1.0, duration=5.0)

    # 2,000 cycles/s for 1 s of warm-up and 2.5 s of the window: 7,000 cycles.
    assert abs(_total(grants) - mean_capture * 7_000) <= 1
    assert [category for _, category, *_ in grants] == ["included", "paid"]
    # A faster ledger gets more: the credits still run out inside the window.
    assert _total(scarce_grants(4_000.0, warmup=1.0, duration=5.0)) > _total(grants) * Decimal(
        "1.9"
    )


def test_a_slow_or_failed_measurement_still_gives_a_thousand_cycles_of_credits() -> None:
    mean_capture = sum(CAPTURE_AMOUNTS, Decimal(0)) / len(CAPTURE_AMOUNTS)

    for rate in (0.0, 10.0):
        total = _total(scarce_grants(rate, warmup=1.0, duration=5.0))
        assert abs(total - mean_capture * SCARCE_MINIMUM) <= 1
        assert all(
            Decimal(amount) == Decimal(amount).to_integral_value()
            for amount, *_ in scarce_grants(rate, warmup=1.0, duration=5.0)
        )
