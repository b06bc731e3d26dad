"""API keys, metrics and admission control together: a call without a valid key is refused
before it takes a queue slot, and admission's refusals are counted in the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nachbar.client import DBClient, PermissionDenied, ResourceExhausted, Unauthenticated
from nachbar.server.auth import Role, create_key
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from tests.server.test_admission import DIM, Gate, in_thread, wait_until
from tests.server.test_observability import scrape, value

SERVICE = "nachbar.db.v1.DBService"


def test_refusals_by_key_come_before_admission_and_overload_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys.json"
    _, writer_key = create_key(keys, Role.WRITE)
    _, reader_key = create_key(keys, Role.READ)
    _, other_store_key = create_key(keys, Role.WRITE, ["other-*"])
    _, admin_key = create_key(keys, Role.ADMIN)
    server = start_db_server(
        parse_db_config(
            [
                *("--port", "0", "--data-dir", str(tmp_path / "data")),
                *("--api-keys-file", str(keys), "--metrics-port", "0"),
                *("--bulk-workers", "1", "--max-queued", "1"),
            ]
        )
    )
    address = f"127.0.0.1:{server.port}"
    clients = {
        name: DBClient(address, timeout=30, api_key=key)
        for name, key in [
            ("admin", admin_key),
            ("writer", writer_key),
            ("reader", reader_key),
            ("other", other_store_key),
            ("nobody", ""),
        ]
    }
    bulk = server.admission.bulk
    gate = Gate(monkeypatch, "upsert", "slow")
    running = queued = None
    try:
        clients["admin"].create_store("slow", DIM)
        running, running_outcome = in_thread(
            lambda: clients["writer"].upsert("slow", [("x", np.ones(DIM))])
        )
        gate.wait_entered()
        assert (bulk.running, bulk.queued) == (1, 0)

        # The bulk lane has a free queue slot: callers without a fitting key never take it.
        with pytest.raises(Unauthenticated):
            clients["nobody"].upsert("slow", [("y", np.ones(DIM))])
        with pytest.raises(PermissionDenied, match="Upsert needs write"):
            clients["reader"].upsert("slow", [("y", np.ones(DIM))])
        assert bulk.queued == 0

        queued, queued_outcome = in_thread(
            lambda: clients["writer"].upsert("slow", [("y", np.ones(DIM))])
        )
        wait_until(lambda: bulk.queued == 1)
        # Now the lane is full: a valid key gets the overload, an invalid one still its own.
        with pytest.raises(ResourceExhausted, match="nachbar-db is busy"):
            clients["writer"].upsert("slow", [("z", np.ones(DIM))])
        with pytest.raises(Unauthenticated):
            clients["nobody"].upsert("slow", [("z", np.ones(DIM))])
        # A store outside the key's scope is checked on the parsed request, after admission.
        with pytest.raises(ResourceExhausted):
            clients["other"].upsert("slow", [("z", np.ones(DIM))])

        during = scrape(server.metrics_port)
        assert value(during, "nachbar_admission_running_requests", lane="bulk") == 1
        assert value(during, "nachbar_admission_queued_requests", lane="bulk") == 1
        assert value(during, "nachbar_admission_inflight_request_bytes") > 0
    finally:
        gate.open()
        for thread in (running, queued):
            if thread is not None:
                thread.join(30)
    assert [type(o).__name__ for o in running_outcome + queued_outcome] == ["UpsertResult"] * 2
    with pytest.raises(PermissionDenied, match="other-\\*"):
        clients["other"].upsert("slow", [("z", np.ones(DIM))])

    after = scrape(server.metrics_port)
    for client in clients.values():
        client.close()
    server.stop(grace=0)

    def counted(name: str, **labels: str) -> float:
        return value(after, name, service=SERVICE, method="Upsert", **labels)

    assert counted("nachbar_grpc_requests_total", code="OK") == 2
    assert counted("nachbar_grpc_requests_total", code="RESOURCE_EXHAUSTED") == 2
    assert counted("nachbar_grpc_requests_total", code="UNAUTHENTICATED") == 2
    assert counted("nachbar_grpc_requests_total", code="PERMISSION_DENIED") == 2
    assert counted("nachbar_grpc_rejected_requests_total", reason="resource_exhausted") == 2
    assert counted("nachbar_grpc_rejected_requests_total", reason="unauthenticated") == 2
    assert counted("nachbar_grpc_rejected_requests_total", reason="permission_denied") == 2
    assert value(after, "nachbar_admission_queued_requests", lane="bulk") == 0
    assert value(after, "nachbar_admission_inflight_request_bytes") == 0
