"""The shell's command layer, driven line by line without a terminal against real servers."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import pytest
from rich.console import Console

from nachbar.cli.commands import COMMANDS
from nachbar.cli.context import CliContext
from nachbar.cli.shell_commands import Shell
from nachbar.client import DBClient
from tests.cli.conftest import CROSS_ENCODER, TEXT_MODEL


class CapturedShell:
    """A shell whose output is captured line by line."""

    def __init__(self, db_address: str, ai_address: str, service: str) -> None:
        self.buffer = io.StringIO()
        console = Console(file=self.buffer, width=220, color_system=None)
        ctx = CliContext(db_address, ai_address, 30.0, out=console, err=console)
        self.shell = Shell(ctx, service)

    def run(self, line: str) -> str:
        """Execute a line and return what it printed; the shell must stay open."""
        self.buffer.seek(0)
        self.buffer.truncate()
        assert self.shell.execute(line) is True
        return self.buffer.getvalue()


def unreachable() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def db_shell(db_address: str) -> Iterator[CapturedShell]:
    captured = CapturedShell(db_address, unreachable(), "db")
    yield captured
    captured.shell.close()


def test_every_db_rpc_is_reachable(
    db_shell: CapturedShell, store_name: str, db_address: str
) -> None:
    s = store_name
    assert f"store {s}: 3-d, cosine" in db_shell.run(f"create_store {s} --dim 3 --pred-index lang")
    assert "inserted 1, updated 0" in db_shell.run(
        f"""upsert {s} '[1, 0, 0]' --id a --meta '{{"lang": "en", "year": 2020}}'"""
    )
    db_shell.run(f"""upsert {s} '[0, 1, 0]' --id b --meta '{{"lang": "de", "year": 1999}}'""")
    assert "inserted 0, updated 1" in db_shell.run(
        f"""upsert {s} '[0, 1, 0.1]' --id b --meta '{{"lang": "de", "year": 1999}}'"""
    )
    listed = db_shell.run("list_stores")
    assert s in listed
    details = db_shell.run(f"get_store {s}")
    assert "count" in details and "lang" in details
    keyed = db_shell.run(f"get_key {s} a zz --vectors")
    assert "lang=en  year=2020" in keyed and "[1.0000, 0.0000, 0.0000]" in keyed
    assert f"not found in {s}: zz" in keyed
    by_filter = db_shell.run(f"get_by_predicate {s} 'year >= 2000'")
    assert "lang=en" in by_filter and "lang=de" not in by_filter
    nearest = db_shell.run(f"get_sim_n '[0, 1, 0]' --store {s} -k 1 --mode exact")
    assert "│ 1    │ b " in nearest
    assert "year=2020" in db_shell.run(
        f"""get_sim_n '[0, 1, 0]' --store {s} -k 1 --filter 'lang = "en"'"""
    )
    assert "created 1" in db_shell.run(f"create_pred_index {s} year")
    assert "year" in db_shell.run(f"get_store {s}")
    assert "dropped 1" in db_shell.run(f"drop_pred_index {s} year")
    assert "deleted 1 of 2" in db_shell.run(f"delete_keys {s} a ghost")
    assert "deleted 1" in db_shell.run(f"""delete_by_predicate {s} '{{"lang": {{"eq": "de"}}}}'""")
    with DBClient(db_address) as db:
        assert db.get_store(s).count == 0
    assert "fsync policy" in db_shell.run("info")
    assert "SERVING (Ping" in db_shell.run("ping")
    assert f"dropped {s}" in db_shell.run(f"drop_store {s}")


def test_errors_are_printed_and_the_shell_continues(
    db_shell: CapturedShell, store_name: str
) -> None:
    assert "NOT_FOUND" in db_shell.run(f"get_store {store_name}")
    assert "unknown command 'frobnicate'" in db_shell.run("frobnicate")
    assert "not valid JSON" in db_shell.run(f"upsert {store_name} '[1, 0' --id a")
    assert "JSON list of numbers" in db_shell.run(f"upsert {store_name} '[\"x\"]' --id a")
    assert "required: --dim" in db_shell.run(f"create_store {store_name}")
    assert "close your quotes" in db_shell.run("get_store 'unclosed")
    assert "strings need quotes" in db_shell.run(f"get_by_predicate {store_name} 'a = b'")
    # An unreachable service is reported like any other failure.
    assert "nachbar-ai at" in db_shell.run("ai ping") and "UNREACHABLE" in db_shell.run("ai ping")
    assert "cannot reach nachbar-ai" in db_shell.run("ai list_stores")
    assert "SERVING" in db_shell.run("ping")


def test_exit_quit_and_empty_lines(db_shell: CapturedShell) -> None:
    assert db_shell.run("   ") == ""
    assert db_shell.shell.execute("exit") is False
    assert db_shell.shell.execute("quit") is False


def test_use_switches_the_service_and_prefixes_send_one_command(db_shell: CapturedShell) -> None:
    assert db_shell.shell.prompt == "nachbar(db)> "
    db_shell.run("use ai")
    assert db_shell.shell.prompt == "nachbar(ai)> "
    assert "UNREACHABLE" in db_shell.run("ping")
    assert "SERVING" in db_shell.run("db ping")
    assert "use ai | use db" in db_shell.run("use nowhere")


def test_help_lists_every_command_and_explains_one(db_shell: CapturedShell) -> None:
    overview = db_shell.run("help")
    for name in {c.name for c in COMMANDS} | {"help", "use", "exit"}:
        assert name in overview
    explained = db_shell.run("help get_sim_n")
    assert "(nachbar-db)" in explained and "(nachbar-ai)" in explained
    assert "example: get_sim_n '[1, 0.1, 0]' --store vecs -k 2 --mode exact" in explained
    assert "--filter" in explained
    assert db_shell.run("create_pred_index --help") == db_shell.run("help create_pred_index")


def test_completion_of_commands_options_and_store_names(
    db_shell: CapturedShell, store_name: str, db_address: str
) -> None:
    with DBClient(db_address) as db:
        db.create_store(store_name, 2)
    shell = db_shell.shell
    assert shell.completions("get_s") == ["get_sim_n", "get_store"]
    assert "db" in shell.completions("")
    assert shell.completions("help create_p") == ["create_pred_index"]
    assert shell.completions("use ") == ["ai", "db"]
    assert shell.completions(f"get_store {store_name[:6]}") == [store_name]
    assert shell.completions(f"db drop_store {store_name[:6]}") == [store_name]
    assert store_name in shell.completions("get_key ")
    assert shell.completions(f"get_key {store_name} ") == []  # ids are not completed
    assert shell.completions("get_sim_n x y --mo") == ["--mode"]
    # nachbar-ai is unreachable here: model names come from the registry.
    assert TEXT_MODEL in shell.completions("embed --model all-")


@pytest.fixture
def ai_shell(db_address: str, ai_address: str) -> Iterator[CapturedShell]:
    captured = CapturedShell(db_address, ai_address, "ai")
    yield captured
    captured.shell.close()


def test_every_ai_rpc_is_reachable(ai_shell: CapturedShell, store_name: str) -> None:
    s = store_name
    assert f"store {s}: 384-d" in ai_shell.run(f"create_store {s} --query-model {TEXT_MODEL}")
    assert "inserted 1, updated 0: cat" in ai_shell.run(
        f"""upsert {s} "a cat sleeps on the sofa" --id cat --meta '{{"kind": "pet"}}'"""
    )
    ai_shell.run(
        f"""upsert {s} "the stock market fell today" --id news --meta '{{"kind": "fin"}}'"""
    )
    assert s in ai_shell.run("list_stores")
    assert TEXT_MODEL in ai_shell.run(f"get_store {s}")
    found = ai_shell.run(f"search 'kitten napping' --store {s} -k 1")
    assert "│ cat " in found and "a cat sleeps on the sofa" in found
    assert "│ news " in ai_shell.run(f"get_sim_n 'finance' --store {s} -k 1")
    assert "│ news " in ai_shell.run(
        f"""get_sim_n 'kitten' --store {s} -k 1 --filter 'kind = "fin"'"""
    )
    assert "kind=pet" in ai_shell.run(f"get_key {s} cat")
    assert "kind=fin" in ai_shell.run(f"""get_by_predicate {s} 'kind = "fin"'""")
    assert "dimension 384" in ai_shell.run(f"embed 'hello world' --model {TEXT_MODEL}")
    assert CROSS_ENCODER in ai_shell.run("list_models")
    assert "db reachable" in ai_shell.run("info")
    assert "SERVING (Ping" in ai_shell.run("ping")
    assert "deleted 1" in ai_shell.run(f"""delete_by_predicate {s} 'kind = "fin"'""")
    assert "deleted 1 of 1" in ai_shell.run(f"delete_keys {s} cat")
    assert f"dropped {s}" in ai_shell.run(f"drop_store {s}")


def test_rerank_from_the_shell(
    ai_shell: CapturedShell, store_name: str, cross_encoder: str
) -> None:
    ai_shell.run(f"create_store {store_name} --query-model {TEXT_MODEL}")
    ai_shell.run(f"upsert {store_name} 'a cat sleeps on the sofa' --id cat")
    ai_shell.run(f"upsert {store_name} 'the stock market fell today' --id news")
    reranked = ai_shell.run(
        f"search 'a sleeping cat' --store {store_name} -k 2 --rerank {cross_encoder}"
    )
    assert "rerank" in reranked
    assert reranked.index("│ cat ") < reranked.index("│ news ")
    ranked = ai_shell.run(f"rerank 'a cat' 'a kitten' 'a truck' --model {cross_encoder}")
    assert ranked.index("a kitten") < ranked.index("a truck")


def test_ai_completion_uses_the_servers_names(ai_shell: CapturedShell, store_name: str) -> None:
    ai_shell.run(f"create_store {store_name} --query-model {TEXT_MODEL}")
    shell = ai_shell.shell
    assert shell.completions(f"search 'a cat' --store {store_name[:5]}") == [store_name]
    assert CROSS_ENCODER in shell.completions("search x y --rerank stsb")
    assert shell.completions("create_store x --index-model all-minilm-l6-v2-i") == [
        "all-minilm-l6-v2-int8"
    ]
