"""Loopback ports for the peers a test starts, and for addresses nothing answers on."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: for a server a test is about to
    start, or, left unused, an address every connection to is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
