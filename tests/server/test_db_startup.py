"""nachbar-db start-up: the port opens before the stores load, answering UNAVAILABLE meanwhile;
checkpoint flags and their environment twins."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nachbar.cli.health import Health, check_health
from nachbar.client import DBClient, NachbarError
from nachbar.db.engine import Database
from nachbar.db.errors import DataCorruptionError
from nachbar.server import db_main
from nachbar.server.config import parse_db_config


def health_of(port: int) -> Health:
    return check_health(f"127.0.0.1:{port}", timeout=5).health


@pytest.fixture
def held_open(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Database.open, as nachbar-db calls it, waits for the returned event."""
    release = threading.Event()
    real_open = Database.open

    def slow_open(*args: Any, **kwargs: Any) -> Database:
        assert release.wait(60)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Database, "open", slow_open)
    return release


def test_port_answers_while_the_stores_load(tmp_path: Path, held_open: threading.Event) -> None:
    config = parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "data")])
    running, loader = db_main.open_db_server(config)
    try:
        assert health_of(running.port) is Health.NOT_SERVING
        with DBClient(f"127.0.0.1:{running.port}", timeout=10) as db:
            for call in (db.ping, db.list_stores, lambda: db.get_store("s")):
                with pytest.raises(NachbarError) as caught:
                    call()
                assert caught.value.code == grpc.StatusCode.UNAVAILABLE
                assert "is loading its stores" in caught.value.message
                assert "retry" in caught.value.message
            held_open.set()
            loader.result()
            assert health_of(running.port) is Health.SERVING
            db.create_store("s", 4)
            db.upsert("s", [("a", np.ones(4))])
            assert db.get_store("s").count == 1
    finally:
        held_open.set()
        running.stop(grace=1)


def test_health_watch_sees_not_serving_then_serving(
    tmp_path: Path, held_open: threading.Event
) -> None:
    """What an orchestrator's probe sees: a live port, NOT_SERVING, then SERVING."""
    config = parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "data")])
    running, _ = db_main.open_db_server(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            first = next(stream)
            assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
            held_open.set()
            second = next(stream)
            assert second.status == health_pb2.HealthCheckResponse.SERVING
            stream.cancel()
    finally:
        held_open.set()
        running.stop(grace=1)


def test_stop_while_the_stores_load(tmp_path: Path, held_open: threading.Event) -> None:
    config = parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "data")])
    running, _ = db_main.open_db_server(config)
    threading.Timer(0.5, held_open.set).start()
    running.stop(grace=1)  # waits for the open to finish, then closes the database
    assert health_of(running.port) is Health.UNREACHABLE
    Database.open(tmp_path / "data", checkpoint_seconds=0).close()  # the directory was released


def test_failed_open_reports_the_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Database.open(data, checkpoint_seconds=0).close()
    (data / "committed.json").write_text("{damaged")
    config = parse_db_config(["--port", "0", "--data-dir", str(data)])
    with pytest.raises(DataCorruptionError, match="committed.json"):
        db_main.start_db_server(config)


def test_checkpoint_flags_and_their_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_db_config([])
    assert (config.graph_checkpoint_changes, config.graph_checkpoint_seconds) == (10_000, 300.0)
    monkeypatch.setenv("NACHBAR_GRAPH_CHECKPOINT_CHANGES", "500")
    monkeypatch.setenv("NACHBAR_GRAPH_CHECKPOINT_SECONDS", "30")
    config = parse_db_config([])
    assert (config.graph_checkpoint_changes, config.graph_checkpoint_seconds) == (500, 30.0)
    config = parse_db_config(["--graph-checkpoint-changes", "0", "--graph-checkpoint-seconds", "5"])
    assert (config.graph_checkpoint_changes, config.graph_checkpoint_seconds) == (0, 5.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--graph-checkpoint-changes", "-1"], "--graph-checkpoint-changes must be 0 (off)"),
        (["--graph-checkpoint-seconds", "-0.5"], "--graph-checkpoint-seconds must be 0 (off)"),
    ],
)
def test_bad_checkpoint_settings_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_db_config(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
