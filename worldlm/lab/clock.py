"""The simulator's clock: how long a message takes on a link, a client's round and a close.

Pure and deterministic: fed message sizes (bytes, counted from the tensors' names, shapes and
codecs) and the config's links and declared compute times (``[links]``, ``[clock]``:
worldlm/config/links.py), never this machine's wall clock. The simulator stamps every message
with the simulated time it arrives and handles messages in that order (:class:`Agenda`); with
no links and no declared compute every time is 0 and the order is the plain FIFO of a
logical-clock run.

The transfer model follows what the Kafka client does (``brokers/kafka.py``):

- **bytes**: at the edge's rate times :data:`PAYLOAD_PER_WIRE_BYTE` (TCP/IP and Ethernet
  headers);
- **up** (an update or a submission, published as a manifest and chunks of ``chunk_bytes``):
  the producer keeps one request in flight per broker and every chunk is a request, so each
  record after the first waits a round trip for its acknowledgement:
  ``bytes / bandwidth + latency * (2 * records - 1)``;
- **down** (a broadcast, read by a reader already waiting on the partition): one fetch of up
  to ``FETCH_BYTES`` per round trip: ``bytes / bandwidth + latency * (2 * fetches - 1)``.

Latency is one way; bandwidth is the edge's bottleneck (the broker is at the parent's end).
What it leaves out: TCP slow start and window limits on long fat links, the broker's own
throughput (~120 MB/s measured, docs/scale.md), contention between the members of a
federation on a shared link (every edge is its own), and deadlines.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from worldlm.config.links import LinkConfig, Links

#: What one fetch of a broadcast partition brings at most (``max_partition_fetch_bytes``).
FETCH_BYTES = 8 * 1024 * 1024
#: Payload per byte on the wire: a full TCP segment on Ethernet at MTU 1500 carries 1448
#: bytes (MSS with timestamps) in a 1514-byte frame, and a link's rate counts frames.
PAYLOAD_PER_WIRE_BYTE = 1448 / 1514

T = TypeVar("T")


def wire_s(link: LinkConfig, nbytes: int) -> float:
    """Seconds to put ``nbytes`` through ``link``'s bandwidth (0: unlimited)."""
    if link.bandwidth_mbit is None:
        return 0.0
    return nbytes * 8 / (link.bandwidth_mbit * 1e6 * PAYLOAD_PER_WIRE_BYTE)


def transfer_s(link: LinkConfig, nbytes: int, exchanges: int) -> float:
    """Seconds from the first byte sent to the last received: the bytes at the bandwidth,
    one latency, and a round trip for each of ``exchanges`` - 1 request-response turns."""
    return wire_s(link, nbytes) + link.latency_ms / 1000 * (2 * max(exchanges, 1) - 1)


@dataclass(frozen=True)
class Clock:
    """The time model of one run: transfers per edge, compute per node."""

    links: Links = field(default_factory=Links)
    chunk_bytes: int = 768 * 1024

    def up_s(self, node: str, nbytes: int) -> float:
        """An update or submission of ``nbytes`` from ``node`` to its parent."""
        records = 1 + math.ceil(nbytes / self.chunk_bytes)  # the manifest and its chunks
        return transfer_s(self.links.edge(node), nbytes, records)

    def down_s(self, node: str, nbytes: int) -> float:
        """A broadcast of ``nbytes`` from ``node``'s parent to ``node``."""
        return transfer_s(self.links.edge(node), nbytes, math.ceil(nbytes / FETCH_BYTES))

    def work_s(self, node: str, *, steps: int, evaluated: bool) -> float:
        """A client's round: the evaluation of the received model (when it has one) and
        ``steps`` local optimizer steps, at the node's compute speed."""
        c = self.links.clock
        return (steps * c.step_s + (c.eval_s if evaluated else 0.0)) / self._speed(node)

    def aggregate_s(self, node: str) -> float:
        """A federation's close."""
        return self.links.clock.aggregate_s / self._speed(node)

    def _speed(self, node: str) -> float:
        return self.links.edge(node).compute


class Agenda(Generic[T]):
    """Events in order of simulated time; equal times in the order they were added."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        #: the time of the event last taken
        self.now = 0.0

    def add(self, at: float, event: T) -> None:
        if at < self.now:
            raise ValueError(f"an event at {at} is in the past (now {self.now})")
        heapq.heappush(self._heap, (at, next(self._seq), event))

    def pop(self) -> T:
        self.now, _, event = heapq.heappop(self._heap)
        return event

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
