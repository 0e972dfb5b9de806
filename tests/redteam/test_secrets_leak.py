"""Red team: "Secrets live in `SecretStr` fields and never appear in logs, the ledger, artifacts,
errors or mail, including credentials a user put inside a URL."

Eight of these tests were breaks (FINDINGS.md, wave 6), each failing before its fix: a webhook
token in a failed notification's log line (twice), a ledger URL's password in a parse error, a
percent-encoded or `#`/`;`-holding query password shown by `display_url`, an S3 endpoint's
password in a chained traceback, and the Prefect API URL's user info printed by `init`. The
other two are hostile inputs that held and that `tests/integration/test_secrets.py` and
`tests/unit/test_redact.py` do not already cover.

Every secret here is a long, distinctive string (`LF-...-<hex>`), so finding it anywhere is a
leak, never a coincidence. A secret of 1-3 characters, or one equal to part of the host name, is
printed "by accident" in unrelated text and is not checked here."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect_aws.client_parameters import AwsClientParameters
from typer.testing import CliRunner

from tests.integration.conftest import peers
from tests.integration.kit import DriftingTarget, FlakyCountTarget, Pipeline, run_logs
from tests.integration.warehouse_kit import Peers
from tests.netkit import free_port

from .helpers import run

__all__ = ["peers"]  # the session's moto and fakesnow servers, as a fixture here too
pytestmark = pytest.mark.usefixtures("prefect_harness")

HOOK_TOKEN = "LF-hook-Token-5a9c"
ONE_WINDOW = DEMO_START + timedelta(hours=2)


@contextlib.contextmanager
def http_peer(status: int) -> Iterator[int]:
    """A loopback HTTP server answering every request with `status` (a webhook endpoint that
    is down); yields its port."""

    class Answer(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def webhook(port: int) -> CustomWebhookNotificationBlock:
    """Prefect's custom webhook block whose URL carries a token from its `secrets` (a
    SecretDict), the way the block's own documentation shows it."""
    return CustomWebhookNotificationBlock(
        name="oncall",
        url=f"http://127.0.0.1:{port}/hooks/{{{{token}}}}",
        secrets={"token": HOOK_TOKEN},  # type: ignore[arg-type]
        headers=None,
        cookies=None,
    )


async def save(block: Block, name: str) -> None:
    await block.save(name, overwrite=True)


# --- notification failures ------------------------------------------------------------------


def test_a_failed_retry_notification_keeps_the_webhook_secret_out_of_the_task_log(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=300)
    with http_peer(500) as port:
        asyncio.run(save(webhook(port), pipeline.name))
        name = asyncio.run(
            pipeline.save(
                target=FlakyCountTarget,  # the audit's count fails: retryable, so retried
                end=ONE_WINDOW,
                notification_block=f"custom-webhook/{pipeline.name}",
                email_on_retry=True,
                email_on_failure=False,
                max_retry_task=1,
            )
        )
        state = run(name)
    assert state.is_failed()
    logs = asyncio.run(run_logs(state))
    assert "retry notification failed" in logs  # the hook ran and its failure was logged
    assert HOOK_TOKEN not in logs, "the webhook's secret token is in the task run's log"


