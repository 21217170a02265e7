"""One participant's keys during a run: what it signs with, verifies with, seals to and opens
with, re-read from the key directory when a file there changes (a rotated key).

Readers keep the public-key map they were given: a reload updates it in place, so an intake
or follower made at start sees a rotated key without being rebuilt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from schemas.sealing import Unsealer
from worldlm.config.hierarchy import RunConfig
from worldlm.security.keys import KeyFileError, key_stamp, load_keyring

log = structlog.get_logger(__name__)


class Keychain:
    """The keys of ``owner`` for a run that signs and/or seals its deltas.

    ``recipients`` are whom the owner seals to (its federation's aggregator; an aggregator's
    members too): in a sealing run their ``.xpub`` files must be there at start.
    """

    def __init__(
        self, run: RunConfig, directory: str, owner: str, recipients: Sequence[str] = ()
    ) -> None:
        self.signing = run.signing == "required"
        self.sealing = run.sealing == "required"
        self.directory, self.owner = directory, owner
        self.ring = load_keyring(directory, owner)
        self._stamp = key_stamp(directory)
        self.reloads = 0
        if self.signing and self.ring.admin is None:
            raise KeyFileError(
                f"no admin public key: {directory}/admin.pub is missing (revocations are "
                "valid only when the run's admin key signed them; worldlm keys generate)"
            )
        if self.sealing:
            if self.ring.sealer is None:
                raise KeyFileError(f"no sealing key for {owner!r}: {directory}/{owner}.xkey")
            for rid in recipients:
                if rid not in self.ring.seal_public:
                    raise KeyFileError(
                        f"no sealing public key for {rid!r}: {directory}/{rid}.xpub is missing"
                    )
        self._unsealer = self._make_unsealer()
        self._admin = self.ring.admin

    def _make_unsealer(self) -> Unsealer | None:
        sealer = self.ring.sealer
        return Unsealer(self.owner, sealer) if self.sealing and sealer is not None else None

    @property
    def signer(self) -> Ed25519PrivateKey | None:
        """The key deltas are signed with (None when the run does not sign)."""
        return self.ring.signer if self.signing else None

    @property
    def public(self) -> dict[str, Ed25519PublicKey] | None:
        """Keys to verify others' deltas with (None when the run does not sign)."""
        return self.ring.public if self.signing else None

    @property
    def admin(self) -> Ed25519PublicKey | None:
        """The run admin's key, which revocations must be signed by (None: unsigned run).
        Kept from the start: a reload does not change whose signature counts."""
        return self._admin if self.signing else None

    @property
    def unsealer(self) -> Unsealer | None:
        """Opens deltas sealed to the owner (None when the run does not seal)."""
        return self._unsealer

    def seal_to(self, recipients: Sequence[str]) -> dict[str, X25519PublicKey] | None:
        """The sealing public keys of ``recipients`` (None when the run does not seal)."""
        if not self.sealing:
            return None
        try:
            return {rid: self.ring.seal_public[rid] for rid in recipients}
        except KeyError as exc:
            raise KeyFileError(f"no sealing public key for {exc.args[0]!r}") from None

    def reload(self) -> bool:
        """Re-read the directory if a key file changed since; True if keys were reloaded.

        A directory caught mid-change (an unreadable file) keeps the old keys and is tried
        again next time.
        """
        stamp = key_stamp(self.directory)
        if stamp == self._stamp:
            return False
        try:
            ring = load_keyring(self.directory, self.owner)
        except KeyFileError as exc:
            log.warning("keys_reload_failed", owner=self.owner, error=str(exc))
            return False
        self._stamp = stamp
        self.ring.public.clear()
        self.ring.public.update(ring.public)
        self.ring.seal_public.clear()
        self.ring.seal_public.update(ring.seal_public)
        self.ring = dataclasses.replace(
            ring, public=self.ring.public, seal_public=self.ring.seal_public
        )
        self._unsealer = self._make_unsealer()
        self.reloads += 1
        log.info("keys_reloaded", owner=self.owner, public=len(ring.public))
        return True
