"""Forged and erased revocations: a client's own Redis user turned on the revocation chain.

Issue 19's probe 1: under ``isolation = "acl"`` a client revoked another federation's key
with its own Redis credentials, and the run never finished. Revocations are now a chain of
entries only the run's admin key can sign (:mod:`schemas.revocation`); Redis permissions are
a second fence. Each trial runs the campaign's config as a signed tree (root -> two
federations -> clients) with ``isolation = "acl"``, every participant its own process logged
in as its own Redis user; once the root has closed round 0, an attacker (a client of one
federation) goes for the other federation's keys:

* ``forged``: with its own Redis user it appends an entry revoking the other federation's
  aggregator, signed with its own key (``RPUSH``, then from a Lua script); then the same
  entries, and an unsigned one, are appended by a writer no ACL stops (the admin's
  connection: a Redis without users, or a slip in them). They must be ignored: logged
  (``revocation_ignored``) by every participant, counted (``revocations_ignored``).
* ``erased``: the admin revokes a retired key (a genuine, signed entry); once every
  participant has read it, the attacker rewrites that entry (``LSET``), erases the chain
  (``EXPIRE 0``) and puts a hash revoking the other federation in its place (``HSET``, the
  probe's own write). Each reader that had verified the entry must report the change
  (``revocations_tampered``) and revoke nothing new.

Either way the run must complete with nobody frozen out (no update or broadcast refused as
``revoked``) and ``worldlm audit`` must count nothing lost. Which of the attacker's writes
Redis refuses is reported, not judged: Redis 6.2 (the embedded server) has no read-only key
patterns, so ``EXPIRE`` and ``HSET`` land there; Redis 7 refuses them too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis

from brokers.embedded import Servers
from brokers.revocations import Revocations
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from schemas.revocation import ChainMemory, make_entry
from schemas.topics import Topics
from worldlm.security.acl import principal, principals
from worldlm.chaos.attacker import Attempt, Means, erase, forge
from worldlm.chaos.configs import TrialConfig
from worldlm.chaos.fleet import Fleet
from worldlm.chaos.probes import (
    exits,
    log_events,
    lost_updates,
    members_of,
    start_joined,
    two_federations,
)
from worldlm.chaos.trials import Setting, Stage, bounded_trial
from worldlm.chaos.verdict import Figure, Row, ScenarioResult, Trial, count_row, ratio_row, total
from worldlm.security.credentials import generate_passwords, read_password, with_credentials
from worldlm.security.keys import (
    generate_keys,
    load_admin_key,
    load_keyring,
    load_public_keys,
    public_fingerprint,
)
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.record.recording import dead_letters, settings_for
from worldlm.chaos.watch import RunWatch

SCENARIO = "forged_revocation"
Kind = Literal["forged", "erased"]
KINDS: tuple[Kind, ...] = ("forged", "erased")
#: Root rounds per trial: the attack after round 0, the readers' verdicts after it.
ROUNDS = 5


@dataclass(frozen=True)
class RevocationObservation:
    kind: Kind
    attempts: Sequence[Attempt]
    readers: int  # participant processes (each reads the chain)
    ignored_by: int  # of them, those that logged revocation_ignored
    tampered_by: int  # of them, those that logged revocations_tampered
    counted: Sequence[int]  # each participant's counter (revocations_ignored or _tampered)
    revoked_refusals: int  # updates and broadcasts dead-lettered as revoked
    exits: Mapping[str, int | None]
    lost: int


def judge(index: int, o: RevocationObservation) -> Trial:
    """Pass when the run completed, nobody was frozen out, nothing was lost, and every
    participant noticed: the forged entries ignored, or the erasure reported."""
    completed = all(code == 0 for code in o.exits.values())
    noticed = o.ignored_by if o.kind == "forged" else o.tampered_by
    mine = [a for a in o.attempts if a.who == "attacker"]
    # Redis 7 / Valkey refuse every erasing write (read-only patterns): nothing to report
    untouched = o.kind == "erased" and not any(a.landed for a in mine)
    problems = []
    if not completed:
        problems.append(f"run did not complete (exits {dict(o.exits)})")
    if o.revoked_refusals:
        problems.append(f"{o.revoked_refusals} update(s) or broadcast(s) refused as revoked")
    if noticed < o.readers and not untouched:
        what = "ignored the forged entries" if o.kind == "forged" else "reported the erasure"
        problems.append(f"{noticed} of {o.readers} participants {what}")
    if o.lost:
        problems.append(f"{o.lost} update(s) lost")
    figures: dict[str, Figure] = {
        "kind": o.kind,
        "completed": completed,
        "readers": o.readers,
        "noticed": noticed,
        "untouched": untouched,
        "revoked_refusals": o.revoked_refusals,
        "attacker_writes": len(mine),
        "attacker_refused": sum(not a.landed for a in mine),
        "counted": f"{min(o.counted, default=0)}-{max(o.counted, default=0)}",
        "attempts": "; ".join(f"{a.who} {a.what}: {a.answer}" for a in o.attempts),
        "lost": o.lost,
    }
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial]) -> list[Row]:
    def of(kind: str) -> list[Trial]:
        return [t for t in trials if t.figures.get("kind") == kind]

    completed = sum(t.figures.get("completed") is True for t in trials)
    rows = [
        ratio_row(SCENARIO, "runs completed", completed, len(trials)),
        count_row(
            SCENARIO, "updates or broadcasts refused as revoked", total(trials, "revoked_refusals")
        ),
        Row(
            SCENARIO,
            "attacker's writes refused by Redis (its own user)",
            f"{total(trials, 'attacker_refused'):g} of {total(trials, 'attacker_writes'):g}",
        ),
    ]
    for kind, measure, counter in (
        ("forged", "participants that ignored the forged entries", "revocations_ignored"),
        ("erased", "participants that reported the erased entry", "revocations_tampered"),
    ):
        if kind == "erased" and (kept := [t for t in of(kind) if t.figures.get("untouched")]):
            rows.append(
                Row(SCENARIO, "erasures Redis refused outright (read-only)", str(len(kept)))
            )
        if mine := [t for t in of(kind) if not t.figures.get("untouched")]:
            part, whole = int(total(mine, "noticed")), int(total(mine, "readers"))
            rows.append(ratio_row(SCENARIO, measure, part, whole))
            counted = ", ".join(str(t.figures.get("counted", "-")) for t in mine)
            rows.append(Row(SCENARIO, f"{counter}, per participant", counted))
    rows += [
        count_row(SCENARIO, "updates lost", total(trials, "lost")),
        count_row(SCENARIO, "hung trials", sum(bool(t.figures.get("hung")) for t in trials)),
    ]
    return rows


class KeyedFleet(Fleet):
    """A :class:`Fleet` whose participants get the run's key directory (``--keys``)."""

    def __init__(self, config: TrialConfig, servers: Servers, workdir: Path, keys: Path) -> None:
        super().__init__(config, servers, workdir)
        self.keys = keys

    def _args(self, role: str, node: str) -> list[str]:
        return [*super()._args(role, node), "--keys", str(self.keys)]


