"""Participants' keys on disk: an Ed25519 signing pair and an X25519 sealing pair each.

``<dir>/<id>.key`` is the signing private key (PKCS#8 PEM, mode 0600), ``<dir>/<id>.pub``
its public key (SubjectPublicKeyInfo PEM); ``<id>.xkey`` and ``<id>.xpub`` are the sealing
pair (X25519, same formats; ``schemas.sealing``). ``admin.key`` / ``admin.pub`` are the run
admin's signing pair: revocations are valid only when it signed them (``schemas.revocation``),
so ``admin`` is no participant's name. A participant loads its own private keys, every
public key in the directory and the admin's public key, never ``admin.key``; in a real
deployment each machine gets its own private keys and everyone's public keys, and the admin
key stays with the operator. ``worldlm keys generate`` writes a directory for every
participant of a config; ``rotate_signing_key`` replaces one participant's signing pair, and
participants re-read the directory when its files change (:func:`key_stamp`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas.revocation import ADMIN
from schemas.signing import fingerprint

#: File suffixes of the key directory: signing private/public, sealing private/public.
SUFFIXES = (".key", ".pub", ".xkey", ".xpub")


class KeyFileError(ValueError):
    """A key directory or key file that is missing or unreadable."""


@dataclass(frozen=True)
class Keyring:
    """One participant's private keys and the public keys of everyone it may read from
    (signing) or send to (sealing)."""

    owner: str
    signer: Ed25519PrivateKey | None
    public: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    sealer: X25519PrivateKey | None = None
    seal_public: dict[str, X25519PublicKey] = field(default_factory=dict)
    #: the run admin's key, which signs revocations (None: no ``admin.pub`` here)
    admin: Ed25519PublicKey | None = None


def _read_private(path: Path, kind: Any) -> Any:  # kind: an abstract key class
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, kind):
        raise KeyFileError(f"{path}: not an {kind.__name__.removesuffix('PrivateKey')} key")
    return key


def _read_public(path: Path, kind: Any) -> Any:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc}") from exc
    if not isinstance(key, kind):
        raise KeyFileError(f"{path}: not an {kind.__name__.removesuffix('PublicKey')} key")
    return key


def key_stamp(directory: str | Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a key file of ``directory`` is written, added or removed."""
    found = []
    for path in sorted(Path(directory).iterdir()):
        if path.suffix in SUFFIXES:
            with contextlib.suppress(OSError):  # removed while we looked
                st = path.stat()
                found.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(found)


def public_fingerprint(directory: str | Path, owner: str) -> str:
    """The fingerprint of ``owner``'s signing public key in ``directory``."""
    return fingerprint(_read_public(Path(directory) / f"{owner}.pub", Ed25519PublicKey))


def load_public_keys(directory: str | Path) -> dict[str, Ed25519PublicKey]:
    """Every participant's signing public key in ``directory`` (``<id>.pub``, the admin's
    left out): what a reader holding no private key verifies updates with (``worldlm audit``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"key directory {directory} does not exist")
    public = {p.stem: _read_public(p, Ed25519PublicKey) for p in sorted(directory.glob("*.pub"))}
    public.pop(ADMIN, None)
    return public


def load_keyring(directory: str | Path, owner: str) -> Keyring:
    """``owner``'s private key and every ``*.pub`` in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(
            f"key directory {directory} does not exist (make one: worldlm keys generate)"
        )
    private = directory / f"{owner}.key"
    if not private.exists():
        raise KeyFileError(f"no private key for {owner!r}: {private} is missing")
    public = {p.stem: _read_public(p, Ed25519PublicKey) for p in sorted(directory.glob("*.pub"))}
    admin = public.pop(ADMIN, None)
    sealing = directory / f"{owner}.xkey"
    return Keyring(
        owner,
        _read_private(private, Ed25519PrivateKey),
        public,
        _read_private(sealing, X25519PrivateKey) if sealing.exists() else None,
        {p.stem: _read_public(p, X25519PublicKey) for p in sorted(directory.glob("*.xpub"))},
        admin,
    )


def load_admin_key(directory: str | Path) -> Ed25519PrivateKey:
    """The run admin's private signing key, which signs revocations (``admin.key``)."""
    path = Path(directory) / f"{ADMIN}.key"
    if not path.exists():
        raise KeyFileError(
            f"revocations are signed by the run's admin key and {path} is missing "
            "(worldlm keys generate writes it; revoke where it is kept)"
        )
    key: Ed25519PrivateKey = _read_private(path, Ed25519PrivateKey)
    return key


def generate_admin_key(directory: str | Path, *, overwrite: bool = False) -> bool:
    """Write the run admin's signing pair (``admin.key``, ``admin.pub``) unless there is one
    (or ``overwrite``); True if written. A new admin key makes the revocations signed with
    the old one count no more for readers that start after it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not overwrite and (directory / f"{ADMIN}.key").exists():
        return False
    _write_pair(directory, ADMIN, Ed25519PrivateKey.generate(), "key/pub")
    return True


def _write_pair(
    directory: Path, owner: str, key: Ed25519PrivateKey | X25519PrivateKey, suffixes: str
) -> None:
    """Write ``key`` as ``<owner>.<private>`` (0600) and its public half, each atomically
    (a reader re-reading the directory never sees half a file)."""
    private, public = suffixes.split("/")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = directory / f".{owner}.{private}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.replace(tmp, directory / f"{owner}.{private}")
    tmp = directory / f".{owner}.{public}.tmp"
    tmp.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    os.replace(tmp, directory / f"{owner}.{public}")


def rotate_signing_key(directory: str | Path, owner: str) -> tuple[str, str]:
    """Give ``owner`` a new signing pair; return the (old, new) public key fingerprints.

    The old key still verifies wherever it is loaded until it is revoked
    (``brokers.revocations``); ``worldlm keys rotate`` does both.
    """
    directory = Path(directory)
    old = public_fingerprint(directory, owner)
    key = Ed25519PrivateKey.generate()
    _write_pair(directory, owner, key, "key/pub")
    return old, fingerprint(key.public_key())


def generate_keys(
    directory: str | Path, owners: Iterable[str], *, overwrite: bool = False
) -> list[str]:
    """Write a signing and a sealing pair per owner into ``directory``, and the admin's
    signing pair if it has none (never replaced here: :func:`generate_admin_key` does that);
    return the owners given new keys.

    Existing pairs are kept unless ``overwrite``: a new key locks its participant out until
    its new public key reaches its readers.
    """
    owners = list(owners)
    if ADMIN in owners:
        raise KeyFileError(f"{ADMIN!r} names the run admin's key; rename that participant")
    directory = Path(directory)
    generate_admin_key(directory)
    created: list[str] = []
    for owner in owners:
        new = False
        if overwrite or not (directory / f"{owner}.key").exists():
            _write_pair(directory, owner, Ed25519PrivateKey.generate(), "key/pub")
            new = True
        if overwrite or not (directory / f"{owner}.xkey").exists():
            _write_pair(directory, owner, X25519PrivateKey.generate(), "xkey/xpub")
            new = True
        if new:
            created.append(owner)
    return created
