"""Content-addressed storage for tool outputs too large to carry in an event."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class BlobStore:
    """Blobs in a directory, named by their sha256; a handle is `sha256:<hex>`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a crash never leaves a partial blob under its name.
            fd, tmp = tempfile.mkstemp(dir=path.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        return f"sha256:{digest}"

    def get(self, handle: str) -> bytes:
        scheme, _, digest = handle.partition(":")
        if scheme != "sha256" or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a blob handle: {handle!r}")
        return self._path(digest).read_bytes()
