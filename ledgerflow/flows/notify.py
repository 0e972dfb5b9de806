"""Failure notifications (the seed's email_on_failure and email_list), through Prefect blocks.

`notification_block` in the pipeline config names either a prefect-email
`EmailServerCredentials` block (mail goes to `email_list`, the seed's default) or any Prefect
`NotificationBlock` (Slack, Teams, Opsgenie, a webhook...). The message names the pipeline, the
failed window, the phase, the error and the flow run; it never holds a secret: errors that
ledgerflow raises name fields and values, never credentials.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Any

from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun, State

from ledgerflow.blocks.config import PipelineConfig, load_final_config
from ledgerflow.redact import mask_secrets, secret_texts
from ledgerflow.tasks.common import artifact_key, logger


def failure_message(
    config: PipelineConfig, flow_run: FlowRun, state: State[Any]
) -> tuple[str, str]:
    """(subject, body) for a failed run. The state's message already says which window failed,
    in which phase and why ("first failure <window>: [phase] error")."""
    subject = f"[ledgerflow] {config.pipeline_id}: flow run {flow_run.name} failed"
    body = "\n".join(
        [
            f"pipeline: {config.pipeline_id}",
            f"flow run: {flow_run.name} ({flow_run.id})",
            f"deployment: {flow_run.deployment_id or 'ad hoc'}",
            f"state: {state.type.value}",
            f"what failed: {state.message or 'no message'}",
            "",
            f"see `ledgerflow status -c <config>` and the run's artifact "
            f"{artifact_key(config.pipeline_id)}",
        ]
    )
    return subject, body


class NotificationFailed(Exception):
    """A notification was not sent. Its text is the sender's error with the block's secrets
    masked; the sender's own exception is not chained (a traceback would print it)."""


async def send(config: PipelineConfig, subject: str, body: str) -> bool:
    """Send through the configured block; return whether anything was sent."""
    if not config.notification_block:
        return False
    block = await Block.load(config.notification_block)
    try:
        return await _send(config, block, subject, body)
    except Exception as exc:
        # An HTTP client quotes the URL it failed on, and a webhook's URL may hold its token
        # (Prefect's CustomWebhookNotificationBlock puts `secrets` into the URL's path).
        text = mask_secrets(f"{type(exc).__name__}: {exc}", secret_texts(block))
        raise NotificationFailed(text) from None


async def _send(config: PipelineConfig, block: Block, subject: str, body: str) -> bool:
    try:
        from prefect_email import EmailServerCredentials, email_send_message
    except ImportError:  # prefect-email is optional
        EmailServerCredentials = None
    if EmailServerCredentials is not None and isinstance(block, EmailServerCredentials):
        if not config.email_list:
            logger().warning("notification_block is an email server but email_list is empty")
            return False
        await email_send_message.fn(
            subject=subject,
            msg=f"<pre>{html.escape(body)}</pre>",
            msg_plain=body,
            email_server_credentials=block,
            email_to=config.email_list,
        )
        return True
    if isinstance(block, NotificationBlock):
        await block.notify(body, subject)
        return True
    logger().warning(
        "notification_block=%r is a %s, not an email server or notification block",
        config.notification_block,
        type(block).__name__,
    )
    return False


async def on_flow_failure(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
    """Flow hook: tell the people in email_list (or the notification block) that a run failed."""
    name = (flow_run.parameters or {}).get("config_block", "default")
    try:
        config = await load_final_config(name)
    except Exception as exc:  # a run that failed on its config cannot say whom to tell
        logger().warning("no failure notification: config %r did not load: %s", name, exc)
        return
    if not config.email_on_failure:
        return
    subject, body = failure_message(config, flow_run, state)
    try:
        await send(config, subject, body)
    except Exception as exc:  # a broken mail server must not hide the run's own failure
        logger().warning("failure notification for %s was not sent: %s", flow_run.name, exc)


def retry_notifier(config: PipelineConfig) -> Callable[[str, int, str, str], Awaitable[None]]:
    """The hook `retry_options` calls before each task retry (when email_on_retry is on)."""

    async def on_retry(task: str, attempt: int, error: str, flow_run_id: str) -> None:
        subject = f"[ledgerflow] {config.pipeline_id}: {task} failed, retrying"
        body = "\n".join(
            [
                f"pipeline: {config.pipeline_id}",
                f"task: {task} (attempt {attempt} failed, retrying)",
                f"error: {error}",
                f"flow run: {flow_run_id}",
            ]
        )
        await send(config, subject, body)

    return on_retry
