"""`nachbar up` as a real subprocess: start, serve, stop gracefully, and fail clearly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nachbar.cli.health import check_health
from nachbar.client import DBClient
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from tests.cli.conftest import TEXT_MODEL

NACHBAR = str(Path(sys.executable).parent / "nachbar")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_up(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NACHBAR, "up", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


class Up:
    """A running `nachbar up` whose stdout is read line by line."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [NACHBAR, "up", *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )

    def wait_for_line(self, text: str, timeout: float = 120) -> list[str]:
        """stdout lines up to and including the first one containing `text`."""
        assert self.process.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
            if text in line:
                return seen
        raise AssertionError(f"no {text!r} on stdout: {seen}\nstderr:\n{self.log.read_text()}")

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._log_file.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@pytest.fixture
def stack(tmp_path: Path, model_dir: Path) -> Iterator[tuple[Up, int, int, Path]]:
    db_port, ai_port = free_ports(2)
    data_dir = tmp_path / "data"
    up = Up(
        [
            "--db-port",
            str(db_port),
            "--ai-port",
            str(ai_port),
            "--data-dir",
            str(data_dir),
            "--model-dir",
            str(model_dir),
            "--no-build",
            "--models",
            TEXT_MODEL,
        ],
        tmp_path / "up.log",
    )
    try:
        up.wait_for_line("press Ctrl-C to stop")
        yield up, db_port, ai_port, data_dir
    finally:
        up.kill()


def test_up_serves_both_and_sigterm_stops_them_gracefully(
    stack: tuple[Up, int, int, Path], tmp_path: Path
) -> None:
    up, db_port, ai_port, data_dir = stack
    db, ai = f"127.0.0.1:{db_port}", f"127.0.0.1:{ai_port}"
    ping = subprocess.run(
        [NACHBAR, "ping", "--db", db, "--ai", ai], capture_output=True, text=True, timeout=30
    )
    assert ping.returncode == 0, ping.stderr
    with DBClient(db, timeout=10) as client:
        client.create_store("kept", 2)
        client.upsert("kept", [("a", [1, 0]), ("b", [0, 1])])

    up.process.send_signal(signal.SIGTERM)
    assert up.finish() == 0
    log = up.log.read_text()
    assert "[ai]" in log and "[db]" in log
    assert log.count("stopped") >= 2  # each child logged its graceful stop
    assert log.index("[ai]", log.index("stopping")) < log.rindex("[db]")  # ai stops first
    for address in (db, ai):
        assert not check_health(address, timeout=2).serving

    # The writes survived the shutdown.
    running = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(data_dir)]))
    try:
        with DBClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            assert client.get_store("kept").count == 2
    finally:
        running.stop(grace=1)


def test_up_reports_a_dead_child_and_stops_the_other(stack: tuple[Up, int, int, Path]) -> None:
    up, db_port, _, _ = stack
    pids = children_of(up.process.pid)
    assert len(pids) == 2
    ai_pid = pids[1]  # nachbar-db starts first
    os.kill(ai_pid, signal.SIGKILL)
    assert up.finish() == 1
    log = up.log.read_text()
    assert "nachbar-ai exited unexpectedly" in log
    assert "its last log lines" in log
    assert not check_health(f"127.0.0.1:{db_port}", timeout=2).serving


def test_up_refuses_a_taken_port_and_says_how_to_pick_another(tmp_path: Path) -> None:
    db_port, ai_port = free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ai_port))
        squatter.listen()
        result = run_up(
            "--db-port",
            str(db_port),
            "--ai-port",
            str(ai_port),
            "--data-dir",
            str(tmp_path / "data"),
            "--no-build",
        )
    assert result.returncode == 1
    assert f"port {ai_port} on 127.0.0.1 is already in use" in result.stderr
    assert "nachbar-ai cannot listen there" in result.stderr
    assert "--ai-port" in result.stderr and "nachbar ping" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_up_refuses_one_port_for_both(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    result = run_up("--db-port", str(port), "--ai-port", str(port), "--no-build")
    assert result.returncode == 2
    assert "different ports" in result.stderr


def test_up_with_no_build_says_what_to_run(tmp_path: Path) -> None:
    db_port, ai_port = free_ports(2)
    empty = tmp_path / "models"
    result = run_up(
        "--db-port",
        str(db_port),
        "--ai-port",
        str(ai_port),
        "--model-dir",
        str(empty),
        "--data-dir",
        str(tmp_path / "data"),
        "--no-build",
    )
    assert result.returncode == 1
    assert "all-minilm-l6-v2" in result.stderr
    assert f"nachbar models build --model-dir {empty}" in result.stderr


def test_up_surfaces_the_error_of_a_child_that_cannot_start(
    tmp_path: Path, model_dir: Path
) -> None:
    db_port, ai_port = free_ports(2)
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data dir should be")
    result = run_up(
        "--db-port",
        str(db_port),
        "--ai-port",
        str(ai_port),
        "--data-dir",
        str(not_a_dir),
        "--model-dir",
        str(model_dir),
        "--no-build",
        "--models",
        TEXT_MODEL,
    )
    assert result.returncode == 1
    assert "nachbar-db exited with status" in result.stderr
    assert "its last log lines" in result.stderr
    assert str(not_a_dir) in result.stderr.split("its last log lines")[1]


def test_up_builds_missing_models_before_starting(tmp_path: Path) -> None:
    db_port, ai_port = free_ports(2)
    fresh = tmp_path / "models"
    up = Up(
        [
            "--db-port",
            str(db_port),
            "--ai-port",
            str(ai_port),
            "--data-dir",
            str(tmp_path / "data"),
            "--model-dir",
            str(fresh),
            "--models",
            TEXT_MODEL,
        ],
        tmp_path / "up.log",
    )
    try:
        up.wait_for_line("press Ctrl-C to stop")
        assert (fresh / "built" / TEXT_MODEL / "manifest.json").is_file()
        assert f"building models {TEXT_MODEL}" in up.log.read_text()
        up.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.finish() == 0
    finally:
        up.kill()


def test_up_lets_its_ai_server_download_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nachbar.cli.main import build_parser
    from nachbar.cli.stack import _config
    from nachbar.server.config import parse_ai_config

    def ai_flags(*argv: str) -> tuple[str, ...]:
        return _config(build_parser().parse_args(["up", *argv])).ai_args

    monkeypatch.delenv("NACHBAR_ALLOW_DOWNLOADS", raising=False)
    assert "--allow-downloads" in ai_flags()
    assert parse_ai_config(list(ai_flags())).allow_downloads is True
    assert "--no-allow-downloads" in ai_flags("--no-allow-downloads")
    monkeypatch.setenv("NACHBAR_ALLOW_DOWNLOADS", "0")
    assert parse_ai_config(list(ai_flags())).allow_downloads is False
    assert parse_ai_config(list(ai_flags("--allow-downloads"))).allow_downloads is True
