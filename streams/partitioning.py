"""Which partition a key lands in: Kafka's default partitioner, on every backend.

Both backends place a run's events with `murmur2(key) & 0x7fffffff % partitions`, the
rule of Kafka's Java client, so a run lives in the same partition number whichever log
holds it and whichever Kafka client produced it.
"""

from __future__ import annotations


def murmur2(data: bytes) -> int:
    """32-bit murmur2 with Kafka's seed, as a signed int like Java's."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = length - rest
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
