"""Failure notifications through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.demo import DEMO_START
from ledgerflow.flows.pipeline import windowed_pipeline

from .kit import DriftingTarget, Pipeline
from .mail_kit import SMTP_PASSWORD, Inbox, server

pytestmark = pytest.mark.usefixtures("prefect_harness")


def mailing_pipeline(tmp_path: Path, port: int, target: type, **config: Any) -> str:
    """A one-window pipeline on `target` whose config mails oncall@example.com via `port`."""
    pipeline = Pipeline(tmp_path, rows=300)
    server(port).save(pipeline.name, overwrite=True)
    return asyncio.run(
        pipeline.save(
            target=target,
            end=DEMO_START + timedelta(hours=2),
            notification_block=f"email-server-credentials/{pipeline.name}",
            email_list=["oncall@example.com"],
            **config,
        )
    )


def body_of(message: email.message.Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return str(part.get_payload(decode=True).decode())
    return ""


def test_a_failed_run_mails_the_email_list_without_secrets(
    tmp_path: Path, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    name = mailing_pipeline(tmp_path, port, DriftingTarget)
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    [message] = inbox.messages
    assert message["To"] == "oncall@example.com"
    assert name in message["Subject"] and "failed" in message["Subject"]
    text = body_of(message)
    assert f"pipeline: {name}" in text
    assert "first failure 2025-03-08T08:00:00Z" in text  # the window
    assert "[audit]" in text and "audit failed: source " in text  # the phase and the error
    assert "flow run:" in text
    assert "sqlite+aiosqlite" not in text  # the ledger URL (a secret) never appears
    assert SMTP_PASSWORD not in message.as_string()


def test_no_mail_when_email_on_failure_is_off(tmp_path: Path, smtp: tuple[int, Inbox]) -> None:
    port, inbox = smtp
    name = mailing_pipeline(tmp_path, port, DriftingTarget, email_on_failure=False)
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_failed()
    assert inbox.messages == []


def test_email_on_retry_mails_each_retry(tmp_path: Path, smtp: tuple[int, Inbox]) -> None:
    from .kit import FlakyCountTarget

    port, inbox = smtp
    name = mailing_pipeline(
        tmp_path,
        port,
        FlakyCountTarget,
        email_on_retry=True,
        email_on_failure=False,
        max_retry_task=2,
    )
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_failed()
    subjects = [m["Subject"] for m in inbox.messages]
    assert subjects == [f"[ledgerflow] {name}: audit failed, retrying"] * 2
    text = body_of(inbox.messages[0])
    assert "attempt 1 failed" in text and "warehouse went away" in text
    assert SMTP_PASSWORD not in inbox.messages[0].as_string()
