"""The evaluation sets' parsing and the ranking metrics, on small made-up inputs with known
answers (the Debian packages' texts are never part of the repository)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import eval_data  # noqa: E402
import rerank_eval  # noqa: E402

FAQ_PAGE = """<html><body><div class="chapter">
<div class="section"><div class="titlepage"><h2 class="title"><a id="a"></a>7.1. What is a
<code class="literal">.deb</code> package?</h2></div>
<p>A package holds the files of a program &amp; its <em>metadata</em>.</p>
<ul><li><p>Binary packages</p></li><li><p>Source packages</p></li></ul>
<div class="section"><h3 class="title"><a id="b"></a>7.1.1. dpkg</h3><p>The low-level tool.</p>
</div></div>
<div class="section"><h2 class="title"><a id="c"></a>7.2. Why &quot;sid&quot;?</h2>
<p>Named after the boy next door.</p></div>
</div><div class="navfooter"><p>Next: Chapter 8. What is a Debian package?</p></div></body></html>
"""

MAN_PAGE = r""".\" Copyright notice
.TH read 2 2022-12-04 "Linux man-pages 6.03"
.SH NAME
read \- read from a file descriptor
.SH SYNOPSIS
.nf
.B #include <unistd.h>
.fi
.SH DESCRIPTION
.BR read ()
attempts to read up to
.I count
bytes.
"""


def test_faq_sections_are_headings_with_the_text_up_to_the_next_heading() -> None:
    sections = eval_data.faq_sections(FAQ_PAGE)
    assert [s.heading for s in sections] == ["What is a .deb package?", "dpkg", 'Why "sid"?']
    first = sections[0].text
    assert first.splitlines() == [
        "A package holds the files of a program & its metadata.",
        "Binary packages",
        "Source packages",
    ]
    assert sections[1].text == "The low-level tool."
    # The footer's navigation (which repeats headings) is not part of the last answer.
    assert sections[2].text == "Named after the boy next door."


def test_faq_builds_queries_from_question_headings_only(tmp_path: Path) -> None:
    chapter = tmp_path / "usr/share/doc/debian/FAQ"
    chapter.mkdir(parents=True)
    (chapter / "pkg-basics.en.html").write_text(FAQ_PAGE, encoding="utf-8")
    (chapter / "index.en.html").write_text(FAQ_PAGE, encoding="utf-8")  # skipped
    corpus, queries, qrels = eval_data.build_faq(tmp_path)
    assert [d["_id"] for d in corpus] == ["pkg-basics-0", "pkg-basics-1", "pkg-basics-2"]
    assert [q["text"] for q in queries] == ["What is a .deb package?", 'Why "sid"?']
    assert qrels == ["q-pkg-basics-0\tpkg-basics-0\t1", "q-pkg-basics-2\tpkg-basics-2\t1"]


def test_man_description_is_the_text_after_the_dash() -> None:
    assert eval_data.man_description(MAN_PAGE) == "read from a file descriptor"
    fonts = ".SH NAME\nfoo, bar \\- convert \\fIfoo\\fP to \\fBbar\\fR\n.SH SYNOPSIS\n"
    assert eval_data.man_description(fonts) == "convert foo to bar"
    assert eval_data.man_description(".so man2/read.2\n") is None


def test_man_body_drops_header_footer_and_the_name_section() -> None:
    rendered = "\n".join(
        [
            "read(2)            System Calls Manual            read(2)",
            "",
            "NAME",
            "       read - read from a file descriptor",
            "",
            "SYNOPSIS",
            "       #include <unistd.h>",
            "",
            "DESCRIPTION",
            "       read() attempts to read up to count bytes.",
            "",
            "Linux man-pages 6.03        2022-12-04        read(2)",
        ]
    )
    assert eval_data.man_body(rendered).splitlines() == [
        "SYNOPSIS",
        "#include <unistd.h>",
        "DESCRIPTION",
        "read() attempts to read up to count bytes.",
    ]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff renders the man pages")
def test_man_set_shares_a_query_between_pages_with_one_description(tmp_path: Path) -> None:
    import gzip

    pages = tmp_path / "usr/share/man/man2"
    pages.mkdir(parents=True)
    (tmp_path / "usr/share/man/man3").mkdir(parents=True)
    (pages / "read.2.gz").write_bytes(gzip.compress(MAN_PAGE.encode()))
    (pages / "pread.2.gz").write_bytes(gzip.compress(MAN_PAGE.replace("read", "pread").encode()))
    (pages / "link.2.gz").symlink_to("read.2.gz")  # another name of a page: not a document
    corpus, queries, qrels = eval_data.build_man(tmp_path)
    assert sorted(d["_id"] for d in corpus) == ["pread.2", "read.2"]
    assert {q["text"] for q in queries} == {
        "read from a file descriptor",
        "pread from a file descriptor",
    }
    assert len(qrels) == 2
    body = next(d["text"] for d in corpus if d["_id"] == "read.2")
    assert "attempts to read up to" in body and "NAME" not in body


def test_sets_are_written_and_read_back_in_beir_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_build(root: Path) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
        corpus = [
            {"_id": "d1", "title": "", "text": "one"},
            {"_id": "d2", "title": "T", "text": "2"},
        ]
        return corpus, [{"_id": "q1", "text": "which?"}], ["q1\td2\t1"]

    monkeypatch.setitem(eval_data.SETS, "fake", eval_data.Source("fake", "1", fake_build))
    monkeypatch.setattr(eval_data, "unpack", lambda source, cache: tmp_path)
    folder = eval_data.write_set("fake", tmp_path)
    assert (folder / "qrels.tsv").read_text().splitlines() == [
        "query-id\tcorpus-id\tscore",
        "q1\td2\t1",
    ]
    assert json.loads((folder / "queries.jsonl").read_text()) == {"_id": "q1", "text": "which?"}
    loaded = eval_data.load_set("fake", tmp_path)
    assert loaded.corpus == {"d1": "one", "d2": "T\n2"}
    assert loaded.qrels == {"q1": {"d2"}}


def test_mrr_and_ndcg_at_10() -> None:
    ranked = ["a", "b", "c", "d"]
    assert rerank_eval.mrr_at(ranked, {"c"}) == pytest.approx(1 / 3)
    assert rerank_eval.mrr_at(ranked, {"z"}) == 0.0
    assert rerank_eval.mrr_at([*"xxxxxxxxxx", "a"], {"a"}) == 0.0  # rank 11 is past the cutoff
    assert rerank_eval.ndcg_at(ranked, {"a"}) == pytest.approx(1.0)
    assert rerank_eval.ndcg_at(ranked, {"b"}) == pytest.approx(1 / math.log2(3))
    # Two relevant at ranks 1 and 3, against the ideal ranks 1 and 2.
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert rerank_eval.ndcg_at(ranked, {"a", "c"}) == pytest.approx(expected)


def test_order_by_sorts_best_first_and_keeps_ties_in_list_order() -> None:
    assert rerank_eval.order_by(["a", "b", "c"], [0.1, 0.5, 0.5]) == ["b", "c", "a"]
