"""Fixtures of the end-to-end suites."""

from tests.support.gateway import gateway  # noqa: F401  (a real gateway on loopback)
from tests.support.smtp import mailbox  # noqa: F401  (a real SMTP server on loopback)
