"""Helpers shared by the command-line modules."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

import click

from streams.errors import AgentstreamError

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; our own errors become a message and exit code 2."""
    try:
        return asyncio.run(coro)
    except AgentstreamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def async_command(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Turn an async click callback into a plain one."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run_async(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper
