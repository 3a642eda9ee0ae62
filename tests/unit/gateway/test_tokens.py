"""API tokens: only digests on disk, each bound to a tenant and a role; broken files refused."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentstream.cli import main
from agentstream.gateway.tokens import Principal, Role, TokenBook, digest, issue
from streams.errors import ConfigError

pytestmark = pytest.mark.unit


def test_issued_tokens_are_stored_as_digests_and_name_their_principal(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "tokens.json"
    alice = issue(path, "acme", Role.REVIEWER, "alice")
    bob = issue(path, "globex", Role.SUBMITTER, "bob")
    text = path.read_text()
    assert alice not in text and bob not in text
    assert digest(alice) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    book = TokenBook.load(path)
    assert len(book) == 2
    assert book.principal(alice) == Principal("alice", "acme", Role.REVIEWER)
    assert book.principal(bob) == Principal("bob", "globex", Role.SUBMITTER)
    assert book.principal("guess") is None
    assert book.principal(alice + "x") is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "cannot read"),
        ('{"users": []}', 'expected {"tokens"'),
        ('{"tokens": [{"tenant": "acme", "role": "auditor", "sha256": "ab"}]}', "64-hex-digit"),
        ('{"tokens": [{"role": "auditor", "sha256": "' + "a" * 64 + '"}]}', "needs a tenant"),
        ('{"tokens": [{"tenant": "acme", "role": "admin", "sha256": "' + "a" * 64 + '"}]}', "role 'admin'"),
        ('{"tokens": ["x"]}', "not an object"),
    ],
)
def test_a_broken_tokens_file_is_refused_with_the_reason(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        TokenBook.load(path)
    with pytest.raises(ConfigError):
        issue(path, "acme", Role.AUDITOR, "carol")
    assert path.read_text() == content, "a broken file is never rewritten"


def test_a_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        TokenBook.load(tmp_path / "none.json")


def test_unnamed_tokens_get_a_name(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"tenant": "acme", "role": "auditor", "sha256": digest("t")}]}))
    assert TokenBook.load(path).principal("t") == Principal("token-0", "acme", Role.AUDITOR)


def test_the_cli_issues_tokens_and_the_gateway_refuses_a_bad_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    result = CliRunner().invoke(
        main, ["issue-token", "--tokens", str(path), "--tenant", "acme", "--role", "auditor", "--name", "dan"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert TokenBook.load(path).principal(token) == Principal("dan", "acme", Role.AUDITOR)
    wrong_role = CliRunner().invoke(
        main, ["issue-token", "--tokens", str(path), "--tenant", "acme", "--role", "root", "--name", "x"]
    )
    assert wrong_role.exit_code == 2 and "root" in wrong_role.output
    broken = tmp_path / "broken.json"
    broken.write_text("[]")
    refused = CliRunner().invoke(
        main, ["issue-token", "--tokens", str(broken), "--tenant", "a", "--role", "auditor", "--name", "x"]
    )
    assert refused.exit_code == 2 and "expected" in refused.stderr
    served = CliRunner().invoke(main, ["gateway", "--tokens", str(broken)])
    assert served.exit_code == 2 and "--tokens" in served.output
