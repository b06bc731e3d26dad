"""The README must match the code: its commands parse, its Python runs against real names, its
generated tables are fresh, and it opens with the two fresh-machine commands."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nachbar.cli.main import build_parser
from nachbar.server.config import ai_parser, db_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)


def _shell_lines(language: str) -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang == language:
            joined = body.replace("\\\n", " ")
            lines += [ln.split("  #")[0].strip() for ln in joined.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_readme_opens_with_the_two_commands() -> None:
    first_block = BLOCKS[0]
    assert first_block[0] == "bash"
    commands = [ln.split("#")[0].strip() for ln in first_block[1].splitlines() if ln.strip()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    before = README.split("```")[0]
    assert before.count("\n") < 8, "the two commands must come first"
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_every_nachbar_command_in_the_readme_parses() -> None:
    parser = build_parser()
    lines = [ln for ln in _shell_lines("bash") if ln.startswith("nachbar ")]
    assert len(lines) >= 10
    for line in lines:
        words = shlex.split(line)[1:]
        try:
            if words[1:2] == ["serve"] and words[0] in ("db", "ai"):
                # `nachbar db|ai serve` hands its flags to the server's own parser.
                (db_parser if words[0] == "db" else ai_parser)().parse_args(words[2:])
            else:
                parser.parse_args(words)
        except SystemExit as error:
            pytest.fail(f"README command does not parse ({error.code}): {line}")


def test_scripts_named_in_the_readme_exist() -> None:
    for line in _shell_lines("bash"):
        if line.startswith("bash "):
            assert (REPO / line.split()[1]).is_file(), line


def test_python_examples_use_real_names() -> None:
    import nachbar.client as client

    blocks = [body for lang, body in BLOCKS if lang == "python"]
    assert blocks
    for body in blocks:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "nachbar.client":
                for alias in node.names:
                    assert hasattr(client, alias.name), alias.name
        for method in re.findall(r"\b(?:ai|db)\.(\w+)\(", body):
            assert hasattr(client.AIClient, method) or hasattr(client.DBClient, method), method


def test_flag_and_model_tables_are_generated_from_the_code() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], check=False
    )
    assert result.returncode == 0, "README is stale: run `python scripts/gen_docs.py`"


def test_every_env_var_in_the_readme_is_real() -> None:
    from nachbar.server.config import ai_parser, db_parser

    known = set()
    for parser in (db_parser(), ai_parser()):
        for action in parser._actions:
            known |= set(re.findall(r"NACHBAR_[A-Z_]+", action.help or ""))
    known |= set(re.findall(r"NACHBAR_[A-Z_]+", (REPO / "cli" / "context.py").read_text()))
    # Variables of the test tooling, read where the README says they are.
    for tooling in ("tests/db/conftest.py", "scripts/test.sh"):
        known |= set(re.findall(r"NACHBAR_[A-Z_]+", (REPO / tooling).read_text()))
    for name in set(re.findall(r"NACHBAR_[A-Z_]+", README)):
        assert name in known, name


def test_typescript_example_uses_real_methods() -> None:
    source = (REPO / "clients" / "typescript" / "src" / "ai.ts").read_text()
    blocks = [body for lang, body in BLOCKS if lang == "typescript"]
    assert blocks
    for body in blocks:
        for method in set(re.findall(r"\bai\.(\w+)\(", body)):
            assert re.search(rf"\b{method}\(", source), method
