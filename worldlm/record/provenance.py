"""Whose record lies on an up topic: one of the run's own participants', or a foreign one.

An aggregator reads one partition of its federation's up topic, and of it only the records
keyed by its federation's id (``worldlm/participants/intake.py``); in a signing run it folds
only updates whose manifest signature verifies under the run's key directory. Anyone with
write access can put other records on the topic, so ``worldlm audit`` counts as *published*
only an update the run's own participants could have published there: keyed by the
federation, for this run and this federation, sent by one of the federation's members (its
clients and sub-federations, when the config is known) and, in a signing run, signed by the
sender's key. Anything else is *foreign*, with the first of these it fails as its reason.
The check is pure: keys are objects, the key directory is the caller's business.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.messages import DeltaManifest, Envelope
from schemas.signing import SignatureError, verify_manifest

if TYPE_CHECKING:
    from worldlm.config.hierarchy import Hierarchy

#: Why a record is foreign (a signing run adds ``schemas.signing``'s reasons: ``unsigned``,
#: ``unknown_signer``, ``bad_signature``).
REASONS = {
    "unread_key": "keyed by another id than its federation's: its aggregator never reads it",
    "unread_partition": "on a partition its federation's aggregator does not read",
    "other_run": "its envelope names another run",
    "other_federation": "its envelope names another federation",
    "not_a_member": "its sender is no member of the federation (no client or sub-federation)",
    "not_an_update": "a broadcast manifest on an up topic",
    "unsigned": "not signed, in a run that requires signatures",
    "unknown_signer": "signed, but the key directory has no key for its sender",
    "bad_signature": "its signature does not verify under its sender's key",
}


@dataclass(frozen=True)
class Provenance:
    """Who may publish on which federation's up topic.

    Args:
        run: the run id envelopes must name (None: not checked).
        members: federation id -> the ids that publish to it (None: senders not checked, as
            when ``worldlm audit`` has no config).
        keys: participant id -> its signing public key, in a signing run (None: signatures
            not checked).
    """

    run: str | None = None
    members: Mapping[str, Collection[str]] | None = None
    keys: Mapping[str, Ed25519PublicKey] | None = None

    @classmethod
    def of(
        cls, hierarchy: Hierarchy, keys: Mapping[str, Ed25519PublicKey] | None = None
    ) -> Provenance:
        """The run's participants, each publishing to its own parent federation."""
        members = {fid: frozenset(fed.members) for fid, fed in hierarchy.federations.items()}
        return cls(hierarchy.run.id, members, keys)

    def addressed(self, federation: str, key: bytes | None, envelope: Envelope) -> str | None:
        """Why a record of ``federation``'s up topic is not one of its members' records to its
        aggregator (a reason of :data:`REASONS`), or None if it is."""
        if key != federation.encode():
            return "unread_key"
        if self.run is not None and envelope.run != self.run:
            return "other_run"
        if envelope.federation != federation:
            return "other_federation"
        if self.members is not None and envelope.sender not in self.members.get(federation, ()):
            return "not_a_member"
        return None

    def foreign(self, federation: str, key: bytes | None, manifest: DeltaManifest) -> str | None:
        """Why a manifest of ``federation``'s up topic is foreign, or None if one of the run's
        participants published it (its signature checked here; its payload's digest is the
        aggregator's to check, which dead-letters a mismatch)."""
        reason = self.addressed(federation, key, manifest.envelope)
        if reason is None and manifest.kind != "update":
            reason = "not_an_update"
        if reason is None and self.keys is not None:
            try:
                verify_manifest(manifest, self.keys)
            except SignatureError as exc:
                reason = exc.reason
        return reason

    def notes(self) -> list[str]:
        """What this check leaves out, to print beside the verdict."""
        if self.members is None:
            return ["senders not checked against the run's participants (no --config)"]
        return []
