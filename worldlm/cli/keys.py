"""`worldlm keys …`: keys for runs with ``signing`` or ``sealing = "required"``: generate
them, revoke a signing key, rotate one (a new pair, the old one revoked)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    0600) and OUT/<id>.pub. Existing pairs are kept unless --overwrite. Give each machine
    its own .key and everyone's .pub. A run with isolation = "acl" also gets a Redis
    password per participant and the observer: OUT/<id>.redis (0600)."""
    from worldlm.acl import principals
    from worldlm.cli.participants import load_config
    from worldlm.credentials import generate_passwords
    from worldlm.keys import generate_keys

    hierarchy = load_config(config, None)
    owners = [*hierarchy.federations, *hierarchy.clients]
    created = generate_keys(out, owners, overwrite=overwrite)
    kept = len(owners) - len(created)
    typer.echo(f"{out}: {len(created)} key pairs written, {kept} kept")
    if hierarchy.run.isolation == "acl":
        names = principals(hierarchy)
        made = generate_passwords(out, names, overwrite=overwrite)
        typer.echo(f"{out}: {len(made)} Redis passwords written, {len(names) - len(made)} kept")


Config = Annotated[Path, typer.Option("--config", help="Hierarchy config (TOML).")]
KeyDir = Annotated[Path, typer.Option("--keys", help="Key directory (worldlm keys generate).")]
Participant = Annotated[str, typer.Option("--id", help="The participant (client or federation).")]
RedisUrl = Annotated[str, typer.Option("--redis", help="The run's Redis URL.")]


async def _revoke(config: Path, redis: str, fingerprint: str, owner: str) -> bool:
    from brokers.revocations import Revocations
    from brokers.state import RedisState
    from schemas.keyspace import Keyspace
    from worldlm.cli.participants import load_config

    run_id = load_config(config, None).run.id
    async with RedisState(redis, Keyspace(run_id)) as state:
        return await Revocations(state).revoke(fingerprint, owner)


@app.command()
def revoke(config: Config, keys: KeyDir, participant: Participant, redis: RedisUrl) -> None:
    """Revoke the signing key in KEYS/<id>.pub for the run of CONFIG: from their next read,
    aggregators dead-letter updates signed with it (reason revoked) and members ignore
    broadcasts signed with it. The list lives in the run's Redis."""
    import asyncio

    from worldlm.keys import public_fingerprint

    fingerprint = public_fingerprint(keys, participant)
    added = asyncio.run(_revoke(config, redis, fingerprint, participant))
    typer.echo(f"{participant}: key {fingerprint[:16]} {'revoked' if added else 'already revoked'}")


@app.command()
def rotate(config: Config, keys: KeyDir, participant: Participant, redis: RedisUrl) -> None:
    """Give a participant a new signing pair in KEYS and revoke its old key. Running
    participants re-read KEYS when it changes; where machines hold copies, deliver the new
    .key to the participant and the new .pub to its readers."""
    import asyncio

    from worldlm.keys import rotate_signing_key

    old, new = rotate_signing_key(keys, participant)
    asyncio.run(_revoke(config, redis, old, participant))
    typer.echo(f"{participant}: key {old[:16]} revoked, new key {new[:16]}")
