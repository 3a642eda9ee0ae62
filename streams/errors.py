"""The error tree of the event backbone.

Driver errors (sqlite3, aiokafka, httpx) are translated into these at the boundary, so
callers handle one small tree and can ask any error whether retrying may help.
"""

from __future__ import annotations


class AgentstreamError(Exception):
    """Root of every error agentstream raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(AgentstreamError):
    """A URL, setting or argument is wrong; fixing the configuration is the only cure."""


class EventLogError(AgentstreamError):
    """The event log could not do what was asked (connection lost, disk full, ...)."""


class TopicNotFound(EventLogError):
    """A topic was used before it was created."""


class SchemaRegistryError(AgentstreamError):
    """The schema registry refused a request or could not be reached."""


class IncompatibleSchema(SchemaRegistryError):
    """A schema change would break readers of data already written."""

    def __init__(self, subject: str, messages: list[str]) -> None:
        super().__init__(f"schema for {subject} is not compatible: " + "; ".join(messages))
        self.subject = subject
        self.messages = messages


class PoisonEvent(AgentstreamError):
    """A record that can never be processed; it goes to the dead-letter topic.

    `reason` is a short machine-readable code (see `DeadLetterReason`); the message says
    what exactly was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class RetryableHandlerError(AgentstreamError):
    """Raised by a handler for a transient failure: the runtime backs off and retries."""

    retryable = True


class HandlerRejected(AgentstreamError):
    """Raised by a handler for an event it can never process: the event is dead-lettered."""
