"""Participants' signing keys on disk: one Ed25519 pair per participant.

``<dir>/<id>.key`` is the private key (PKCS#8 PEM, mode 0600), ``<dir>/<id>.pub`` the public
key (SubjectPublicKeyInfo PEM). A participant loads its own private key and every public key
in the directory; in a real deployment each machine gets its own ``.key`` and everyone's
``.pub``. ``worldlm keys generate`` writes a directory for every participant of a config.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyFileError(ValueError):
    """A key directory or key file that is missing or unreadable."""


@dataclass(frozen=True)
class Keyring:
    """One participant's private key and the public keys of everyone it may read from."""

    owner: str
    signer: Ed25519PrivateKey | None
    public: dict[str, Ed25519PublicKey] = field(default_factory=dict)


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def _read_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


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
    public = {p.stem: _read_public(p) for p in sorted(directory.glob("*.pub"))}
    return Keyring(owner, _read_private(private), public)


def generate_keys(
    directory: str | Path, owners: Iterable[str], *, overwrite: bool = False
) -> list[str]:
    """Write a key pair per owner into ``directory``; return the owners given new keys.

    Existing pairs are kept unless ``overwrite``: a new key locks its participant out until
    its new public key reaches its readers.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    for owner in owners:
        private_path, public_path = directory / f"{owner}.key", directory / f"{owner}.pub"
        if private_path.exists() and not overwrite:
            continue
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private_path.unlink(missing_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        created.append(owner)
    return created
