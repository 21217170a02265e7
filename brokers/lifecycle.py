"""The lifecycle of long-lived adapters: ``start()``, idempotent ``stop()``, ``async with``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """Base of servers, producers, consumers and state clients: use as an async context."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
