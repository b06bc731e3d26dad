"""docs/ARCHITECTURE.md names real files: every path it cites, in every checklist, exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text()
ROOMS = ("proto", "db", "ai", "server", "clients", "cli", "tests", "scripts", "docs", "bench")
# A backticked path: starts with a room (or is a file at the root) and names a file or folder.
PATH = re.compile(r"`((?:" + "|".join(ROOMS) + r")/[\w./-]+|[\w-]+\.(?:md|txt|toml|yaml))`")


def cited_paths(text: str) -> list[str]:
    return sorted(set(PATH.findall(text)))


def test_the_map_cites_files_that_exist() -> None:
    paths = cited_paths(DOC)
    assert len(paths) > 40
    missing = [p for p in paths if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_checklist_names_its_files() -> None:
    sections = re.split(r"^### ", DOC, flags=re.MULTILINE)[1:]
    titles = {s.splitlines()[0] for s in sections}
    assert {
        "Add an RPC",
        "Add a filter operator",
        "Add a model",
        "Add a storage engine (nachbar-db)",
    } <= titles
    for section in sections:
        assert len(cited_paths(section)) >= 5, section.splitlines()[0]


def test_the_path_pattern_catches_what_it_should() -> None:
    assert cited_paths("see `db/engine.py`, `README.md` and `nachbar.db`") == [
        "README.md",
        "db/engine.py",
    ]
