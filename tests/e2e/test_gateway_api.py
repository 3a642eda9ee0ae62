"""The HTTP gateway against a real uvicorn server on loopback, hosting the real workers
over an embedded log, with a model stand-in that answers from each run's goal."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.gateway import RunningGateway

pytestmark = [pytest.mark.gateway, pytest.mark.slow]


def submit(client: httpx.Client, goal: str, key: str | None = None, **fields: object) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/runs", json={"goal": goal, **fields}, headers=headers)


def sse_events(client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> list[dict]:
    events = []
    with client.stream("GET", path, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_requests_without_a_valid_token_are_refused(gateway: RunningGateway) -> None:
    with gateway.client() as anonymous:
        for path in ("/v1/runs", "/v1/approvals", "/v1/me", "/v1/runs/x/events/stream"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
        forged = anonymous.get("/v1/runs", headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401
        assert forged.json()["error"]["message"] == "unknown token"
    with gateway.client("acme-auditor") as auditor:
        assert auditor.get("/v1/me").json() == {"name": "acme-auditor", "tenant": "acme", "role": "auditor"}


def test_a_submitted_run_completes_and_its_timeline_and_events_are_served(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as client:
        accepted = submit(client, 'call calculator {"expression": "6 * 7"}')
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        run = gateway.wait_for_run("acme-submitter", run_id, status="completed")
        assert run["answer"] == 'finished: {"expression":"6 * 7","result":42}'
        assert run["tenant"] == "acme" and run["steps"] == 2 and run["input_tokens"] == 40
        call = run["timeline"][0]["calls"][0]
        assert (call["tool"], json.loads(call["arguments_json"]), call["status"]) == (
            "calculator",
            {"expression": "6 * 7"},
            "observed",
        )
        listed = client.get("/v1/runs").json()["runs"]
        assert [r["run_id"] for r in listed] == [run_id]
        assert client.get("/v1/runs", params={"status": "failed"}).json()["runs"] == []
        events = client.get(f"/v1/runs/{run_id}/events").json()["events"]
        types = [e["type"] for e in events]
        assert types[0] == "TaskSubmitted" and types[-1] == "RunCompleted"
        assert "ObservationRecorded" in types and "BudgetCharged" in types
        assert events[0]["meta"]["producer"] == "intake" and events[0]["submitted_by"] == "acme-submitter"
        page = client.get(f"/v1/runs/{run_id}/events", params={"after": events[2]["offset"], "limit": 2})
        assert [e["offset"] for e in page.json()["events"]] == [e["offset"] for e in events[3:5]]
        # The stream replays from the start, ends at the terminal event, and resumes by id.
        streamed = sse_events(client, f"/v1/runs/{run_id}/events/stream")
        assert streamed == events
        resumed = sse_events(
            client, f"/v1/runs/{run_id}/events/stream", {"Last-Event-ID": str(events[-3]["offset"])}
        )
        assert resumed == events[-2:]


def test_the_stream_delivers_events_as_they_are_appended(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as client:
        run_id = submit(client, 'call calculator {"expression": "2 ** 10"}').json()["run_id"]
        gateway.wait_for_run("acme-submitter", run_id)
        streamed = sse_events(client, f"/v1/runs/{run_id}/events/stream")
    assert streamed[-1]["type"] == "RunCompleted"
    assert streamed[-1]["answer"].endswith('"result":1024}')
    offsets = [e["offset"] for e in streamed]
    assert offsets == sorted(set(offsets)), "each event once, in log order"


def test_the_same_idempotency_key_names_one_run(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as client:
        first = submit(client, "say hi", key="order-17")
        run_id = first.json()["run_id"]
        again = submit(client, "say hi", key="order-17")  # the run may not exist yet: one run all the same
        assert again.json()["run_id"] == run_id
        gateway.wait_for_run("acme-submitter", run_id, status="completed")
        late = submit(client, "say hi", key="order-17")
        assert late.status_code == 200
        assert late.json() == {"run_id": run_id, "status": "completed", "duplicate": True}
        conflict = submit(client, "say something else", key="order-17")
        assert conflict.status_code == 409
        assert "different task" in conflict.json()["error"]["message"]
        events = client.get(f"/v1/runs/{run_id}/events").json()["events"]
        assert [e["type"] for e in events].count("TaskSubmitted") == 1
        assert len(client.get("/v1/runs").json()["runs"]) == 1
    with gateway.client("globex-submitter") as other:
        theirs = submit(other, "say hi", key="order-17")
        assert theirs.status_code == 202 and theirs.json()["run_id"] != run_id, "keys are per tenant"


def test_bad_requests_get_clear_errors_and_start_nothing(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as client:
        empty = submit(client, "")
        assert empty.status_code == 422
        assert empty.json()["error"]["code"] == "invalid_request"
        assert empty.json()["error"]["details"][0]["loc"] == ["body", "goal"]
        assert submit(client, "x", unknown_field=1).status_code == 422
        assert submit(client, "x", max_steps=0).status_code == 422
        bad_key = submit(client, "x", key="has space")
        assert bad_key.status_code == 422 and "Idempotency-Key" in bad_key.json()["error"]["message"]
        assert (
            client.post(
                "/v1/runs", content=b"{not json", headers={"Content-Type": "application/json"}
            ).status_code
            == 422
        )
        assert client.get("/v1/runs", params={"limit": 0}).status_code == 422
        assert client.get("/v1/approvals", params={"status": "maybe"}).status_code == 422
        missing = client.get("/v1/runs/no-such-run")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/v1/nowhere").json()["error"]["code"] == "not_found"
        good = submit(client, "still works")
        gateway.wait_for_run("acme-submitter", good.json()["run_id"], status="completed")
        assert [r["goal"] for r in client.get("/v1/runs").json()["runs"]] == ["still works"]


def test_roles_limit_what_a_token_may_do(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as submitter:
        run_id = submit(submitter, "say hi").json()["run_id"]
    gateway.wait_for_run("acme-submitter", run_id, status="completed")
    with gateway.client("acme-auditor") as auditor:
        refused = submit(auditor, "audit this")
        assert refused.status_code == 403
        assert refused.json()["error"] == {
            "code": "forbidden",
            "message": "this needs the submitter role; the token is auditor",
        }
        assert auditor.post(f"/v1/runs/{run_id}/cancel", json={}).status_code == 403
        assert auditor.post(f"/v1/runs/{run_id}/answers", json={"answer": "x"}).status_code == 403
        assert auditor.post("/v1/approvals/a/decision", json={"decision": "approved"}).status_code == 403
        assert auditor.get(f"/v1/runs/{run_id}").status_code == 200, "auditors read"
    with gateway.client("acme-reviewer") as reviewer:
        assert submit(reviewer, "x").status_code == 403
        assert reviewer.post(f"/v1/runs/{run_id}/goal", json={"goal": "y"}).status_code == 403
        assert reviewer.get(f"/v1/runs/{run_id}/events").status_code == 200
    with gateway.client("acme-submitter") as submitter:
        assert submitter.post("/v1/approvals/a/decision", json={"decision": "denied"}).status_code == 403
        ended = submitter.post(f"/v1/runs/{run_id}/cancel", json={"reason": "too late"})
        assert ended.status_code == 409 and "already ended" in ended.json()["error"]["message"]


def test_the_api_is_documented(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/events",
        "/v1/runs/{run_id}/events/stream",
        "/v1/runs/{run_id}/cancel",
        "/v1/runs/{run_id}/goal",
        "/v1/runs/{run_id}/answers",
        "/v1/approvals",
        "/v1/approvals/{approval_id}/decision",
    }
    schemas = spec["components"]["schemas"]
    assert schemas["RunSubmission"]["properties"]["goal"]["description"]
    assert "ErrorBody" in schemas and "RunDetail" in schemas
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    post = spec["paths"]["/v1/runs"]["post"]
    assert any(p["name"] == "idempotency-key" for p in post["parameters"])
    assert {"202", "401", "403", "422"} <= set(post["responses"])


DEPLOY = 'call deploy {"service": "billing"}'
ASK = 'call ask_human {"question": "Which region?"}'


def waiting_for_approval(run: dict) -> bool:
    return bool(run["pending_approval_ids"])


def waiting_for_answer(run: dict) -> bool:
    return bool(run["questions"])


def test_reviewers_decide_approvals_and_answer_questions(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as submitter:
        approved_run = submit(submitter, DEPLOY).json()["run_id"]
        denied_run = submit(submitter, 'call deploy {"service": "payroll"}').json()["run_id"]
        asking_run = submit(submitter, ASK).json()["run_id"]
    for run_id in (approved_run, denied_run):
        gateway.wait_for_run("acme-reviewer", run_id, until=waiting_for_approval)
    with gateway.client("acme-reviewer") as reviewer:
        pending = reviewer.get("/v1/approvals").json()["approvals"]
        by_run = {a["run_id"]: a for a in pending}
        assert set(by_run) == {approved_run, denied_run}
        request = by_run[approved_run]
        assert (request["tool"], json.loads(request["arguments_json"]), request["status"]) == (
            "deploy",
            {"service": "billing"},
            "pending",
        )
        wrong_digest = reviewer.post(
            f"/v1/approvals/{request['approval_id']}/decision",
            json={"decision": "approved", "arguments_digest": "0" * 64},
        )
        assert wrong_digest.status_code == 409
        decided = reviewer.post(
            f"/v1/approvals/{request['approval_id']}/decision",
            json={
                "decision": "approved",
                "comment": "ship it",
                "arguments_digest": request["arguments_digest"],
            },
        )
        assert decided.status_code == 202 and decided.json()["type"] == "ApprovalDecided"
        denial = by_run[denied_run]
        assert (
            reviewer.post(
                f"/v1/approvals/{denial['approval_id']}/decision",
                json={"decision": "denied", "comment": "not today"},
            ).status_code
            == 202
        )
        twice = reviewer.post(f"/v1/approvals/{request['approval_id']}/decision", json={"decision": "denied"})
        assert twice.status_code == 409 and "already" in twice.json()["error"]["message"]
        assert reviewer.post("/v1/approvals/nope/decision", json={"decision": "approved"}).status_code == 404
        assert (
            reviewer.post(
                f"/v1/approvals/{request['approval_id']}/decision", json={"decision": "maybe"}
            ).status_code
            == 422
        )

        question = gateway.wait_for_run("acme-reviewer", asking_run, until=waiting_for_answer)["questions"]
        assert [q["question"] for q in question] == ["Which region?"]
        assert reviewer.post(f"/v1/runs/{asking_run}/answers", json={"answer": ""}).status_code == 422
        answered = reviewer.post(f"/v1/runs/{asking_run}/answers", json={"answer": "eu-west"})
        assert answered.status_code == 202 and answered.json()["type"] == "HumanAnswered"

    done = gateway.wait_for_run("acme-reviewer", approved_run, status="completed")
    assert done["answer"] == 'finished: {"deployed":"billing"}'
    denied = gateway.wait_for_run("acme-reviewer", denied_run, status="completed")
    assert "not today" in denied["answer"]
    answered_run = gateway.wait_for_run("acme-reviewer", asking_run, status="completed")
    assert "eu-west" in answered_run["answer"]
    with gateway.client("acme-auditor") as auditor:
        history = auditor.get("/v1/approvals", params={"status": "all"}).json()["approvals"]
        assert sorted((a["status"], a["reviewer"]) for a in history) == [
            ("approved", "acme-reviewer"),
            ("denied", "acme-reviewer"),
        ]
        assert auditor.get("/v1/approvals").json()["approvals"] == []
        again = auditor.post(f"/v1/runs/{asking_run}/answers", json={"answer": "x"})
        assert again.status_code == 403


def test_submitters_change_goals_and_cancel_runs(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as submitter:
        run_id = submit(submitter, ASK).json()["run_id"]
        gateway.wait_for_run("acme-submitter", run_id, until=waiting_for_answer)
        assert submitter.post(f"/v1/runs/{run_id}/goal", json={"goal": ""}).status_code == 422
        changed = submitter.post(f"/v1/runs/{run_id}/goal", json={"goal": "Ask about the region, then stop."})
        assert changed.status_code == 202 and changed.json()["type"] == "GoalChanged"
        run = gateway.wait_for_run("acme-submitter", run_id, until=lambda r: len(r["goal_history"]) == 2)
        assert run["goal"] == "Ask about the region, then stop."
        cancelled = submitter.post(f"/v1/runs/{run_id}/cancel", json={"reason": "no longer needed"})
        assert cancelled.status_code == 202 and cancelled.json()["type"] == "RunCancelled"
        streamed = sse_events(submitter, f"/v1/runs/{run_id}/events/stream")
        assert streamed[-1]["type"] == "RunCancelled"
        assert (streamed[-1]["reason"], streamed[-1]["requested_by"]) == (
            "no longer needed",
            "acme-submitter",
        )
        run = gateway.wait_for_run("acme-submitter", run_id, status="cancelled")
        assert submitter.post(f"/v1/runs/{run_id}/goal", json={"goal": "again"}).status_code == 409
        assert submitter.post("/v1/runs/unknown/cancel", json={}).status_code == 404


def test_one_tenant_can_neither_read_nor_act_on_another_tenants_runs(gateway: RunningGateway) -> None:
    with gateway.client("acme-submitter") as acme:
        deploy_run = submit(acme, DEPLOY, key="acme-deploy-1").json()["run_id"]
        asking_run = submit(acme, ASK).json()["run_id"]
    gateway.wait_for_run("acme-reviewer", deploy_run, until=waiting_for_approval)
    gateway.wait_for_run("acme-reviewer", asking_run, until=waiting_for_answer)
    with gateway.client("acme-auditor") as auditor:
        [approval] = auditor.get("/v1/approvals").json()["approvals"]
        before = {r: auditor.get(f"/v1/runs/{r}/events").json()["events"] for r in (deploy_run, asking_run)}

    hit: set[tuple[str, str]] = set()

    def call(person: str, method: str, template: str, **kwargs: object) -> httpx.Response:
        path = template.format(run_id=deploy_run, approval_id=approval["approval_id"])
        hit.add((method, template))
        with gateway.client(person) as client:
            return client.request(method, path, **kwargs)  # type: ignore[arg-type]

    def refused_as_unknown(response: httpx.Response, what: str) -> None:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
        assert deploy_run not in response.text.replace(f"no run {deploy_run}", "no run"), "no detail leaks"
        assert response.json()["error"]["message"] in (f"no run {deploy_run}", f"no approval {what}")

    for person in ("globex-submitter", "globex-reviewer", "globex-auditor"):
        listed = call(person, "GET", "/v1/runs")
        assert listed.status_code == 200 and listed.json()["runs"] == []
        refused_as_unknown(call(person, "GET", "/v1/runs/{run_id}"), "")
        refused_as_unknown(call(person, "GET", "/v1/runs/{run_id}/events"), "")
        refused_as_unknown(call(person, "GET", "/v1/runs/{run_id}/events/stream"), "")
        for status in ("pending", "all"):
            inbox = call(person, "GET", "/v1/approvals", params={"status": status})
            assert inbox.status_code == 200 and inbox.json()["approvals"] == []
        assert call(person, "GET", "/v1/me").json()["tenant"] == "globex"
        queue = call(person, "GET", "/v1/queue").json()
        assert queue == {"tenant": "globex", "queued": 0, "in_flight": 0, "max_concurrent_runs": None}
    refused_as_unknown(call("globex-submitter", "POST", "/v1/runs/{run_id}/cancel", json={}), "")
    refused_as_unknown(
        call("globex-submitter", "POST", "/v1/runs/{run_id}/goal", json={"goal": "mine now"}), ""
    )
    refused_as_unknown(
        call(
            "globex-reviewer", "POST", "/v1/runs/{run_id}/answers", json={"answer": "x", "tool_call_id": "c1"}
        ),
        "",
    )
    with gateway.client("globex-reviewer") as globex:
        hijack = globex.post(f"/v1/runs/{asking_run}/answers", json={"answer": "stolen"})
        assert hijack.status_code == 404
    refused_as_unknown(
        call(
            "globex-reviewer",
            "POST",
            "/v1/approvals/{approval_id}/decision",
            json={"decision": "approved", "arguments_digest": approval["arguments_digest"]},
        ),
        approval["approval_id"],
    )
    # The same Idempotency-Key in another tenant is another run, never a window onto acme's.
    theirs = call(
        "globex-submitter",
        "POST",
        "/v1/runs",
        json={"goal": DEPLOY},
        headers={"Idempotency-Key": "acme-deploy-1"},
    )
    assert theirs.status_code == 202 and theirs.json()["run_id"] != deploy_run

    with gateway.client() as anonymous:
        operations = {
            (method.upper(), path)
            for path, item in anonymous.get("/openapi.json").json()["paths"].items()
            for method in item
            if path.startswith("/v1/")
        }
    assert hit == operations, f"endpoints not tried across tenants: {operations - hit}"

    # Acme's runs are untouched: the same events, still waiting, and still acme's to settle.
    with gateway.client("acme-auditor") as auditor:
        after = {r: auditor.get(f"/v1/runs/{r}/events").json()["events"] for r in (deploy_run, asking_run)}
    assert after == before
    with gateway.client("acme-reviewer") as reviewer:
        decided = reviewer.post(
            f"/v1/approvals/{approval['approval_id']}/decision", json={"decision": "approved"}
        )
        assert decided.status_code == 202
    assert gateway.wait_for_run("acme-reviewer", deploy_run, status="completed")["answer"] == (
        'finished: {"deployed":"billing"}'
    )
