from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nachbar.client import DBClient
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server


@pytest.fixture
def db_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_db_server(
        parse_db_config(
            [
                "--port",
                "0",
                "--data-dir",
                str(tmp_path / "data"),
                "--max-message-bytes",
                str(4 * 1024 * 1024),
            ]
        )
    )
    yield running
    running.stop(grace=1)


@pytest.fixture
def db(db_server: RunningServer) -> Iterator[DBClient]:
    with DBClient(f"127.0.0.1:{db_server.port}", timeout=10) as client:
        yield client
