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


def test_fetch_puts_a_hub_model_in_the_cache_the_server_reads(run_cli: Cli, tmp_path: Path) -> None:
    from nachbar.ai.models import ModelManager
    from nachbar.ai.registry import get_spec
    from tests.ai.tiny_models import populate_hub_cache

    spec = get_spec("BAAI/bge-small-en-v1.5")
    # The suite runs with HF_HUB_OFFLINE=1: nothing is downloaded, so the empty cache fails
    # with the reason, and a filled one (as a download leaves it) is found.
    empty = run_cli("models", "fetch", spec.name, "--model-dir", str(tmp_path / "empty"))
    assert empty.code == 1
    assert "HF_HUB_OFFLINE" in empty.err and spec.name in empty.err
    populate_hub_cache(tmp_path / "hub", [spec])
    fetched = run_cli("models", "fetch", spec.name, "--model-dir", str(tmp_path), "--json")
    assert fetched.code == 0, fetched.err
    (model,) = json.loads(fetched.out)["models"]
    assert model["name"] == spec.name
    assert Path(model["path"]).is_relative_to(tmp_path / "hub")
    with ModelManager(tmp_path) as manager:  # no downloads: the cache is enough
        assert manager.embed(spec.name, ["cat"]).shape == (1, 384)


def test_fetch_refuses_built_and_unknown_models(run_cli: Cli) -> None:
    built = run_cli("models", "fetch", TEXT_MODEL)
    assert built.code == 2 and "nachbar models build --only" in built.err
    unknown = run_cli("models", "fetch", "gpt-17")
    assert unknown.code == 2 and "gpt-17" in unknown.err
