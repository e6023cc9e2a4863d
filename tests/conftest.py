from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    # The network is blocked in tests: only this machine (loopback, Unix sockets) is reachable.
    if isinstance(address, tuple) and address[0] not in {"127.0.0.1", "::1", "localhost"}:
        raise RuntimeError(f"tests may not reach the network: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_network() -> Iterator[None]:
    socket.socket.connect = _loopback_only  # type: ignore[method-assign,assignment]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.real_parts import skipped_for_missing_parts

    if skipped_for_missing_parts:
        terminalreporter.section("REAL PARTS MISSING: these tests proved nothing", red=True)
        for reason in sorted(set(skipped_for_missing_parts)):
            count = skipped_for_missing_parts.count(reason)
            terminalreporter.line(f"{count} skipped: {reason}", red=True)
        terminalreporter.line("With CI=true each of them fails instead.", red=True)
