"""The zero-configuration PostgreSQL runs with settings sized for the machine."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from billing_portal import embedded_db

GIB = 1 << 30


@pytest.mark.parametrize(
    ("memory", "buffers", "cache"),
    [
        (24 * GIB, "6144MB", "12288MB"),  # a quarter, and half for the planner
        (64 * GIB, "8192MB", "32768MB"),  # a quarter would be 16 GB: capped
        (256 << 20, "128MB", "128MB"),  # never below initdb's default
    ],
)
def test_the_shared_buffers_are_a_quarter_of_memory_between_initdbs_default_and_8_gb(
    memory: int, buffers: str, cache: str
) -> None:
    settings = embedded_db.settings_for(memory)
    assert settings["shared_buffers"] == buffers
    assert settings["effective_cache_size"] == cache
    assert settings["max_wal_size"] == "4GB"


def test_the_settings_file_is_included_once_and_rewritten_only_when_it_changes(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "postgresql.conf"
    conf.write_text("max_connections = 100\n")

    assert embedded_db.settings_write(tmp_path, memory=24 * GIB) is True
    assert embedded_db.settings_write(tmp_path, memory=24 * GIB) is False
    text = conf.read_text()
    assert text.startswith("max_connections = 100\n")
    assert text.count(embedded_db.SETTINGS_FILE) == 1
    assert "shared_buffers = '6144MB'" in (tmp_path / embedded_db.SETTINGS_FILE).read_text()

    # Another machine size (the data directory copied, say): written again, to restart on.
    assert embedded_db.settings_write(tmp_path, memory=8 * GIB) is True
    assert "shared_buffers = '2048MB'" in (tmp_path / embedded_db.SETTINGS_FILE).read_text()
    assert conf.read_text().count(embedded_db.SETTINGS_FILE) == 1


def test_a_new_data_directory_starts_a_server_that_runs_with_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded_db, "DATA_DIR", tmp_path / "pgdata")
    server = embedded_db._server()
    try:
        with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
            shown = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("shared_buffers", "max_wal_size")
            }
        wanted = embedded_db.settings_for(embedded_db._memory())
        # SHOW prints whole gigabytes as GB.
        mb = int(wanted["shared_buffers"].removesuffix("MB"))
        assert shown["shared_buffers"] in (f"{mb}MB", f"{mb // 1024}GB")
        assert shown["max_wal_size"] == "4GB"
    finally:
        embedded_db._stop(server)
