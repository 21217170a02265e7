"""Man pages' markup (roff: man and mdoc macros, escapes, fill mode) to plain text, for the
corpus builder. Pure: strings to strings, tested on inline fixtures
(tests/worldlm/training/test_corpus_build.py).
"""

from __future__ import annotations

import re

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
