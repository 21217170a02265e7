"""`worldlm keys …`: signing keys for runs with ``signing = "required"``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Signing keys of participants (Ed25519).", no_args_is_help=True)


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
