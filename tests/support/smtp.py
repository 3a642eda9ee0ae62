"""A real SMTP server (aiosmtpd) on an ephemeral loopback port, in the test's event loop.

Every message it accepts is parsed and kept in `messages`, in arrival order.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session


class Mailbox:
    """An aiosmtpd handler that stores what it receives; `refuse` rejects those recipients.

    With `hold_first_s`, the reply to the first message is held back that long after the
    message is stored: the sender cannot know yet that the email went out.
    """

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse: set[str] = set()
        self.hold_first_s = 0.0
        self.port = 0
        self._arrived = asyncio.Event()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self._arrived.set()
        if len(self.messages) == 1 and self.hold_first_s:
            await asyncio.sleep(self.hold_first_s)
        return "250 Message accepted for delivery"

    async def wait_for(self, count: int) -> list[EmailMessage]:
        """The messages once `count` have arrived (bound it with asyncio.timeout)."""
        while len(self.messages) < count:
            self._arrived.clear()
            await self._arrived.wait()
        return list(self.messages)


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box, hostname="mail.test"), "127.0.0.1", 0)
    box.port = server.sockets[0].getsockname()[1]
    yield box
    server.close()
    await server.wait_closed()
