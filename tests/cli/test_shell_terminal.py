"""`nachbar shell` in a real pseudo-terminal: commands, errors, tab completion, history."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path

from pexpect import fdpexpect

from nachbar.client import DBClient

NACHBAR = str(Path(sys.executable).parent / "nachbar")
PROMPT = "nachbar(db)>"  # the trailing space is drawn as a cursor move


def unreachable() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class Terminal:
    """A process on a fresh pseudo-terminal, driven with pexpect.

    pexpect.spawn forks this process, whose gRPC threads (the test servers) do not survive a
    fork cleanly; subprocess starts the child without running fork handlers.
    """

    def __init__(
        self, argv: list[str], env: dict[str, str], rows: int = 40, columns: int = 200
    ) -> None:
        primary, secondary = os.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(
            argv,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=env,
            start_new_session=True,
        )
        os.close(secondary)
        self.io = fdpexpect.fdspawn(primary, encoding="utf-8", timeout=30)

    def finish(self) -> int:
        """Wait for the process to leave; its exit status."""
        code = self.process.wait(30)
        self.io.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def spawn_shell(db_address: str, history: Path) -> Terminal:
    env = {
        **os.environ,
        "TERM": "xterm",
        "NACHBAR_HISTORY": str(history),
        "NO_COLOR": "1",
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    terminal = Terminal(
        [NACHBAR, "shell", "--service", "db", "--db", db_address, "--ai", unreachable()], env
    )
    terminal.io.expect_exact("`help` lists commands")
    terminal.io.expect_exact(PROMPT)
    return terminal


def test_shell_in_a_terminal(db_address: str, store_name: str, tmp_path: Path) -> None:
    history = tmp_path / "state" / "history"
    with DBClient(db_address) as db:
        db.create_store(store_name, 2)
        db.upsert(store_name, [("e1", [1, 0], {"colour": "teal"})])
    terminal = spawn_shell(db_address, history)
    child = terminal.io
    try:
        child.sendline(f"get_key {store_name} e1")
        child.expect_exact("colour=teal")
        child.expect_exact(PROMPT)

        # A failing call prints the status and message; the shell goes on.
        child.sendline("get_store no_such_store")
        child.expect_exact("NOT_FOUND")
        child.expect_exact(PROMPT)
        child.sendline("ping")
        child.expect_exact("SERVING")
        child.expect_exact(PROMPT)

        # Tab completes the store name from the server; Enter runs the completed line.
        child.send(f"get_store {store_name[:7]}\t")
        # The completed rest; drawn after the typed part when the server answers after a redraw.
        child.expect_exact(store_name[7:])
        child.send("\r")
        child.expect_exact(f"store {store_name}")
        child.expect_exact("dimension")
        child.expect_exact(PROMPT)

        child.send("\x04")  # Ctrl-D leaves
        assert terminal.finish() == 0
    finally:
        terminal.kill()

    lines = history.read_text().splitlines()
    assert f"+get_key {store_name} e1" in lines
    assert f"+get_store {store_name}" in lines

    # A new shell recalls the previous one's last command with the Up arrow.
    terminal = spawn_shell(db_address, history)
    child = terminal.io
    try:
        child.send("\x1b[A")
        child.expect_exact(f"get_store {store_name}")
        child.send("\r")
        child.expect_exact(f"store {store_name}")
        child.expect_exact(PROMPT)
        child.sendline("exit")
        assert terminal.finish() == 0
    finally:
        terminal.kill()


def test_piped_commands_run_as_a_script(db_address: str, store_name: str) -> None:
    script = (
        "# lines starting with # are comments\n"
        f"create_store {store_name} --dim 2\n"
        f"upsert {store_name} '[1, 0]' --id a\n"
        "get_store no_such_store\n"
        "list_stores\n"
    )
    result = subprocess.run(
        [NACHBAR, "shell", "--service", "db", "--db", db_address],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1  # one line failed
    assert f"store {store_name}: 2-d" in result.stdout
    assert "NOT_FOUND" in result.stdout
    listed = result.stdout.split("NOT_FOUND")[1]
    assert store_name in listed  # the script went on after the error
