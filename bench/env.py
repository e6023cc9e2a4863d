"""Django set-up for benchmark processes, the benchmark database and the machine facts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def django_setup(database_name: str | None = None) -> None:
    """Configure Django in this process; point it at ``database_name`` if given.

    Benchmarks are a development tool: with ``DATABASE_URL`` set and ``DEBUG`` unset,
    settings would demand production secrets, so ``DEBUG`` defaults to true here. Query
    logging, which ``DEBUG`` turns on, is switched off again so that the services run
    as they do in production.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
    os.environ.setdefault("DEBUG", "true")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections

    settings.DEBUG = False
    if database_name is not None:
        connections["default"].close()
        settings.DATABASES["default"]["NAME"] = database_name
        connections["default"].settings_dict["NAME"] = database_name


def bench_database_name() -> str:
    from django.db import connections

    configured = str(connections["default"].settings_dict["NAME"])
    return f"bench_{configured}"


@contextmanager
def bench_database(verbosity: int = 0) -> Iterator[str]:
    """Create and migrate ``bench_<name>`` on the configured server; drop it at the end.

    Uses Django's test-database machinery with the test name overridden, so it never
    collides with the ``test_<name>`` database a concurrent test run creates.
    """
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    name = bench_database_name()
    connections["default"].settings_dict.setdefault("TEST", {})["NAME"] = name
    old_config = setup_databases(verbosity=verbosity, interactive=False, serialized_aliases=set())
    try:
        yield name
    finally:
        connections.close_all()
        teardown_databases(old_config, verbosity=verbosity)


@dataclass(frozen=True)
class Machine:
    date: str
    cpus: int
    cpu_model: str
    memory_gib: float
    python: str
    postgres: str
    database: str
    synchronous_commit: str

    def describe(self) -> str:
        return (
            f"{self.cpus} CPUs ({self.cpu_model}), {self.memory_gib:.1f} GiB memory, "
            f"{self.postgres} ({self.database}, synchronous_commit={self.synchronous_commit}), "
            f"Python {self.python}"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _cpus() -> int:
    try:
        out = subprocess.run(["nproc"], capture_output=True, text=True, check=True, timeout=5)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return os.cpu_count() or 0


def _date() -> str:
    """``date -u``, as the docs quote it."""
    try:
        out = subprocess.run(["date", "-u"], capture_output=True, text=True, check=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return dt.datetime.now(dt.UTC).strftime("%a %b %d %H:%M:%S UTC %Y")


def machine() -> Machine:
    """What the figures were measured on: the same facts every run, for the docs."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = str(cursor.fetchone()[0]).split(" ")[0]
        cursor.execute("SHOW synchronous_commit")
        sync = str(cursor.fetchone()[0])
    host = str(connection.settings_dict.get("HOST") or "")
    if os.environ.get("DATABASE_URL"):
        where = "DATABASE_URL, " + (
            "Unix socket" if host.startswith("/") or not host else f"{host} over TCP"
        )
    else:
        where = "embedded, var/pgdata, Unix socket"
    return Machine(
        date=_date(),
        cpus=_cpus(),
        cpu_model=_cpu_model(),
        memory_gib=_memory_gib(),
        python=platform.python_version(),
        postgres=f"PostgreSQL {version}",
        database=where,
        synchronous_commit=sync,
    )
