"""How a Snowflake connector error is reported: terminal (no retry will fix it) or retryable,
classified by cause, with a hint when the table's lock is held by a detached transaction."""

from __future__ import annotations

import re

from snowflake.connector import errors as sf_errors

from ledgerflow.errors import TargetError, TargetTerminalError
from ledgerflow.redact import scrub_urls

# Snowflake error numbers that no retry will fix.
_TERMINAL = {
    2003: "an object does not exist or is not authorized",
    1003: "the SQL does not compile",
    390100: "the user name or password is wrong",
    390144: "the private key or JWT is invalid",
    250001: "the account could not be reached or refused the login",
}
# 250001 ("failed to connect to DB") also covers causes a retry may fix: the connector raises it
# for an HTTP 502/503/504 answer to the login and when its own connection attempts ran out.
_RETRYABLE_HTTP = (
    sf_errors.ServiceUnavailableError,
    sf_errors.BadGatewayError,
    sf_errors.GatewayTimeoutError,
    sf_errors.InternalServerError,
    sf_errors.RequestTimeoutError,
    sf_errors.TooManyRequests,
    sf_errors.OtherHTTPRetryableError,
)
_TRANSIENT_LOGIN = re.compile(
    r"Service is unavailable|Could not connect (?:to Snowflake backend )?after \d+ attempt|"
    r"HTTP 50[234]",
    re.IGNORECASE,
)
# SQLSTATE the connector gives a login whose credentials the server rejected.
_CREDENTIALS_REJECTED = "28000"

# Snowflake error numbers for a statement that gave up waiting on another transaction's lock.
_LOCKED = {625, 630}
_LOCKED_HINT = (
    ". Another transaction holds the table's lock; if a worker died inside a load, its "
    "transaction stays open until Snowflake rolls it back (after 4 hours idle). Find it with "
    "SHOW TRANSACTIONS and end it with SELECT SYSTEM$ABORT_TRANSACTION(<id>); the window is "
    "retried meanwhile, nothing was written"
)


def terminal_reason(exc: sf_errors.Error) -> str | None:
    """Why no retry will fix `exc`, or None when a retry may: classified by cause (SQLSTATE,
    the connector's error class, its message), since one errno (250001) covers both kinds."""
    message = str(exc.msg or "")
    if "incorrect username or password" in message.lower():
        return _TERMINAL[390100]
    if exc.sqlstate == _CREDENTIALS_REJECTED:
        return _TERMINAL.get(exc.errno or 0, "the credentials were refused")
    if isinstance(exc, _RETRYABLE_HTTP) or _TRANSIENT_LOGIN.search(message):
        return None
    if isinstance(exc, sf_errors.ForbiddenError):
        return "the account name is wrong or the login was forbidden (HTTP 403)"
    return _TERMINAL.get(exc.errno or 0)


def target_error(
    exc: sf_errors.Error, where: str, action: str
) -> TargetError | TargetTerminalError:
    """The error to raise for `exc`, met by `action` on `where`: TargetTerminalError naming why
    no retry will fix it, or a TargetError (with the lock hint when another transaction held the
    table's lock)."""
    reason = terminal_reason(exc)
    said = scrub_urls(str(exc.msg))  # a login error may quote an SSO or OAuth URL
    if reason:
        return TargetTerminalError(
            f"{where}: {action} failed because {reason} ({exc.errno}): {said}"
        )
    hint = _LOCKED_HINT if exc.errno in _LOCKED else ""
    return TargetError(f"{where}: {action} failed ({exc.errno}): {said}{hint}")