def signed_raw(setting: Setting) -> dict[str, Any]:
    """The campaign's config as a tree, signed, every participant its own Redis user."""
    raw = two_federations(setting.raw)
    raw["run"] = {**dict(raw.get("run", {})), "signing": "required", "isolation": "acl"}
    return raw


async def run(
    setting: Setting, kinds: tuple[Kind, ...] = KINDS, *, limit_s: float = 300.0
) -> ScenarioResult:
    """One trial per kind, in order."""
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    mine = replace(setting, raw=signed_raw(setting))
    for index, kind in enumerate(kinds):

        async def body(stage: Stage, index: int = index, kind: Kind = kind) -> Trial:
            return await _trial(mine, index, kind, stage)

        verdict = await bounded_trial(SCENARIO, index, limit_s, body)
        result.trials.append(replace(verdict, figures={"kind": kind, **verdict.figures}))
    result.rows = summarize(result.trials)
    result.seconds = time.monotonic() - started
    return result


async def _trial(setting: Setting, index: int, kind: Kind, stage: Stage) -> Trial:
    config = setting.config(SCENARIO, index, rounds=ROUNDS)
    h, servers = config.hierarchy, setting.servers
    workdir = setting.trial_dir(SCENARIO, index)
    keys, retired = workdir / "keys", workdir / "retired"
    generate_keys(keys, [*h.federations, *h.clients])
    generate_keys(retired, ["retired"])  # a key the run no longer uses, for the admin
    generate_passwords(keys, principals(h))
    await prepare_run(h, Endpoints(servers.kafka, servers.redis, str(keys)))  # users too
    home, other = sorted(h.root.children)[:2]
    attacker, root = members_of(h, home)[0], h.root.id
    signer = load_keyring(keys, attacker).signer
    assert signer is not None
    fingerprint = public_fingerprint(keys, other)
    forged = make_entry(h.run.id, ChainMemory(), fingerprint, other, "revoke", signer)
    login = with_credentials(
        servers.redis, principal(h.run.id, attacker), read_password(keys, attacker)
    )
    async with (
        RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        KeyedFleet(config, servers, workdir, keys) as fleet,
        RedisState(servers.redis, Keyspace(h.run.id)) as admin,
    ):
        mallory = aioredis.Redis.from_url(login)
        means = Means(
            mallory, admin.redis, admin.keyspace.revoked_keys(), other, fingerprint, forged
        )
        try:
            await start_joined(fleet, servers.redis, stage)
            stage("waiting for the root to close its round 0")
            await fleet.alongside(watch.until(lambda: watch.closed(root, 0)))
            if kind == "forged":
                attempts = await forge(means)
            else:
                chain = Revocations(admin, load_keyring(keys, root).admin)
                retired_fp = public_fingerprint(retired, "retired")
                await chain.revoke(load_admin_key(keys), retired_fp, "retired")
                # The round after the next opens after the entry: each reader has read it.
                read = min(ROUNDS - 1, 2 + max(r for r in range(ROUNDS) if watch.closed(root, r)))
                stage(f"waiting for root round {read} to close (every reader read the entry)")
                await fleet.alongside(watch.until(lambda: watch.closed(root, read)))
                attempts = [Attempt("admin", "RPUSH an entry revoking a retired key", True)]
                attempts += await erase(means)
        finally:
            await mallory.aclose()
        codes = await exits(fleet.processes.values(), stage)
        events = [log_events(p.log_path) for p in fleet.processes.values()]
    counter = "revocations_ignored" if kind == "forged" else "revocations_tampered"
    logged = [{e.get("event") for e in mine} for mine in events]
    stage("auditing the recording")
    letters = await dead_letters(settings_for(servers.kafka, h.run.id), Topics(h.run.id))
    observation = RevocationObservation(
        kind=kind,
        attempts=attempts,
        readers=len(events),
        ignored_by=sum("revocation_ignored" in names for names in logged),
        tampered_by=sum("revocations_tampered" in names for names in logged),
        counted=[
            max((int(e[counter]) for e in mine if counter in e), default=0) for mine in events
        ],
        revoked_refusals=sum(letter.reason == "revoked" for letter in letters),
        exits=codes,
        lost=await lost_updates(servers.kafka, h, load_public_keys(keys)),
    )
    return judge(index, observation)
