"""Pure text cleaning for the corpus builder: HTML, OSIS, e-mail, fortunes, cutting (roff, the
man pages' markup, is ``roff.py``).

No I/O here: every function maps strings to strings, so the cleaning is tested on inline
fixtures (tests/worldlm/training/test_corpus_build.py) without downloading anything.
"""

from __future__ import annotations

import email
import email.policy
import html
import itertools
import re
import unicodedata
from html.parser import HTMLParser

# --------------------------------------------------------------------------- generic


def normalize_text(text: str) -> str:
    """NFC, unix newlines, no control characters but tab/newline, no trailing spaces,
    at most one blank line in a row. Indentation is kept (code depends on it)."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def is_clean_text(text: str) -> bool:
    """False for text with decoding damage (U+FFFD) or binary junk (control, private-use,
    unassigned or surrogate code points)."""
    if "\ufffd" in text:
        return False
    return not any(
        unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t" for ch in text
    )


# Coarse to fine: paragraphs, lines, sentences (Latin/Cyrillic and CJK), words.
_SEPARATORS = ("\n\n", "\n", ". ", "。", " ")


def cut_documents(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most `max_chars` characters at the coarsest natural
    boundary that fits (blank line, line, sentence, word; a hard cut as the last resort).
    Concatenating the pieces gives back the text up to whitespace at the cuts."""
    chunks = _cut(text, max_chars, _SEPARATORS)
    # Trim only newlines and trailing spaces: a chunk of code keeps its first line's indent.
    return [c.strip("\n").rstrip() for c in chunks if c.strip()]


def _cut(text: str, max_chars: int, separators: tuple[str, ...]) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if not separators:
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    sep, finer = separators[0], separators[1:]
    raw = text.split(sep)
    parts = [p + sep for p in raw[:-1]] + [raw[-1]]
    chunks: list[str] = []
    current = ""
    for part in parts:
        if len(current) + len(part) <= max_chars:
            current += part
            continue
        if current:
            chunks.append(current)
        current = ""
        if len(part) <= max_chars:
            current = part
        else:
            chunks.extend(_cut(part, max_chars, finer))
    if current:
        chunks.append(current)
    return chunks


# --------------------------------------------------------------------------- HTML

_BLOCK_TAGS = {
    "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "tr", "table", "section",
    "dt", "dd", "blockquote", "ul", "ol", "dl", "br", "hr", "title", "caption",
}  # fmt: skip
_SKIP_TAGS = {"script", "style", "head", "nav"}
_SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures"}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, skipped)
        self.pre = 0

    def _skipping(self) -> bool:
        return any(skipped for _, skipped in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        if tag in _VOID_TAGS:
            return
        self.stack.append((tag, tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)))
        self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        # Pop to the matching open tag; tolerate unclosed <p>/<li>.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break
        self.pre = sum(t == "pre" for t, _ in self.stack)
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._skipping():
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            previous = next((p for p in reversed(self.parts) if p), "\n")
            if previous.endswith("\n"):
                data = data.lstrip()  # no stray indent at the start of a block
        if data:
            self.parts.append(data)


def html_to_text(source: str) -> str:
    """Visible text of an HTML page: block elements become paragraphs, <pre> keeps its
    layout, scripts, styles, heads and navigation/TOC blocks are dropped, entities decoded."""
    parser = _TextExtractor()
    parser.feed(source)
    parser.close()
    text = "".join(parser.parts)
    return "\n".join(line.rstrip() for line in text.split("\n"))


# --------------------------------------------------------------------------- other formats


def split_fortunes(source: str) -> list[str]:
    """The cookies of a fortune(6) data file (separated by lines holding only `%`)."""
    return [c.strip("\n") for c in re.split(r"^%\s*$", source, flags=re.M) if c.strip()]


def email_text(raw: str) -> str:
    """Subject and plain-text body of an RFC 822 message; headers, quoted lines, attribution
    lines, signatures and mailing-list footers removed. Empty when there is no text part."""
    msg = email.message_from_string(raw, policy=email.policy.default)
    body: list[str] = []
    for part in msg.walk():
        if part.get_content_type() != "text/plain":
            continue
        try:
            body.append(str(part.get_content()))
        except (LookupError, ValueError, AssertionError):
            continue
    lines: list[str] = []
    for line in "\n".join(body).split("\n"):
        if line.rstrip() == "--" or re.match(r"^_{10,}\s*$", line):
            break  # signature or list footer: everything after is boilerplate
        if line.lstrip().startswith(">") or re.match(r"^(On .*|.*) wrote:\s*$", line):
            continue
        lines.append(line)
    text = "\n".join(lines).strip()
    if not text:
        return ""
    subject = str(msg.get("subject", "") or "").strip()
    return f"Subject: {subject}\n\n{text}" if subject else text


def osis_chapters(xml: str) -> list[tuple[str, str]]:
    """(reference, text) per chapter of an OSIS fragment: notes dropped, paragraph and
    title elements become line breaks, all other markup stripped."""
    xml = re.sub(r"<note\b.*?</note>", "", xml, flags=re.S)
    pieces = re.split(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>', xml)
    chapters = []
    for ref, body in zip(pieces[1::2], pieces[2::2], strict=True):
        body = re.sub(r'<div\b[^>]*type="x-p"[^>]*/>|</?title\b[^>]*>|<lb\b[^>]*/>', "\n", body)
        text = html.unescape(re.sub(r"<[^>]+>", "", body))
        lines = (re.sub(r"[ \t]+", " ", ln).strip() for ln in text.split("\n"))
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        if text:
            chapters.append((ref.replace(".", " "), text))
    return chapters


_SCENE = re.compile(r"^(?:ACT|Act|SCENE|Scene)\s+[IVXLC0-9]+\b.*$", re.M)


def split_scenes(play: str) -> list[str]:
    """A play cut before each ACT/SCENE heading (the heading starts its piece)."""
    starts = [m.start() for m in _SCENE.finditer(play)]
    bounds = [0, *starts, len(play)]
    return [play[a:b].strip("\n") for a, b in itertools.pairwise(bounds) if play[a:b].strip()]
