"""Admission control: lanes, queues and the in-flight byte budget, alone and in real servers.

Nothing here is timed against a budget: bulk work is held still with events, so each test
knows exactly what is running, what waits and what must be turned away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nachbar.client import AIClient, DBClient, InvalidArgument, ResourceExhausted
from nachbar.db.engine import Database
from nachbar.server import ai_main, db_main
from nachbar.server.admission import ByteBudget, Lane, Limits
from nachbar.server.ai_service import AIServicer
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.errors import Overloaded
from nachbar.v1 import ai_pb2, db_pb2, db_pb2_grpc
from tests.models_fixture import built_model_dir
from tests.servers import wait_serving

MIB = 1024 * 1024
DIM = 8


# --- the pieces alone ---------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_lane_runs_its_workers_queues_in_order_and_refuses_past_the_queue() -> None:
    lane = Lane("bulk", workers=1, max_queued=2, label="nachbar-db")
    assert lane.enter()
    order: list[int] = []

    def wait_then_note(n: int) -> None:
        assert lane.enter()
        order.append(n)
        lane.leave()

    first = threading.Thread(target=wait_then_note, args=(1,))
    first.start()
    wait_until(lambda: lane.queued == 1)
    second = threading.Thread(target=wait_then_note, args=(2,))
    second.start()
    wait_until(lambda: lane.queued == 2)
    assert lane.full()
    with pytest.raises(Overloaded, match=r"nachbar-db is busy: all 1 bulk workers \(--bulk-wo"):
        lane.enter()
    lane.leave()
    first.join(5)
    second.join(5)
    assert order == [1, 2]
    assert (lane.running, lane.queued) == (0, 0)


def test_a_waiter_whose_caller_gave_up_leaves_the_queue() -> None:
    lane = Lane("interactive", workers=1, max_queued=1)
    assert lane.enter()
    wanted = threading.Event()
    wanted.set()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(lane.enter(wanted.is_set)))
    waiter.start()
    wait_until(lambda: lane.queued == 1)
    wanted.clear()  # the client cancelled
    waiter.join(5)
    assert result == [False] and lane.queued == 0
    lane.leave()
    assert lane.enter()  # its place was given back


def test_byte_budget_reserves_room_for_interactive_requests() -> None:
    budget = ByteBudget(limit=100, reserve=25, label="nachbar-db")
    budget.take(500, bulk=True)  # alone on the server: always admitted
    budget.give_back(500)
    budget.take(60, bulk=True)
    with pytest.raises(Overloaded, match="over its 0 MiB budget for bulk requests"):
        budget.take(20, bulk=True)  # 80 > 75, the bulk share
    budget.take(20, bulk=False)  # interactive requests may use the reserve
    with pytest.raises(Overloaded, match="retry with backoff, or send smaller batches"):
        budget.take(30, bulk=False)
    assert budget.held == 80


def test_capacity_covers_both_lanes_and_their_queues() -> None:
    limits = Limits(16, 2, 128, 128 * MIB, 256 * 1024)
    assert limits.max_concurrent_rpcs == 16 + 2 + 2 * 128 + 32
    assert limits.interactive_reserve == 32 * MIB


def test_policies_name_real_methods() -> None:
    for policy, service in (
        (db_main.DB_ADMISSION, "DBService"),
        (ai_main.AI_ADMISSION, "AIService"),
    ):
        pb2 = db_pb2 if service == "DBService" else ai_pb2
        methods = set(pb2.DESCRIPTOR.services_by_name[service].methods_by_name)
        assert policy.bulk_methods <= methods
        assert set(policy.heavy) <= methods - policy.bulk_methods
    heavy = ai_main.AI_ADMISSION.heavy
    few = ai_pb2.EmbedRequest(inputs=[ai_pb2.Input(text="a")] * 3)
    many = ai_pb2.EmbedRequest(inputs=[ai_pb2.Input(text="a")] * 100)
    assert not heavy["Embed"](few) and heavy["Embed"](many)
    assert not heavy["GetSimN"](ai_pb2.GetSimNRequest(k=5))
    assert heavy["GetSimN"](ai_pb2.GetSimNRequest(rerank=ai_pb2.RerankOptions(candidates=500)))


def test_admission_flags_and_their_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_db_config([])
    assert (config.bulk_workers, config.max_queued, config.interactive_max_bytes) == (
        2,
        128,
        256 * 1024,
    )
    assert config.max_inflight_bytes == 2 * config.max_message_bytes
    monkeypatch.setenv("NACHBAR_BULK_WORKERS", "3")
    monkeypatch.setenv("NACHBAR_MAX_QUEUED", "7")
    monkeypatch.setenv("NACHBAR_MAX_INFLIGHT_BYTES", "1000000")
    monkeypatch.setenv("NACHBAR_INTERACTIVE_MAX_BYTES", "4096")
    ai_config = parse_ai_config([])
    assert (ai_config.bulk_workers, ai_config.max_queued) == (3, 7)
    assert (ai_config.max_inflight_bytes, ai_config.interactive_max_bytes) == (1_000_000, 4096)
    assert parse_db_config(["--max-queued", "0"]).max_queued == 0  # the flag wins
    with pytest.raises(SystemExit, match="--bulk-workers must be positive"):
        parse_db_config(["--bulk-workers", "0"])


# --- nachbar-db ---------------------------------------------------------------------------------


class Gate:
    """Holds calls of a Database method for one store until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str, store: str) -> None:
        self.entered = threading.Semaphore(0)
        self.inside = 0
        self._open = threading.Event()
        original = getattr(Database, method)

        def held(db: Database, name: str, *args: Any, **kwargs: Any) -> Any:
            if name == store:
                self.inside += 1
                self.entered.release()
                assert self._open.wait(60), "the test never opened the gate"
            return original(db, name, *args, **kwargs)

        monkeypatch.setattr(Database, method, held)

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=30), "no call reached the gate"

    def open(self) -> None:
        self._open.set()


