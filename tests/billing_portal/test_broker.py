"""The local broker's transport: an unreadable message file is set aside, never fatal."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection
from kombu.simple import SimpleQueue

from billing_portal import broker
from tests.metering.worker_support import Broker, Worker, wait_until


@pytest.fixture
def queue() -> str:
    # kombu keeps the file-system transport's bindings for the whole process: a queue
    # name bound to another test's folder would route there.
    return f"jobs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[Connection]:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),
    }
    with Connection(transport=broker.Transport, transport_options=options) as conn:
        yield conn


def _bad_files(folder: Path, queue: str) -> dict[str, bytes]:
    """An empty message and the first half of the queue's one real message, both named to
    be read before it."""
    (real,) = folder.glob(f"*.{queue}.msg")
    files = {
        f"0_{uuid.uuid4()}-empty.{queue}.msg": b"",
        f"0_{uuid.uuid4()}-truncated.{queue}.msg": real.read_bytes()[: real.stat().st_size // 2],
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


def test_it_is_what_filesystem_urls_name() -> None:
    # settings register it: every process of the local stack uses it.
    with Connection("filesystem://") as conn:
        assert isinstance(conn.transport, broker.Transport)


def test_it_moves_unreadable_files_aside_and_delivers_the_next_message(
    connection: Connection, queue: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs: SimpleQueue = connection.SimpleQueue(queue)
    jobs.put({"n": 1})
    bad = _bad_files(tmp_path / "queue", queue)

    with caplog.at_level(logging.ERROR, logger="billing_portal.broker"):
        message = jobs.get(timeout=2)

    assert message.payload == {"n": 1}
    assert {p.name: p.read_bytes() for p in (tmp_path / "bad").iterdir()} == bad
    for name in bad:
        assert any(name in line and "JSONDecodeError" in line for line in caplog.messages)
    assert list((tmp_path / "queue").iterdir()) == []


def test_it_moves_on_when_another_consumer_took_the_file_first(
    connection: Connection, queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: SimpleQueue = connection.SimpleQueue(queue)
    jobs.put({"n": 2})
    listed = broker.Channel._queue_files
    # Listed, then gone before it could be claimed.
    gone = f"0_{uuid.uuid4()}.{queue}.msg"
    monkeypatch.setattr(broker.Channel, "_queue_files", lambda self, q: [gone, *listed(self, q)])

    assert jobs.get(timeout=2).payload == {"n": 2}
    assert not (tmp_path / "bad").exists()


# --- with a real worker ---------------------------------------------------------------


@pytest.fixture
def fs_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Broker:
    """A broker folder of this test's own, for the worker (through settings) and for us."""
    folder = tmp_path / "broker"
    monkeypatch.setenv("CELERY_BROKER_DIR", str(folder))
    (folder / "queue").mkdir(parents=True)
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }
    return Broker("filesystem://", f"bad-files-{uuid.uuid4().hex[:8]}", options)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_a_worker_sets_bad_files_aside_and_keeps_consuming(
    fs_broker: Broker, tmp_path: Path
) -> None:
    queue_folder = Path(fs_broker.transport_options["data_folder_in"])
    task_id = fs_broker.send_rate_pending()
    bad = _bad_files(queue_folder, fs_broker.queue)
    worker = Worker(fs_broker, tmp_path / "worker.log", f"{fs_broker.queue}-w1")
    try:
        worker.start()
        assert worker.wait_for_task(task_id) == 0
        bad_folder = queue_folder.parent / "bad"
        wait_until(
            lambda: all((bad_folder / name).exists() for name in bad),
            timeout=10,
            what="the bad files in the bad folder",
        )
        assert worker.alive, worker.log_tail()
        for name in bad:
            assert f"Unreadable broker message {name} moved to" in worker.log()
    finally:
        worker.stop()
