"""Semantic memory on Weaviate: one Weaviate tenant per agentstream tenant, our vectors.

One multi-tenant collection holds every memory. A tenant's memories live in its own
Weaviate tenant (shard), named from a hash of the agentstream tenant id, so a query is
bound to one tenant by construction: no filter can reach another shard. Vectors are
supplied by us (no Weaviate vectorizer); namespace, tags and metadata are properties
that searches filter on (metadata as `["key","value"]` JSON strings in a text array).

Ranking: Weaviate finds the nearest `oversample * k` candidates by cosine distance
under the filters; we then apply time decay and keep the best `k`. With decay on, a
very old, very similar memory outside those candidates could be missed: raise
`oversample` if that matters. Near-duplicate checks use a filtered nearest-neighbour
query per write, so writes are sequential; `bulk_load` skips them (benchmarks only).

Needs the `agentstream[weaviate]` extra (weaviate-client), imported lazily.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from projections.embeddings import MissingExtra
from projections.memory import (
    Citation,
    MemoryFilter,
    MemoryHit,
    MemoryIndex,
    MemoryItem,
    MemorySettings,
    Principal,
    check_query,
    hit_of,
    merge,
)

__all__ = ["WeaviateMemoryIndex"]

_NEVER = 1.0e15
"""expires_at stored for memories without a TTL (Weaviate numbers cannot be null in filters)."""
_VECTOR = "default"
_ID_SPACE = uuid.UUID("6f1c3a52-7b0e-4c53-9a56-2f4d0f0b7d11")


def _client_module() -> Any:
    try:
        import weaviate
    except ImportError as exc:
        raise MissingExtra(
            "WeaviateMemoryIndex needs weaviate-client: pip install 'agentstream[weaviate]'"
        ) from exc
    return weaviate


def weaviate_tenant(tenant_id: str) -> str:
    """The Weaviate tenant name of an agentstream tenant (hashed: any id is safe)."""
    return "t-" + hashlib.sha256(tenant_id.encode()).hexdigest()[:48]


def object_id(tenant_id: str, memory_id: str) -> str:
    return str(uuid.uuid5(_ID_SPACE, f"{tenant_id}\x00{memory_id}"))


def _kv(key: str, value: str) -> str:
    return json.dumps([key, value])


def _unit(vector: Sequence[float]) -> list[float]:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    if norm:
        array = array / np.float32(norm)
    return [float(x) for x in array]


class WeaviateMemoryIndex(MemoryIndex):
    """A `MemoryIndex` on a Weaviate server (multi-tenancy, bring-your-own vectors).

    `host`, `port` (HTTP) and `grpc_port` locate the server; `collection` names the
    collection, created on first use.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        grpc_port: int = 50051,
        *,
        collection: str = "AgentstreamMemory",
        settings: MemorySettings | None = None,
        oversample: int = 4,
    ) -> None:
        weaviate = _client_module()
        self.settings = settings or MemorySettings()
        self.oversample = oversample
        self.collection_name = collection
        self._client = weaviate.connect_to_local(host=host, port=port, grpc_port=grpc_port)
        self._known: set[str] = set()
        self._ensure_collection()

    # -- setup

    def _ensure_collection(self) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        if self._client.collections.exists(self.collection_name):
            return
        text = DataType.TEXT
        field = Tokenization.FIELD
        self._client.collections.create(
            self.collection_name,
            multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=True),
            vector_config=Configure.Vectors.self_provided(
                name=_VECTOR,
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
            ),
            properties=[
                Property(name="tenant_id", data_type=text, tokenization=field),
                Property(name="memory_id", data_type=text, tokenization=field),
                Property(name="namespace", data_type=text, tokenization=field),
                Property(name="text", data_type=text),
                Property(name="tags", data_type=DataType.TEXT_ARRAY, tokenization=field),
                Property(name="metadata_kv", data_type=DataType.TEXT_ARRAY, tokenization=field),
                Property(name="metadata_json", data_type=text, skip_vectorization=True),
                Property(name="created_at", data_type=DataType.NUMBER),
                Property(name="expires_at", data_type=DataType.NUMBER),
                Property(name="event_id", data_type=text, tokenization=field),
                Property(name="run_id", data_type=text, tokenization=field),
            ],
        )

    def _collection(self) -> Any:
        return self._client.collections.get(self.collection_name)

    def _tenant(self, tenant_id: str, create: bool) -> Any:
        from weaviate.classes.tenants import Tenant

        name = weaviate_tenant(tenant_id)
        collection = self._collection()
        if name not in self._known:
            if not collection.tenants.exists(name):
                if not create:
                    return None
                collection.tenants.create([Tenant(name=name)])
            self._known.add(name)
        return collection.with_tenant(name)

    # -- conversions

    @staticmethod
    def _properties(item: MemoryItem) -> dict[str, Any]:
        return {
            "tenant_id": item.tenant_id,
            "memory_id": item.memory_id,
            "namespace": item.namespace,
            "text": item.text,
            "tags": list(item.tags),
            "metadata_kv": [_kv(k, v) for k, v in sorted(item.metadata.items())],
            "metadata_json": json.dumps(dict(item.metadata), sort_keys=True),
            "created_at": item.created_at,
            "expires_at": _NEVER if item.expires_at is None else item.expires_at,
            "event_id": item.citation.event_id,
            "run_id": item.citation.run_id,
        }

    @staticmethod
    def _item(obj: Any) -> MemoryItem:
        p = obj.properties
        vector = obj.vector.get(_VECTOR, []) if isinstance(obj.vector, dict) else (obj.vector or [])
        expires = float(p["expires_at"])
        return MemoryItem(
            tenant_id=str(p["tenant_id"]),
            memory_id=str(p["memory_id"]),
            namespace=str(p["namespace"]),
            text=str(p["text"]),
            vector=tuple(float(x) for x in vector),
            created_at=float(p["created_at"]),
            citation=Citation(str(p["event_id"]), str(p["run_id"])),
            tags=tuple(p.get("tags") or ()),
            metadata=json.loads(p["metadata_json"]),
            expires_at=None if expires >= _NEVER else expires,
        )

    # -- writes

    def _store(self, handle: Any, item: MemoryItem) -> None:
        uid = object_id(item.tenant_id, item.memory_id)
        props = self._properties(item)
        if handle.data.exists(uid):
            handle.data.replace(uuid=uid, properties=props, vector={_VECTOR: list(item.vector)})
        else:
            handle.data.insert(uuid=uid, properties=props, vector={_VECTOR: list(item.vector)})

    def _upsert_one(self, item: MemoryItem) -> str:
        from weaviate.classes.query import Filter, MetadataQuery

        handle = self._tenant(item.tenant_id, create=True)
        existing_obj = handle.query.fetch_object_by_id(
            object_id(item.tenant_id, item.memory_id), include_vector=True
        )
        if existing_obj is not None:
            existing = self._item(existing_obj)
            if item.newer_than(existing):
                self._store(handle, item)
            return item.memory_id
        found = handle.query.near_vector(
            near_vector=list(item.vector),
            target_vector=_VECTOR,
            limit=1,
            filters=Filter.by_property("namespace").equal(item.namespace)
            & Filter.by_property("expires_at").greater_than(item.created_at),
            return_metadata=MetadataQuery(distance=True),
            include_vector=True,
        )
        if found.objects:
            nearest = found.objects[0]
            similarity = 1.0 - float(nearest.metadata.distance)
            if similarity >= self.settings.dedup_threshold:
                existing = self._item(nearest)
                kept = merge(existing, item)
                if kept is not existing:
                    self._store(handle, kept)
                return kept.memory_id
        self._store(handle, item)
        return item.memory_id

    def _normalized(self, item: MemoryItem) -> MemoryItem:
        return replace(item, vector=tuple(_unit(item.vector)))

    async def upsert(self, items: Sequence[MemoryItem]) -> list[str]:
        prepared = [self._normalized(item) for item in items]
        return await asyncio.to_thread(lambda: [self._upsert_one(item) for item in prepared])

    def bulk_load(self, items: Sequence[MemoryItem]) -> None:
        """Insert items without near-duplicate checks, in batches (for benchmarks)."""
        from weaviate.classes.data import DataObject

        by_tenant: dict[str, list[MemoryItem]] = {}
        for item in items:
            by_tenant.setdefault(item.tenant_id, []).append(self._normalized(item))
        for tenant, group in by_tenant.items():
            handle = self._tenant(tenant, create=True)
            for start in range(0, len(group), 1000):
                objects = [
                    DataObject(
                        uuid=object_id(i.tenant_id, i.memory_id),
                        properties=self._properties(i),
                        vector={_VECTOR: list(i.vector)},
                    )
                    for i in group[start : start + 1000]
                ]
                result = handle.data.insert_many(objects)
                if result.has_errors:
                    raise RuntimeError(f"weaviate bulk insert failed: {list(result.errors.values())[:3]}")

    # -- reads

    def search_sync(
        self,
        principal: Principal,
        query_vector: Sequence[float],
        k: int = 5,
        namespaces: Sequence[str] | None = None,
        filters: MemoryFilter | None = None,
        *,
        now: float | None = None,
    ) -> list[MemoryHit]:
        """`search` without the event loop (for benchmarks and thread pools)."""
        from weaviate.classes.query import Filter, MetadataQuery

        check_query(query_vector, k)
        readable = principal.readable(namespaces)
        now = time.time() if now is None else now
        if not readable:
            return []
        handle = self._tenant(principal.tenant_id, create=False)
        if handle is None:
            return []
        where = Filter.by_property("namespace").contains_any(sorted(readable)) & Filter.by_property(
            "expires_at"
        ).greater_than(now)
        if filters is not None:
            if filters.tags_all:
                where = where & Filter.by_property("tags").contains_all(list(filters.tags_all))
            if filters.tags_any:
                where = where & Filter.by_property("tags").contains_any(list(filters.tags_any))
            if filters.metadata:
                pairs = [_kv(k_, v) for k_, v in sorted(filters.metadata.items())]
                where = where & Filter.by_property("metadata_kv").contains_all(pairs)
        limit = k if self.settings.half_life_s is None else min(1000, max(k * self.oversample, 40))
        try:
            found = handle.query.near_vector(
                near_vector=_unit(query_vector),
                target_vector=_VECTOR,
                limit=limit,
                filters=where,
                return_metadata=MetadataQuery(distance=True),
            )
        except Exception:
            # Another process may have dropped the tenant since we cached it.
            name = weaviate_tenant(principal.tenant_id)
            if self._collection().tenants.exists(name):
                raise
            self._known.discard(name)
            return []
        hits = []
        for obj in found.objects:
            item = self._item(obj)
            # Belt and braces: the shard is the tenant's, but never return anything else.
            if item.tenant_id != principal.tenant_id or item.namespace not in readable:
                continue
            if filters is not None and not filters.matches(item.tags, item.metadata):
                continue
            hits.append(hit_of(item, 1.0 - float(obj.metadata.distance), now, self.settings))
        hits.sort(key=lambda h: (-h.score, h.memory_id))
        return hits[:k]

    async def search(
        self,
        principal: Principal,
        query_vector: Sequence[float],
        k: int = 5,
        namespaces: Sequence[str] | None = None,
        filters: MemoryFilter | None = None,
        *,
        now: float | None = None,
    ) -> list[MemoryHit]:
        return await asyncio.to_thread(
            self.search_sync, principal, query_vector, k, namespaces, filters, now=now
        )

    def _delete_expired(self, now: float) -> int:
        from weaviate.classes.query import Filter

        collection = self._collection()
        total = 0
        for name in collection.tenants.get():
            result = collection.with_tenant(name).data.delete_many(
                where=Filter.by_property("expires_at").less_or_equal(now)
            )
            total += int(result.successful)
        return total

    async def delete_expired(self, now: float | None = None) -> int:
        return await asyncio.to_thread(self._delete_expired, time.time() if now is None else now)

    def _reset(self, tenant_id: str | None) -> None:
        if tenant_id is None:
            self._client.collections.delete(self.collection_name)
            self._known.clear()
            self._ensure_collection()
            return
        name = weaviate_tenant(tenant_id)
        collection = self._collection()
        if collection.tenants.exists(name):
            collection.tenants.remove([name])
        self._known.discard(name)

    async def reset(self, tenant_id: str | None = None) -> None:
        await asyncio.to_thread(self._reset, tenant_id)

    def _items(self, tenant_id: str) -> list[MemoryItem]:
        handle = self._tenant(tenant_id, create=False)
        if handle is None:
            return []
        items = [self._item(obj) for obj in handle.iterator(include_vector=True)]
        return sorted(items, key=lambda i: i.memory_id)

    async def items(self, tenant_id: str) -> list[MemoryItem]:
        return await asyncio.to_thread(self._items, tenant_id)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
