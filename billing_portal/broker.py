"""The local Celery broker: kombu's file-system transport, made safe for a shared folder.

kombu's own transport deletes a message file and then decodes it, outside any error
handling: one empty or truncated file (a producer killed mid-write, a full disk, a hand
edit) raises out of the worker's consumer loop and stops the worker, and the message is
gone. Here a consumer claims a file by renaming it (atomic, so of two consumers that
listed the same file one wins and the other moves on), decodes it, and moves what cannot
be decoded to the bad folder with a log line naming it, then carries on with the next.
Producers write each message under a temporary name and rename it into the queue, so a
consumer never sees a half-written file as bad.

Transport options, besides kombu's: ``bad_folder``, by default ``bad`` next to
``data_folder_in`` (``var/celery/bad`` in local mode).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

logger = logging.getLogger(__name__)

# Renamed names end in these suffixes rather than ".msg", so no consumer lists them.
CLAIMED_SUFFIX = ".claimed"
PARTIAL_SUFFIX = ".partial"


def register() -> None:
    """Make ``filesystem://`` broker URLs use this transport in this process.

    kombu takes the transport from the URL's scheme through this table; a dotted path
    in the URL itself is refused, and Celery's ``broker_transport`` would apply to every
    URL the app connects to, a Redis one included.
    """
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"


class Channel(filesystem.Channel):
    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        for name in self._queue_files(queue):
            claimed = self._claim(name)
            if claimed is None:
                continue
            payload = self._take(claimed, name)
            if payload is not None:
                return payload
        raise Empty()

    def _queue_files(self, queue: str) -> list[str]:
        wanted = f"{queue}.msg"
        names = os.listdir(self.data_folder_in)
        return sorted(name for name in names if name.partition(".")[2] == wanted)

    def _claim(self, name: str) -> Path | None:
        """Rename the file out of the queue; None when another consumer took it first."""
        source = Path(self.data_folder_in) / name
        claimed = source.with_name(name + CLAIMED_SUFFIX)
        try:
            source.rename(claimed)
        except OSError:
            return None
        return claimed

    def _take(self, claimed: Path, name: str) -> dict[str, Any] | None:
        try:
            payload = self._decode(_read(claimed))
        # Whatever decoding raises, the file is what is wrong: it must not stop the worker.
        except Exception as exc:
            self._set_aside(claimed, name, exc)
            return None
        if self.store_processed:
            shutil.move(claimed, Path(self.processed_folder) / name)
        else:
            claimed.unlink()
        return payload

    def _decode(self, raw: bytes) -> dict[str, Any]:
        payload: dict[str, Any] = loads(bytes_to_str(raw))
        # What the consumer does with it next: a payload that fails here would fail
        # there, inside the worker's event loop.
        self.Message(payload, channel=self)
        return payload

    def _set_aside(self, claimed: Path, name: str, error: Exception) -> None:
        target = self.bad_folder / name
        reason = f"{type(error).__name__}: {error}"
        try:
            self.bad_folder.mkdir(parents=True, exist_ok=True)
            shutil.move(claimed, target)
        except OSError as exc:
            # Still claimed (no longer a ".msg"), so it is never read again either way.
            logger.error(
                "Unreadable broker message %s left at %s (%s): %s", name, claimed, exc, reason
            )
            return
        logger.error("Unreadable broker message %s moved to %s: %s", name, target, reason)

    # kombu's two base classes name the second parameter differently; this keeps
    # the file-system one's.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The name sorts like kombu's own, so messages from either producer keep one order.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        target = Path(self.data_folder_out) / name
        partial = target.with_name(name + PARTIAL_SUFFIX)
        try:
            partial.write_bytes(str_to_bytes(dumps(payload)))
            partial.rename(target)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to {target.parent}") from exc

    @cached_property
    def bad_folder(self) -> Path:
        configured = self.transport_options.get("bad_folder")
        return Path(configured) if configured else Path(self.data_folder_in).parent / "bad"


class Transport(filesystem.Transport):
    Channel = Channel


def _read(path: Path) -> bytes:
    with path.open("rb") as file:
        # A producer on kombu's own transport writes under an exclusive lock.
        filesystem.lock(file, filesystem.LOCK_SH)
        return file.read()
