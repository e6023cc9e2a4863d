"""A real Celery worker in a subprocess, for the worker integration tests.

The worker runs ``celery -A billing_portal worker`` with the test database's URL and
consumes one private queue, so it never takes another process's tasks and no other
worker takes the tests'. The broker is Redis on this machine when it answers, else
kombu's file-system transport (always available); either way the queue name is unique
to the test run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db import connection
from kombu import Connection

from billing_portal.celery import app as celery_app
from metering.tasks import events_rate_pending

REDIS_URL = "redis://127.0.0.1:6379/0"
READY_TIMEOUT = 30.0
TASK_TIMEOUT = 30.0


class WorkerError(AssertionError):
    pass


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WorkerError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- broker ---------------------------------------------------------------------------


@dataclass
class Broker:
    """Where the test process sends tasks and the worker reads them: one private queue."""

    url: str
    queue: str
    transport_options: dict[str, Any] = field(default_factory=dict)

    def connection(self) -> Connection:
        return celery_app.connection_for_write(
            self.url, transport_options=self.transport_options, connect_timeout=5
        )

    def send_rate_pending(self) -> str:
        """Send ``metering.tasks.events_rate_pending`` to the worker; return its task id."""
        task_id = uuid.uuid4().hex
        with self.connection() as conn:
            # One round (a batch per customer), so a test can stop between batches.
            events_rate_pending.apply_async(
                kwargs={"rounds": 1}, task_id=task_id, queue=self.queue, connection=conn
            )
        return task_id

    def send_beat_job(self, job: str) -> str:
        """Send what beat sends for its schedule entry ``job`` to the worker; return the
        task id."""
        task_id = uuid.uuid4().hex
        entry = celery_app.conf.beat_schedule[job]
        with self.connection() as conn:
            celery_app.send_task(entry["task"], task_id=task_id, queue=self.queue, connection=conn)
        return task_id

    def cleanup(self) -> None:
        """Drop what the run left on the broker: its queue and bindings, the remote
        control bindings of killed workers, their unacked messages."""
        if self.url.startswith("redis://"):
            self._cleanup_redis()
        elif self.url.startswith("filesystem://"):
            self._cleanup_filesystem()

    def _cleanup_filesystem(self) -> None:
        control = Path(self.transport_options["control_folder"])
        (control / f"{self.queue}.exchange").unlink(missing_ok=True)
        for table in control.glob("*.exchange"):
            with table.open("r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    rows = json.load(f)
                except ValueError:
                    continue
                kept = [r for r in rows if self.queue not in str(r[-1])]
                if len(kept) != len(rows):
                    f.seek(0)
                    f.truncate()
                    json.dump(kept, f)

    def _cleanup_redis(self) -> None:
        import redis

        # Any: redis-py types every reply as maybe-awaitable, for its asyncio client.
        client: Any = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.delete(
                self.queue,
                f"_kombu.binding.{self.queue}",
                f"_kombu.binding_permanent.{self.queue}",
            )
            pidbox = "_kombu.binding.celery.pidbox"
            ours = [m for m in client.smembers(pidbox) if self.queue.encode() in m]
            if ours:
                client.srem(pidbox, *ours)
            if not client.exists(pidbox):
                client.zrem("_kombu.binding_deadlines", "celery.pidbox")
            for tag, raw in client.hgetall("unacked").items():
                try:
                    routing_key = json.loads(raw)[2]
                except (ValueError, IndexError, TypeError):
                    continue
                if routing_key == self.queue:
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        finally:
            client.close()


def _redis_answers(url: str) -> bool:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def broker_for_run() -> Broker:
    queue = f"worker-it-{uuid.uuid4().hex[:12]}"
    if _redis_answers(REDIS_URL):
        return Broker(REDIS_URL, queue)
    # The file-system transport shares settings' folder; the queue name keeps runs apart.
    folder = Path(settings.BASE_DIR) / "var" / "celery" / "queue"
    folder.mkdir(parents=True, exist_ok=True)
    # The worker's exchange tables are in "control" under its working directory.
    control = Path(settings.BASE_DIR) / "control"
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    return Broker(
        "filesystem://",
        queue,
        {**options, "store_processed": False, "control_folder": str(control)},
    )


# --- database -------------------------------------------------------------------------


def database_url_for(settings_dict: Mapping[str, Any], application_name: str) -> str:
    """A DATABASE_URL naming the database this test process uses (the test_ one).

    A Unix-socket host (a directory, in HOST or in OPTIONS) goes in the query string,
    which dj_database_url hands to psycopg as-is.
    """
    # prepare_threshold is psycopg's, not libpq's: psycopg.connect refuses it in a URL,
    # and the settings of the process the URL is for set it anyway.
    options = {
        str(key): str(value)
        for key, value in (settings_dict.get("OPTIONS") or {}).items()
        if isinstance(value, (str, int))
        and not isinstance(value, bool)
        and key != "prepare_threshold"
    }
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    if host.startswith("/"):
        options["host"] = host
        host = ""
        if port:
            options["port"] = port
            port = ""
    options["application_name"] = application_name
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = str(settings_dict.get("PASSWORD") or "")
    credentials = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    netloc = credentials + host + (f":{port}" if port else "")
    name = quote(str(settings_dict["NAME"]), safe="")
    return f"postgresql://{netloc}/{name}?{urlencode(options)}"


@dataclass(frozen=True)
class Backend:
    """A worker's PostgreSQL session, seen from pg_stat_activity and pg_locks."""

    pid: int
    state: str
    wait_event_type: str | None
    xid: str | None
    blocked_by: frozenset[int]
    locks: frozenset[tuple[str, str]]  # (table, mode) of the table locks it was granted

    def holds(self, table: str, mode: str) -> bool:
        return (table, mode) in self.locks

    def writes(self, table: str) -> bool:
        return self.holds(table, "RowExclusiveLock")


