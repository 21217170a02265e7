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


class Once(Service):
    """A service whose ``start()`` runs ``_start()`` once and whose ``stop()`` is idempotent."""

    _started = False

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        if not self._started:
            await self._start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._stop()
