"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for notification tests."""

from __future__ import annotations

import email
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from prefect_email import EmailServerCredentials

from tests.netkit import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    port = free_port()  # aiosmtpd checks readiness on the port it was given
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=lambda *args: AuthResult(success=True),
    )
    controller.start()
    yield port, inbox
    controller.stop()


SMTP_PASSWORD = "smtp-Pa55-do-not-leak"


def server(port: int) -> EmailServerCredentials:
    # prefect-email 0.3 cannot load a saved block without username and password.
    return EmailServerCredentials(
        smtp_server="127.0.0.1",
        smtp_port=port,
        smtp_type="INSECURE",
        username="ledgerflow",
        password=SMTP_PASSWORD,
    )
