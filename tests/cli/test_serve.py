"""`nachbar db serve` / `nachbar ai serve`: the servers' own flags and environment twins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nachbar.cli.health import check_health

NACHBAR = str(Path(sys.executable).parent / "nachbar")


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"server exited with {process.returncode}"
        assert time.monotonic() < deadline, "the server did not write its port file"
        time.sleep(0.05)
    return path.read_text().strip()


def test_db_serve_takes_server_flags_and_environment_twins(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    port_file = tmp_path / "port"
    # --data-dir comes from its NACHBAR_* twin, the rest from flags.
    env = {**os.environ, "NACHBAR_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [
            NACHBAR,
            "db",
            "serve",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--fsync",
            "normal",
            "--exit-with-parent",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port = wait_for_file(port_file, process)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not check_health(address, timeout=2).serving:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        info = subprocess.run(
            [NACHBAR, "info", "--service", "db", "--db", address, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert '"fsync_policy": "normal"' in info.stdout
        assert data_dir.is_dir()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert b"stopped" in process.stderr.read()


def test_serve_help_shows_the_servers_flags() -> None:
    db_help = subprocess.run(
        [NACHBAR, "db", "serve", "--help"], capture_output=True, text=True, timeout=30
    )
    assert db_help.returncode == 0
    assert db_help.stdout.startswith("usage: nachbar db serve")
    assert "--fsync" in db_help.stdout and "NACHBAR_DATA_DIR" in db_help.stdout
    ai_help = subprocess.run(
        [NACHBAR, "ai", "serve", "--help"], capture_output=True, text=True, timeout=30
    )
    assert ai_help.returncode == 0
    assert "--model-dir" in ai_help.stdout and "NACHBAR_MODELS" in ai_help.stdout


def test_a_bad_server_flag_fails_like_the_server_script() -> None:
    result = subprocess.run(
        [NACHBAR, "db", "serve", "--fsync", "sometimes"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "invalid choice: 'sometimes'" in result.stderr
