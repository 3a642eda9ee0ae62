"""Fixtures of the contract suites: projection stores on every backend (see tests/support/stores.py)."""

from __future__ import annotations

from tests.support.stores import store, store_backend  # noqa: F401  (fixtures)
