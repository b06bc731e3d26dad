"""AIService end to end through real servers and the real offline models."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from nachbar.ai.build.imagenet import imagenet_class_names, sample_photos
from nachbar.client import (
    AIClient,
    DBClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from nachbar.server.ai_main import start_ai_server
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.db_main import start_db_server
from tests.models_fixture import built_model_dir
from tests.servers import wait_serving

TEXT_MODEL = "all-minilm-l6-v2"
IMAGE_MODEL = "imagenet-conse-minilm-l6"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"


def model_dir() -> Path:
    return built_model_dir()


def foolbox_photos() -> list[tuple[Path, int]]:
    photos = [(photo.path, photo.class_index) for photo in sample_photos()]
    assert len(photos) == 20
    return photos


def start_db(data: Path, port: int = 0) -> RunningServer:
    return start_db_server(parse_db_config(["--port", str(port), "--data-dir", str(data)]))


def start_ai(db_port: int, *models: str) -> RunningServer:
    return start_ai_server(
        parse_ai_config(
            [
                "--port",
                "0",
                "--db-port",
                str(db_port),
                "--model-dir",
                str(model_dir()),
                "--models",
                ",".join(models or (TEXT_MODEL, IMAGE_MODEL)),
                "--hub-offline",
            ]
        )
    )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, RunningServer]]:
    db = start_db(tmp_path_factory.mktemp("ai-db"))
    ai = start_ai(db.port)
    wait_serving(f"127.0.0.1:{ai.port}")
    yield db, ai
    ai.stop(grace=1)
    db.stop(grace=1)


@pytest.fixture(scope="module")
def client(stack: tuple[RunningServer, RunningServer]) -> Iterator[AIClient]:
    with AIClient(f"127.0.0.1:{stack[1].port}", timeout=60) as ai:
        yield ai


@pytest.fixture(scope="module")
def photo_store(client: AIClient) -> str:
    client.create_store(
        "photos",
        query_model=TEXT_MODEL,
        index_model=IMAGE_MODEL,
        store_original=False,
        predicate_indexes=["class_index"],
    )
    photos = foolbox_photos()
    result = client.upsert(
        "photos", [(path, path.name, {"class_index": cls}) for path, cls in photos]
    )
    assert result.inserted == 20
    return "photos"


def test_text_finds_the_right_photo(client: AIClient, photo_store: str) -> None:
    names = imagenet_class_names()
    classes = sorted({cls for _, cls in foolbox_photos()})
    hits = 0
    for cls in classes:
        top = client.get_sim_n(photo_store, f"a photo of a {names[cls]}", k=1).matches[0]
        hits += top.metadata["class_index"] == cls
    recall = hits / len(classes)
    print(f"cross-modal recall@1 over {len(classes)} classes: {recall:.3f}")
    assert recall >= 0.9

    dog = client.get_sim_n(photo_store, "a photo of a dog", k=1).matches[0]
    class_index = dog.metadata["class_index"]
    assert isinstance(class_index, int) and 151 <= class_index <= 268  # ImageNet's dog classes


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def test_filtered_cross_modal_search(client: AIClient, photo_store: str) -> None:
    hits = client.get_sim_n(
        photo_store, "a photo of a dog", k=5, filter={"class_index": {"gte": 500}}
    )
    assert len(hits.matches) == 5
    assert all(_int(h.metadata["class_index"]) >= 500 for h in hits.matches)


def test_image_query_finds_texts(client: AIClient) -> None:
    client.create_store("captions", query_model=TEXT_MODEL, index_model=TEXT_MODEL)
    captions = [
        "a jeep driving off-road",
        "a dalmatian dog with black spots",
        "a bowl of soup",
        "a sailing ship on the sea",
    ]
    client.upsert("captions", captions)
    jeep = next(p for p, cls in foolbox_photos() if cls == 609)
    hits = client.get_sim_n("captions", jeep, k=1, query_model=IMAGE_MODEL)
    assert hits.matches[0].original == "a jeep driving off-road"


def test_paraphrases_are_nearest(client: AIClient) -> None:
    client.create_store("texts", query_model=TEXT_MODEL, store_original=True)
    corpus = {
        "cat": "A cat is sleeping on the sofa.",
        "market": "Stock markets fell sharply on Monday.",
        "recipe": "Mix the flour with eggs and bake for twenty minutes.",
        "football": "The team won the championship final.",
    }
    client.upsert("texts", [(text, key, {}) for key, text in corpus.items()])
    queries = {
        "cat": "a kitten naps on the couch",
        "market": "shares dropped a lot at the start of the week",
        "recipe": "how to bake a cake",
        "football": "they won the cup",
    }
    for key, query in queries.items():
        assert client.get_sim_n("texts", query, k=1).matches[0].id == key, query
    again = client.upsert("texts", [(corpus["cat"], "cat", {"edited": True})])
    assert (again.inserted, again.updated) == (0, 1)


def test_rerank_in_get_sim_n(client: AIClient) -> None:
    client.create_store("rr", query_model=TEXT_MODEL, store_original=True)
    docs = [
        "A man is playing a guitar.",
        "A man plays the guitar on stage.",
        "A woman is slicing an onion.",
        "Two dogs run in the park.",
        "The guitarist performs a solo.",
        "A chef chops vegetables.",
    ]
    client.upsert("rr", docs)
    plain = client.get_sim_n("rr", "A man is playing guitar.", k=3)
    reranked = client.get_sim_n(
        "rr", "A man is playing guitar.", k=3, rerank=CROSS_ENCODER, rerank_candidates=6
    )
    assert len(reranked.matches) == 3
    scores = [m.rerank_score for m in reranked.matches]
    assert all(s is not None for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert reranked.matches[0].original in {docs[0], docs[1]}
    assert all(m.rerank_score is None for m in plain.matches)
    # Both scores come back: the similarity is the vector score of that same entry.
    by_id = {
        m.id: m.similarity for m in client.get_sim_n("rr", "A man is playing guitar.", k=6).matches
    }
    for m in reranked.matches:
        assert m.similarity == pytest.approx(by_id[m.id], abs=1e-5)


def test_rerank_needs_text(client: AIClient, photo_store: str) -> None:
    with pytest.raises(InvalidArgument, match="store_original|original"):
        client.get_sim_n(photo_store, "a dog", k=2, rerank=CROSS_ENCODER)
    with pytest.raises(InvalidArgument, match="caption"):
        client.get_sim_n(photo_store, "a dog", k=2, rerank=CROSS_ENCODER, rerank_field="caption")


def _png(size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_inputs_get_precise_statuses(client: AIClient, photo_store: str) -> None:
    def still_serving() -> None:
        assert client.embed(TEXT_MODEL, ["still here"])[0]

    bomb = BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")  # 900 MP, a few hundred KB
    cases: list[tuple[type[Exception], str, object]] = [
        (
            InvalidArgument,
            "(?i)image|decode|corrupt",
            lambda: client.upsert(photo_store, [b"\xff\xd8\xff\xe0 not really a jpeg"]),
        ),
        (InvalidArgument, "(?i)empty|zero|no bytes", lambda: client.upsert(photo_store, [b""])),
        (InvalidArgument, "(?i)pixel|large", lambda: client.upsert(photo_store, [bomb.getvalue()])),
        (
            InvalidArgument,
            "(?i)format|unsupported|image",
            lambda: client.upsert(photo_store, [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]),
        ),
        (InvalidArgument, "(?i)empty", lambda: client.embed(TEXT_MODEL, [""])),
        (InvalidArgument, "(?i)text", lambda: client.upsert(photo_store, ["a text"])),
        (InvalidArgument, "(?i)image", lambda: client.embed(TEXT_MODEL, [_png()])),
        (NotFound, "no-such-model", lambda: client.embed("no-such-model", ["x"])),
        (NotFound, "nope", lambda: client.get_sim_n("nope", "x", k=1)),
        (OutOfRange, "(?i)token", lambda: client.embed(TEXT_MODEL, ["word " * 2000])),
        (InvalidArgument, "(?i)no inputs|at least one", lambda: client.embed(TEXT_MODEL, [])),
        (
            FailedPrecondition,
            "efficientnet-lite0",
            lambda: client.create_store(
                "mixed", query_model=TEXT_MODEL, index_model="efficientnet-lite0"
            ),
        ),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()  # type: ignore[operator]
        still_serving()
    truncated = client.embed(TEXT_MODEL, ["word " * 2000], truncation="truncate")
    assert len(truncated[0]) == 384
    assert client.get_store(photo_store).db_store.count == 20  # nothing half-written


def test_same_dimension_different_space_is_refused(client: AIClient) -> None:
    with pytest.raises(FailedPrecondition) as error:
        client.create_store("x", query_model=TEXT_MODEL, index_model="efficientnet-lite0")
    assert TEXT_MODEL in error.value.message and "efficientnet-lite0" in error.value.message


def test_db_down_is_unavailable_then_recovers(tmp_path: Path) -> None:
    data = tmp_path / "db"
    db = start_db(data)
    port = db.port
    ai = start_ai(port, TEXT_MODEL)
    address = f"127.0.0.1:{ai.port}"
    try:
        wait_serving(address)
        with AIClient(address, timeout=30) as client:
            client.create_store("t", query_model=TEXT_MODEL)
            client.upsert("t", ["hello world"])
            db.stop(grace=1)
            with pytest.raises(Unavailable, match="nachbar-db"):
                client.get_sim_n("t", "hello", k=1)
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(100):
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    time.sleep(0.1)
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            db = start_db(data, port)  # the db returns on the same address
            wait_serving(address)
            assert client.get_sim_n("t", "hello", k=1).matches[0].original == "hello world"
    finally:
        ai.stop(grace=1)
        db.stop(grace=1)


def test_stop_waits_for_a_health_poll_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop during a poll of a nachbar-db that does not answer: the health watcher ends
    before the db client closes, instead of pinging a closed channel from its thread."""
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    with socket.socket() as silent:  # accepts connections, never speaks gRPC
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        before = set(threading.enumerate())
        ai = start_ai_server(
            parse_ai_config(
                ["--port", "0", "--db-port", str(silent.getsockname()[1]), "--models", ""]
            )
        )
        (watcher,) = [t for t in threading.enumerate() if t.name == "health" and t not in before]
        time.sleep(0.5)  # inside its first Ping, which waits for its 2 s deadline
        ai.stop(grace=0)
        assert not watcher.is_alive()
    assert failures == []


