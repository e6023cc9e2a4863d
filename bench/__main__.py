"""``python -m bench [ledger] [options]``: run the benchmarks, print and record the figures."""

from __future__ import annotations

import argparse
import shlex
import sys

from bench import history, invoicing, ledger, metering, portal

# name -> (help, add its options, run it)
BENCHMARKS = {
    "ledger": (
        "hold + capture on one hot customer, 32 concurrent clients, service level",
        ledger.add_arguments,
        ledger.run,
    ),
    "metering": (
        "ingest, accepted -> balance and authorizations over HTTP (gunicorn + celery)",
        metering.add_arguments,
        metering.run,
    ),
    "portal": ("dashboard p95 at 1x, 10x and 100x history", portal.add_arguments, portal.run),
    "history": (
        "ingest, rating and the dashboard at 1M, 10M and 20M events; monthly partitions",
        history.add_arguments,
        history.run,
    ),
    "invoicing": (
        "period close: N subscription periods invoiced by a pool of workers",
        invoicing.add_arguments,
        invoicing.run,
    ),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks, each against its own database, and record the figures "
        "in docs/benchmarks.md. With no name, run them all with their defaults.",
    )
    names = parser.add_subparsers(dest="name", metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, (help_text, add_arguments, _) in BENCHMARKS.items():
        add_arguments(names.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    chosen = args.name
    status = 0
    for name in [chosen] if chosen else list(BENCHMARKS):
        _, add_arguments, run = BENCHMARKS[name]
        if chosen is None:  # every benchmark, each with its own defaults
            defaults = argparse.ArgumentParser()
            add_arguments(defaults)
            args = defaults.parse_args([])
        options = argv[1:] if argv and argv[0] == name else []
        args.command_line = shlex.join(["python", "-m", "bench", name, *options])
        status = max(status, run(args))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
