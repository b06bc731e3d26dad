"""`nachbar models build` and `nachbar models list --local` (no server involved)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import TEXT_MODEL, Cli


def test_build_is_idempotent(run_cli: Cli, tmp_path: Path) -> None:
    first = run_cli("models", "build", "--model-dir", str(tmp_path), "--only", TEXT_MODEL, "--json")
    assert first.code == 0, first.err
    report = json.loads(first.out)
    assert report["models"] == [
        {"name": TEXT_MODEL, "path": str(tmp_path / "built" / TEXT_MODEL), "rebuilt": True}
    ]
    assert f"building model {TEXT_MODEL}" in first.err  # the builder's log, shown
    second = run_cli("models", "build", "--model-dir", str(tmp_path), "--only", TEXT_MODEL)
    assert second.code == 0
    assert f"{TEXT_MODEL}: already built, kept" in second.out

    local = json.loads(
        run_cli("models", "list", "--local", "--model-dir", str(tmp_path), "--json").out
    )
    available = {m["name"] for m in local if m["available"]}
    assert available == {TEXT_MODEL}


def test_build_refuses_unknown_names(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("models", "build", "--model-dir", str(tmp_path), "--only", "gpt-17")
    assert result.code == 2
    assert "gpt-17" in result.err and TEXT_MODEL in result.err  # names the buildable ones


def test_model_dir_without_local_is_a_usage_error(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("models", "list", "--model-dir", str(tmp_path))
    assert result.code == 2 and "--local" in result.err
