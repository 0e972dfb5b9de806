"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .mail_kit import smtp
from .warehouse_kit import Peers, local_peers

__all__ = ["peers", "smtp"]


@pytest.fixture(scope="session")
def peers() -> Iterator[Peers]:
    """moto's S3 server and fakesnow's Snowflake server, for the whole session."""
    with local_peers() as running:
        yield running
