"""An external system following agentstream's events topic with nothing but a Kafka client.

It needs aiokafka and fastavro; it imports nothing from agentstream. Each record
value is in the Confluent wire format: it reads the schema id from the 5-byte header,
fetches that writer schema from the registry once, and decodes the Avro body with it.
It prints one JSON object per event of the run (or of every run), in log order, and stops
at the run's terminal event or after --idle seconds without records:

    python events_consumer.py --bootstrap HOST:9092 --registry URL \\
        --topic agentstream.events --run RUN_ID
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import urllib.request
from typing import Any

import fastavro
from aiokafka import AIOKafkaConsumer

TERMINAL = {"RunCompleted", "RunFailed", "RunAborted", "RunCancelled"}


class WriterSchemas:
    """Writer schemas by id, fetched from the registry on first sight."""

    def __init__(self, registry: str) -> None:
        self.registry = registry.rstrip("/")
        self.by_id: dict[int, tuple[str, Any]] = {}

    def get(self, schema_id: int) -> tuple[str, Any]:
        if schema_id not in self.by_id:
            with urllib.request.urlopen(f"{self.registry}/schemas/ids/{schema_id}", timeout=10) as response:
                schema = json.loads(json.load(response)["schema"])
            self.by_id[schema_id] = (schema["name"].rsplit(".", 1)[-1], fastavro.parse_schema(schema))
        return self.by_id[schema_id]


def decode(value: bytes, schemas: WriterSchemas) -> tuple[str, dict[str, Any]]:
    magic, schema_id = struct.unpack_from(">bI", value)
    if magic != 0:
        raise ValueError(f"not the Confluent wire format (magic byte {magic})")
    type_name, schema = schemas.get(schema_id)
    return type_name, fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True, help="the events topic, <prefix>.events")
    parser.add_argument("--run", help="only this run's events (records are keyed by run id)")
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()

    schemas = WriterSchemas(args.registry)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # agentstream writes in transactions
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=int(args.idle * 1000))
            if not batches:
                return
            for records in batches.values():
                for record in records:
                    if args.run and record.key != args.run.encode():
                        continue
                    type_name, datum = decode(record.value, schemas)
                    position = {"partition": record.partition, "offset": record.offset}
                    print(json.dumps({"type": type_name, **position, **datum}, default=str), flush=True)
                    if args.run and type_name in TERMINAL:
                        return
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
