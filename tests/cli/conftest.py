"""Real servers for the CLI tests, started in-process on free ports once per test run."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nachbar.cli.main import main
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.db_main import start_db_server
from tests.models_fixture import built_model_dir
from tests.servers import wait_serving

TEXT_MODEL = "all-minilm-l6-v2"
IMAGE_MODEL = "imagenet-conse-minilm-l6"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shared build of the real models the ai server loads (built once per machine)."""
    return built_model_dir([TEXT_MODEL, IMAGE_MODEL])


@pytest.fixture(scope="session")
def cross_encoder(model_dir: Path) -> str:
    """The real cross-encoder, built into the same model dir; its name."""
    built_model_dir([CROSS_ENCODER])
    return CROSS_ENCODER


@pytest.fixture(scope="session")
def db_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("cli-db")
    running = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(data_dir)]))
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def db_address(db_server: RunningServer) -> str:
    return f"127.0.0.1:{db_server.port}"


@pytest.fixture(scope="session")
def ai_server(db_server: RunningServer, model_dir: Path) -> Iterator[RunningServer]:
    from nachbar.server.ai_main import start_ai_server

    running = start_ai_server(
        parse_ai_config(
            [
                "--port",
                "0",
                "--db-port",
                str(db_server.port),
                "--model-dir",
                str(model_dir),
                "--models",
                TEXT_MODEL,
            ]
        )
    )
    wait_serving(f"127.0.0.1:{running.port}", timeout=120)
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def ai_address(ai_server: RunningServer) -> str:
    return f"127.0.0.1:{ai_server.port}"


@pytest.fixture
def store_name() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run `nachbar ARGS...` in-process; returns its exit code and output."""
    # Wide enough that tables do not fold the values the tests look for.
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(["--timeout", "60", *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def db_cli(run_cli: Cli, db_address: str) -> Cli:
    return lambda *args: run_cli("--db", db_address, *args)


@pytest.fixture
def ai_cli(run_cli: Cli, ai_address: str, db_address: str) -> Cli:
    return lambda *args: run_cli("--ai", ai_address, "--db", db_address, *args)
