"""`LedgerDatabase`: where the ledger lives, SQLite under .ledgerflow/ or Postgres."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

import sqlalchemy as sa
from prefect.blocks.core import Block
from pydantic.v1 import Field, SecretStr, validator

from ledgerflow.ledger import Ledger

DEFAULT_URL = "sqlite+aiosqlite:///.ledgerflow/ledger.db"

# Async engines belong to the event loop that made them. Prefect runs a flow and its tasks on
# different loops, so each loop gets its own Ledger for the same URL.
_LEDGERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Ledger]] = (
    weakref.WeakKeyDictionary()
)


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
    _documentation_url = "https://github.com/ledgerflow/ledgerflow#configure-the-blocks"  # type: ignore[assignment]
    _description = "Postgres (postgresql+asyncpg://) or SQLite (sqlite+aiosqlite:///) ledger."

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
        except sa.exc.ArgumentError:
            raise ValueError(
                "url is not a database URL; allowed: postgresql+asyncpg://... or "
                "sqlite+aiosqlite:///path"
            ) from None
        allowed = {("postgresql", "asyncpg"), ("sqlite", "aiosqlite")}
        if (parsed.get_backend_name(), parsed.get_driver_name()) not in allowed:
            raise ValueError(
                f"url uses {parsed.drivername!r}; allowed: postgresql+asyncpg or sqlite+aiosqlite"
            )
        return v

    def display_url(self) -> str:
        """The URL with any password masked, safe for logs."""
        return sa.engine.make_url(self.url.get_secret_value()).render_as_string(hide_password=True)

    async def get_ledger(self) -> Ledger:
        """The Ledger for this URL on the running event loop, created (and its schema) once."""
        loop = asyncio.get_running_loop()
        url = self.url.get_secret_value()
        per_loop = _LEDGERS.setdefault(loop, {})
        if url not in per_loop:
            parsed = sa.engine.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (
                None,
                "",
                ":memory:",
            ):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            ledger = Ledger.from_url(url)
            try:
                await (ledger.create_schema() if self.auto_create_schema else ledger.check_schema())
            except BaseException:
                await ledger.close()
                raise
            per_loop[url] = ledger
        return per_loop[url]


async def close_ledgers() -> None:
    """Dispose of the running loop's ledgers (engines are per loop)."""
    per_loop = _LEDGERS.pop(asyncio.get_running_loop(), {})
    for ledger in per_loop.values():
        await ledger.close()