def backends(application_name: str) -> list[Backend]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.pid, a.state, a.wait_event_type, a.backend_xid::text,
                   pg_blocking_pids(a.pid),
                   COALESCE(
                       array_agg(ARRAY[c.relname::text, l.mode])
                           FILTER (WHERE c.relname IS NOT NULL),
                       '{}'
                   )
            FROM pg_stat_activity a
            LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'relation' AND l.granted
            LEFT JOIN pg_class c ON c.oid = l.relation
            WHERE a.application_name = %s AND a.datname = current_database()
            GROUP BY a.pid, a.state, a.wait_event_type, a.backend_xid
            """,
            [application_name],
        )
        rows = cursor.fetchall()
    return [
        Backend(
            pid=pid,
            state=state or "",
            wait_event_type=wait_type,
            xid=xid,
            blocked_by=frozenset(blocked_by),
            locks=frozenset((table, mode) for table, mode in locks),
        )
        for pid, state, wait_type, xid, blocked_by, locks in rows
    ]


class RowLock:
    """A row locked FOR UPDATE from a session of its own, until :meth:`release`.

    A rating transaction that needs the row waits for it, with its earlier writes made
    and not committed: a pause at a known point of a batch, with no change to the code.
    """

    def __init__(self, sql: str, params: list[Any]) -> None:
        import psycopg

        self.application_name = f"worker-it-lock-{uuid.uuid4().hex[:8]}"
        url = database_url_for(connection.settings_dict, self.application_name)
        self._conn = psycopg.connect(url, autocommit=False)
        row = self._conn.execute(sql, params).fetchone()
        if row is None:
            self._conn.close()
            raise WorkerError(f"nothing to lock: {sql} {params}")
        self.pid = self._conn.info.backend_pid

    def release(self) -> None:
        if not self._conn.closed:
            self._conn.rollback()
            self._conn.close()


class TableLock(RowLock):
    """A table locked in ``mode`` from a session of its own, until :meth:`release`: in
    SHARE mode, a rating transaction waits at its first write to the table, having done
    everything before it."""

    def __init__(self, table: str, mode: str) -> None:
        import psycopg

        self.application_name = f"worker-it-lock-{uuid.uuid4().hex[:8]}"
        url = database_url_for(connection.settings_dict, self.application_name)
        self._conn = psycopg.connect(url, autocommit=False)
        self._conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
        self.pid = self._conn.info.backend_pid


# --- the worker -----------------------------------------------------------------------


class Worker:
    """One ``celery worker`` process (prefork, one child) in its own process group."""

    def __init__(self, broker: Broker, log_path: Path, name: str) -> None:
        self.broker = broker
        self.log_path = log_path
        self.name = name  # also the application_name of its database sessions
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
            "DATABASE_URL": database_url_for(connection.settings_dict, self.name),
            "DEBUG": "true",
            "CELERY_BROKER_URL": self.broker.url,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            *[sys.executable, "-m", "celery", "-A", "billing_portal", "worker"],
            *["--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"],
            *["--queues", self.broker.queue, "--hostname", f"{self.name}@%h"],
            *["--without-mingle", "--without-gossip", "--without-heartbeat"],
        ]
        with self.log_path.open("ab") as log:
            # A session of its own: the worker and its pool child share one process group.
            self.process = subprocess.Popen(
                command,
                cwd=settings.BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready, timeout=READY_TIMEOUT, what=f"worker {self.name} to be ready")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise WorkerError(f"worker {self.name} exited early:\n{self.log_tail()}")
        return re.search(rf"{re.escape(self.name)}@\S+ ready\.", self.log()) is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def task_result(self, task_id: str) -> int | None:
        """How many events the task rated, once the worker logged its success."""
        if self.process is not None and self.process.poll() is not None:
            raise WorkerError(f"worker {self.name} died:\n{self.log_tail()}")
        text = self.log()
        if re.search(rf"\[{task_id}\] (raised|failed)", text):
            raise WorkerError(f"task {task_id} failed in the worker:\n{self.log_tail()}")
        match = re.search(rf"\[{task_id}\] succeeded in [\d.e-]+s: (\d+)", text)
        return int(match.group(1)) if match else None

    def wait_for_task(self, task_id: str, *, timeout: float = TASK_TIMEOUT) -> int:
        """Wait until the worker logs the task's end; return how many events it rated."""
        wait_until(
            lambda: self.task_result(task_id) is not None,
            timeout=timeout,
            what=f"task {task_id} in {self.name}",
        )
        result = self.task_result(task_id)
        assert result is not None
        return result

    def rate_once(self) -> int:
        return self.wait_for_task(self.broker.send_rate_pending())

    def backends(self) -> list[Backend]:
        return backends(self.name)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool child at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        # The pool child is not ours to wait for: wait until the group is gone.
        wait_until(self._group_gone, timeout=10, what=f"worker {self.name}'s processes to exit")

    def _group_gone(self) -> bool:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return not _group_has_live_members(self.process.pid)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the group if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def wait_disconnected(self, *, timeout: float = 15.0) -> None:
        """Wait until none of the worker's database sessions is left on the server."""
        wait_until(
            lambda: not self.backends(),
            timeout=timeout,
            what=f"worker {self.name}'s database sessions to end",
        )


def _group_has_live_members(pgid: int) -> bool:
    """Whether a process of the group is alive (a zombie left for init to reap is not)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


StartWorker = Callable[[], Worker]
