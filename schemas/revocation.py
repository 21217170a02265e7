"""The run's revocation chain: signing keys that no longer count, as signed, linked entries.

Authority is signed, not stored. Each :class:`Revocation` names a key by fingerprint
(:func:`schemas.signing.fingerprint`), its owner and why (``revoke``, or ``rotate``: the old
key of a rotated pair), carries its place in the chain (``seq``) and the hash of the entry
before it (``prev``), and is signed by the run's admin key (Ed25519, over the entry's
MessagePack bytes with an empty signature field, like a delta manifest). The chain is an
append-only list, as in Certificate Transparency's log; the signature is what TUF's signed
metadata is: whoever can write the list, and cannot sign, can add nothing that counts.

:class:`RevocationChain` is the pure reader: fed the list's raw entries, it keeps only those
that verify under the admin key *and* link to the previous verified entry, reports each
entry it ignores once, and remembers what it verified (its head and the revoked keys). It
never un-revokes: a list that no longer extends the head it verified (deleted, truncated, a
different history, not a list at all) is reported as tampered, and the keys it had revoked
stay revoked. The Redis side is :mod:`brokers.revocations`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.codec import Decoder
from schemas.errors import DecodeError
from schemas.messages import Envelope, Message

#: The ``prev`` of the first entry, and the head of a chain with no entry yet.
GENESIS = "0" * 64
#: The envelope's sender of every entry.
ADMIN = "admin"

Action = Literal["revoke", "rotate"]


class Revocation(Message, frozen=True, tag="revocation"):
    """One entry of a run's revocation chain (the envelope names the run and the time)."""

    seq: int
    fingerprint: str
    owner: str
    action: Action
    prev: str
    signature: bytes = b""


#: The one decoder of revocation entries.
revocation_decoder: Decoder[Revocation] = Decoder(Revocation)


class ChainMemory(msgspec.Struct, frozen=True):
    """What a reader verified: the chain's head (``seq`` -1: none) and every key it revoked,
    fingerprint -> owner. Small enough to keep in a checkpoint."""

    seq: int = -1
    head: str = GENESIS
    revoked: dict[str, str] = msgspec.field(default_factory=dict)


def entry_hash(raw: bytes) -> str:
    """What the next entry's ``prev`` names: BLAKE2b-256 of an entry's stored bytes, hex."""
    return hashlib.blake2b(raw, digest_size=32).hexdigest()


def signing_bytes(entry: Revocation) -> bytes:
    """The bytes the admin signs: the entry, MessagePack-encoded, signature emptied."""
    return msgspec.msgpack.encode(msgspec.structs.replace(entry, signature=b""))


def make_entry(
    run: str,
    head: ChainMemory,
    fingerprint: str,
    owner: str,
    action: Action,
    key: Ed25519PrivateKey,
) -> bytes:
    """The next entry after ``head``, signed with the admin's ``key``, as stored bytes."""
    entry = Revocation(
        Envelope(run=run, sender=ADMIN, federation=""),
        seq=head.seq + 1,
        fingerprint=fingerprint,
        owner=owner,
        action=action,
        prev=head.head,
    )
    entry = msgspec.structs.replace(entry, signature=key.sign(signing_bytes(entry)))
    return msgspec.msgpack.encode(entry)


@dataclass(frozen=True)
class Ignored:
    """An entry of the list that does not count, and why: ``malformed`` (not an entry),
    ``other_run``, ``unsigned``, ``bad_signature`` (not the admin's) or ``mislinked`` (a
    genuine signature out of place: a replayed or reordered entry)."""

    reason: str
    digest: str
    seq: int = -1
    owner: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class Reading:
    """What one read of the list told a reader: every key it holds revoked (what it had plus
    what it verified now), the entries it ignored for the first time, and why the list no
    longer extends what it had verified (None: it does)."""

    revoked: Mapping[str, str]
    ignored: list[Ignored]
    tampered: str | None


class RevocationChain:
    """Verifies a run's revocation chain under the admin's public key, and remembers it."""

    def __init__(
        self, run: str, admin: Ed25519PublicKey, memory: ChainMemory | None = None
    ) -> None:
        self.run, self.admin = run, admin
        self.memory = memory or ChainMemory()
        self._judged: dict[str, Revocation | str] = {}  # entry hash -> entry, or why not
        self._reported: set[str] = set()  # entries already reported as ignored
        self._wrong_type = False  # the key held no list at the last read

    def recall(self, memory: ChainMemory) -> None:
        """Take back what this reader had verified before a restart: the next read must
        extend that head, and the keys revoked then stay revoked."""
        revoked = {**memory.revoked, **self.memory.revoked}
        self.memory = ChainMemory(memory.seq, memory.head, revoked)

    def read(self, raws: Sequence[bytes] | None) -> Reading:
        """Verify the list's entries (``None``: the key holds something else than a list)."""
        seq, head = -1, GENESIS
        found: dict[str, str] = {}
        heads = {(seq, head)}
        ignored: list[Ignored] = []
        for raw in raws or ():
            digest = entry_hash(raw)
            entry = self._judge(raw, digest)
            if isinstance(entry, Revocation) and (entry.seq, entry.prev) == (seq + 1, head):
                seq, head = entry.seq, digest
                heads.add((seq, head))
                found[entry.fingerprint] = entry.owner
                continue
            if digest not in self._reported:
                self._reported.add(digest)
                ignored.append(_ignored(entry, digest))
        tampered = None
        if raws is None and not self._wrong_type:
            tampered = "the revocation key holds no list"
        elif (self.memory.seq, self.memory.head) not in heads:
            tampered = (
                f"the list no longer holds entry {self.memory.seq} as verified before "
                f"(its verified head is now entry {seq})"
            )
        self._wrong_type = raws is None
        # Never un-revoke; a tampered list is followed from its own head on, so one change
        # is reported once (and a chain the admin starts again after an erasure counts).
        self.memory = ChainMemory(seq, head, {**self.memory.revoked, **found})
        return Reading(self.memory.revoked, ignored, tampered)

    def _judge(self, raw: bytes, digest: str) -> Revocation | str:
        """The entry if the admin signed it for this run, else the reason it does not count."""
        if digest not in self._judged:
            self._judged[digest] = self._verify(raw)
        return self._judged[digest]

    def _verify(self, raw: bytes) -> Revocation | str:
        try:
            entry = revocation_decoder.decode(raw)
        except DecodeError:
            return "malformed"
        if entry.envelope.run != self.run:
            return "other_run"
        if not entry.signature:
            return "unsigned"
        try:
            self.admin.verify(entry.signature, signing_bytes(entry))
        except InvalidSignature:
            return "bad_signature"
        return entry


def _ignored(entry: Revocation | str, digest: str) -> Ignored:
    if isinstance(entry, str):
        return Ignored(entry, digest)
    return Ignored("mislinked", digest, entry.seq, entry.owner, entry.fingerprint)
