"""The composition root: blocks built in code are checked against the Protocol they serve."""

from __future__ import annotations

import pytest
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.errors import ConfigError
from ledgerflow.ports import LedgerProvider, Source, Stage, Target
from ledgerflow.wiring import wire


def blocks(tmp: str) -> dict[str, object]:
    return {
        "ledger": LedgerDatabase.parse_obj({"url": f"sqlite+aiosqlite:///{tmp}/l.db"}),
        "source": DuckDBSource.parse_obj({"path": f"{tmp}/s.duckdb", "table": "t"}),
        "stage": LocalStage.parse_obj({"root": tmp}),
        "target": DuckDBTarget.parse_obj({"path": f"{tmp}/w.duckdb", "table": "t"}),
    }


def test_wired_systems_serve_their_protocols(tmp_path: object) -> None:
    systems = wire(**blocks(str(tmp_path)))
    assert isinstance(systems.ledger, LedgerProvider)
    assert isinstance(systems.source, Source) and isinstance(systems.stage, Stage)
    assert isinstance(systems.target, Target)


def test_a_block_in_the_wrong_role_is_refused_by_name(tmp_path: object) -> None:
    given = blocks(str(tmp_path))
    given["stage"] = given["source"]  # a DuckDBSource has no write()
    with pytest.raises(ConfigError, match=r"^stage is a DuckDBSource, which is not a Stage$"):
        wire(**given)
