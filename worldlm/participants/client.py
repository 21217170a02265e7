"""The client participant: join, follow the federation's broadcasts, train, publish deltas.

A client can join at any time: it starts from the model Redis points at. On each new
broadcast it evaluates the received model on its fixed validation split, trains H local
steps, and publishes the chunked delta to its level's update topic, keyed by its federation.
It leaves cleanly when asked (SIGINT/SIGTERM set ``stop``); if it dies, its heartbeat expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import torch

from brokers.deltas import publish_delta
from schemas.delta import encode_delta
from worldlm.config import Hierarchy
from worldlm.participants.follower import Broadcast, BroadcastFollower
from worldlm.participants.node import Endpoints, Node, bounded
from worldlm.training.workbench import Workbench, key_names


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
        self.bench: Workbench | None = None
        self.stop = asyncio.Event()
        self.rounds = 0
        self.last_version = -1
        self._own_key: dict[str, torch.Tensor] = {}
        self._key_names = key_names(hierarchy.run, self.policy)

    async def run(self) -> None:
        """Participate until the federation's final broadcast or until ``stop`` is set."""
        node = self.node
        self.bench = await asyncio.to_thread(Workbench, node.run, self.client, self.policy)
        await node.start()
        follower = BroadcastFollower(
            node.settings, node.state, node.federation, keys=node.public_keys
        )
        try:
            await node.join()
            await follower.start(self.stop)
            while not self.stop.is_set():
                waiter = asyncio.ensure_future(follower.next(self.last_version))
                stopper = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
                    break
                broadcast = waiter.result()
                if broadcast is None:
                    continue
                if await self._round(broadcast):
                    break
        except asyncio.CancelledError:
            pass
        finally:
            await bounded(node.log, "leave", node.leave())
            await bounded(node.log, "follower", follower.stop())
            node.log.info("client_stopped", rounds=self.rounds, **dict(node.counters))
            await node.stop()

    def _weights(self, broadcast: Broadcast) -> dict[str, torch.Tensor]:
        weights = dict(broadcast.tensors)
        if self.client.keep_key_layers and self._own_key:
            weights.update(self._own_key)  # FedPer: the client's own K is never replaced
        return weights

    async def _round(self, broadcast: Broadcast) -> bool:
        """Evaluate, train, publish; True when this was the final broadcast."""
        assert self.bench is not None
        node, bench = self.node, self.bench
        log = node.log.bind(round=broadcast.round, version=broadcast.version)
        weights = self._weights(broadcast)
        evaluation = await asyncio.to_thread(bench.evaluate, weights)
        values = {
            "val_loss": evaluation.loss,
            "val_ppl": evaluation.perplexity,
            "version": float(broadcast.version),
            "bytes_in": float(broadcast.bytes),
            "final": float(broadcast.final),
        }
        self.last_version = broadcast.version
        if broadcast.final:
            await node.metrics(broadcast.round, values)
            log.info("client_final", val_ppl=evaluation.perplexity)
            return True
        started = time.perf_counter()
        result = await asyncio.to_thread(bench.train, weights)
        if self.client.keep_key_layers:
            self._own_key = {n: weights[n] + result.delta[n] for n in self._key_names}
        encoded = encode_delta(
            result.delta,
            envelope=node.envelope(),
            kind="update",
            base_version=broadcast.version,
            sample_count=result.num_samples,
            round=broadcast.round,
            metrics={"train_loss": result.train_loss},
            chunk_size=node.run.chunk_kib * 1024,
            signer=node.signer,
        )
        published = await publish_delta(
            node.producer, node.topics.up(self.level), node.federation, encoded
        )
        self.rounds += 1
        node.counters["updates_sent"] += 1
        node.counters["bytes_out"] += published.bytes
        values |= {
            "train_loss": result.train_loss,
            "train_s": time.perf_counter() - started,
            "bytes_out": float(published.bytes),
            "samples": float(result.num_samples),
        }
        await node.metrics(broadcast.round, values)
        log.info("client_round", val_ppl=evaluation.perplexity, train_loss=result.train_loss)
        return False
