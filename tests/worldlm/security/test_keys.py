"""Key files: one Ed25519 pair per participant, private keys unreadable by others, existing
pairs kept, unreadable files named in the error."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from worldlm.security.keys import KeyFileError, generate_keys, load_keyring


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
    from worldlm.security.keys import key_stamp, public_fingerprint, rotate_signing_key

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


def test_the_admin_pair_is_written_once_and_participants_load_only_its_public_key(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from worldlm.cli import app
    from worldlm.config.hierarchy import parse
    from worldlm.security.keys import load_admin_key
    from worldlm.security.keychain import Keychain

    generate_keys(tmp_path, ["root", "en-0"])
    assert stat.S_IMODE((tmp_path / "admin.key").stat().st_mode) == 0o600
    ring = load_keyring(tmp_path, "en-0")
    assert sorted(ring.public) == ["en-0", "root"] and ring.admin is not None
    message = b"an entry"
    ring.admin.verify(load_admin_key(tmp_path).sign(message), message)  # raises if not a pair
    before = (tmp_path / "admin.pub").read_bytes()
    generate_keys(tmp_path, ["de-0"])
    assert (tmp_path / "admin.pub").read_bytes() == before  # kept: its chain stays valid
    with pytest.raises(KeyFileError, match="admin"):
        generate_keys(tmp_path, ["admin"])
    # A signing participant without the admin's public key cannot tell a revocation from a
    # forgery: it stops at start, naming the file.
    (tmp_path / "admin.pub").unlink()
    raw = {
        "run": {"id": "r", "signing": "required"},
        "federations": {"root": {}},
        "clients": {"en-0": {"federation": "root", "partition": "lang-en"}},
    }
    with pytest.raises(KeyFileError, match=r"admin\.pub is missing"):
        Keychain(parse(raw).run, str(tmp_path), "en-0")
    # Revoking needs the admin's private key: without it, a usage error naming --keys.
    (tmp_path / "admin.key").unlink()
    config = tmp_path / "run.toml"
    config.write_text(
        '[run]\nid = "r"\n[federations.root]\n[clients.en-0]\nfederation = "root"\n'
        'partition = "lang-en"\n'
    )
    args = ["keys", "revoke", "--config", str(config), "--keys", str(tmp_path), "--id", "en-0"]
    result = CliRunner().invoke(
        app, [*args, "--redis", "redis://127.0.0.1:1/0"], env={"COLUMNS": "1000"}
    )
    assert result.exit_code == 2 and "admin.key is missing" in result.output, result.output
