"""An upstream system submitting tasks to agentstream with nothing but a Kafka client.

It needs aiokafka, fastavro, the standard library (for the schema registry's REST API) and the
published `.avsc` files; it imports nothing from agentstream. It registers the
TaskSubmitted schema under the tasks topic's subject, writes the task in the Confluent
wire format (magic byte 0, 4-byte big-endian schema id, Avro binary body), keys the
record by the idempotency key, and prints the run id the task will get:

    python upstream_producer.py --bootstrap HOST:9092 --registry URL \\
        --topic agentstream.tasks --schemas schemas/avro \\
        --tenant acme --key order-17 --goal "Summarize order 17"

Sending the same (tenant, key) again, from any producer, starts no second run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from aiokafka import AIOKafkaProducer

# agentstream's contract: how the intake derives run ids (README, "Upstream systems").
RUN_NAMESPACE = uuid.UUID("3b0d6f8e-1c2a-5e4f-9a7b-6c5d4e3f2a10")
RECORD = "agentstream.events.TaskSubmitted"


def run_id_for(tenant: str, key: str) -> str:
    return str(uuid.uuid5(RUN_NAMESPACE, f"key\n{tenant}\n{key}"))


def load_named(directory: Path) -> dict[str, Any]:
    """Every schema of the directory by full name."""
    named = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text())
        named[f"{schema['namespace']}.{schema['name']}"] = schema
    return named


def inline(node: Any, named: dict[str, Any], done: set[str]) -> Any:
    """The schema with each named type written out where it is first used (as the registry wants)."""
    if isinstance(node, str):
        if node in named and node not in done:
            return inline(named[node], named, done)
        return node
    if isinstance(node, list):
        return [inline(branch, named, done) for branch in node]
    if node.get("type") == "record":
        done.add(f"{node['namespace']}.{node['name']}" if "namespace" in node else node["name"])
        return {**node, "fields": [{**f, "type": inline(f["type"], named, done)} for f in node["fields"]]}
    if node.get("type") == "array":
        return {**node, "items": inline(node["items"], named, done)}
    if node.get("type") == "map":
        return {**node, "values": inline(node["values"], named, done)}
    return node


def register(registry: str, subject: str, schema: dict[str, Any]) -> int:
    """The schema's id, registering it under the subject if it is new there."""
    request = urllib.request.Request(
        f"{registry.rstrip('/')}/subjects/{subject}/versions",
        data=json.dumps({"schema": json.dumps(schema), "schemaType": "AVRO"}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response)["id"])


def encode(schema_id: int, schema: Any, datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


def task(args: argparse.Namespace) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "meta": {
            "event_id": event_id,
            "run_id": run_id_for(args.tenant, args.key) if args.key else event_id,  # informative only
            "tenant_id": args.tenant,
            "causation_id": None,
            "correlation_id": event_id,
            "trace_id": None,
            "occurred_at": datetime.now(UTC),
            "producer": "upstream-example",
        },
        "goal": args.goal,
        "model": args.model,
        "fallback_model": None,
        "budget": {"max_steps": args.max_steps, "max_tokens": None, "max_usd": None, "deadline": None},
        "tools": [],
        "policy": None,
        "parent_run_id": None,
        "upstream_idempotency_key": args.key,
        "submitted_by": "upstream-example",
        "labels": {"source": "upstream-example"},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True, help="Confluent-compatible registry API root")
    parser.add_argument("--topic", required=True, help="the tasks topic, <prefix>.tasks")
    parser.add_argument("--schemas", required=True, type=Path, help="the published .avsc files")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--goal", required=True)
    parser.add_argument("--key", help="idempotency key: the same (tenant, key) is one run")
    parser.add_argument("--model")
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--times", type=int, default=1, help="send it this many times (a retrying producer)")
    args = parser.parse_args()

    schema = inline(RECORD, load_named(args.schemas), set())
    schema_id = register(args.registry, f"{args.topic}-{RECORD}", schema)
    parsed = fastavro.parse_schema(schema)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for _ in range(args.times):
            datum = task(args)
            key = (args.key or datum["meta"]["event_id"]).encode()
            await producer.send_and_wait(args.topic, encode(schema_id, parsed, datum), key=key)
    finally:
        await producer.stop()
    print(json.dumps({"run_id": run_id_for(args.tenant, args.key) if args.key else None, "sent": args.times}))


if __name__ == "__main__":
    asyncio.run(main())
