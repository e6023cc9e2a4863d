"""The lag figure's verdict: a lag measured below the rate asked for does not count."""

from __future__ import annotations

from bench.metering.cpu import CpuUse
from bench.metering.lag import LagRun, _lag_met, _verdict


def _run(achieved: float, lags: list[float], paced: float = 10_000) -> LagRun:
    return LagRun(
        lags=lags,
        unresolved=0,
        achieved=achieved,
        p99_request=0.1,
        late=0.0,
        backlog=0,
        cpu=CpuUse(),
        load=0.0,
        paced=paced,
    )


def test_a_short_lag_at_the_rate_asked_for_is_met() -> None:
    runs = [_run(9_900, [0.2] * 99 + [1.5]) for _ in range(3)]
    assert _lag_met(runs)
    assert _verdict(runs).startswith("accepted -> reflected at 10,000/s met (p99 ")


def test_a_short_lag_while_the_server_took_fewer_events_than_asked_is_not_met() -> None:
    runs = [_run(5_960, [0.2] * 99 + [1.5]) for _ in range(3)]
    assert not _lag_met(runs)
    assert "NOT met" in _verdict(runs)
    assert "achieved only 5,960/s of 10,000/s" in _verdict(runs)


def test_a_long_lag_is_not_met() -> None:
    runs = [_run(10_000, [0.2] * 90 + [2.5] * 10) for _ in range(3)]
    assert not _lag_met(runs)
