"""send_email against a real SMTP server on loopback, and ask_human, which never runs."""

from __future__ import annotations

import socket

import pytest

from handlers.tools.base import ToolContext, ToolError, ToolRegistry
from handlers.tools.human import AskHumanTool
from handlers.tools.mail import SendEmailTool, SmtpSettings, message_id
from tests.support.smtp import Mailbox, mailbox  # noqa: F401  (fixture)

pytestmark = pytest.mark.unit

CTX = ToolContext(run_id="r1", tenant_id="acme", tool_call_id="c1", idempotency_key="k" * 64)
EMAIL = {"to": "ops@example.org", "subject": "Hello", "body": "Body text\nline two"}


async def test_sends_one_message_with_a_message_id_from_the_idempotency_key(mailbox: Mailbox) -> None:  # noqa: F811
    tool = SendEmailTool(SmtpSettings("127.0.0.1", mailbox.port, sender="agent@example.org"))
    result = await tool.run(EMAIL, CTX)
    assert result.ok and result.data == {
        "sent": True,
        "to": "ops@example.org",
        "message_id": message_id("k" * 64),
    }
    [message] = mailbox.messages
    assert (message["From"], message["To"], message["Subject"]) == (
        "agent@example.org",
        "ops@example.org",
        "Hello",
    )
    assert message["Message-ID"] == message_id("k" * 64) and message["X-Agentstream-Run"] == "r1"
    assert message.get_content().splitlines() == ["Body text", "line two"]
    spec = tool.spec
    assert (spec.risk_tier, spec.idempotent, spec.safe_to_retry) == ("high", False, False)


async def test_a_refused_recipient_is_a_tool_error(mailbox: Mailbox) -> None:  # noqa: F811
    mailbox.refuse.add("nobody@example.org")
    tool = SendEmailTool(SmtpSettings("127.0.0.1", mailbox.port))
    with pytest.raises(ToolError, match=r"refused the recipient nobody@example\.org"):
        await tool.run({**EMAIL, "to": "nobody@example.org"}, CTX)
    assert mailbox.messages == []


async def test_an_unreachable_server_is_a_tool_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        tool = SendEmailTool(SmtpSettings("127.0.0.1", port, timeout_s=2))
        with pytest.raises(ToolError, match=f"cannot reach the SMTP server 127.0.0.1:{port}"):
            await tool.run(EMAIL, CTX)


def test_arguments_are_validated_before_any_send() -> None:
    registry = ToolRegistry([SendEmailTool(SmtpSettings("127.0.0.1")), AskHumanTool()])
    assert registry.validate("send_email", EMAIL) == []
    assert registry.validate("send_email", {**EMAIL, "to": "a@b.c, d@e.f"}) != []
    assert registry.validate("send_email", {"to": "a@b.c"}) != []
    assert registry.validate("ask_human", {"question": ""}) != []


def test_settings_come_from_the_environment() -> None:
    assert SmtpSettings.from_env({}) is None
    settings = SmtpSettings.from_env(
        {
            "AGENTSTREAM_SMTP_HOST": "mail",
            "AGENTSTREAM_SMTP_PORT": "2525",
            "AGENTSTREAM_SMTP_FROM": "a@b.c",
            "AGENTSTREAM_SMTP_STARTTLS": "true",
            "AGENTSTREAM_SMTP_USER": "u",
            "AGENTSTREAM_SMTP_PASSWORD": "p",
        }
    )
    assert settings == SmtpSettings("mail", 2525, "a@b.c", True, "u", "p")
    with pytest.raises(ValueError, match="AGENTSTREAM_SMTP_PORT must be a port number"):
        SmtpSettings.from_env({"AGENTSTREAM_SMTP_HOST": "mail", "AGENTSTREAM_SMTP_PORT": "x"})


async def test_ask_human_never_runs_on_a_worker() -> None:
    with pytest.raises(ToolError, match="answered by a person"):
        await AskHumanTool().run({"question": "?"}, CTX)
