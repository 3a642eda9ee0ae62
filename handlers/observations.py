"""How a tool's result is bounded before it goes on the log as an observation."""

from __future__ import annotations

import json

from handlers.tools.base import JSONValue, canonical_json
from projections.blobs import BlobStore

MAX_OBSERVATION_CHARS = 16_000


def bounded(data: JSONValue, blobs: BlobStore) -> tuple[str | None, bool, str | None]:
    """``data`` as the observation's ``(data_json, truncated, blob_handle)``: JSON text up to
    :data:`MAX_OBSERVATION_CHARS`; a larger result is cut, and stored whole in ``blobs``."""
    if data is None:
        return None, False, None
    text = canonical_json(data)
    if len(text) <= MAX_OBSERVATION_CHARS:
        return text, False, None
    handle = blobs.put(text.encode())
    return json.dumps(text[:MAX_OBSERVATION_CHARS]), True, handle
