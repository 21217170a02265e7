"""`worldlm keys …`: keys for runs with ``signing`` or ``sealing = "required"``: generate
them, revoke a signing key, rotate one (a new pair, the old one revoked). Revocations are
entries of the run's chain signed with the admin key (``admin.key`` in the key directory),
so they run where that key is kept."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from schemas.revocation import Action

app = typer.Typer(
    help="Signing (Ed25519) and sealing (X25519) keys of participants.", no_args_is_help=True
)


@app.command()
def generate(
    config: Annotated[Path, typer.Option("--config", help="Hierarchy config (TOML).")],
    out: Annotated[Path, typer.Option("--out", help="Key directory to write.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing key pairs.")
    ] = False,
) -> None:
    """Write a key pair for every federation and client of CONFIG: OUT/<id>.key (private,
    0600) and OUT/<id>.pub, and the run admin's pair OUT/admin.key and OUT/admin.pub (only
    admin-signed revocations count). Existing pairs are kept unless --overwrite. Give each
    machine its own .key, everyone's .pub and admin.pub; keep admin.key with the operator.
    A run with isolation = "acl" also gets a Redis password per participant and the
    observer: OUT/<id>.redis (0600)."""
    from worldlm.security.acl import principals
    from worldlm.cli.participants import _usage_errors, load_config
    from worldlm.security.credentials import generate_passwords
    from worldlm.security.keys import generate_admin_key, generate_keys

    hierarchy = load_config(config, None)
    owners = [*hierarchy.federations, *hierarchy.clients]
    with _usage_errors():
        admin = generate_admin_key(out, overwrite=overwrite)
        created = generate_keys(out, owners, overwrite=overwrite)
    kept = len(owners) - len(created)
    typer.echo(f"{out}: {len(created)} key pairs written, {kept} kept")
    typer.echo(f"{out}: admin key {'written' if admin else 'kept'}")
    if hierarchy.run.isolation == "acl":
        names = principals(hierarchy)
        made = generate_passwords(out, names, overwrite=overwrite)
        typer.echo(f"{out}: {len(made)} Redis passwords written, {len(names) - len(made)} kept")


Config = Annotated[Path, typer.Option("--config", help="Hierarchy config (TOML).")]
KeyDir = Annotated[Path, typer.Option("--keys", help="Key directory (worldlm keys generate).")]
Participant = Annotated[str, typer.Option("--id", help="The participant (client or federation).")]
RedisUrl = Annotated[str, typer.Option("--redis", help="The run's Redis URL.")]


def _run_of(config: Path, participant: str) -> str:
    """CONFIG's run id, once ``participant`` is known to be one of its participants."""
    from worldlm.cli.participants import load_config

    hierarchy = load_config(config, None)
    if participant not in hierarchy.federations and participant not in hierarchy.clients:
        raise typer.BadParameter(f"{participant!r} is not in {config}", param_hint="--id")
    return hierarchy.run.id


async def _revoke(
    run_id: str, keys: Path, redis: str, fingerprint: str, owner: str, action: Action
) -> bool:
    """Append an entry to the run's revocation chain, signed with KEYS/admin.key."""
    from brokers.revocations import Revocations
    from brokers.state import RedisState
    from schemas.keyspace import Keyspace
    from worldlm.security.keys import load_admin_key

    admin = load_admin_key(keys)
    async with RedisState(redis, Keyspace(run_id)) as state:
        chain = Revocations(state, admin.public_key())
        return await chain.revoke(admin, fingerprint, owner, action)


@app.command()
def revoke(config: Config, keys: KeyDir, participant: Participant, redis: RedisUrl) -> None:
    """Revoke the signing key in KEYS/<id>.pub for the run of CONFIG: from their next read,
    aggregators dead-letter updates signed with it (reason revoked) and members ignore
    broadcasts signed with it. The entry is signed with KEYS/admin.key and appended to the
    run's revocation chain in Redis."""
    import asyncio

    from worldlm.cli.participants import _usage_errors
    from worldlm.security.keys import public_fingerprint

    run_id = _run_of(config, participant)
    with _usage_errors():
        fingerprint = public_fingerprint(keys, participant)
        added = asyncio.run(_revoke(run_id, keys, redis, fingerprint, participant, "revoke"))
    typer.echo(f"{participant}: key {fingerprint[:16]} {'revoked' if added else 'already revoked'}")


@app.command()
def rotate(config: Config, keys: KeyDir, participant: Participant, redis: RedisUrl) -> None:
    """Give a participant a new signing pair in KEYS and revoke its old key (an entry signed
    with KEYS/admin.key). Running participants re-read KEYS when it changes; where machines
    hold copies, deliver the new .key to the participant and the new .pub to its readers."""
    import asyncio

    from worldlm.cli.participants import _usage_errors
    from worldlm.security.keys import load_admin_key, rotate_signing_key

    run_id = _run_of(config, participant)
    with _usage_errors():
        load_admin_key(keys)  # before the new pair: a rotation that cannot revoke is refused
        old, new = rotate_signing_key(keys, participant)
        asyncio.run(_revoke(run_id, keys, redis, old, participant, "rotate"))
    typer.echo(f"{participant}: key {old[:16]} revoked, new key {new[:16]}")
