"""Both rerank kinds through the real servers: the late-interaction model and the MS MARCO
cross-encoder plug in wherever a reranker name is accepted (Rerank, GetSimN's rerank), and long
documents are cut to the reranker's token budget instead of failing the request."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from nachbar.client import AIClient, InvalidArgument
from nachbar.v1 import ai_pb2, ai_pb2_grpc
from tests.models_fixture import built_model_dir
from tests.server.test_ai_service import TEXT_MODEL, start_ai, start_db
from tests.servers import wait_serving

COLBERT = "answerai-colbert-small-v1-int8"
MS_MARCO = "ms-marco-minilm-l12-cross-encoder-int8"
BERLIN = "How many people live in Berlin?"
ANSWER = "Berlin had a population of 3,520,031 registered inhabitants in 891.82 square kilometers."
OFF_TOPIC = "Berlin is well known for its museums."


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    built_model_dir(only=[TEXT_MODEL, COLBERT, MS_MARCO])
    db = start_db(tmp_path_factory.mktemp("rerank-kinds-db"))
    ai = start_ai(db.port, TEXT_MODEL)
    address = f"127.0.0.1:{ai.port}"
    wait_serving(address)
    yield address
    ai.stop(grace=1)
    db.stop(grace=1)


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[AIClient]:
    with AIClient(address, timeout=120) as client:
        yield client


def test_list_models_reports_the_late_interaction_kind(client: AIClient) -> None:
    models = {m.name: m for m in client.list_models()}
    assert models[COLBERT].kind == "late_interaction"
    assert models[COLBERT].dimension == 384
    assert models[MS_MARCO].kind == "cross_encoder"
    assert models[COLBERT].available and models[MS_MARCO].available


@pytest.mark.parametrize("reranker", [COLBERT, MS_MARCO])
def test_rerank_rpc_ranks_the_answer_first(client: AIClient, reranker: str) -> None:
    results = client.rerank(reranker, BERLIN, [OFF_TOPIC, ANSWER])
    assert [r.index for r in results] == [1, 0]


def test_sigmoid_is_refused_for_maxsim_scores(client: AIClient) -> None:
    with pytest.raises(InvalidArgument, match="sigmoid applies to cross-encoders only"):
        client.rerank(COLBERT, BERLIN, [ANSWER], sigmoid=True)
    assert client.rerank(COLBERT, BERLIN, [ANSWER])  # still serving


@pytest.mark.parametrize("reranker", [COLBERT, MS_MARCO])
def test_get_sim_n_reranks_long_documents_within_the_budget(
    client: AIClient, reranker: str
) -> None:
    store = f"long-{reranker}"
    filler = " ".join(["The city has many parks, rivers and old buildings."] * 80)  # ~900 tokens
    client.create_store(store, query_model=TEXT_MODEL, store_original=True, if_not_exists=True)
    documents = [(OFF_TOPIC + " " + filler, "museums"), (ANSWER + " " + filler, "people")]
    client.upsert(store, documents, truncation="truncate")  # the embedder keeps 256 tokens
    found = client.get_sim_n(store, BERLIN, k=2, rerank=reranker)
    assert [m.id for m in found.matches] == ["people", "museums"]
    assert all(m.rerank_score is not None for m in found.matches)


def test_get_sim_n_fuses_rerank_scores_with_similarities_on_request(client: AIClient) -> None:
    store = "fusion"
    client.create_store(store, query_model=TEXT_MODEL, store_original=True, if_not_exists=True)
    documents = [
        (ANSWER, "people"),
        (OFF_TOPIC, "museums"),
        ("Paris is the capital of France.", "paris"),
        ("Rivers run through many European capitals.", "rivers"),
    ]
    client.upsert(store, documents)
    reranked = client.get_sim_n(store, BERLIN, k=4, rerank=MS_MARCO)
    assert all(m.fused_score is None for m in reranked.matches)
    by_rank = {m.id: rank for rank, m in enumerate(reranked.matches, 1)}
    vector_rank = {
        m.id: rank for rank, m in enumerate(client.get_sim_n(store, BERLIN, k=4).matches, 1)
    }
    fused = client.get_sim_n(store, BERLIN, k=4, rerank=MS_MARCO, rerank_fusion="rrf")
    expected = {i: 1 / (60 + by_rank[i]) + 1 / (60 + vector_rank[i]) for i in by_rank}
    # Ties (ranks 3 and 4 swapped) keep the vector order.
    assert [m.id for m in fused.matches] == sorted(vector_rank, key=lambda i: -expected[i])
    for match in fused.matches:
        assert match.fused_score == pytest.approx(expected[match.id], abs=1e-6)
    with pytest.raises(ValueError, match="rerank_fusion must be 'none', 'rrf' or 'blend'"):
        client.get_sim_n(store, BERLIN, k=4, rerank=MS_MARCO, rerank_fusion="max")


def test_an_unknown_fusion_number_is_invalid_argument(client: AIClient, address: str) -> None:
    client.create_store("fusion", query_model=TEXT_MODEL, store_original=True, if_not_exists=True)
    client.upsert("fusion", [(ANSWER, "people")])
    request = ai_pb2.GetSimNRequest(
        store="fusion",
        query=ai_pb2.Input(text=BERLIN),
        k=1,
        rerank=ai_pb2.RerankOptions(model=MS_MARCO, original_text=True, fusion=7),  # type: ignore[arg-type]
    )
    with grpc.insecure_channel(address) as channel:
        stub = ai_pb2_grpc.AIServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetSimN(request, timeout=60)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown rerank fusion 7" in str(caught.value.details())
