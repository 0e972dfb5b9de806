"""Distinctive secrets in every block, a run that fails: no secret in logs, ledger, artifacts or
the notification mail."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from elasticsearch import AsyncElasticsearch
from ledgerflow.blocks.elasticsearch import ElasticsearchSource, PlainJsonNode
from ledgerflow.demo import DEMO_START
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from .kit import DriftingTarget, Pipeline
from .mail_kit import SMTP_PASSWORD, Inbox, server
from .warehouse_kit import KEY, Peers

PG_PASSWORD = "LF-pg-Secret-7d1c"
ES_KEY = "LF-es-ApiKey-93ab"
SECRETS = (PG_PASSWORD, ES_KEY, SMTP_PASSWORD)
AWS_SECRET = "LF-aws-SecretKey-5e2f"
SNOWFLAKE_PASSWORD = "LF-snowflake-Pw-c4d8"
pytestmark = pytest.mark.usefixtures("prefect_harness")


async def test_no_secret_leaks_from_a_failed_run(
    tmp_path: Path, pg_url: str, osmem_url: str, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    await seed_events(osmem_url, "events")

    # The test Postgres trusts loopback, so any password connects: it only has to be carried.
    url = sa.engine.make_url(pg_url).set(password=PG_PASSWORD).render_as_string(hide_password=False)
    pipeline = Pipeline(tmp_path, rows=10, ledger_url=url)
    name = pipeline.name
    await ElasticsearchSource.parse_obj(
        {"hosts": [osmem_url], "index": "events", "compatibility_headers": False, "api_key": ES_KEY}
    ).save(name, overwrite=True)
    await server(port).save(name, overwrite=True)
    await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{name}",
        target=DriftingTarget,
        end=DEMO_START + timedelta(hours=2),
        notification_block=f"email-server-credentials/{name}",
        email_list=["oncall@example.com"],
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()  # the drifting target fails the audit

    await assert_no_secret(state, url, name, inbox, SECRETS)


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
        logs = await client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
        artifacts = await client.read_artifacts()
    log_text = " ".join(log.message for log in logs)
    artifact_text = " ".join(str(a.data) for a in artifacts)
    mail_text = " ".join(m.as_string() for m in inbox.messages)
    assert rows and logs and artifacts and inbox.messages, (
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
