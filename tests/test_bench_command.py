"""``python -m bench`` with no name runs every benchmark, each with its own defaults."""

from __future__ import annotations

import argparse

import pytest

import bench.__main__ as bench_main


def test_every_benchmark_runs_with_its_defaults_when_none_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[tuple[str, int, str]] = []

    def fake(name: str, default: int) -> tuple[str, object, object]:
        def add_arguments(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--size", type=int, default=default)

        def run(args: argparse.Namespace) -> int:
            ran.append((name, args.size, args.command_line))
            return 0

        return (f"{name} benchmark", add_arguments, run)

    monkeypatch.setattr(bench_main, "BENCHMARKS", {"one": fake("one", 1), "two": fake("two", 2)})

    assert bench_main.main([]) == 0
    assert ran == [("one", 1, "python -m bench one"), ("two", 2, "python -m bench two")]

    ran.clear()
    assert bench_main.main(["two", "--size", "5"]) == 0
    assert ran == [("two", 5, "python -m bench two --size 5")]
