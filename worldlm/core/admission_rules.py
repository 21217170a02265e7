"""Whether an update may enter a federation's open round: the admission rules, in order.

A pure function of the offer and the facts it is judged against; the round core
(``federation.py``) applies its decision. The signature is a fact too: the shell verified it
before the offer (``Offer.unverified`` names why it did not verify), so no rule does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from worldlm.core.rounds import Accepted, Decision, Duplicate, Offer, Refused
from worldlm.strategies import Update
from worldlm.strategies.base import MIN_SAMPLES, update_problem


def judge(
    offer: Offer,
    *,
    run: str,
    federation: str,
    members: Collection[str],
    version: int,
    bound: int,
    weights: Mapping[str, torch.Tensor],
    seen: Collection[str],
) -> Decision:
    """The decision on ``offer`` for a federation at model ``version``; the first rule that
    fails names the refusal (never raises)."""
    sender = offer.sender
    if offer.update_id in seen:
        return Duplicate(offer.update_id)
    if offer.run not in (None, run):
        return Refused("wrong_run", f"{sender}: an update of run {offer.run!r}")
    if offer.federation not in (None, federation):
        return Refused("wrong_federation", f"{sender}: an update for {offer.federation!r}")
    if offer.kind != "update":
        return Refused("wrong_kind", f"{sender}: a {offer.kind} on an update topic")
    if sender not in members:
        return Refused("unknown_sender", f"{sender} is not a member of {federation}")
    if offer.unverified is not None:
        return Refused(*offer.unverified)
    if offer.samples < MIN_SAMPLES:  # weight 0: alone in a round it would average nothing
        return Refused("no_samples", f"{sender}: sample count {offer.samples}")
    staleness = version - offer.base_version
    if staleness < 0:
        return Refused("future_version", f"{sender}: base {offer.base_version} > {version}")
    if staleness > bound:
        return Refused("stale", f"{sender}: staleness {staleness} > bound {bound}")
    problem = update_problem(
        weights, Update(sender, offer.delta, offer.samples, staleness=staleness)
    )
    if problem is not None:
        return Refused(problem.reason, f"{sender}: {problem.detail}")
    return Accepted(sender, offer.update_id, staleness)
