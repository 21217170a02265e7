"""Key files: one Ed25519 pair per participant, private keys unreadable by others, existing
pairs kept, unreadable files named in the error."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from worldlm.keys import KeyFileError, generate_keys, load_keyring


def test_generate_writes_a_pair_per_owner_and_the_private_key_is_owner_only(
    tmp_path: Path,
) -> None:
    assert generate_keys(tmp_path, ["root", "en-0"]) == ["root", "en-0"]
    for owner in ["root", "en-0"]:
        mode = stat.S_IMODE((tmp_path / f"{owner}.key").stat().st_mode)
        assert mode == 0o600
        assert (tmp_path / f"{owner}.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    ring = load_keyring(tmp_path, "en-0")
    assert ring.signer is not None and sorted(ring.public) == ["en-0", "root"]
    message = b"a manifest"
    ring.public["en-0"].verify(ring.signer.sign(message), message)  # raises if not a pair


def test_existing_pairs_are_kept_unless_overwrite(tmp_path: Path) -> None:
    generate_keys(tmp_path, ["root"])
    before = (tmp_path / "root.pub").read_bytes()
    assert generate_keys(tmp_path, ["root", "de-0"]) == ["de-0"]
    assert (tmp_path / "root.pub").read_bytes() == before
    assert generate_keys(tmp_path, ["root"], overwrite=True) == ["root"]
    assert (tmp_path / "root.pub").read_bytes() != before


def test_missing_directory_and_unreadable_key_are_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keyring(tmp_path / "nowhere", "root")
    generate_keys(tmp_path, ["root"])
    (tmp_path / "root.key").write_text("not a key")
    with pytest.raises(KeyFileError, match="cannot read private key"):
        load_keyring(tmp_path, "root")


def test_generate_writes_a_sealing_pair_and_rotation_changes_only_the_signing_key(
    tmp_path: Path,
) -> None:
    from worldlm.keys import key_stamp, public_fingerprint, rotate_signing_key

    generate_keys(tmp_path, ["root", "en-0"])
    assert stat.S_IMODE((tmp_path / "en-0.xkey").stat().st_mode) == 0o600
    ring = load_keyring(tmp_path, "en-0")
    assert ring.sealer is not None and sorted(ring.seal_public) == ["en-0", "root"]
    sealing, stamp = (tmp_path / "en-0.xpub").read_bytes(), key_stamp(tmp_path)
    before = public_fingerprint(tmp_path, "en-0")
    old, new = rotate_signing_key(tmp_path, "en-0")
    assert old == before != new == public_fingerprint(tmp_path, "en-0")
    assert (tmp_path / "en-0.xpub").read_bytes() == sealing and key_stamp(tmp_path) != stamp
    assert stat.S_IMODE((tmp_path / "en-0.key").stat().st_mode) == 0o600
