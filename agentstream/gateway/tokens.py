"""API tokens: who is calling, for which tenant, in which role.

Tokens live in a JSON file as SHA-256 digests, never in plain text:

    {"tokens": [{"name": "alice", "tenant": "acme", "role": "reviewer", "sha256": "<hex>"}]}

`agentstream issue-token` adds one and prints the token once. Tokens are 256 random bits,
so a plain digest is enough: there is nothing to guess from it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from streams.errors import ConfigError


class Role(StrEnum):
    """What a token may do. Every role reads its own tenant's runs."""

    SUBMITTER = "submitter"
    """Submits runs, cancels them, changes their goal."""
    REVIEWER = "reviewer"
    """Decides approvals and answers agents' questions."""
    AUDITOR = "auditor"
    """Reads only."""


@dataclass(frozen=True)
class Principal:
    """The caller behind a token."""

    name: str
    tenant: str
    role: Role


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    """The tokens a gateway accepts, by digest."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_digest = dict(principals)

    def __len__(self) -> int:
        return len(self._by_digest)

    def principal(self, token: str) -> Principal | None:
        return self._by_digest.get(digest(token))

    @classmethod
    def load(cls, path: str | Path) -> TokenBook:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the tokens file {path}: {exc}") from exc
        principals: dict[str, Principal] = {}
        entries = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f'{path}: expected {{"tokens": [...]}}')
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: token {index} is not an object")
            principals[_digest_of(entry, path, index)] = _principal_of(entry, path, index)
        return cls(principals)


def _digest_of(entry: dict[str, Any], path: str | Path, index: int) -> str:
    value = entry.get("sha256")
    if not isinstance(value, str) or len(value) != 64:
        raise ConfigError(f"{path}: token {index} needs a 64-hex-digit sha256")
    return value.lower()


def _principal_of(entry: dict[str, Any], path: str | Path, index: int) -> Principal:
    tenant, name, role = entry.get("tenant"), entry.get("name"), entry.get("role")
    if not isinstance(tenant, str) or not tenant:
        raise ConfigError(f"{path}: token {index} needs a tenant")
    if role not in {r.value for r in Role}:
        raise ConfigError(f"{path}: token {index} has role {role!r}; use one of {[r.value for r in Role]}")
    return Principal(name if isinstance(name, str) and name else f"token-{index}", tenant, Role(role))


def issue(path: str | Path, tenant: str, role: Role, name: str) -> str:
    """Create a token, add its digest to the file (created if missing), return the token."""
    path = Path(path)
    data: dict[str, Any] = {"tokens": []}
    if path.exists():
        TokenBook.load(path)  # refuse to extend a broken file
        data = json.loads(path.read_text())
    token = secrets.token_urlsafe(32)
    data["tokens"].append({"name": name, "tenant": tenant, "role": role.value, "sha256": digest(token)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return token
