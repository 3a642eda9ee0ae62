"""`send_email`: a high-risk tool that sends one email through a configured SMTP server.

| variable                  | default            |
|---------------------------|--------------------|
| AGENTSTREAM_SMTP_HOST     | (unset: the tool is not offered) |
| AGENTSTREAM_SMTP_PORT     | 25                 |
| AGENTSTREAM_SMTP_FROM     | agentstream@localhost |
| AGENTSTREAM_SMTP_STARTTLS | false              |
| AGENTSTREAM_SMTP_USER / AGENTSTREAM_SMTP_PASSWORD | (no login) |

The Message-ID is derived from the call's idempotency key, so a receiver (or a person
reading a mailbox) can recognise the same approved call. The tool is not idempotent: the
tool worker's ledger never repeats a send that may have happened, across crashes too.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from handlers.tools.base import Tool, ToolContext, ToolError, ToolResult, ToolSpec

SEND_EMAIL = "send_email"


@dataclass(frozen=True)
class SmtpSettings:
    """Where and as whom send_email sends."""

    host: str
    port: int = 25
    sender: str = "agentstream@localhost"
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    timeout_s: float = 20.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """The settings from AGENTSTREAM_SMTP_*, or None when no host is configured."""
        env = os.environ if env is None else env
        host = env.get("AGENTSTREAM_SMTP_HOST")
        if not host:
            return None
        try:
            port = int(env.get("AGENTSTREAM_SMTP_PORT", "25"))
        except ValueError as exc:
            raise ValueError("AGENTSTREAM_SMTP_PORT must be a port number") from exc
        return cls(
            host=host,
            port=port,
            sender=env.get("AGENTSTREAM_SMTP_FROM", "agentstream@localhost"),
            starttls=env.get("AGENTSTREAM_SMTP_STARTTLS", "").lower() in ("1", "true", "yes"),
            user=env.get("AGENTSTREAM_SMTP_USER") or None,
            password=env.get("AGENTSTREAM_SMTP_PASSWORD") or None,
        )


def message_id(idempotency_key: str) -> str:
    return f"<{idempotency_key[:40]}@agentstream>"


class SendEmailTool(Tool):
    """Sends one plain-text email; high risk, so a person approves each call by default."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=SEND_EMAIL,
            description="Send a plain-text email to one recipient. A person may have to approve it first.",
            parameters={
                "type": "object",
                "properties": {
                    "to": {"type": "string", "pattern": r"^[^@\s<>,;]+@[^@\s<>,;]+$", "maxLength": 254},
                    "subject": {"type": "string", "maxLength": 500},
                    "body": {"type": "string", "maxLength": 100_000},
                },
                "required": ["to", "subject", "body"],
                "additionalProperties": False,
            },
            risk_tier="high",
            timeout_s=self.settings.timeout_s + 5,
            idempotent=False,
        )

    def _message(self, args: Mapping[str, Any], ctx: ToolContext) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = args["to"]
        message["Subject"] = args["subject"]
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id(ctx.idempotency_key)
        message["X-Agentstream-Run"] = ctx.run_id
        message.set_content(args["body"])
        return message

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
            if s.starttls:
                smtp.starttls()
            if s.user and s.password:
                smtp.login(s.user, s.password)
            smtp.send_message(message)

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        message = self._message(args, ctx)
        try:
            await asyncio.to_thread(self._send, message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ToolError(f"the SMTP server refused the recipient {args['to']}: {exc.recipients}") from exc
        except smtplib.SMTPException as exc:
            raise ToolError(f"sending failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise ToolError(
                f"cannot reach the SMTP server {self.settings.host}:{self.settings.port}: {exc}"
            ) from exc
        return ToolResult.success({"sent": True, "to": args["to"], "message_id": message["Message-ID"]})
