"""The web console end to end in a real headless Chromium (Debian's `chromium`, driven by
Python Playwright): a submitter starts a run that needs approval, a reviewer approves it
in the inbox and watches it complete, and denies another from its live timeline.

Screenshots go to $AGENTSTREAM_ARTIFACTS/console (or the test's tmp dir) and are listed in
the test log.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.support.gateway import RunningGateway

pytestmark = [pytest.mark.browser, pytest.mark.gateway, pytest.mark.slow]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        message = "Debian's chromium is not installed (make browser)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh Chromium profile; pages of one context are separate tabs, each with its own token."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("playwright is required in CI (the dev extra)")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def screenshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    root = Path(os.environ["AGENTSTREAM_ARTIFACTS"]) if os.environ.get("AGENTSTREAM_ARTIFACTS") else tmp_path
    directory = root / "console"
    directory.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []

    def take(page: Any, name: str) -> None:
        path = directory / f"{len(taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    yield take
    with capsys.disabled():
        for path in taken:
            print(f"\nconsole screenshot: {path}")


def sign_in(page: Any, gateway: RunningGateway, person: str) -> None:
    page.goto(f"{gateway.url}/")
    page.wait_for_selector("#token-form")
    page.fill("#token", gateway.tokens[person])
    page.click("#token-form button[type=submit]")
    page.wait_for_selector(f"#who:has-text('{person}')")


def test_a_run_needing_approval_is_approved_in_the_console_and_completes(
    gateway: RunningGateway, browser: Any, screenshots: Any
) -> None:
    submitter = browser.new_page()
    page_errors: list[str] = []
    submitter.on("pageerror", lambda error: page_errors.append(str(error)))
    submitter.goto(f"{gateway.url}/")
    submitter.wait_for_selector("#sign-in:not([hidden])")
    submitter.fill("#token", "a forged token")
    submitter.click("#token-form button[type=submit]")
    submitter.wait_for_selector("#sign-in-error:has-text('unknown token')")
    screenshots(submitter, "sign-in-refused")

    sign_in(submitter, gateway, "acme-submitter")
    submitter.fill("#submit-form input[name=goal]", 'call deploy {"service": "billing"}')
    submitter.click("#submit-form button[type=submit]")
    submitter.wait_for_selector("#runs-error:has-text('submitted run')")
    run_id = re.search(r"submitted run (\S+)", submitter.inner_text("#runs-error")).group(1)  # type: ignore[union-attr]
    submitter.wait_for_selector(f"tr[data-run-id='{run_id}'] .status-suspended")
    screenshots(submitter, "runs-list-waiting")

    reviewer = browser.new_page()
    reviewer.on("pageerror", lambda error: page_errors.append(str(error)))
    sign_in(reviewer, gateway, "acme-reviewer")
    assert reviewer.query_selector("#submit-form") is None, "reviewers do not submit"
    reviewer.click("#nav-approvals")
    card = reviewer.wait_for_selector(".approval")
    assert "deploy" in card.inner_text() and '"service":"billing"' in card.inner_text()
    screenshots(reviewer, "approvals-inbox")
    reviewer.click(".approval button.approve")
    reviewer.wait_for_selector("#inbox-empty")

    reviewer.goto(f"{gateway.url}/console/#/runs/{run_id}")
    reviewer.wait_for_selector("#timeline li[data-type=RunCompleted]")
    reviewer.wait_for_selector("#run-summary .status-completed")
    timeline = reviewer.inner_text("#timeline")
    kinds = [li.get_attribute("data-type") for li in reviewer.query_selector_all("#timeline li")]
    for kind in (
        "TaskSubmitted",
        "PlanProposed",
        "ToolCallRequested",
        "ApprovalRequested",
        "ApprovalDecided",
    ):
        assert kind in kinds, kind
    assert kinds.index("ApprovalDecided") < kinds.index("ObservationRecorded") < kinds.index("RunCompleted")
    assert "approved by acme-reviewer" in timeline
    assert '{"service": "billing"}' in timeline, "tool calls show their arguments"
    assert "I will use deploy." in timeline, "thought summaries are shown"
    assert 'finished: {"deployed":"billing"}' in reviewer.inner_text("#run-answer")
    assert "BudgetCharged" in kinds and reviewer.inner_text("#run-cost") == "$0.000018"
    assert "null" not in reviewer.inner_text("#run-summary")
    assert reviewer.query_selector("#timeline .decision") is None, "a decided request offers no buttons"
    screenshots(reviewer, "run-timeline-completed")

    # Live: a second run's timeline is open while it waits; denying it there ends it on screen.
    submitter.reload()  # the token survives in sessionStorage; the last message does not
    submitter.wait_for_selector("#runs-rows tr")
    assert submitter.inner_text("#runs-error") == ""
    submitter.fill("#submit-form input[name=goal]", 'call deploy {"service": "payroll"}')
    submitter.click("#submit-form button[type=submit]")
    submitter.wait_for_selector("#runs-error:has-text('submitted run')")
    second = re.search(r"submitted run (\S+)", submitter.inner_text("#runs-error")).group(1)  # type: ignore[union-attr]
    gateway.wait_for_run("acme-reviewer", second, until=lambda run: bool(run["pending_approval_ids"]))
    reviewer.goto(f"{gateway.url}/console/#/runs/{second}")
    reviewer.wait_for_selector("#timeline li[data-type=ApprovalRequested] button.deny")
    screenshots(reviewer, "run-timeline-waiting")
    reviewer.click("#timeline li[data-type=ApprovalRequested] button.deny")
    reviewer.wait_for_selector("#timeline li[data-type=RunCompleted]")
    assert "denied by acme-reviewer" in reviewer.inner_text("#timeline")
    screenshots(reviewer, "run-timeline-denied-live")

    submitter.click("#nav-runs")
    submitter.wait_for_selector(f"tr[data-run-id='{run_id}'] .status-completed")
    submitter.wait_for_selector(f"tr[data-run-id='{second}'] .status-completed")
    screenshots(submitter, "runs-list-done")
    assert page_errors == []
