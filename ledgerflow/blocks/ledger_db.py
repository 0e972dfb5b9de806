"""`LedgerDatabase`: where the ledger lives, SQLite under .ledgerflow/ or Postgres."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from prefect.blocks.core import Block

from ledgerflow.blocks.checks import forbid_unknown_fields
from ledgerflow.compat import Field, SecretStr, validator
from ledgerflow.ledger import Ledger
from ledgerflow.redact import scrub_url

DEFAULT_URL = "sqlite+aiosqlite:///.ledgerflow/ledger.db"


class LedgerDatabase(Block):
    """The ledger's database URL (a secret: it may hold a password).

    Example:
        Open the ledger:
        ```python
        from ledgerflow.blocks.ledger_db import LedgerDatabase

        ledger_db = LedgerDatabase.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow Ledger Database"
    _block_type_slug = "ledgerflow-ledger-database"
    _description = "Postgres (postgresql+asyncpg://) or SQLite (sqlite+aiosqlite:///) ledger."
    _known_fields = forbid_unknown_fields()

    url: SecretStr = Field(
        default=SecretStr(DEFAULT_URL),
        title="URL",
        description="postgresql+asyncpg://user:password@host:5432/db or sqlite+aiosqlite:///path.",
    )
    auto_create_schema: bool = Field(
        default=True,
        title="Create schema",
        description="Create the ledger tables on first use (otherwise run `ledgerflow init`).",
    )

    @validator("url")
    def _url(cls, v: SecretStr) -> SecretStr:
        try:
            parsed = sa.engine.make_url(v.get_secret_value())
        except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
            # The parser's own text would quote the URL's tail, a password's included.
            raise ValueError(
                "url is not a database URL; allowed: postgresql+asyncpg://user:password@host:"
                "5432/db or sqlite+aiosqlite:///path (a password holding @, :, / or # must be "
                "percent-encoded: %40, %3A, %2F, %23)"
            ) from None
        allowed = {("postgresql", "asyncpg"), ("sqlite", "aiosqlite")}
        if (parsed.get_backend_name(), parsed.get_driver_name()) not in allowed:
            raise ValueError(
                f"url uses {parsed.drivername!r}; allowed: postgresql+asyncpg or sqlite+aiosqlite"
            )
        return v

    def display_url(self) -> str:
        """The URL with its user info and any password-like query value masked, safe for logs.

        Scrubbed from the text as written, not as SQLAlchemy parses it: a password with a raw
        `@` or `#` parses wrongly, and the parsed form would show its tail."""
        return scrub_url(self.url.get_secret_value())

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Ledger]:
        """A Ledger for the duration of one task or command, disposed afterwards.

        Prefect may run each async task on its own thread and event loop, and async engines
        belong to one loop; so each user opens its own, unpooled: nothing idles in between.
        """
        url = self.url.get_secret_value()
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.from_url(url, pooled=False)
        try:
            yield ledger
        finally:
            await ledger.close()

    async def prepare(self) -> None:
        """Create the schema (if allowed) or check it; once per flow run, before any task."""
        async with self.open() as ledger:
            await (ledger.create_schema() if self.auto_create_schema else ledger.check_schema())
