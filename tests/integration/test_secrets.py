"""Distinctive secrets in every block, a run that fails: no secret in logs, ledger, artifacts or
the notification mail. Also credentials inside URLs: a ledger URL's `?password=`, a password
substituted from the environment by `blocks register`, an Elasticsearch host with user info."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from elasticsearch import AsyncElasticsearch
from ledgerflow.blocks.elasticsearch import ElasticsearchSource, PlainJsonNode
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from ledgerflow.deployments.save_blocks import register_file
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from tests.netkit import free_port

from .kit import DriftingTarget, Pipeline, run_logs
from .mail_kit import SMTP_PASSWORD, Inbox, server
from .warehouse_kit import KEY, Peers

PG_PASSWORD = "LF-pg-Secret-7d1c"
ES_KEY = "LF-es-ApiKey-93ab"
SECRETS = (PG_PASSWORD, ES_KEY, SMTP_PASSWORD)
AWS_SECRET = "LF-aws-SecretKey-5e2f"
SNOWFLAKE_PASSWORD = "LF-snowflake-Pw-c4d8"
QUERY_PASSWORD = "LF-pg-QueryPw-81f0"
# Characters that break a URL unencoded; the encoded form is a secret too.
ENV_PASSWORD = "LF-env-s3cr3t!@#"
ENV_FORMS = (ENV_PASSWORD, quote(ENV_PASSWORD, safe=""), "s3cr3t", "!@#")
ES_URL_PASSWORD = "LF-es-UrlPw-0b7e"
pytestmark = pytest.mark.usefixtures("prefect_harness")


async def test_no_secret_leaks_from_a_failed_run(
    tmp_path: Path, pg_url: str, osmem_url: str, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    # The test Postgres trusts loopback, so any password connects: it only has to be carried.
    url = sa.engine.make_url(pg_url).set(password=PG_PASSWORD).render_as_string(hide_password=False)
    state, name = await failing_run(tmp_path, url, osmem_url, port)
    await assert_no_secret(state, url, name, inbox, SECRETS)


async def failing_run(
    tmp_path: Path, ledger_url: str, osmem_url: str, smtp_port: int, index: str = "events"
) -> tuple[Any, str]:
    """A run on the given ledger whose audit fails (a drifting target), with an Elasticsearch
    source that holds an API key and a mail notification; its final state and config name."""
    await seed_events(osmem_url, index)
    pipeline = Pipeline(tmp_path, rows=10, ledger_url=ledger_url)
    name = pipeline.name
    await ElasticsearchSource.parse_obj(
        {"hosts": [osmem_url], "index": index, "compatibility_headers": False, "api_key": ES_KEY}
    ).save(name, overwrite=True)
    await server(smtp_port).save(name, overwrite=True)
    await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{name}",
        target=DriftingTarget,
        end=DEMO_START + timedelta(hours=2),
        notification_block=f"email-server-credentials/{name}",
        email_list=["oncall@example.com"],
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()  # the drifting target fails the audit (or the ledger is away)
    return state, name


async def test_a_ledger_password_in_the_query_string_never_leaks(
    tmp_path: Path, pg_url: str, osmem_url: str, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    url = sa.engine.make_url(pg_url).update_query_dict({"password": QUERY_PASSWORD})
    text = url.render_as_string(hide_password=False)
    state, name = await failing_run(tmp_path, text, osmem_url, port)
    await assert_no_secret(state, text, name, inbox, (QUERY_PASSWORD,))


async def test_an_unreachable_ledger_names_its_url_without_the_password(
    tmp_path: Path, osmem_url: str, smtp: tuple[int, Inbox]
) -> None:
    closed = free_port()
    url = f"postgresql+asyncpg://postgres:{quote(ENV_PASSWORD, safe='')}@127.0.0.1:{closed}/x"
    url += f"?password={QUERY_PASSWORD}"
    port, inbox = smtp
    state, _ = await failing_run(tmp_path, url, osmem_url, port)
    message = str(state.message)
    assert f"127.0.0.1:{closed}" in message, message  # it says where, scrubbed
    for secret in (*ENV_FORMS, QUERY_PASSWORD):
        assert secret not in message, f"{secret} leaked into the state: {message}"
        assert secret not in await run_logs(state), f"{secret} leaked into the logs"
        assert all(secret not in m.as_string() for m in inbox.messages), "leaked into mail"


async def test_a_password_from_the_environment_works_in_the_url_and_never_leaks(
    tmp_path: Path, pg_url: str, osmem_url: str, smtp: tuple[int, Inbox]
) -> None:
    """`blocks register --file`: a password with `!@#` is encoded into the ledger URL's user
    info, reaches Postgres intact and appears nowhere, in no form."""
    parsed = sa.engine.make_url(pg_url)
    template = f"postgresql+asyncpg://{parsed.username}:${{LF_LEDGER_PW}}@{parsed.host}"
    template += f":{parsed.port}/{parsed.database}"
    path = tmp_path / "blocks.toml"
    path.write_text(
        f'[ledger]\ntype = "ledgerflow-ledger-database"\nname = "env"\nurl = "{template}"\n'
    )
    await register_file(path, env={"LF_LEDGER_PW": ENV_PASSWORD})
    ledger_db = await LedgerDatabase.load("env")
    url = ledger_db.url.get_secret_value()
    assert sa.engine.make_url(url).password == ENV_PASSWORD
    assert all(form not in ledger_db.display_url() for form in ENV_FORMS)
    port, inbox = smtp
    state, name = await failing_run(tmp_path, url, osmem_url, port)
    await assert_no_secret(state, url, name, inbox, ENV_FORMS)  # the run reached the ledger


def test_an_elasticsearch_host_with_credentials_is_refused_without_echoing_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "blocks.toml"
    path.write_text(
        '[source]\ntype = "ledgerflow-elasticsearch-source"\nname = "es"\nindex = "events"\n'
        'hosts = ["http://elastic:${LF_ES_PW}@127.0.0.1:9200"]\n'
    )
    result = CliRunner().invoke(
        app, ["blocks", "register", "--file", str(path)], env={"LF_ES_PW": ES_URL_PASSWORD}
    )
    output = result.output + str(result.exception or "")
    assert result.exit_code != 0
    assert "carries credentials in the URL" in output and "username and password" in output
    assert "http://***@127.0.0.1:9200" in output
    assert ES_URL_PASSWORD not in output and "elastic:" not in output


async def test_no_secret_leaks_from_a_failed_run_on_the_production_path(
    tmp_path: Path, pg_url: str, osmem_url: str, smtp: tuple[int, Inbox], peers: Peers
) -> None:
    """The AWS secret key and the Snowflake password, through a load that fails in Snowflake."""
    port, inbox = smtp
    await seed_events(osmem_url, "events-prod")
    pipeline = Pipeline(tmp_path, rows=10, ledger_url=pg_url)
    name = pipeline.name
    bucket = peers.new_bucket()
    await ElasticsearchSource.parse_obj(
        {"hosts": [osmem_url], "index": "events-prod", "compatibility_headers": False}
    ).save(name, overwrite=True)
    stage = peers.stage(bucket)
    stage.bucket.credentials = peers.credentials(KEY, AWS_SECRET)
    await stage.save(name, overwrite=True)
    target = peers.target(bucket, f"LF_{name.upper()}")
    target.connector.credentials.password = SNOWFLAKE_PASSWORD  # type: ignore[assignment]
    broken = target.copy(update={"stage": "NO_SUCH_STAGE"})  # the COPY fails after the DELETE
    await broken.save(name, overwrite=True)
    await server(port).save(name, overwrite=True)
    await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{name}",
        stage_block=f"ledgerflow-s3-stage/{name}",
        target_block=f"ledgerflow-snowflake-target/{name}",
        end=DEMO_START + timedelta(hours=2),
        notification_block=f"email-server-credentials/{name}",
        email_list=["oncall@example.com"],
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    await assert_no_secret(state, pg_url, name, inbox, (AWS_SECRET, SNOWFLAKE_PASSWORD))


async def seed_events(url: str, index: str) -> None:
    es = AsyncElasticsearch(url, node_class=PlainJsonNode)
    await es.indices.create(index=index, mappings={"properties": {"@timestamp": {"type": "date"}}})
    first = DEMO_START.astimezone(UTC)
    ops: list[dict[str, Any]] = []
    for i in range(200):
        stamp = (first + timedelta(seconds=i * 20)).isoformat().replace("+00:00", "Z")
        ops += [{"index": {"_index": index, "_id": f"d{i}"}}, {"@timestamp": stamp}]
    await es.bulk(operations=ops, refresh=True)
    await es.close()


async def assert_no_secret(
    state: Any, url: str, name: str, inbox: Inbox, secrets: tuple[str, ...]
) -> None:
    async with Ledger.from_url(url) as ledger:
        rows = await ledger.windows(name)
    ledger_text = " ".join(str(r.model_dump()) for r in rows)
    async with get_client() as client:
        artifacts = await client.read_artifacts()
    log_text = await run_logs(state)
    artifact_text = " ".join(str(a.data) for a in artifacts)
    mail_text = " ".join(m.as_string() for m in inbox.messages)
    assert rows and log_text and artifacts and inbox.messages, (
        "nothing to inspect: the test proves nothing"
    )
    for secret in secrets:
        for where, text in (
            ("ledger", ledger_text),
            ("logs", log_text),
            ("artifacts", artifact_text),
            ("mail", mail_text),
            ("state", str(state.message)),
        ):
            assert secret not in text, f"{secret} leaked into the {where}"