def start_db(tmp_path: Path, *flags: str) -> RunningServer:
    return db_main.start_db_server(
        parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "data"), *flags])
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., tuple[RunningServer, DBClient]]]:
    started: list[tuple[RunningServer, DBClient]] = []

    def start(*flags: str) -> tuple[RunningServer, DBClient]:
        server = start_db(tmp_path, *flags)
        client = DBClient(f"127.0.0.1:{server.port}", timeout=30)
        started.append((server, client))
        for store in ("slow", "fast"):
            client.create_store(store, DIM)
            client.upsert(store, [(f"e{n}", np.eye(DIM)[n % DIM], {"n": n}) for n in range(50)])
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.stop(grace=1)


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # handed to the test through `outcome`
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_cheap_reads_are_served_while_the_bulk_lane_is_full(
    served: Callable[..., tuple[RunningServer, DBClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, db = served("--bulk-workers", "1", "--max-queued", "1")
    gate = Gate(monkeypatch, "upsert", "slow")
    running, running_outcome = in_thread(lambda: db.upsert("slow", [("x", np.ones(DIM))]))
    gate.wait_entered()
    queued, queued_outcome = in_thread(lambda: db.upsert("slow", [("y", np.ones(DIM))]))
    wait_until(lambda: server.admission.bulk.queued == 1)
    try:
        # The bulk lane is full: one upsert running, one waiting, no room for more.
        with pytest.raises(ResourceExhausted) as refused:
            db.upsert("fast", [("z", np.ones(DIM))])
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "nachbar-db is busy" in refused.value.message
        assert "retry with backoff, or send smaller batches" in refused.value.message
        with pytest.raises(ResourceExhausted):
            db.delete_keys("fast", ["e1"])
        # Interactive reads do not wait for a bulk worker.
        started = time.monotonic()
        hits = db.get_sim_n("slow", np.eye(DIM)[3], k=2)
        assert [m.id for m in hits.matches][:1] in (["e3"], ["e11"], ["e19"], ["e27"])
        assert db.get_key("fast", ["e1"]).entries[0].id == "e1"
        assert db.get_store("slow").count == 50
        db.ping()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - started < 10
        assert gate.inside == 1 and running.is_alive() and queued.is_alive()
    finally:
        gate.open()
        running.join(30)
        queued.join(30)
    assert [type(o).__name__ for o in running_outcome + queued_outcome] == ["UpsertResult"] * 2
    assert db.get_store("slow").count == 52
    assert (server.admission.bulk.running, server.admission.bulk.queued) == (0, 0)


async def _flood(address: str, count: int, call: str) -> Counter[str]:
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        request: Any
        if call == "GetSimN":
            request = db_pb2.GetSimNRequest(store="slow", query=[1.0] * DIM, k=3)
        else:
            request = db_pb2.PingRequest()

        async def one() -> None:
            try:
                await getattr(stub, call)(request, timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    details = error.details() or ""
                    ours = "retry with backoff" in details
                    codes["ours" if ours else f"other: {details}"] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return codes


def test_overload_gets_resource_exhausted_never_cancelled(
    served: Callable[..., tuple[RunningServer, DBClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = served("--workers", "1", "--max-queued", "4")
    address = f"127.0.0.1:{server.port}"
    gate = Gate(monkeypatch, "get_sim_n", "slow")
    flood = threading.Thread(
        target=lambda: results.update(asyncio.run(_flood(address, 400, "GetSimN")))
    )
    results: Counter[str] = Counter()
    flood.start()
    gate.wait_entered()
    wait_until(lambda: server.admission.interactive.queued == 4)
    time.sleep(1.0)  # the rest of the flood is being refused meanwhile
    gate.open()
    flood.join(60)
    assert results["OK"] == 5  # the one running and the four that waited
    assert results["RESOURCE_EXHAUSTED"] == 395, results
    assert set(results) <= {
        "OK",
        "RESOURCE_EXHAUSTED",
        "ours",
        "other: Concurrent RPC limit exceeded!",  # gRPC's own limit, past every lane's queue
    }, results
    assert results["ours"] > 0


def test_a_burst_of_thousands_of_calls_on_one_connection_is_not_cancelled(
    served: Callable[..., tuple[RunningServer, DBClient]],
) -> None:
    server, _ = served()
    results = asyncio.run(_flood(f"127.0.0.1:{server.port}", 3000, "Ping"))
    assert "CANCELLED" not in results, results
    assert results["OK"] + results["RESOURCE_EXHAUSTED"] == 3000
    assert results["OK"] > 0


def test_the_inflight_byte_budget_refuses_more_bulk_bytes_but_not_small_reads(
    served: Callable[..., tuple[RunningServer, DBClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, db = served("--max-message-bytes", str(8 * MIB), "--max-inflight-bytes", str(4 * MIB))
    gate = Gate(monkeypatch, "upsert", "slow")
    rng = np.random.default_rng(0)
    batch = [(f"b{n}", rng.standard_normal(DIM), {"pad": "x" * 2000}) for n in range(1200)]
    holder, holder_outcome = in_thread(lambda: db.upsert("slow", batch, batch_size=2000))
    gate.wait_entered()
    try:
        assert server.admission.budget.held > 2 * MIB
        with pytest.raises(ResourceExhausted) as refused:
            db.upsert("slow", batch, batch_size=2000)
        assert "MiB of requests in progress" in refused.value.message
        assert "--max-inflight-bytes" in refused.value.message
        assert "send smaller batches" in refused.value.message
        assert db.upsert("fast", batch[:10]).inserted == 10  # small bulk requests still fit
        assert len(db.get_sim_n("fast", np.ones(DIM), k=3).matches) == 3
    finally:
        gate.open()
        holder.join(60)
    assert type(holder_outcome[0]).__name__ == "UpsertResult"
    assert server.admission.budget.held == 0


def test_a_request_alone_is_admitted_even_over_the_budget(
    served: Callable[..., tuple[RunningServer, DBClient]],
) -> None:
    server, db = served("--max-inflight-bytes", str(64 * 1024))
    batch = [(f"b{n}", np.ones(DIM), {"pad": "x" * 1000}) for n in range(500)]  # ~0.5 MiB
    assert db.upsert("fast", batch, batch_size=1000).inserted == 500
    assert server.admission.budget.held == 0


def test_undecodable_request_bytes_get_invalid_argument(
    served: Callable[..., tuple[RunningServer, DBClient]],
) -> None:
    server, db = served()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in ("GetSimN", "Upsert"):
            call = channel.unary_unary(f"/nachbar.db.v1.DBService/{method}", None, None)
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff\xff\xff", timeout=10)
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "not a valid protobuf message" in error.details()
    db.ping()


# --- nachbar-ai ---------------------------------------------------------------------------------


def test_ai_interactive_calls_go_on_while_bulk_embedding_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    upsert = AIServicer.Upsert

    def held_upsert(self: AIServicer, request: Any, context: grpc.ServicerContext) -> Any:
        entered.set()
        assert release.wait(60), "the test never released the upsert"
        return upsert(self, request, context)

    monkeypatch.setattr(AIServicer, "Upsert", held_upsert)
    db_server = start_db(tmp_path)
    ai_server = ai_main.start_ai_server(
        parse_ai_config(
            [
                "--port",
                "0",
                "--db-port",
                str(db_server.port),
                "--model-dir",
                str(built_model_dir()),
                "--models",
                "all-minilm-l6-v2",
                "--hub-offline",
                "--bulk-workers",
                "1",
                "--max-queued",
                "0",
            ]
        )
    )
    address = f"127.0.0.1:{ai_server.port}"
    try:
        wait_serving(address)
        with AIClient(address, timeout=60) as ai:
            ai.create_store("notes", query_model="all-minilm-l6-v2", store_original=True)
            held, outcome = in_thread(lambda: ai.upsert("notes", ["a cat sleeps on the sofa"]))
            assert entered.wait(30)
            try:
                with pytest.raises(ResourceExhausted, match="nachbar-ai is busy"):
                    ai.upsert("notes", ["a dog barks"])
                many = [f"text {n}" for n in range(ai_main.INTERACTIVE_MAX_INPUTS + 1)]
                with pytest.raises(ResourceExhausted):
                    ai.embed("all-minilm-l6-v2", many)  # many inputs: bulk
                assert len(ai.embed("all-minilm-l6-v2", ["one query"])) == 1
                assert ai.get_sim_n("notes", "a kitten", k=1).matches == []
                ai.ping()
            finally:
                release.set()
                held.join(60)
            assert type(outcome[0]).__name__ == "UpsertResult", outcome
            assert [m.id for m in ai.get_sim_n("notes", "a kitten", k=1).matches]
            with pytest.raises(InvalidArgument):
                ai.embed("all-minilm-l6-v2", [])
    finally:
        ai_server.stop(grace=1)
        db_server.stop(grace=1)
