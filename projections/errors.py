"""Errors of the projection runtime and its stores, under the backbone's one root error.

Driver errors (sqlite3, and later cassandra-driver) become `StoreError` at the store's
boundary, with `retryable` saying whether trying again may help.
"""

from __future__ import annotations

from streams.errors import AgentstreamError


class ProjectionError(AgentstreamError):
    """Root of the errors projections, projectors and stores raise on purpose."""


class StoreError(ProjectionError):
    """The projection store could not do what was asked (busy, disk full, corrupt, ...)."""


class ProjectionConflict(StoreError):
    """A batch was refused because the projection's offsets moved since it was read.

    Another projector (or a rebuild) applied events in the meantime. Nothing of the
    refused batch was written; reloading the offsets and reading again is always safe.
    """

    retryable = True


class ProjectionLagging(ProjectionError):
    """A projection had not applied the awaited offset before the timeout."""

    retryable = True
