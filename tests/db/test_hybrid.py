"""Keyword index and hybrid search (nachbar.db.hybrid): the embedded engine's FTS5 index kept
in the entries' transactions, fusion against a reference computation, bad input, crashes, and
the Milvus engine's refusal."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from nachbar.db import hybrid
from nachbar.db.engine import Database
from nachbar.db.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedError,
)
from nachbar.db.filters import Condition, Op
from nachbar.db.milvus_engine import MilvusEngine
from nachbar.db.types import Entry, HybridFusion, HybridOptions, StoreSpec

DIM = 8
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy afternoon in the Café de Flore",
    "foxes are small omnivorous mammals",
    "dogs bark at the mail carrier",
    "the brown bear eats honey",
    "quantum chromodynamics of quarks",
    "how to configure apt sources on debian",
    "the dog and the fox are friends",
]


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def fill(db: Database, name: str = "s", keyword_fields: tuple[str, ...] | None = ("text",)) -> None:
    db.create_store(StoreSpec(name, DIM, keyword_fields=keyword_fields))
    vs = vectors(len(TEXTS))
    db.upsert(
        name,
        [
            Entry(f"e{i}", vs[i], {"text": t, "n": i, "tags": [f"tag{i % 2}"]})
            for i, t in enumerate(TEXTS)
        ],
    )


def expected_rows(db: Database, name: str, fields: tuple[str, ...]) -> dict[str, str]:
    """What the keyword index must hold, from the entries themselves."""
    page = db.get_by_predicate(name, None, limit=10_000)
    docs = {e.id: hybrid.document(e.metadata, fields) for e in page.entries}
    return {i: d for i, d in docs.items() if d}


def index_rows(db: Database, name: str) -> dict[str, str]:
    rows = db.keyword_index_rows(name)
    ids = [entry_id for entry_id, _ in rows.values()]
    assert len(ids) == len(set(ids)), "an id is in the keyword index twice"
    return {entry_id: text for entry_id, text in rows.values()}


def test_index_follows_every_write(database: Database) -> None:
    fill(database)
    assert index_rows(database, "s") == expected_rows(database, "s", ("text",))
    vs = vectors(3, seed=1)
    database.upsert(
        "s",
        [
            Entry("e0", vs[0], {"text": "replaced words entirely"}),
            Entry("e1", vs[1], {"other": "no text field now"}),
            Entry("new", vs[2], {"text": "a new entry about foxes"}),
        ],
    )
    assert index_rows(database, "s") == expected_rows(database, "s", ("text",))
    assert "e1" not in index_rows(database, "s")
    found = database.get_sim_n("s", None, 10, keywords="quick")
    assert [m.id for m in found.matches] == []  # the replaced text is gone from the index
    database.delete_keys("s", ["e2", "new"])
    database.delete_by_predicate("s", Condition("n", Op.GTE, 6))
    assert index_rows(database, "s") == expected_rows(database, "s", ("text",))
    # a freed slot taken by another id is indexed under that id
    database.upsert("s", [Entry("reuse", vs[0], {"text": "reused slot honey"})])
    assert index_rows(database, "s") == expected_rows(database, "s", ("text",))
    honey = database.get_sim_n("s", None, 5, keywords="honey").matches
    assert {m.id for m in honey} == {"e4", "reuse"}
    info = database.get_store("s")
    store_id = info.store_id
    database.drop_store("s")
    storage = database._storage
    with storage._lock:
        tables = {
            r[0] for r in storage._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        records = storage._conn.execute("SELECT count(*) FROM keyword_indexes").fetchone()[0]
    assert f"keywords_{store_id}" not in tables
    assert records == 0


def test_index_created_later_is_backfilled_and_survives_reopen(data_dir: Path) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        fill(db, keyword_fields=None)
        with pytest.raises(FailedPreconditionError, match="CreateKeywordIndex"):
            db.get_sim_n("s", None, 3, keywords="fox")
        created, indexed = db.create_keyword_index("s", ["text", "tags"])
        assert (created, indexed) == (True, len(TEXTS))
        assert db.create_keyword_index("s", ["text", "tags"]) == (False, len(TEXTS))
        with pytest.raises(FailedPreconditionError, match="DropKeywordIndex"):
            db.create_keyword_index("s", ["text"])
        assert index_rows(db, "s") == expected_rows(db, "s", ("text", "tags"))
        assert db.get_store("s").keyword_fields == ("text", "tags")
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        assert db.get_store("s").keyword_fields == ("text", "tags")
        ids = {m.id for m in db.get_sim_n("s", None, 10, keywords="tag1").matches}
        assert ids == {f"e{i}" for i in range(len(TEXTS)) if i % 2}
        assert db.drop_keyword_index("s") is True
        assert db.get_store("s").keyword_fields is None
        with pytest.raises(NotFoundError, match="missing_ok"):
            db.drop_keyword_index("s")
        assert db.drop_keyword_index("s", missing_ok=True) is False


def test_keyword_only_ranks_by_bm25_and_folds_diacritics(database: Database) -> None:
    fill(database)
    found = database.get_sim_n("s", None, 10, keywords="CAFE")
    assert [m.id for m in found.matches] == ["e1"]
    assert found.plan == "keyword"
    match = found.matches[0]
    assert match.vector_score is None and match.hybrid_score is None
    assert match.keyword_score == match.score and match.score > 0
    found = database.get_sim_n("s", np.zeros(0, np.float32), 10, keywords="fox dog")
    scores = [m.score for m in found.matches]
    assert scores == sorted(scores, reverse=True)
    # e7 and e0 hold both words; e3 only "dogs" (no stemming), e2 only "foxes"
    assert {m.id for m in found.matches} == {"e0", "e7"}


@pytest.mark.parametrize(
    "text",
    ['"', 'fox"', "NEAR(fox dog)", "fox*", "text:fox", "AND OR NOT", "-fox +dog", "(fox", "^fox"],
)
def test_fts5_syntax_in_keywords_is_just_words(database: Database, text: str) -> None:
    fill(database)
    if not any(c.isalnum() for c in text):
        with pytest.raises(InvalidArgumentError, match="no words"):
            database.get_sim_n("s", None, 3, keywords=text)
        return
    found = database.get_sim_n("s", None, 10, keywords=text)
    words = {w.casefold() for w in hybrid._WORD.findall(text)}
    for m in found.matches:
        row = database.get_keys("s", [m.id])[0][0]
        assert words & set(hybrid._WORD.findall(str(row.metadata["text"]).casefold()))


def test_equal_keyword_scores_rank_by_id(database: Database) -> None:
    database.create_store(StoreSpec("s", DIM, keyword_fields=("text",)))
    vs = vectors(5)
    database.upsert("s", [Entry(f"e{i}", vs[i], {"text": "same words"}) for i in (3, 1, 4, 0, 2)])
    found = database.get_sim_n("s", None, 3, keywords="same")
    assert [m.id for m in found.matches] == ["e0", "e1", "e2"]


def test_match_expression_quotes_every_word() -> None:
    assert hybrid.match_expression('fox" OR NEAR(dog*', "s") == '"fox" OR "or" OR "near" OR "dog"'
    assert hybrid.match_expression("a a A b", "s") == '"a" OR "b"'
    many = " ".join(f"w{i}" for i in range(100))
    assert hybrid.match_expression(many, "s").count(" OR ") == hybrid.MAX_KEYWORD_TERMS - 1


def test_filters_and_exact_counts(database: Database) -> None:
    fill(database)
    q = vectors(1, seed=5)[0]
    even = Condition("n", Op.IN, values=(0, 2, 4, 6))
    for k in (1, 3, 4, 10):
        found = database.get_sim_n("s", q, k, filter=even, keywords="the fox")
        assert len(found.matches) == min(k, 4)
        assert all(m.metadata["n"] in (0, 2, 4, 6) for m in found.matches)
        only = database.get_sim_n("s", None, k, filter=even, keywords="the fox")
        # entries 0, 2 (foxes: no) ,4 have "the" or "fox"; 6 neither
        assert [m.id for m in only.matches] == [
            m.id
            for m in database.get_sim_n("s", None, 10, keywords="the fox").matches
            if m.id in {"e0", "e4"}
        ][:k]
    plain = database.get_sim_n("s", q, 10, keywords="zzz")
    assert len(plain.matches) == len(TEXTS)  # every entry through the vector side
    assert all(m.keyword_score is None for m in plain.matches)


def reference_fusion(
    vector_side: list[tuple[str, float]],
    keyword_side: list[tuple[str, float]],
    fusion: HybridFusion,
    rrf_k: int,
    weight: float,
) -> dict[str, float]:
    out: dict[str, float] = {}
    if fusion == HybridFusion.RRF:
        for side in (vector_side, keyword_side):
            for rank, (i, _) in enumerate(side):
                out[i] = out.get(i, 0.0) + 1 / (rrf_k + rank + 1)
        return out
    for side, share in ((vector_side, weight), (keyword_side, 1 - weight)):
        scores = [s for _, s in side]
        lo, hi = min(scores), max(scores)
        for i, s in side:
            out[i] = out.get(i, 0.0) + share * ((s - lo) / (hi - lo) if hi > lo else 1.0)
    return out


@pytest.mark.parametrize(
    "options",
    [
        HybridOptions(),
        HybridOptions(rrf_k=1, candidates=5),
        HybridOptions(fusion=HybridFusion.BLEND, vector_weight=0.3, candidates=6),
        HybridOptions(fusion=HybridFusion.BLEND, vector_weight=1.0),
    ],
)
def test_fusion_matches_a_reference_computation(database: Database, options: HybridOptions) -> None:
    database.create_store(StoreSpec("s", DIM, keyword_fields=("text",)))
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    rng = np.random.default_rng(3)
    vs = vectors(60, seed=2)
    database.upsert(
        "s",
        [
            Entry(f"e{i:02}", vs[i], {"text": " ".join(rng.choice(words, size=rng.integers(1, 6)))})
            for i in range(60)
        ],
    )
    q = vectors(1, seed=9)[0]
    text = "alpha gamma"
    depth = options.candidates or 100
    vector_side = [(m.id, m.score) for m in database.get_sim_n("s", q, depth).matches]
    keyword_side = [
        (m.id, m.score) for m in database.get_sim_n("s", None, depth, keywords=text).matches
    ]
    expected = reference_fusion(
        vector_side, keyword_side, options.fusion, options.rrf_k or 60, options.vector_weight
    )
    k = 4
    found = database.get_sim_n("s", q, k, keywords=text, fusion=options).matches
    assert len(found) == k
    best = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:k]
    assert [m.id for m in found] == [i for i, _ in best]
    vector_scores, keyword_scores = dict(vector_side), dict(keyword_side)
    for m in found:
        assert m.hybrid_score == pytest.approx(expected[m.id]) and m.score == m.hybrid_score
        assert m.vector_score == vector_scores.get(m.id)
        assert m.keyword_score == keyword_scores.get(m.id)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"keywords": "   \t"}, "empty or only whitespace"),
        ({"keywords": "?!"}, "no words"),
        ({"keywords": "x" * 5000}, "over the limit of 4096"),
        ({"keywords": "fox", "fusion": HybridOptions(vector_weight=1.5)}, "vector_weight"),
        ({"keywords": "fox", "fusion": HybridOptions(rrf_k=-1)}, "rrf_k"),
        ({"keywords": "fox", "fusion": HybridOptions(candidates=2)}, "at least k"),
        ({"keywords": "fox", "fusion": HybridOptions(candidates=20_000)}, "ask for fewer"),
        (
            {"keywords": "fox", "fusion": HybridOptions(fusion=cast(HybridFusion, "max"))},
            "unknown hybrid fusion",
        ),
    ],
)
def test_bad_hybrid_requests_are_invalid(
    database: Database, kwargs: dict[str, object], pattern: str
) -> None:
    fill(database)
    with pytest.raises(InvalidArgumentError, match=pattern):
        database.get_sim_n("s", vectors(1)[0], 3, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="a query vector, keywords, or both"):
        database.get_sim_n("s", None, 3)
    assert len(database.get_sim_n("s", None, 3, keywords="fox").matches) == 2


def test_keyword_index_fields_are_checked(database: Database) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one field"):
        database.create_store(StoreSpec("s", DIM, keyword_fields=()))
    fill(database, keyword_fields=None)
    with pytest.raises(InvalidArgumentError, match="at least one field"):
        database.create_keyword_index("s", [])


INGEST_THEN_KILLED = textwrap.dedent(
    """
    import sys
    import numpy as np
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry, StoreSpec

    data_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    db = Database.open(data_dir, fsync="full", checkpoint_seconds=0)
    db.create_store(StoreSpec("s", 8, keyword_fields=("text",)))
    batch = 0
    while True:
        ids = [f"e{n}" for n in rng.integers(0, 400, size=50)]
        entries = [
            Entry(i, rng.standard_normal(8).astype(np.float32),
                  {"text": " ".join(rng.choice(words, 3)) + f" batch{batch}"}
                  if rng.random() < 0.8 else {})
            for i in dict.fromkeys(ids)
        ]
        db.upsert("s", entries)
        db.delete_keys("s", [f"e{n}" for n in rng.integers(0, 400, size=10)])
        print(batch, flush=True)
        batch += 1
    """
)


def test_kill_mid_ingest_keeps_index_and_entries_in_agreement(data_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", INGEST_THEN_KILLED, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = -1
    try:
        while acknowledged < 40:
            line = child.stdout.readline()
            assert line, "the writer ended early"
            acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)  # while it writes batch 41 or later
        child.wait(10)
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        assert db.get_store("s").count > 0
        assert index_rows(db, "s") == expected_rows(db, "s", ("text",))
        # every acknowledged batch left text that is found by keyword
        batches = {
            int(str(e.metadata["text"]).rsplit("batch", 1)[1])
            for e in db.get_by_predicate("s", None, limit=10_000).entries
            if "text" in e.metadata
        }
        assert max(batches) >= acknowledged
        found = db.get_sim_n("s", None, 500, keywords=f"batch{max(batches)}").matches
        assert found and all(f"batch{max(batches)}" in str(m.metadata["text"]) for m in found)


def test_milvus_refuses_keyword_search(milvus_db: MilvusEngine) -> None:
    with pytest.raises(UnsupportedError, match="embedded engine"):
        milvus_db.create_store(StoreSpec("s", DIM, keyword_fields=("text",)))
    milvus_db.create_store(StoreSpec("s", DIM))
    milvus_db.upsert("s", [Entry("a", vectors(1)[0], {"text": "fox"})])
    with pytest.raises(UnsupportedError, match="embedded engine"):
        milvus_db.create_keyword_index("s", ["text"])
    with pytest.raises(UnsupportedError, match="embedded engine"):
        milvus_db.get_sim_n("s", vectors(1)[0], 1, keywords="fox")
    with pytest.raises(UnsupportedError, match="embedded engine"):
        milvus_db.get_sim_n("s", None, 1, keywords="fox")
    with pytest.raises(InvalidArgumentError):  # no vector and no keywords: a bad query
        milvus_db.get_sim_n("s", None, 1)
    assert [m.id for m in milvus_db.get_sim_n("s", vectors(1)[0], 1).matches] == ["a"]
