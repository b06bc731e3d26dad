"""Query adapters and re-scorers end to end: real nachbar-db and nachbar-ai, the offline models."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nachbar.ai import adapters, rescorers
from nachbar.ai.build.imagenet import imagenet_class_names
from nachbar.client import (
    AIClient,
    AlreadyExists,
    DBClient,
    Example,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TrainedInfo,
    TrainSettings,
)
from nachbar.server.ai_trained import companion_name
from nachbar.server.app import RunningServer
from tests.server.test_ai_service import (
    IMAGE_MODEL,
    TEXT_MODEL,
    foolbox_photos,
    start_ai,
    start_db,
)
from tests.servers import wait_serving

TOPICS = ["apples", "rivers", "engines", "violins", "glaciers", "tigers", "bread", "satellites"]
ASPECTS = ["the history of", "how to clean", "the price of", "drawings of", "a children's book on"]
# Code words the frozen model cannot relate to the aspects; an adapter learns them from the
# training topics and applies them to held-out (topic, aspect) pairs.
QUERY_ASPECTS = ["zork", "blip", "quux", "frob", "wug"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tailor-db")


@pytest.fixture(scope="module")
def stack(data_dir: Path) -> Iterator[list[RunningServer]]:
    db = start_db(data_dir)
    ai = start_ai(db.port, TEXT_MODEL, IMAGE_MODEL)
    wait_serving(f"127.0.0.1:{ai.port}")
    servers = [db, ai]
    yield servers  # the durability test replaces them
    for server in reversed(servers):
        server.stop(grace=1)


def ai_client(stack: list[RunningServer]) -> AIClient:
    return AIClient(f"127.0.0.1:{stack[1].port}", timeout=60)


def db_client(stack: list[RunningServer]) -> DBClient:
    return DBClient(f"127.0.0.1:{stack[0].port}", timeout=60)


def text_examples() -> list[Example]:
    return [
        Example(f"{topic} {QUERY_ASPECTS[a]}", [f"{topic}-{a}"])
        for topic in TOPICS
        for a in range(len(ASPECTS))
    ]


@pytest.fixture(scope="module")
def text_store(stack: list[RunningServer]) -> str:
    with ai_client(stack) as ai:
        ai.create_store("notes", query_model=TEXT_MODEL, store_original=True)
        items = [
            (f"{aspect} {topic}", f"{topic}-{a}")
            for topic in TOPICS
            for a, aspect in enumerate(ASPECTS)
        ]
        ai.upsert("notes", items)
    return "notes"


def wait_ready(get: object, store: str, name: str, timeout: float = 240) -> list[TrainedInfo]:
    """Every state seen until READY (or FAILED), polling."""
    seen: list[TrainedInfo] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = get(store, name)  # type: ignore[operator]
        seen.append(info)
        if info.state in ("ready", "failed"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{name} not ready after {timeout}s: {seen[-1]}")


def stored_arrays(db: DBClient, store: str, kind: str, name: str) -> list[np.ndarray]:
    """The weights as nachbar-ai stored them, read straight from nachbar-db."""
    companion = companion_name(store)
    header = db.get_key(companion, [f"{kind}/{name}"]).entries[0]
    rows = int(header.metadata["rows"])  # type: ignore[arg-type]
    shapes = json.loads(str(header.metadata["shapes"]))
    found = db.get_key(companion, [f"{kind}/{name}/{i}" for i in range(rows)], include_vectors=True)
    flat = np.concatenate([np.asarray(e.vector, np.float32) for e in found.entries])
    out, at = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[at : at + size].reshape(shape))
        at += size
    return out


def test_adapter_trains_in_the_background_and_serves_by_name(
    stack: list[RunningServer], text_store: str
) -> None:
    with ai_client(stack) as ai, db_client(stack) as db:
        started = ai.train_adapter(
            text_store, "v1", text_examples(), settings=TrainSettings(epochs=30)
        )
        assert started.state in ("queued", "training") and started.dimension == 384
        seen = wait_ready(ai.get_adapter, text_store, "v1")
        final = seen[-1]
        assert final.state == "ready", final.message
        assert final.train_examples == 32 and final.held_out_examples == 8
        assert final.before.queries == 8 and final.corpus_size == 40
        # The code words are learnable: a clear held-out gain, so it is recommended.
        assert final.after.mrr_at_10 > final.before.mrr_at_10 + 0.2
        assert final.recommended and "->" in final.message
        # Progress was visible while it trained.
        assert any(s.state == "training" and 0 < s.progress < 1 for s in seen)
        assert final.weight_bytes == 384 * 384 * 4
        print(
            f"adapter held-out MRR@10 {final.before.mrr_at_10:.3f} -> "
            f"{final.after.mrr_at_10:.3f}; states seen {[s.state for s in seen]}"
        )
        assert [i.name for i in ai.list_adapters(text_store)] == ["v1"]

        # The served search is an exact search with normalize(W q), W as stored in the db.
        (weight,) = stored_arrays(db, text_store, "adapter", "v1")
        query = "glaciers blip"
        q = np.asarray(ai.embed(TEXT_MODEL, [query])[0], np.float32)
        adapted = adapters.adapt(weight, q[None, :], renormalize=True)[0]
        served = ai.get_sim_n(text_store, query, k=5, adapter="v1", mode="exact")
        ids = [m.id for m in served.matches]
        vectors = db.get_key(text_store, ids, include_vectors=True).entries
        for match, entry in zip(served.matches, vectors, strict=True):
            expected = float(
                adapters.normalize(np.asarray([entry.vector], np.float32))[0] @ adapted
            )
            assert match.similarity == pytest.approx(expected, abs=1e-4)
        frozen = ai.get_sim_n(text_store, query, k=5, mode="exact")
        assert [m.similarity for m in frozen.matches] != [m.similarity for m in served.matches]


def test_two_adapters_and_none_serve_side_by_side(
    stack: list[RunningServer], text_store: str
) -> None:
    with ai_client(stack) as ai:
        ai.train_adapter(
            text_store,
            "loose",
            text_examples(),
            settings=TrainSettings(epochs=20, identity_weight=1e-4, learning_rate=0.01),
        )
        assert wait_ready(ai.get_adapter, text_store, "loose")[-1].state == "ready"
        if not any(i.name == "v1" for i in ai.list_adapters(text_store)):
            ai.train_adapter(text_store, "v1", text_examples())
            wait_ready(ai.get_adapter, text_store, "v1")
        query = "tigers quux"
        plain = ai.get_sim_n(text_store, query, k=10, mode="exact")
        one = ai.get_sim_n(text_store, query, k=10, adapter="v1", mode="exact")
        two = ai.get_sim_n(text_store, query, k=10, adapter="loose", mode="exact")
        again = ai.get_sim_n(text_store, query, k=10, mode="exact")
        assert plain == again  # the frozen search is untouched
        sims = [[m.similarity for m in r.matches] for r in (plain, one, two)]
        assert sims[0] != sims[1] and sims[1] != sims[2] and sims[0] != sims[2]


def test_bad_examples_and_names_get_precise_statuses(
    stack: list[RunningServer], text_store: str
) -> None:
    good = text_examples()
    with ai_client(stack) as ai:
        with pytest.raises(InvalidArgument, match="not in store 'notes'.*'no-such-id'.*\\[2\\]"):
            ai.train_adapter(text_store, "x", [*good[:2], Example("q", ["no-such-id"]), *good[3:]])
        with pytest.raises(InvalidArgument, match="0 examples"):
            ai.train_adapter(text_store, "x", [])
        with pytest.raises(InvalidArgument, match="give 4 to 10000"):
            ai.train_adapter(text_store, "x", good[:3])
        with pytest.raises(InvalidArgument, match="examples\\[0\\]: 101 relevant ids"):
            ai.train_adapter(text_store, "x", [Example("q", ["apples-0"] * 101), *good])
        with pytest.raises(InvalidArgument, match="examples\\[0\\]: 0 relevant ids"):
            ai.train_adapter(text_store, "x", [Example("q", []), *good])
        with pytest.raises(InvalidArgument, match="query is empty"):
            ai.train_rescorer(text_store, "x", [Example("", ["apples-0"]), *good])
        oversized = b"\x89PNG" + bytes(32 * 1024 * 1024)  # over the 32 MiB default
        with pytest.raises(InvalidArgument, match="examples\\[1\\]: the query image is .* over"):
            ai.train_adapter(text_store, "x", [good[0], Example(oversized, ["apples-0"]), *good])
        del oversized
        with pytest.raises(InvalidArgument, match="name"):
            ai.train_adapter(text_store, "bad name!", good)
        with pytest.raises(InvalidArgument, match="epochs"):
            ai.train_adapter(text_store, "x", good, settings=TrainSettings(epochs=100_000))
        with pytest.raises(NotFound, match="no-store"):
            ai.train_adapter("no-store", "x", good)
        with pytest.raises(NotFound, match="no adapter named 'nope'"):
            ai.get_sim_n(text_store, "apples", adapter="nope")
        with pytest.raises(NotFound, match="no rescorer named 'nope'"):
            ai.get_sim_n(text_store, "apples", rescorer="nope")
        with pytest.raises(InvalidArgument, match="adapter maps the query vector"):
            ai.get_sim_n(text_store, None, positive=["apples-0"], adapter="v1")
        with pytest.raises(InvalidArgument, match="rerank needs a text query"):
            ai.get_sim_n(text_store, None, positive=["apples-0"], rescorer="r1")
        with pytest.raises(NotFound):
            ai.drop_adapter(text_store, "nope")
        assert ai.drop_adapter(text_store, "nope", missing_ok=True) is False
        # Taken names: training or stored.
        ai.train_adapter(text_store, "taken", good, settings=TrainSettings(epochs=2))
        with pytest.raises(AlreadyExists):
            ai.train_adapter(text_store, "taken", good)
        wait_ready(ai.get_adapter, text_store, "taken")
        with pytest.raises(AlreadyExists, match="new name"):
            ai.train_adapter(text_store, "taken", good)
        # None of it left anything behind but "taken"; the server still serves.
        assert "x" not in [i.name for i in ai.list_adapters(text_store)]
        assert ai.get_sim_n(text_store, "apples", k=1).matches


def test_drop_cancels_and_an_adapter_is_tied_to_its_store(
    stack: list[RunningServer], text_store: str
) -> None:
    with ai_client(stack) as ai, db_client(stack) as db:
        ai.train_adapter(text_store, "gone", text_examples(), settings=TrainSettings(epochs=500))
        assert ai.drop_adapter(text_store, "gone") is True
        with pytest.raises(NotFound):
            ai.get_adapter(text_store, "gone")

        ai.create_store("other", query_model=TEXT_MODEL, store_original=False)
        ai.upsert("other", [("apples", "a"), ("pears", "b")])
        with pytest.raises(NotFound, match="store 'other' has no adapter named 'v1'"):
            ai.get_sim_n("other", "apples", adapter="v1")

        # The store dropped on nachbar-db directly and created again: same name, same models,
        # new vectors. Its adapter from before is refused, not applied.
        ai.create_store("twice", query_model=TEXT_MODEL, store_original=False)
        ai.upsert(
            "twice", [(f"{t} {a}", f"{t}-{i}") for t in TOPICS for i, a in enumerate(ASPECTS)]
        )
        ai.train_adapter(
            "twice",
            "old",
            [Example(e.query, e.relevant_ids) for e in text_examples()],
            settings=TrainSettings(epochs=2),
        )
        assert wait_ready(ai.get_adapter, "twice", "old")[-1].state == "ready"
        db.drop_store("twice")
        ai.create_store("twice", query_model=TEXT_MODEL, store_original=False)
        ai.upsert("twice", [("apples", "a")])
        with pytest.raises(FailedPrecondition, match="earlier store named 'twice'"):
            ai.get_sim_n("twice", "apples", adapter="old")
        # Dropped through nachbar-ai, a store takes its adapters along.
        ai.drop_store("twice")
        ai.create_store("twice", query_model=TEXT_MODEL, store_original=False)
        assert ai.list_adapters("twice") == []


def photo_examples() -> list[Example]:
    names = imagenet_class_names()
    phrasings = ["a photo of a {}", "{}", "a picture showing a {}", "an image of the {}"]
    return [
        Example(phrase.format(names[cls].split(",")[0]), [path.name])
        for path, cls in foolbox_photos()
        for phrase in phrasings
    ]


def test_rescorer_reranks_an_image_store_queried_with_text(stack: list[RunningServer]) -> None:
    with ai_client(stack) as ai, db_client(stack) as db:
        ai.create_store(
            "pictures", query_model=TEXT_MODEL, index_model=IMAGE_MODEL, store_original=False
        )
        ai.upsert("pictures", [(path, path.name) for path, _ in foolbox_photos()])
        ai.train_rescorer("pictures", "r1", photo_examples(), settings=TrainSettings(epochs=8))
        seen = wait_ready(ai.get_rescorer, "pictures", "r1")
        final = seen[-1]
        assert final.state == "ready", final.message
        assert final.held_out_examples == 16 and final.corpus_size == 20
        print(
            f"re-scorer held-out MRR@10 {final.before.mrr_at_10:.3f} -> {final.after.mrr_at_10:.3f}"
        )
        query = "a photo of a goldfish"
        reranked = ai.get_sim_n("pictures", query, k=5, rescorer="r1", rerank_candidates=20)
        assert len(reranked.matches) == 5
        scores = [float(m.rerank_score or 0.0) for m in reranked.matches]
        assert all(m.rerank_score is not None for m in reranked.matches)
        assert scores == sorted(scores, reverse=True)
        # Scores are the stored MLP's over the frozen query vector and the stored image vectors.
        mlp = rescorers.Mlp.from_arrays(stored_arrays(db, "pictures", "rescorer", "r1"))
        q = adapters.normalize(np.asarray([ai.embed(TEXT_MODEL, [query])[0]], np.float32))[0]
        ids = [m.id for m in reranked.matches]
        docs = np.asarray(
            [e.vector for e in db.get_key("pictures", ids, include_vectors=True).entries],
            np.float32,
        )
        expected = rescorers.score(mlp, q, adapters.normalize(docs))
        np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-4, atol=1e-4)
        # And the vector similarity is still the frozen one.
        plain = {m.id: m.similarity for m in ai.get_sim_n("pictures", query, k=20).matches}
        for match in reranked.matches:
            assert match.similarity == pytest.approx(plain[match.id], abs=1e-5)
        assert [i.name for i in ai.list_rescorers("pictures")] == ["r1"]


def test_trained_models_survive_restarting_both_servers(
    stack: list[RunningServer], text_store: str, data_dir: Path
) -> None:
    with ai_client(stack) as ai:
        if not any(i.name == "v1" for i in ai.list_adapters(text_store)):
            ai.train_adapter(text_store, "v1", text_examples())
            wait_ready(ai.get_adapter, text_store, "v1")
        before = ai.get_sim_n(text_store, "violins frob", k=5, adapter="v1", mode="exact")
        info = ai.get_adapter(text_store, "v1")
    for server in reversed(stack):
        server.stop(grace=1)
    db = start_db(data_dir)
    ai_server = start_ai(db.port, TEXT_MODEL, IMAGE_MODEL)
    stack[:] = [db, ai_server]
    wait_serving(f"127.0.0.1:{ai_server.port}")
    with ai_client(stack) as ai:
        after = ai.get_sim_n(text_store, "violins frob", k=5, adapter="v1", mode="exact")
        assert after == before
        assert ai.get_adapter(text_store, "v1") == info
