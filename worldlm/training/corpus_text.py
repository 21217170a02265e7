"""Pure text cleaning for the corpus builder: roff, HTML, OSIS, e-mail, fortunes, cutting.

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


# --------------------------------------------------------------------------- roff (man pages)

_NAMED_CHARS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "bu": "•", "co": "©", "rg": "®", "tm": "™", "mu": "×", "de": "°",
    "+-": "±", "<=": "≤", ">=": "≥", "->": "→", "<-": "←", "ti": "~", "ha": "^", "rs": "\\",
    "ga": "`", "aa": "´", "sl": "/", "ba": "|", "bv": "|", "Fo": "«", "Fc": "»", "fo": "‹",
    "fc": "›", "ss": "ß", "pl": "+", "eq": "=", "**": "*", "at": "@", "sh": "#", "Do": "$",
    "Eu": "€", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "ua": "↑",
    "da": "↓", "dg": "†", "sc": "§", "ps": "¶", "ct": "¢", "12": "½", "14": "¼", "34": "¾",
}  # fmt: skip
_SIMPLE_ESCAPES = {
    "-": "-", " ": " ", "~": " ", "0": " ", "e": "\\", "\\": "\\", ".": ".", "'": "'",
    "`": "`", "&": "", "|": "", "^": "", "%": "", ":": "", "c": "", ")": "", "/": "", ",": "",
    "t": "\t", "d": "", "u": "", "p": "", "r": "", "{": "", "}": "",
}  # fmt: skip
_ESCAPE = re.compile(
    r"""\\(?:
        (?P<comment>["\#].*$)
      | (?P<named>\(..|\[[^\]]*\])
      | [fFgkmMnYz*$](?:\(..|\[[^\]]*\]|.)
      | s[+-]?(?:\d\d?|\(\d\d|\[\d+\])
      | [hvwlLDNoZbXxHSRAB]'[^']*'
      | (?P<simple>.)
    )""",
    re.VERBOSE,
)
# Macros whose arguments are printed as one run of text (alternating fonts: no spaces).
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_PARAGRAPH = {"PP", "LP", "P", "HP", "IP", "TP", "sp", "RS", "RE", "Pp", "Bl", "El", "It"}
_BREAK = {"br", "EX", "EE", "nf", "fi", "SY", "YS", "Bd", "Ed", "D1", "Dl"}
_HEADINGS = {"SH", "SS", "Sh", "Ss"}
# Requests (lower-case roff) print nothing; these upper-case man macros neither.
_SILENT = {"TH", "UC", "PD", "DT", "YS", "UE", "ME", "UR", "MT", "Dd", "Os", "Dt", "TE", "AT"}
# mdoc callable macros that may appear inside another macro's arguments.
_MDOC_INLINE = set(
    "Ac Ao Ap Aq Ar Bc Bo Bq Brc Bro Brq Cm Dc Do Dq Dv Em Er Ev Fa Fl Fn Ft Ic Li Nm No Ns "
    "Oc Oo Op Pa Pc Pf Po Pq Qc Ql Qo Qq Sc So Sq Sx Sy Tn Va Xr Xc Xo Ta".split()
)


class _Filler:
    """Collects man-page text like groff's fill mode: text lines of a paragraph are joined
    by spaces, breaks and no-fill regions (.nf, .EX, tables) keep their line structure."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.pending: list[str] = []
        self.nofill = False

    def text(self, line: str, *, alone: bool = False) -> None:
        if self.nofill or alone:
            self.flush()
            self.lines.append(line)
        elif line.strip():
            self.pending.append(line.strip())
        else:
            self.paragraph()

    def flush(self) -> None:
        if self.pending:
            self.lines.append(" ".join(self.pending))
            self.pending = []

    def paragraph(self) -> None:
        self.flush()
        self.lines.append("")


def _mdoc_args(args: list[str]) -> list[str]:
    # `.Fl f Ar file` prints "-f file": Fl prefixes a dash, other callables vanish.
    out: list[str] = []
    dashes = 0
    for arg in args:
        if arg in _MDOC_INLINE:
            dashes = dashes + 1 if arg == "Fl" else 0
            continue
        out.append("-" * dashes + arg)
        dashes = 0
    return out + (["-" * dashes] if dashes else [])


def strip_roff(source: str) -> str:
    """Plain text of a man page in roff (man or mdoc macros), rendered the way groff fills
    it: paragraph lines joined by spaces, blank lines between paragraphs and around
    headings, no-fill blocks and tables line by line; comments and definitions dropped."""
    out = _Filler()
    skip_until: str | None = None
    table = ""  # "" outside a table, "format" in its header, "data" in its rows
    tag_next = False  # after .TP the next text line is a tag on its own line
    for line in source.split("\n"):
        if skip_until is not None:
            skip_until = None if line.strip() == skip_until else skip_until
            continue
        if table == "format":
            table = "data" if line.rstrip().endswith(".") else "format"
            continue
        if line[:1] in (".", "'"):
            name, _, rest = line[1:].strip().partition(" ")
            args = _macro_args(rest.strip())
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
            elif name in ("TS", "TE"):
                table = "format" if name == "TS" else ""
                out.flush()
            elif name in _HEADINGS:
                out.paragraph()
                out.text(roff_escapes(" ".join(_mdoc_args(args))), alone=True)
                out.paragraph()
            elif name in _PARAGRAPH:
                out.paragraph()
                if name == "IP" and args:
                    out.text(roff_escapes(args[0]), alone=True)
                tag_next = name == "TP"
            elif name in _BREAK:
                out.flush()
                out.nofill = {"nf": True, "EX": True, "fi": False, "EE": False}.get(
                    name, out.nofill
                )
            elif name in _ALTERNATING:
                out.text(roff_escapes("".join(args)), alone=tag_next)
                tag_next = False
            elif name == "OP":
                out.text("[" + roff_escapes(" ".join(args)) + "]")
            elif name[:1].isupper() and name not in _SILENT and args:
                words = _mdoc_args([name, *args] if name in _MDOC_INLINE else args)
                out.text(roff_escapes(" ".join(words)), alone=tag_next)
                tag_next = False
            continue
        if table == "data":
            if line.strip() not in ("_", "=", "T{", "T}"):
                out.text(roff_escapes(line.replace("T{", "").replace("T}", "")), alone=True)
            continue
        out.text(roff_escapes(line), alone=tag_next)
        tag_next = False
    out.flush()
    return "\n".join(out.lines)


def _named(token: str) -> str:
    name = token[1:3] if token.startswith("(") else token[1:-1]
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    return _NAMED_CHARS.get(name, "")


def roff_escapes(line: str) -> str:
    """Replace roff escapes in one line: special characters become Unicode, font, size,
    motion and string escapes and comments disappear."""

    def repl(m: re.Match[str]) -> str:
        if m.group("comment") is not None:
            return ""
        if m.group("named") is not None:
            return _named(m.group("named"))
        if m.group("simple") is not None:
            return _SIMPLE_ESCAPES.get(m.group("simple"), m.group("simple"))
        return ""

    return _ESCAPE.sub(repl, line)


def _macro_args(rest: str) -> list[str]:
    # roff arguments: space separated, double quotes group ("" is a literal quote).
    args = [q.replace('""', '"') or b for q, b in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', rest)]
    return [a for a in args if a]


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
