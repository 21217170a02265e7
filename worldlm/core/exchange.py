"""A federation's side of the edge to its parent, and what its shell does next.

Part of the round core (:class:`~worldlm.core.federation.FederationCore` is built on
it): what goes up to the parent (the backbone only, compressed in the parent's codec), what
comes back (the parent's backbone, our own key layers kept), and the steps that follow a
close, a parent's model, or a restart. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from worldlm.core.rounds import Weights
from worldlm.core.steps import (
    AwaitParent,
    Broadcast,
    Done,
    Meta,
    OpenRound,
    Step,
    Submission,
    Submit,
)
from worldlm.strategies.compression import Compressed, Compressor

if TYPE_CHECKING:
    from worldlm.config.schema import Policy


def take_parent(
    weights: Mapping[str, torch.Tensor],
    parent: Mapping[str, torch.Tensor],
    key: frozenset[str],
) -> Weights:
    """The model after a parent broadcast: the parent's backbone, our own key layers."""
    return {n: (v if n in key else parent[n].clone()) for n, v in weights.items()}


class ParentExchange:
    """The exchange with the parent, as state transitions of the core's own fields."""

    meta: Meta
    weights: Weights
    base: Weights
    key: frozenset[str]
    compressor: Compressor
    _outgoing: tuple[str, Compressed] | None
    _new_id: Callable[[], str]
    policy: Policy

    def after_close(self) -> tuple[Step, ...]:
        """The steps after a close: :meth:`next_steps`; under ``exchange = "overlap"``, with
        nothing in flight: submit and go on training; with the answer still out: nothing
        (it is awaited already; rounds pause until it comes)."""
        meta = self.meta
        overlap = self.policy.exchange == "overlap"
        if meta.awaiting_parent and meta.in_flight:
            return ()
        if meta.awaiting_parent and overlap and meta.samples:
            return self._submit_and_go_on()
        return self.next_steps()

    def _submit_and_go_on(self) -> tuple[Step, ...]:
        """Send the submission, take its model as the base the parent's answer will
        replace, and open the next round on it (the answer is awaited alongside)."""
        meta = self.meta
        submission = self.submission()
        self.compressor.commit(self._compressed())  # it counts as sent: no resubmission
        self._outgoing = None
        self.base = {n: t.clone() for n, t in self.weights.items()}
        meta.in_flight, meta.awaiting_parent = True, False
        meta.samples = meta.rounds_since_submit = 0
        return (Submit(submission), *self.next_steps())

    def _merge_parent(
        self, parent: Mapping[str, torch.Tensor], version: int, final: bool
    ) -> tuple[Step, ...]:
        """The parent's answer to the submission in flight: its backbone replaces ours as
        it was when we submitted (``base``), and the progress made since stays on top (the
        next submission sends it). Mid-round nothing else happens (the round's close
        broadcasts the result); after rounds that waited for it, the next submission goes."""
        meta = self.meta
        progress = {
            n: w - self.base[n]
            for n, w in self.weights.items()
            if n not in self.key and w.is_floating_point()
        }
        taken = take_parent(self.weights, parent, self.key)
        self.base = {n: t.clone() for n, t in taken.items()}
        self.weights = {n: t + progress[n] if n in progress else t for n, t in taken.items()}
        meta.parent_version, meta.in_flight, meta.submit_id, meta.final = version, False, "", final
        if not (final or meta.awaiting_parent):
            return ()
        meta.version += 1
        if final:
            meta.awaiting_parent = False
            return self.next_steps()
        return self._submit_and_go_on() if meta.samples else self.next_steps()

    def next_steps(self, published: int | None = None) -> tuple[Step, ...]:
        """What the shell does next, from the core's state: after a close, after the
        parent's model, or when resuming from a checkpoint (``published``: the version of
        the federation's model already broadcast, None when not known to be).

        Waiting for the parent: submit (again, after a restart: the same id, so the parent
        drops a repeat) and wait for its model. Otherwise broadcast the model unless it is
        out already, then open the next round, or stop after the run's final model. Under
        ``exchange = "overlap"`` a submission in flight is awaited alongside (never sent
        again: its progress is the base's already), and the rounds pause when they are done.
        """
        meta = self.meta
        waiting = (AwaitParent(meta.parent_version),) if meta.in_flight else ()
        if meta.awaiting_parent and meta.in_flight:
            return waiting
        if meta.awaiting_parent:
            return (Submit(self.submission()), AwaitParent(meta.parent_version))
        steps: list[Step] = [*waiting]
        if published is None or published < meta.version:
            steps.append(Broadcast(meta.version, meta.round, meta.final, meta.parent_version))
        steps.append(Done() if meta.final else OpenRound(meta.round))
        return tuple(steps)

    def submission(self) -> Submission | None:
        """The update for the parent: only the backbone (K never leaves the federation).

        Its id is fixed until the parent's broadcast is taken, so a resubmission after a
        restart is deduplicated by the parent. It is compressed in the parent's codec, and
        its residual adopted only when the parent's broadcast is taken, so a resubmission
        compresses identically.

        None when the rounds since the parent's last broadcast were all empty: nothing to send
        (zero samples would be refused as ``no_samples``); the federation only waits for the
        parent's next broadcast, which the parent's own deadline guarantees.
        """
        assert self.meta.awaiting_parent, "submit only after a round that ends the exchange"
        if not self.meta.samples:
            return None
        sent = self._compressed()
        return Submission(
            self.meta.submit_id,
            sent.decoded,
            max(self.meta.samples, 1),
            self.meta.parent_version,
            self.meta.round,
            wire=sent.wire,
            codecs=sent.codecs,
        )

    def _compressed(self) -> Compressed:
        if not self.meta.submit_id:
            self.meta.submit_id = self._new_id()
        if self._outgoing is None or self._outgoing[0] != self.meta.submit_id:
            delta = {
                n: w.float() - self.base[n].float()
                for n, w in self.weights.items()
                if w.is_floating_point() and n not in self.key
            }
            self._outgoing = (self.meta.submit_id, self.compressor.compress(delta))
        return self._outgoing[1]

    def take_parent(
        self, weights: Mapping[str, torch.Tensor], version: int, final: bool
    ) -> tuple[Step, ...]:
        """The parent's broadcast arrived: take its backbone, keep our key layers; what the
        shell does next (broadcast, then open a round or stop)."""
        meta = self.meta
        if meta.in_flight:
            return self._merge_parent(weights, version, final)
        if meta.awaiting_parent and meta.samples and self.compressor.active:
            self.compressor.commit(self._compressed())  # the submission counted as sent
        self._outgoing = None
        self.weights = take_parent(self.weights, weights, self.key)
        self.base = {n: t.clone() for n, t in self.weights.items()}
        meta.parent_version = version
        meta.version += 1
        meta.rounds_since_submit = 0
        meta.samples = 0
        meta.submit_id = ""
        meta.awaiting_parent = False
        meta.final = final
        return self.next_steps()
