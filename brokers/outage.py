"""Two things aiokafka (0.14) needs help with once the broker is down.

* Stopping a consumer: a fetch that failed sleeps its retry back-off; ``stop()`` cancels it
  and awaits it without catching the CancelledError, which escapes ``stop()`` half-way (before
  the client is closed; aiokafka issue #647), looking like a cancellation of the caller.
* Stopping a producer: ``stop()`` first waits for every pending send, which with the broker
  gone lasts until the send's request timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, finished here when a fetch's CancelledError escapes it."""
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        await asyncio.shield(stopping)
        return
    except asyncio.CancelledError:
        if not stopping.cancelled():  # ours: the stop goes on without us
            raise
    fetcher = consumer._fetcher
    pending = list(fetcher._pending_tasks) if fetcher is not None else []
    for fetch in pending:
        fetch.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await consumer._client.close()


async def fail_sends(producer: AIOKafkaProducer, exc: Exception) -> None:
    """Stop ``producer``'s sender and fail every send it still holds with ``exc`` (the broker
    is gone for good), so that stopping the producer does not wait for them. Failing them
    under a running sender would not do: it re-queues a failed request's batch it no longer
    has. Failures no one awaits are marked seen."""
    sender = producer._sender
    task = sender.sender_task if sender is not None else None
    if task is not None and not task.done():
        task.cancel()  # it lets its requests in flight end (refused: at once), then returns
        with contextlib.suppress(asyncio.CancelledError):
            await task
    queue = producer._message_accumulator
    queued = [b for per_tp in queue._batches.values() for b in per_tp]
    batches = [*queued, *queue._pending_batches]
    # A batch re-queued for a retry keeps the callback of its first pop, which removes it
    # from the pending set when it is done: failing it while it sits in the queue again
    # would raise KeyError in that callback (a traceback on the way out). So it is pending.
    queue._pending_batches.update(queued)
    queue.fail_all(exc)
    for batch in batches:
        for future in (batch.future, batch._drain_waiter, *(f for f, _ in batch._msg_futures)):
            if future.done() and not future.cancelled():
                future.exception()
