"""The HTTP gateway: the agentstream API and web console (`agentstream gateway`).

Needs the `gateway` extra: `pip install 'agentstream[gateway]'`.
"""

from __future__ import annotations

from agentstream.gateway.app import GatewayBackends, create_app
from agentstream.gateway.tokens import Principal, Role, TokenBook

__all__ = ["GatewayBackends", "Principal", "Role", "TokenBook", "create_app"]
