"""How every long-running participant and loop stops: one request, one exception.

Whoever starts a participant or a loop owns its stop request (an :class:`asyncio.Event`: the
CLI's signal-aware ``Stop``, the runner's, a test's) and sets it to ask. The participant
checks the request where it waits (an ``await stop.wait()`` among its wakers) and a
synchronous loop between its steps (:func:`check`, given ``stop.is_set``: a flag read, safe
from any thread); where either notices, it raises :class:`Stopped`. The participant's own run
method catches it once and its ``finally`` runs the shutdown protocol (stop intake, drain
with a deadline, save what was done, one summary line); a loop lets it reach whoever asked.
Background tasks a participant owns are cancelled by it (``task.cancel()`` then awaited):
cancellation is never raised by hand to mean "stop".
"""

from __future__ import annotations

from collections.abc import Callable


class Stopped(Exception):
    """A participant or loop was asked to stop (or lost its lead) before its work was done."""


def check(should_stop: Callable[[], bool] | None, what: str) -> None:
    """Raise :class:`Stopped` if the request is set: a synchronous loop's check between steps."""
    if should_stop is not None and should_stop():
        raise Stopped(f"{what} stopped on request")
