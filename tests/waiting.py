"""Waiting in tests: for the condition a test checks, with a generous bound, never a fixed
sleep. A slow machine then passes late, a broken build fails at the bound, naming what it
waited for."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest


async def until(
    check: Callable[[], Any], *, timeout_s: float = 60.0, every_s: float = 0.05, what: str = ""
) -> Any:
    """The first truthy value of ``check()`` (awaited when it returns an awaitable), looked at
    every ``every_s``; the test fails naming ``what`` (or the check) after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(every_s)
    except TimeoutError:
        pytest.fail(f"not within {timeout_s:g} s: {what or getattr(check, '__name__', check)}")
