"""Snowflake failures classified by cause: one errno (250001) covers a login that a retry may
fix (HTTP 502/503/504, connection attempts exhausted) and one it never will (refused
credentials, a wrong account). The errors are built the way snowflake-connector-python builds
them (snowflake/connector/auth/_auth.py, auth/by_plugin.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ledgerflow.blocks.snowflake_errors import terminal_reason
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from ledgerflow.errors import TargetError, TargetTerminalError
from ledgerflow.windows import Window
from prefect_snowflake.credentials import SnowflakeCredentials
from prefect_snowflake.database import SnowflakeConnector
from snowflake.connector import errors as sf
from snowflake.connector.errorcode import ER_FAILED_TO_CONNECT_TO_DB
from snowflake.connector.sqlstate import (
    SQLSTATE_AUTHORIZATION_FAILURE,
    SQLSTATE_CONNECTION_WAS_NOT_ESTABLISHED,
)

HOST = "acme.snowflakecomputing.com:443"


def login_http_error(cls: type[sf.Error], status: str) -> sf.Error:
    """As _auth.py re-raises a 502/503/504 (or 403) answer to the login request."""
    kind = (
        "Verify the account name is correct"
        if cls is sf.ForbiddenError
        else "Service is unavailable"
    )
    return cls(
        msg=f"Failed to connect to DB. {kind}: {HOST}. {status}",
        errno=ER_FAILED_TO_CONNECT_TO_DB,
        sqlstate=SQLSTATE_CONNECTION_WAS_NOT_ESTABLISHED,
    )


def login_refused(errno: int, message: str, sqlstate: str) -> sf.Error:
    """As _auth.py raises a login the server answered with success=false."""
    return sf.DatabaseError(
        msg=f"Failed to connect to DB: {HOST}. {message}", errno=errno, sqlstate=sqlstate
    )


TRANSIENT = {
    "502 at login": login_http_error(sf.BadGatewayError, "HTTP 502: Bad Gateway"),
    "503 at login": login_http_error(sf.ServiceUnavailableError, "HTTP 503: Service Unavailable"),
    "504 at login": login_http_error(sf.GatewayTimeoutError, "HTTP 504: Gateway Timeout"),
    "attempts exhausted": sf.OperationalError(
        msg="Could not connect to Snowflake backend after 3 attempt(s).Aborting",
        errno=ER_FAILED_TO_CONNECT_TO_DB,
    ),
    "attempts exhausted, short wording": sf.OperationalError(
        msg="Could not connect after 5 attempts", errno=ER_FAILED_TO_CONNECT_TO_DB
    ),
    "lock timeout": sf.OperationalError(
        msg="Statement reached its statement or warehouse timeout", errno=630, sqlstate="57014"
    ),
}
TERMINAL = {
    "wrong password": login_refused(
        390100, "Incorrect username or password was specified.", SQLSTATE_AUTHORIZATION_FAILURE
    ),
    "wrong password under 250001": login_refused(
        ER_FAILED_TO_CONNECT_TO_DB,
        "Incorrect username or password was specified.",
        SQLSTATE_CONNECTION_WAS_NOT_ESTABLISHED,
    ),
    "bad JWT": login_refused(390144, "JWT token is invalid.", SQLSTATE_AUTHORIZATION_FAILURE),
    "wrong account (403)": login_http_error(sf.ForbiddenError, "HTTP 403: Forbidden"),
    "MFA failed": sf.DatabaseError(
        msg=f"Failed to connect to DB. MFA authentication failed: {HOST}. denied",
        errno=ER_FAILED_TO_CONNECT_TO_DB,
        sqlstate=SQLSTATE_CONNECTION_WAS_NOT_ESTABLISHED,
    ),
    "missing table": sf.ProgrammingError(
        msg="Object 'T' does not exist or not authorized.", errno=2003, sqlstate="42S02"
    ),
}


@pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_a_blip_is_retried(exc: sf.Error) -> None:
    assert terminal_reason(exc) is None


@pytest.mark.parametrize("exc", TERMINAL.values(), ids=TERMINAL.keys())
def test_a_refusal_is_terminal(exc: sf.Error) -> None:
    assert terminal_reason(exc)


def target() -> SnowflakeTarget:
    credentials = SnowflakeCredentials.parse_obj(
        {"account": "acme", "user": "etl", "password": "pw"}
    )
    connector = SnowflakeConnector.parse_obj(
        {"credentials": credentials, "database": "DB", "warehouse": "WH", "schema": "PUBLIC"}
    )
    return SnowflakeTarget.parse_obj(
        {"connector": connector, "table": "EVENTS", "stage": "S", "stage_url": "s3://b/p/"}
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TRANSIENT["504 at login"], TargetError),
        (TERMINAL["wrong password"], TargetTerminalError),
    ],
    ids=["504", "wrong password"],
)
async def test_the_target_raises_the_class_retries_decide_by(
    monkeypatch: pytest.MonkeyPatch, exc: sf.Error, kind: type[Exception]
) -> None:
    def refuse(self: Any, **kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(SnowflakeCredentials, "get_client", refuse)
    start = datetime(2025, 3, 9, 10, tzinfo=UTC)
    window = Window(start, start + timedelta(hours=1), start.date(), "1h")
    with pytest.raises(kind) as info:
        await target().count(window, "p")
    assert type(info.value) is kind
    assert "count failed" in str(info.value)


def test_a_refused_password_says_so_under_either_errno() -> None:
    for case in ("wrong password", "wrong password under 250001"):
        assert terminal_reason(TERMINAL[case]) == "the user name or password is wrong"


async def test_a_url_in_the_connectors_message_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    said = "Failed to get authentication by OKTA: https://etl:pw-9f@acme.okta.com/sso?token=tk-31"

    def refuse(self: Any, **kwargs: Any) -> None:
        raise sf.DatabaseError(msg=said, errno=ER_FAILED_TO_CONNECT_TO_DB, sqlstate="08004")

    monkeypatch.setattr(SnowflakeCredentials, "get_client", refuse)
    start = datetime(2025, 3, 9, 10, tzinfo=UTC)
    with pytest.raises(TargetTerminalError) as info:
        await target().count(Window(start, start + timedelta(hours=1), start.date(), "1h"), "p")
    assert "https://***@acme.okta.com/sso?token=***" in str(info.value)
    assert "pw-9f" not in str(info.value) and "tk-31" not in str(info.value)