def test_a_failed_failure_notification_keeps_the_webhook_secret_out_of_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure hook runs outside the run's context, so its warning goes to the `ledgerflow`
    logger: the worker's (or `ledgerflow run -v`'s) log output."""
    pipeline = Pipeline(tmp_path, rows=300)
    caplog.set_level(logging.WARNING)
    with http_peer(500) as port:
        asyncio.run(save(webhook(port), pipeline.name))
        name = asyncio.run(
            pipeline.save(
                target=DriftingTarget,  # the audit fails: the run fails, the hook notifies
                end=ONE_WINDOW,
                notification_block=f"custom-webhook/{pipeline.name}",
            )
        )
        state = run(name)
    assert state.is_failed()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "was not sent" in said  # the notification failed and that was logged
    assert HOOK_TOKEN not in said, "the webhook's secret token is in the log"


# --- the ledger URL ---------------------------------------------------------------------------


def test_a_ledger_url_that_does_not_parse_is_refused_without_its_password(tmp_path: Path) -> None:
    """A whole URL from the environment is taken as written; its password holds a raw `@` and
    `:` (a generated one may). The README masks "the whole user info" for exactly this case, and
    `redact.scrub_url` takes the last `@` for it; the refusal should too."""
    tail = "Tail-Secret-4b1e"
    url = f"postgresql+asyncpg://etl:LF@pg:{tail}@127.0.0.1:5432/etl"
    path = tmp_path / "blocks.toml"
    path.write_text(
        '[ledger]\ntype = "ledgerflow-ledger-database"\nname = "raw"\nurl = "${LF_LEDGER_URL}"\n'
    )
    result = CliRunner().invoke(
        app, ["blocks", "register", "--file", str(path)], env={"LF_LEDGER_URL": url}
    )
    output = result.output + str(result.exception or "")
    assert result.exit_code != 0 and "url" in output, output  # refused, naming the field
    assert tail not in output, f"part of the password is in the error: {output}"


def _init_output(tmp_path: Path, pg_url: str, query: str) -> tuple[str, str]:
    """`ledgerflow init -c NAME` on a Postgres ledger whose URL ends with `query`; (the URL,
    what the command printed). The command must succeed: the URL works."""
    url = pg_url + ("&" if "?" in pg_url else "?") + query
    name = asyncio.run(Pipeline(tmp_path, rows=10, ledger_url=url).save())
    result = CliRunner().invoke(app, ["init", "-c", name])
    assert result.exit_code == 0, result.output
    assert "ledger schema ready at postgresql+asyncpg://***@127.0.0.1" in result.output
    return url, result.output


def test_a_percent_encoded_password_parameter_is_masked(tmp_path: Path, pg_url: str) -> None:
    secret = "LF-EncKey-Pw-31c2"
    url, output = _init_output(tmp_path, pg_url, f"p%61ssword={secret}")
    assert sa.engine.make_url(url).query["password"] == secret  # it is the password asyncpg gets
    assert secret not in output, f"the ledger password is printed: {output}"


@pytest.mark.parametrize("mark", ["#", ";"])
def test_a_query_password_holding_a_hash_or_semicolon_is_masked_whole(
    tmp_path: Path, pg_url: str, mark: str
) -> None:
    tail = "LF-QueryPw-Tail-8d0f"
    url, output = _init_output(tmp_path, pg_url, f"password=LF-head{mark}{tail}")
    assert sa.engine.make_url(url).query["password"] == f"LF-head{mark}{tail}"
    assert tail not in output, f"part of the ledger password is printed: {output}"


def test_an_unreachable_ledger_with_an_encoded_password_parameter_names_no_password(
    tmp_path: Path,
) -> None:
    """Held: the CLI's error for a ledger it cannot reach renders the URL through SQLAlchemy,
    which decodes the key, so `p%61ssword` is masked there (unlike `init`'s output above)."""
    secret, user_secret = "LF-EncKey-Held-77aa", "LF-User@Pw:Held-19fe"
    closed = free_port()
    user_info = f"postgres:{user_secret.replace('@', '%40').replace(':', '%3A')}"
    url = f"postgresql+asyncpg://{user_info}@127.0.0.1:{closed}/x?p%61ssword={secret}"
    name = asyncio.run(Pipeline(tmp_path, rows=10, ledger_url=url).save())
    result = CliRunner().invoke(app, ["status", "-c", name])
    output = result.output + str(result.exception or "")
    assert result.exit_code != 0 and f"127.0.0.1:{closed}" in output, output
    for form in (secret, user_secret, "Held-19fe", "LF-User"):
        assert form not in output, f"{form} leaked: {output}"


# --- client construction errors and their causes ----------------------------------------------


def test_an_s3_endpoint_the_client_refuses_leaves_its_credentials_out_of_the_task_log(
    tmp_path: Path, peers: Peers
) -> None:
    """A typo in an endpoint URL with credentials (a MinIO behind a basic-auth proxy). The
    README: "a malformed cloud id or endpoint" fails the window at once. The error and the
    ledger mask the user info; the task run's logged traceback does not."""
    secret = "LF-S3-UrlPw-77e1"
    pipeline = Pipeline(tmp_path, rows=300)
    stage = peers.stage(peers.new_bucket())
    assert stage.bucket.credentials is not None
    stage.bucket.credentials.aws_client_parameters = AwsClientParameters(
        endpoint_url=f"http://minio:{secret}@minio .internal:9000"
    )
    asyncio.run(save(stage, pipeline.name))
    name = asyncio.run(
        pipeline.save(end=ONE_WINDOW, stage_block=f"ledgerflow-s3-stage/{pipeline.name}")
    )
    state = run(name)
    assert state.is_failed()
    assert "http://***@minio .internal:9000" in str(state.message)  # the error itself masks
    records = asyncio.run(pipeline.records())
    assert all(secret not in str(r.model_dump()) for r in records)  # so does the ledger
    logs = asyncio.run(run_logs(state))
    assert secret not in logs, "the endpoint's password is in the task run's logged traceback"


def test_an_s3_endpoint_with_credentials_that_cannot_be_reached_names_no_password(
    tmp_path: Path, peers: Peers
) -> None:
    """Held: botocore names the endpoint URL (with its user info) when it cannot connect; the
    stage's error, the ledger, the logs and the run's state show it masked."""
    secret = "LF-S3-Held-Pw-c0de"
    pipeline = Pipeline(tmp_path, rows=300)
    stage = peers.stage(peers.new_bucket())
    assert stage.bucket.credentials is not None
    stage.bucket.credentials.aws_client_parameters = AwsClientParameters(
        endpoint_url=f"http://minio:{secret}@127.0.0.1:{free_port()}",
        config={"retries": {"total_max_attempts": 1}, "connect_timeout": 2},
    )
    asyncio.run(save(stage, pipeline.name))
    name = asyncio.run(
        pipeline.save(
            end=ONE_WINDOW, stage_block=f"ledgerflow-s3-stage/{pipeline.name}", max_retry_task=0
        )
    )
    state = run(name)
    assert state.is_failed()
    message = str(state.message)
    assert "cannot reach S3" in message and "http://***@127.0.0.1" in message, message
    records = asyncio.run(pipeline.records())
    for where, text in (
        ("state", message),
        ("ledger", " ".join(str(r.model_dump()) for r in records)),
        ("logs", asyncio.run(run_logs(state))),
    ):
        assert secret not in text, f"the endpoint's password leaked into the {where}"


# --- the Prefect API URL ----------------------------------------------------------------------


@contextlib.contextmanager
def prefect_server() -> Iterator[int]:
    """Prefect's own API app, served over HTTP on loopback (on the harness's database): a
    server whose URL a user can put credentials in (a basic-auth proxy). Yields its port."""
    import uvicorn
    from prefect.server.api.server import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ephemeral=True), host="127.0.0.1", port=port, log_level="error")
    )
    # The harness's settings (its database) live in a context variable: the thread needs them.
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(server.run,), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the Prefect API did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_init_does_not_print_the_credentials_in_the_prefect_api_url() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    secret = "LF-ApiUrl-Pw-2c7d"
    with prefect_server() as port:
        api = f"http://lf-proxy:{secret}@127.0.0.1:{port}/api"
        with temporary_settings({PREFECT_API_URL: api}):
            result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert f"127.0.0.1:{port}/api" in result.output  # it says where it registered
    assert secret not in result.output, f"the API URL's password is printed: {result.output}"
