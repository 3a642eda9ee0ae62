"""Fixtures of the projection unit tests: a fresh projection store each, on every backend.

`store` is SQLite, and Cassandra too when AGENTSTREAM_TEST_CASSANDRA names a node.
"""

from __future__ import annotations

from tests.support.stores import store, store_backend  # noqa: F401  (fixtures)
