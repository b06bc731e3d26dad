"""The committed generated code must be exactly what proto/generate.py makes from the .protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "protoc produced nothing"
    committed_dir = REPO / "proto"
    committed = sorted(p.relative_to(committed_dir) for p in committed_dir.rglob("*_pb2*.py*"))
    assert generated == committed
    stale = [
        str(p) for p in generated if (tmp_path / p).read_bytes() != (committed_dir / p).read_bytes()
    ]
    assert not stale, f"regenerate with `python proto/generate.py`: {stale}"
