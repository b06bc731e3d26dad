"""Retrieval evaluation sets built from Debian packages, in BEIR format.

Two sets, each a question -> the one document that answers it:

* `debian-faq` (package debian-faq 11.1): every section of the Debian FAQ whose heading is a
  question; the query is the heading, the document is the section's text up to the next heading.
* `manpages-dev` (package manpages-dev 6.03-2): every Linux man page of sections 2 and 3; the
  query is the page's one-line NAME description ("read from a file descriptor"), the document
  is the rest of the page (SYNOPSIS, DESCRIPTION, ...) as `groff` renders it. Pages that share a
  description share the query, and each of them counts as relevant.

The packages are fetched with `apt-get download` (run `apt-get update` once first) and
unpacked with `dpkg-deb -x` into a cache under bench/ (gitignored: the texts are the packages'
own, under their licences, and are never committed). Each set is written as
`<cache>/<set>/corpus.jsonl` (`{"_id", "title", "text"}`), `queries.jsonl` (`{"_id", "text"}`)
and `qrels.tsv` (`query-id corpus-id score`, with a header), as BEIR lays its sets out.

    python bench/eval_data.py                  # both sets into bench/.cache/eval-data
    python bench/eval_data.py --sets debian-faq --force
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache" / "eval-data"
CORPUS, QUERIES, QRELS = "corpus.jsonl", "queries.jsonl", "qrels.tsv"


@dataclass(frozen=True)
class EvalSet:
    name: str
    corpus: dict[str, str]  # document id -> text
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, set[str]]  # query id -> ids of the relevant documents


@dataclass(frozen=True)
class Section:
    heading: str
    text: str


# --- the Debian FAQ ---------------------------------------------------------------------------

_HEADING = re.compile(r"<h([23]) class=\"title\">(.*?)</h\1>", re.S)
_NUMBER = re.compile(r"^\s*\d+(\.\d+)*\.\s*")


class _TextOf(HTMLParser):
    """The text of an HTML fragment, without tags; block elements become line breaks."""

    _BLOCKS = frozenset({"p", "li", "pre", "div", "tr", "br", "dt", "dd", "h2", "h3", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(fragment: str) -> str:
    parser = _TextOf()
    parser.feed(fragment)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def faq_sections(page: str) -> list[Section]:
    """Sections of one chapter page: each h2/h3 heading with the text up to the next one."""
    end = page.find('<div class="navfooter">')
    page = page[: end if end >= 0 else len(page)]
    headings = list(_HEADING.finditer(page))
    sections = []
    for index, match in enumerate(headings):
        stop = headings[index + 1].start() if index + 1 < len(headings) else len(page)
        heading = _NUMBER.sub("", html_text(match.group(2)).replace("\n", " "))
        sections.append(Section(html.unescape(heading), html_text(page[match.end() : stop])))
    return sections


def build_faq(root: Path) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    chapters = sorted((root / "usr/share/doc/debian/FAQ").glob("*.en.html"))
    corpus, queries, qrels = [], [], []
    for chapter in chapters:
        if chapter.name == "index.en.html":  # the table of contents: headings only
            continue
        for number, section in enumerate(faq_sections(chapter.read_text(encoding="utf-8"))):
            if not section.text:
                continue
            doc_id = f"{chapter.name.removesuffix('.en.html')}-{number}"
            corpus.append({"_id": doc_id, "title": "", "text": section.text})
            if "?" in section.heading:
                query_id = f"q-{doc_id}"
                queries.append({"_id": query_id, "text": section.heading})
                qrels.append(f"{query_id}\t{doc_id}\t1")
    return corpus, queries, qrels


# --- the Linux man pages ----------------------------------------------------------------------

_NAME_LINE = re.compile(r"\\-\s*(.+)$")


def man_description(source: str) -> str | None:
    """The one-line description of a page's NAME section (`read \\- read from a file
    descriptor`), or None for pages without one (`.so` redirects)."""
    lines = source.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().upper() == ".SH NAME")
    except StopIteration:
        return None
    text = []
    for line in lines[start + 1 :]:
        if line.startswith(".SH"):
            break
        if not line.startswith((".", "'")):
            text.append(line)
    match = _NAME_LINE.search(" ".join(text))
    if match is None:
        return None
    description = re.sub(r"\\f[BIRP]|\\\*.|\\&", "", match.group(1))
    return " ".join(description.replace("\\-", "-").replace("\\(aq", "'").split()) or None


def man_body(rendered: str) -> str:
    """A rendered page without its header and footer lines and its NAME section."""
    lines = rendered.splitlines()
    if len(lines) > 2:
        lines = lines[1:-1]  # "read(2)  System Calls Manual  read(2)" and the footer
    kept, in_name = [], False
    for line in lines:
        if line and not line[0].isspace():  # a section heading
            in_name = line.strip() == "NAME"
        if not in_name:
            kept.append(line.strip())
    return "\n".join(line for line in kept if line)


def render_man(source: bytes) -> str:
    if shutil.which("groff") is None:
        raise SystemExit("groff is needed to render man pages: apt-get install groff-base")
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbou", "-rLL=100n"],
        input=source,
        capture_output=True,
        check=True,
    )
    return result.stdout.decode("utf-8", errors="replace")


def build_man(root: Path) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    corpus: list[dict[str, str]] = []
    by_description: dict[str, list[str]] = {}
    for section in ("man2", "man3"):
        for path in sorted((root / "usr/share/man" / section).glob("*.gz")):
            if path.is_symlink():
                continue  # another name of a page that is there anyway
            source = gzip.decompress(path.read_bytes())
            description = man_description(source.decode("utf-8", errors="replace"))
            if description is None:
                continue
            body = man_body(render_man(source))
            if not body:
                continue
            doc_id = path.name.removesuffix(".gz")
            corpus.append({"_id": doc_id, "title": "", "text": body})
            by_description.setdefault(description, []).append(doc_id)
    queries, qrels = [], []
    for number, (description, doc_ids) in enumerate(sorted(by_description.items())):
        query_id = f"q{number}"
        queries.append({"_id": query_id, "text": description})
        qrels += [f"{query_id}\t{doc_id}\t1" for doc_id in doc_ids]
    return corpus, queries, qrels


# --- fetching and writing ---------------------------------------------------------------------

Builder = Callable[[Path], tuple[list[dict[str, str]], list[dict[str, str]], list[str]]]


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    build: Builder


SETS: dict[str, Source] = {
    "debian-faq": Source("debian-faq", "11.1", build_faq),
    "manpages-dev": Source("manpages-dev", "6.03-2", build_man),
}


def unpack(source: Source, cache: Path) -> Path:
    """Download the pinned .deb with apt-get and unpack it with dpkg-deb; return the root."""
    root = cache / "packages" / f"{source.package}_{source.version}"
    if root.is_dir():
        return root
    downloads = cache / "packages"
    downloads.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}={source.version}"
    result = subprocess.run(
        ["apt-get", "download", spec], cwd=downloads, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(
            f"apt-get download {spec} failed ({result.stderr.strip()}); run `apt-get update` "
            "once, on a Debian bookworm system, and retry"
        )
    (deb,) = downloads.glob(f"{source.package}_*.deb")
    staging = root.with_suffix(".partial")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
    staging.rename(root)
    deb.unlink()
    return root


def write_set(name: str, cache: Path = DEFAULT_CACHE, *, force: bool = False) -> Path:
    folder = cache / name
    if not force and all((folder / f).is_file() for f in (CORPUS, QUERIES, QRELS)):
        return folder
    source = SETS[name]
    corpus, queries, qrels = source.build(unpack(source, cache))
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, rows in ((CORPUS, corpus), (QUERIES, queries)):
        lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (folder / file_name).write_text("".join(lines), encoding="utf-8")
    (folder / QRELS).write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{row}\n" for row in qrels), encoding="utf-8"
    )
    return folder


def _jsonl(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)


def load_set(name: str, cache: Path = DEFAULT_CACHE) -> EvalSet:
    """Read a set written by `write_set` (building it first when it is missing)."""
    folder = write_set(name, cache)
    corpus = {
        row["_id"]: (row["title"] + "\n" + row["text"]).strip() for row in _jsonl(folder / CORPUS)
    }
    queries = {row["_id"]: row["text"] for row in _jsonl(folder / QUERIES)}
    qrels: dict[str, set[str]] = {}
    for line in (folder / QRELS).read_text(encoding="utf-8").splitlines()[1:]:
        query_id, doc_id, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(query_id, set()).add(doc_id)
    return EvalSet(name, corpus, queries, qrels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    parser.add_argument("--force", action="store_true", help="rebuild sets that exist")
    args = parser.parse_args(argv)
    for name in args.sets:
        folder = write_set(name, args.cache, force=args.force)
        loaded = load_set(name, args.cache)
        print(f"{name}: {len(loaded.corpus)} documents, {len(loaded.queries)} queries -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
