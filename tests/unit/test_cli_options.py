"""The CLI's --status option: the ledger's statuses, in any case, and a clear refusal."""

from __future__ import annotations

from ledgerflow.cli import app
from ledgerflow.cli.common import StatusChoice
from ledgerflow.ledger import Status
from typer.testing import CliRunner


def test_status_option_offers_exactly_the_ledger_statuses() -> None:
    assert [s.value for s in StatusChoice] == [s.value for s in Status]


def test_an_unknown_status_is_refused_naming_what_is_allowed() -> None:
    result = CliRunner().invoke(app, ["windows", "-c", "any", "--status", "DONE"])
    assert result.exit_code == 2
    message = " ".join(result.output.split()).lower()
    assert "'done' is not one of" in message
    for status in Status:
        assert f"'{status.value.lower()}'" in message