def test_restart_in_any_order_keeps_stores(tmp_path: Path) -> None:
    data = tmp_path / "db"
    db = start_db(data)
    port = db.port
    ai = start_ai(port, TEXT_MODEL)
    with AIClient(f"127.0.0.1:{ai.port}", timeout=30) as client:
        wait_serving(client.address)
        client.create_store("keep", query_model=TEXT_MODEL)
        client.upsert("keep", ["first entry"])
    ai.stop(grace=1)
    db.stop(grace=1)
    ai = start_ai(port, TEXT_MODEL)  # ai first, then the db
    db = start_db(data, port)
    try:
        with AIClient(f"127.0.0.1:{ai.port}", timeout=30) as client:
            wait_serving(client.address)
            stores = {s.name: s for s in client.list_stores()}
            assert stores["keep"].query_model == TEXT_MODEL
            assert stores["keep"].db_store.count == 1
    finally:
        ai.stop(grace=1)
        db.stop(grace=1)


def test_int8_twin_queries_an_fp32_store(client: AIClient) -> None:
    from nachbar.ai.build.stsb import load_split

    sentences = sorted({p.sentence1 for p in load_split("test")})[:300]
    client.create_store("fp32-store", query_model=TEXT_MODEL, store_original=False)
    client.upsert("fp32-store", [(s, f"s{i}", {}) for i, s in enumerate(sentences)])
    overlaps = []
    for query in sentences[::15]:
        fp32 = {m.id for m in client.get_sim_n("fp32-store", query, k=10).matches}
        int8 = client.get_sim_n("fp32-store", query, k=10, query_model="all-minilm-l6-v2-int8")
        overlaps.append(len(fp32 & {m.id for m in int8.matches}) / 10)
    mean_overlap = sum(overlaps) / len(overlaps)
    print(f"top-10 overlap, int8 query vs fp32 query on an fp32 index: {mean_overlap:.3f}")
    assert mean_overlap >= 0.8
    with pytest.raises(FailedPrecondition, match="space"):
        client.get_sim_n("fp32-store", _png(), k=1, query_model="efficientnet-lite0")


def test_drop_store_never_drops_a_db_store_it_does_not_own(
    stack: tuple[RunningServer, RunningServer], client: AIClient
) -> None:
    with DBClient(f"127.0.0.1:{stack[0].port}", timeout=30) as db:
        db.create_store("db-only", dimension=3)
        for missing_ok in (False, True):
            with pytest.raises(InvalidArgument, match="created on nachbar-db directly"):
                client.drop_store("db-only", missing_ok=missing_ok)
        assert db.get_store("db-only").name == "db-only"
        assert client.drop_store("never-created", missing_ok=True) is False
        with pytest.raises(NotFound):
            client.drop_store("never-created")
        db.drop_store("db-only")
