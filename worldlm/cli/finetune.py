"""``worldlm pretrain`` and ``worldlm export``: a pretrained base in, a federation's model out
(docs/finetune.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from worldlm.cli.participants import load_config


def pretrain(
    out: Annotated[Path, typer.Option("--out", help="The base's directory (Hugging Face).")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Train on the partitions no client of this config holds.", exists=True
        ),
    ] = None,
    partition: Annotated[
        list[str] | None,
        typer.Option("--partition", help="Public partitions to train on (repeatable)."),
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Model preset.")] = "tiny",
    steps: Annotated[int, typer.Option("--steps", min=1, help="AdamW steps.")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option("--seed", help="Initialisation and batches.")] = 0,
) -> None:
    """Make a pretrained base from public text, offline, for ``[run] init``: the text of the
    partitions no client of CONFIG holds (or the ``--partition`` ones)."""
    from worldlm.training.pretrained import PretrainConfig, public_partitions
    from worldlm.training.pretrained import pretrain as make_base

    if partition:
        texts = list(partition)
    elif config is not None:
        texts = public_partitions(load_config(config, None))
    else:
        raise typer.BadParameter("give --config or --partition", param_hint="--config")
    card = make_base(out, texts, PretrainConfig(model=model, steps=steps, lr=lr, seed=seed))
    typer.echo(
        f"base: {out}  ({', '.join(texts)}; {card['train_tokens']:,} tokens; validation "
        f"perplexity {card['val_ppl_before']:.1f} -> {card['val_ppl_after']:.1f})"
    )


def export(
    config: Annotated[Path, typer.Argument(help="The run's hierarchy config (TOML).")],
    federation: Annotated[str, typer.Option("--federation", help="Whose model to export.")],
    out: Annotated[Path, typer.Option("--out", help="The model's directory (Hugging Face).")],
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            help="A live run's checkpoints (worldlm run --checkpoint-dir); without it the "
            "config runs on the simulator first (deterministic: the same weights).",
        ),
    ] = None,
) -> None:
    """Write one federation's model as a standard Hugging Face directory: the base with that
    federation's weights (LoRA adapters merged in; the adapters also in peft's format)."""
    from worldlm.training.export import export as write
    from worldlm.training.export import federation_perplexity

    hierarchy = load_config(config, None)
    if federation not in hierarchy.federations:
        raise typer.BadParameter(
            f"unknown federation {federation!r}; known: {sorted(hierarchy.federations)}",
            param_hint="--federation",
        )
    figures: dict[str, float] = {}
    if checkpoint_dir is not None:
        from worldlm.participants.checkpoint import Checkpoint

        checkpoint = Checkpoint(checkpoint_dir / hierarchy.run.id / federation)
        if not checkpoint.exists:
            raise typer.BadParameter(
                f"no checkpoint at {checkpoint.dir}", param_hint="--checkpoint-dir"
            )
        _, weights, _, _ = checkpoint.load()
    else:
        from worldlm.lab.simulator import simulate

        result, simulation = simulate(hierarchy)
        weights = simulation.weights(federation)
        members = set(hierarchy.federations[federation].clients)
        figures = {c: p for c, p in result.final_ppl().items() if c in members}
    write(hierarchy, federation, weights, out)
    exported = federation_perplexity(hierarchy, federation, out)
    for client, ppl in sorted(exported.items()):
        run = f"  (the run: {figures[client]:.3f})" if client in figures else ""
        typer.echo(f"{client:>16}  exported model's validation perplexity {ppl:.3f}{run}")
    typer.echo(json.dumps({"exported": str(out), "federation": federation}))
