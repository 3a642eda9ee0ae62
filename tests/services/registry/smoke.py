"""Smoke check of a Confluent-compatible schema registry (stdlib only).

    python tests/services/registry/smoke.py [BASE_URL]

BASE_URL defaults to the contents of $AGENTSTREAM_RUN/registry/url (written by
tests/services/registry.sh up). Prints each request with its status and raw body,
and exits non-zero if a response differs from what the Confluent API promises.
Uses a fresh subject name per run, so it can run against a long-lived registry.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

CT = "application/vnd.schemaregistry.v1+json"


def call(method: str, url: str, body: object | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": CT, "Accept": CT})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    print(f"{method} {url[len(BASE) :]} -> {status} {raw}")
    return status, (json.loads(raw) if raw else None)


def record(fields: list[dict]) -> dict:
    return {
        "schema": json.dumps(
            {"type": "record", "name": "TaskSubmitted", "namespace": "agentstream.events", "fields": fields}
        )
    }


def main() -> int:
    subject = f"agentstream.events-agentstream.events.TaskSubmitted-smoke{int(time.time() * 1000)}"
    v1 = record([{"name": "task_id", "type": "string"}, {"name": "prompt", "type": "string"}])
    v2 = record(
        [
            {"name": "task_id", "type": "string"},
            {"name": "prompt", "type": "string"},
            {"name": "priority", "type": ["null", "int"], "default": None},
        ]
    )
    type_changed = record([{"name": "task_id", "type": "int"}, {"name": "prompt", "type": "string"}])
    required_added = record(
        [
            {"name": "task_id", "type": "string"},
            {"name": "prompt", "type": "string"},
            {"name": "owner", "type": "string"},
        ]
    )
    s = f"/subjects/{subject}"
    checks = []

    def expect(ok: bool, what: str) -> None:
        checks.append((ok, what))

    st, b = call("PUT", f"{BASE}/config/{subject}", {"compatibility": "BACKWARD"})
    expect(st == 200, "PUT config 200")
    st, b = call("POST", f"{BASE}{s}/versions", v1)
    expect(st == 200 and isinstance(b, dict) and isinstance(b.get("id"), int), "register v1 -> id")
    sid = b["id"]
    st, b = call("GET", f"{BASE}/schemas/ids/{sid}")
    expect(st == 200 and json.loads(b["schema"]) == json.loads(v1["schema"]), "GET /schemas/ids/{id}")
    st, b = call("POST", f"{BASE}/compatibility{s}/versions/latest", v2)
    expect(st == 200 and b == {"is_compatible": True}, "optional field with default is compatible")
    st, b = call("POST", f"{BASE}/compatibility{s}/versions/latest", type_changed)
    expect(st == 200 and b == {"is_compatible": False}, "type change is incompatible")
    st, b = call("POST", f"{BASE}/compatibility{s}/versions/latest", required_added)
    expect(st == 200 and b == {"is_compatible": False}, "required field without default is incompatible")
    st, b = call("POST", f"{BASE}{s}/versions", type_changed)
    expect(st == 409, "registering an incompatible schema -> 409")
    st, b = call("POST", f"{BASE}{s}/versions", v2)
    expect(st == 200 and b["id"] != sid, "register v2 -> new id")
    st, b = call("GET", f"{BASE}{s}/versions/latest")
    expect(st == 200 and b["version"] == 2, "latest is version 2")
    st, b = call("POST", f"{BASE}{s}", v1)
    expect(st == 200 and b["id"] == sid and b["version"] == 1, "lookup v1 by schema")
    st, b = call("GET", f"{BASE}/schemas/ids/999999999")
    expect(st == 404 and b.get("error_code") == 40403, "unknown id -> 404/40403")
    st, b = call("DELETE", f"{BASE}{s}")
    expect(st == 200, "soft-delete subject")
    st, b = call("DELETE", f"{BASE}{s}?permanent=true")
    expect(st == 200, "hard-delete subject")

    bad = [what for ok, what in checks if not ok]
    print(f"{len(checks) - len(bad)} passed, {len(bad)} failed")
    for what in bad:
        print(f"FAILED: {what}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        BASE = sys.argv[1].rstrip("/")
    else:
        run = os.environ.get("AGENTSTREAM_RUN", "/tmp/agentstream-services")
        with open(os.path.join(run, "registry", "url")) as fh:
            BASE = fh.read().strip()
    sys.exit(main())
