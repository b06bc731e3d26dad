"""hybrid_eval's first stages are the engine's own searches (dense, keyword-only, hybrid RRF
and blend with the query text as keywords), and its ratios are to dense."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import hybrid_eval  # noqa: E402

from nachbar.db.engine import Database  # noqa: E402
from nachbar.db.types import Entry, ExactConfig, HybridFusion, HybridOptions, StoreSpec  # noqa: E402


def test_first_stages_are_the_engine_searches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    texts = ["apt pinning", "network bridge", "apt sources list", "kernel modules", "bridge apt"]
    vectors = rng.standard_normal((len(texts), 4)).astype(np.float32)
    with Database.open(tmp_path, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", 4, index=ExactConfig(), keyword_fields=("text",)))
        db.upsert("s", [Entry(f"d{i}", vectors[i], {"text": t}) for i, t in enumerate(texts)])
        query = rng.standard_normal(4).astype(np.float32)
        stages = hybrid_eval.first_stages(db, "s", query, "apt bridge")
        assert list(stages) == list(hybrid_eval.FIRST_STAGES)
        expected = {
            "dense": db.get_sim_n("s", query, 30),
            "BM25": db.get_sim_n("s", None, 30, keywords="apt bridge"),
            "hybrid RRF": db.get_sim_n(
                "s", query, 30, keywords="apt bridge", fusion=HybridOptions(fusion=HybridFusion.RRF)
            ),
            "hybrid blend": db.get_sim_n("s", query, 30, keywords="apt bridge"),  # the default
        }
        for stage, result in expected.items():
            ranking = stages[stage]()
            assert ranking.ids == [m.id for m in result.matches], stage
            assert ranking.scores == [m.score for m in result.matches], stage
        assert len(stages["dense"]().ids) == 5 and len(stages["BM25"]().ids) == 4


def test_ratios_are_to_the_reference() -> None:
    rows = hybrid_eval.with_ratios([["dense", 0.5, 0.6], ["BM25", 0.25, 0.9]], (0.5, 0.6))
    assert rows[0][3:] == [1.0, 1.0]
    assert rows[1][3] == pytest.approx(0.5) and rows[1][4] == pytest.approx(1.5)
