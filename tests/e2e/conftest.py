"""Fixtures of the end-to-end suites."""

from tests.support.smtp import mailbox  # noqa: F401  (a real SMTP server on loopback)
