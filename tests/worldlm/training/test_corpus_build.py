"""The corpus builder's pure parts: cleaning, cutting, dedupe, hash selection, data card."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from worldlm.training import corpus_build as cb
from worldlm.training import corpus_sources, roff
from worldlm.training import corpus_text as ct

MAN_PAGE = r""".\" Copyright (C) 2023 comment that must vanish
.TH LS 1 "March 2023" "GNU coreutils"
.de XX
.  this macro body must vanish
..
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
List information about the
\fBFILEs\fR (the current directory
by default).
.PP
.BR ls (1)
is \(lqfast\(rq \(em really\&.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
.nf
  keep   this
  layout
.fi
.TS
tab(;);
l l.
Name;Value
.TE
"""


def test_strip_roff_renders_man_page_text_like_groff() -> None:
    text = ct.normalize_text(roff.strip_roff(MAN_PAGE))
    assert text.split("\n\n")[:3] == [
        "NAME",
        "ls - list directory contents",
        "DESCRIPTION",
    ]
    assert "List information about the FILEs (the current directory by default)." in text
    assert "ls(1) is “fast” — really." in text
    assert "-a, --all\ndo not ignore entries starting with ." in text
    assert "  keep   this\n  layout" in text
    assert "Name;Value" in text
    for junk in ("Copyright", "macro body", "\\f", ".TH", "March 2023", "tab(;)"):
        assert junk not in text


def test_strip_roff_handles_mdoc_flags() -> None:
    text = roff.strip_roff(".Sh SYNOPSIS\n.Nm file\n.Op Fl Fl mime-type\n.Fl b Ar name\n")
    assert "SYNOPSIS" in text
    assert "--mime-type" in text and "-b name" in text
    assert "Fl" not in text and "Ar" not in text


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        (r"\fBbold\fP and \f(CWcode\fR", "bold and code"),
        (r"a\-b\ c\~d", "a-b c d"),
        (r"\[u00E9]t\[u00E9] \(co", "été ©"),
        (r"\s-1SMALL\s0 \*(EL x", "SMALL  x"),
        (r"text \" trailing comment", "text "),
        (r"back\eslash", "back\\slash"),
    ],
)
def test_roff_escapes_map_to_unicode_or_vanish(escaped: str, plain: str) -> None:
    assert roff.roff_escapes(escaped) == plain


def test_html_to_text_keeps_paragraphs_and_pre_and_drops_navigation() -> None:
    page = """<html><head><title>T</title><style>p{}</style></head><body>
    <div class="navheader">Prev Next</div>
    <h2>1.2. Heading</h2><p>Some   <b>bold</b>
    text &amp; more.</p><pre>$ ls  -l
  indented</pre><script>var x;</script><div class="toc">toc entry</div></body></html>"""
    text = ct.normalize_text(ct.html_to_text(page))
    assert text.split("\n\n") == ["1.2. Heading", "Some bold text & more.", "$ ls  -l\n  indented"]


def test_split_fortunes_separates_cookies_on_percent_lines() -> None:
    assert ct.split_fortunes("one\nline two\n%\n\n%\nthree\n%\n") == ["one\nline two", "three"]


def test_email_text_keeps_subject_and_body_drops_headers_quotes_and_footer() -> None:
    raw = (
        "From: a@example.org\nReceived: from x by y\nSubject: Re: hello\n"
        "Content-Type: text/plain; charset=us-ascii\n\n"
        "On Mon, Bob wrote:\n> quoted line\nMy answer.\n\n"
        "_______________________________________________\nlist footer\n"
    )
    assert ct.email_text(raw) == "Subject: Re: hello\n\nMy answer."


def test_email_without_plain_text_part_gives_empty_string() -> None:
    raw = "Subject: x\nContent-Type: text/html\n\n<p>hi</p>\n"
    assert ct.email_text(raw) == ""


def test_osis_chapters_strip_markup_and_notes() -> None:
    xml = (
        '<title type="main">Ruth</title><chapter osisID="Ruth.1" sID="Ruth.1"/>'
        '<w lemma="x">In</w> the days<note placement="foot">a footnote</note> of judges.'
        '<div type="x-p" sID="p1"/>Second &amp; last.<chapter eID="Ruth.1"/>'
        '<chapter osisID="Ruth.2" sID="Ruth.2"/>Boaz.'
    )
    assert ct.osis_chapters(xml) == [
        ("Ruth 1", "In the days of judges.\nSecond & last."),
        ("Ruth 2", "Boaz."),
    ]


def test_split_scenes_cuts_before_act_and_scene_headings() -> None:
    play = "TITLE\n\nACT I.\n\nScene I. A room.\n\nHAM.\nWords.\n\nScene II. Hall.\nMore."
    assert ct.split_scenes(play) == [
        "TITLE",
        "ACT I.",
        "Scene I. A room.\n\nHAM.\nWords.",
        "Scene II. Hall.\nMore.",
    ]


def test_cut_documents_respects_max_and_prefers_paragraph_boundaries() -> None:
    paras = [("word " * 30).strip() + "." for _ in range(10)]
    text = "\n\n".join(paras)
    pieces = ct.cut_documents(text, max_chars=400)
    assert all(len(p) <= 400 for p in pieces)
    assert all(p.endswith(".") for p in pieces)  # whole paragraphs, no mid-sentence cut
    assert "".join(pieces).replace("\n", "") == text.replace("\n", "")


def test_cut_documents_falls_back_to_sentences_words_and_hard_cuts() -> None:
    cjk = "这是一个句子。" * 100
    assert all(len(p) <= 50 and p.endswith("。") for p in ct.cut_documents(cjk, 50))
    blob = "x" * 95
    assert ct.cut_documents(blob, 40) == ["x" * 40, "x" * 40, "x" * 15]


def test_cut_documents_keeps_code_indentation() -> None:
    code = "def f():\n    a = 1\n\n    return a\n\n\nclass C:\n    pass"
    pieces = ct.cut_documents(code, 25)
    assert "    return a" in pieces


def test_normalize_text_removes_control_chars_and_trailing_space_keeps_indent() -> None:
    assert ct.normalize_text("a\x00b  \r\n\n\n\n    c\x1b\n") == "ab\n\n    c"


def test_is_clean_text_rejects_decoding_damage_and_binary() -> None:
    assert ct.is_clean_text("Grüße 日本 \t\n")
    assert not ct.is_clean_text("bad \ufffd decode")
    assert not ct.is_clean_text("private \ue000 use")


def test_prepare_documents_dedupes_and_drops_short_pieces() -> None:
    raw = [("a", "same text here, long enough"), ("b", "same text here, long enough"),
           ("c", "short"), ("d", "different text, long enough")]  # fmt: skip
    docs = cb.prepare_documents(raw, min_chars=10, max_chars=100)
    assert docs == [("a", "same text here, long enough"), ("d", "different text, long enough")]


def test_selection_is_order_independent_and_larger_caps_give_supersets() -> None:
    docs = [(str(i), f"document {i} " * 20) for i in range(400)]
    small, held_small = cb.select(docs, 5_000, 10_000)
    again, _ = cb.select(list(reversed(docs)), 5_000, 10_000)
    big, held_big = cb.select(docs, 50_000, 10_000)
    assert small == again
    assert set(small) < set(big)
    assert held_small == held_big and held_small  # the tokenizer sample ignores the cap
    assert set(held_big).isdisjoint(big)
    assert all(cb.is_tokenizer_holdout(t) for _, t in held_big)


def test_sword_ztext_reader_decodes_books_into_chapter_documents(tmp_path: Path) -> None:
    module = tmp_path / "web"
    module.mkdir()
    books = [b'<chapter sID="Gen.1"/>In the beginning.', b'<chapter sID="Exod.1"/>Names.']
    blob, index = b"", b""
    for book in books:
        packed = zlib.compress(book)
        index += struct.pack("<III", len(blob), len(packed), len(book))
        blob += packed
    (module / "ot.bzs").write_bytes(index)
    (module / "ot.bzz").write_bytes(blob)
    assert list(corpus_sources._sword_ztext(tmp_path)) == [
        ("Gen 1", "Gen 1\n\nIn the beginning."),
        ("Exod 1", "Exod 1\n\nNames."),
    ]


def test_every_spec_names_license_source_and_cleaning() -> None:
    names = [s.name for s in cb.SPECS]
    assert len(names) == len(set(names)) >= 8
    for s in cb.SPECS:
        assert s.license and s.cleaning and s.source.package
        assert s.source.kind == "apt" or s.source.version  # pypi/npm are pinned


def test_unknown_spec_raises_value_error_listing_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown partition 'nope'.*lang-en"):
        cb.spec("nope")


def test_data_card_renders_a_row_per_partition() -> None:
    card = {
        "max_bytes_per_partition": 10,
        "tokenizer_sample": {"file": "t.jsonl.xz", "documents": 1, "bytes": 2, "rule": "r"},
        "partitions": [
            {"name": "lang-xx", "axis": "language", "language": "xx", "domain": "d",
             "source": {"kind": "apt", "package": "p"}, "version": "1.0", "license": "MIT",
             "documents": 3, "bytes": 4, "cleaning": "c"}
        ],
    }  # fmt: skip
    md = cb.render_data_card(card)
    assert "| lang-xx | language | xx | d | apt: `p` (1.0) | MIT | 3 | 4 |" in md
