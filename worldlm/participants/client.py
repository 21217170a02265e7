"""The client participant: join, follow the federation's broadcasts, train, publish deltas.

A client can join at any time: it starts from the model Redis points at. On each new
broadcast it trains H local steps, publishes the chunked delta to its federation's update
topic, keyed by it, and only then evaluates the received model on its fixed validation split
(evaluation is off the round's critical path: the aggregator folds while clients evaluate).
It leaves cleanly when asked (SIGINT/SIGTERM set ``stop``); if it dies, its heartbeat expires.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from brokers.deltas import publish_delta
from schemas.delta import encode_delta
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.stopping import Stopped
from worldlm.participants.follower import Broadcast, BroadcastFollower, follow
from worldlm.participants.node import Endpoints, Node, bounded
from worldlm.training.learner import Learner


class ClientParticipant:
    """One client of one federation."""

    def __init__(self, hierarchy: Hierarchy, endpoints: Endpoints, client_id: str) -> None:
        if client_id not in hierarchy.clients:
            raise KeyError(f"unknown client {client_id!r}; known: {sorted(hierarchy.clients)}")
        self.client = hierarchy.clients[client_id]
        federation = hierarchy.federations[self.client.federation]
        self.level = federation.level
        self.policy = federation.policy
        self.node = Node(hierarchy, endpoints, client_id, "client", federation.id)
        self.learner: Learner | None = None
        self.stop = asyncio.Event()
        self.rounds = 0
        self.last_version = -1
        self._hierarchy = hierarchy

    async def run(self) -> None:
        """Participate until the federation's final broadcast or until ``stop`` is set;
        :class:`~brokers.liveness.BrokerLost` when the broker is gone for good."""
        node = self.node
        self.learner = await asyncio.to_thread(Learner, self._hierarchy, self.client.id)
        await node.start()
        follower = follow(node, node.federation)
        try:
            await node.join()
            await follower.start(self.stop)
            await node.broker.guard(self._follow(follower))  # the broker gone ends it
        except Stopped:
            pass
        finally:
            await bounded(node.log, "leave", node.leave())
            await bounded(node.log, "follower", follower.stop())
            node.log.info("client_stopped", rounds=self.rounds, **dict(node.counters))
            await node.stop()

    async def _follow(self, follower: BroadcastFollower) -> None:
        """Each broadcast in turn, until the final one or ``stop``."""
        pending: set[asyncio.Future[Any]] = set()
        try:
            while not self.stop.is_set():
                waiter = asyncio.ensure_future(follower.next(self.last_version))
                stopper = asyncio.ensure_future(self.stop.wait())
                pending = {waiter, stopper}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
                    break
                broadcast, pending = waiter.result(), set()
                if broadcast is None:
                    continue
                final = await self._round(broadcast)
                # Hold no model while waiting for the next one: with a hundred clients in a
                # process, a kept broadcast is a model's worth of memory per client.
                del broadcast, waiter
                if final:
                    break
        finally:
            for task in pending:  # cancelled mid-wait: nothing may be left unretrieved
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _round(self, broadcast: Broadcast) -> bool:
        """Train, publish, evaluate; True when this was the final broadcast."""
        learner = self.learner
        assert learner is not None
        node = self.node
        log = node.log.bind(round=broadcast.round, version=broadcast.version)
        trained = await asyncio.to_thread(learner.train, broadcast.tensors, final=broadcast.final)
        self.last_version = broadcast.version
        if trained.result is None:
            done = await asyncio.to_thread(learner.evaluate, trained)
            values = done.values(broadcast.version, True) | {"bytes_in": float(broadcast.bytes)}
            await node.metrics(broadcast.round, values)
            log.info("client_final", val_ppl=values.get("val_ppl"))
            return True
        assert trained.sent is not None
        encoded = encode_delta(
            trained.sent.wire,
            envelope=node.envelope(),
            kind="update",
            base_version=broadcast.version,
            sample_count=trained.result.num_samples,
            round=broadcast.round,
            metrics={"train_loss": trained.result.train_loss},
            chunk_size=node.run.chunk_kib * 1024,
            seal_to=node.seal_to(node.federation),
            signer=node.signer,
            codecs=trained.sent.codecs,
        )
        published = await publish_delta(
            node.producer, node.topics.up(node.federation), node.federation, encoded
        )
        done = await asyncio.to_thread(learner.evaluate, trained)
        values = done.values(broadcast.version, False) | {"bytes_in": float(broadcast.bytes)}
        self.rounds += 1
        node.counters["updates_sent"] += 1
        node.counters["bytes_out"] += published.bytes
        await node.metrics(broadcast.round, values | {"bytes_out": float(published.bytes)})
        log.info(
            "client_round",
            val_ppl=values.get("val_ppl"),
            train_loss=trained.result.train_loss,
            train_s=round(done.train_s, 3),
        )
        return False
