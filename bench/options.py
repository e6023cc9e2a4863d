"""Command-line pieces the benchmarks share."""

from __future__ import annotations

import argparse


def sizes(value: str) -> list[int]:
    """Comma-separated whole numbers, ``_`` allowed as a separator: ``10_000,100_000``."""
    return [int(x.replace("_", "")) for x in value.split(",") if x.strip()]


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
