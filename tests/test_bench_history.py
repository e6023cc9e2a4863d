"""The history benchmark's verdict: a level is judged with the host's own slowing, as its
probe measured it, taken out."""

from __future__ import annotations

from bench.history import Level, _adjusted, _host, _verdict


def level(
    events: int, ingest: float, probe: float, page: float = 0.040, rating: float = 1000.0
) -> Level:
    return Level(
        events=events, ingest=[ingest], rating=[rating], page_p95=[page], probe=[probe, probe]
    )


def test_a_level_slowed_only_as_much_as_the_host_is_flat() -> None:
    first = level(1_000_000, 20_000, probe=0.100)
    # 25% fewer events/s and a page 25% slower, while the probe took 25% longer too.
    slowed_host = level(10_000_000, 16_000, probe=0.125, page=0.050)
    assert _host(slowed_host, first) == 1.25
    assert round(_adjusted(slowed_host, first, "ingest"), 6) == 1.0
    assert round(_adjusted(slowed_host, first, "page_p95"), 6) == 1.0
    verdict, problems = _verdict([first, slowed_host])
    assert (verdict, problems) == (
        "history: flat within 15% from 1,000,000 to 10,000,000 events",
        [],
    )


def test_a_level_slower_than_its_host_is_not_flat() -> None:
    first = level(1_000_000, 20_000, probe=0.100)
    same_host = level(10_000_000, 16_000, probe=0.100)
    # The host 1.25x faster: rating and the page gained with it; ingest, as measured
    # 1.00x, did not, so its history cost it 1.25x.
    faster_host = level(20_000_000, 20_000, probe=0.080, page=0.032, rating=1250.0)
    verdict, problems = _verdict([first, same_host, faster_host])
    assert verdict.startswith("history: not flat")
    assert problems == [
        "ingest at 10,000,000 events is 1.25x worse than at 1,000,000 with the host's "
        "slowing taken out (1.25x as measured; limit 1.15x)",
        "ingest at 20,000,000 events is 1.25x worse than at 1,000,000 with the host's "
        "slowing taken out (1.00x as measured; limit 1.15x)",
    ]


def test_without_probes_the_ratio_is_as_measured() -> None:
    first = Level(events=1, ingest=[100.0], rating=[1.0], page_p95=[1.0])
    later = Level(events=2, ingest=[80.0], rating=[1.0], page_p95=[1.0])
    assert _host(later, first) == 1.0
    assert _adjusted(later, first, "ingest") == 1.25
