"""How far a consumer group got in one partition, when records finish out of order.

A worker handles records of different runs concurrently, so a record can finish (and its
outputs commit) while an earlier one, waiting for a slow model, is still running. The
group's progress in a partition is then more than one offset: every offset below
`next_offset` is done, and so is each offset in `done_ahead`. Both commit atomically with
the outputs, so a restarted member skips exactly the records whose outputs are already on
the log, and redoes exactly the rest.

On Kafka the set travels in the offset commit's metadata string, which brokers cap (4 KiB
by default: `offset.metadata.max.bytes`): it is written as runs of done offsets, varint
deltas, zlib-compressed, base64 — a few bytes per record still in flight.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.errors import EventLogError

_VERSION = "p1:"


@dataclass(frozen=True)
class Progress:
    """A group's committed progress in one partition."""

    next_offset: int = 0
    """Every record below this offset is done."""
    done_ahead: frozenset[int] = field(default_factory=frozenset)
    """Records at or after `next_offset` that are done too (they finished out of order)."""

    def done(self, offset: int) -> bool:
        return offset < self.next_offset or offset in self.done_ahead


def _varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _varints(data: bytes) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            values.append(value)
            value = shift = 0
    if shift:
        raise ValueError("truncated varint")
    return values


def encode_done_ahead(next_offset: int, done_ahead: Iterable[int]) -> str:
    """The offsets above `next_offset` as a short ASCII string ("" when there are none)."""
    offsets = sorted(o for o in done_ahead if o >= next_offset)
    if not offsets:
        return ""
    raw = bytearray()
    previous_end = next_offset
    start = offsets[0]
    end = start
    for offset in offsets[1:]:
        if offset == end + 1:
            end = offset
            continue
        _varint(start - previous_end, raw)
        _varint(end - start + 1, raw)
        previous_end, start, end = end + 1, offset, offset
    _varint(start - previous_end, raw)
    _varint(end - start + 1, raw)
    return _VERSION + base64.b64encode(zlib.compress(bytes(raw), 9)).decode()


def decode_done_ahead(next_offset: int, text: str | None) -> frozenset[int]:
    """The inverse of `encode_done_ahead`; raises EventLogError on text it did not write."""
    if not text:
        return frozenset()
    if not text.startswith(_VERSION):
        raise EventLogError(f"unknown progress encoding {text[:16]!r}")
    try:
        values = _varints(zlib.decompress(base64.b64decode(text[len(_VERSION) :], validate=True)))
    except (ValueError, zlib.error) as exc:
        raise EventLogError(f"corrupt progress metadata: {exc}") from exc
    if len(values) % 2:
        raise EventLogError("corrupt progress metadata: odd number of values")
    offsets: set[int] = set()
    position = next_offset
    for gap, length in zip(values[::2], values[1::2], strict=True):
        start = position + gap
        offsets.update(range(start, start + length))
        position = start + length
    return frozenset(offsets)
