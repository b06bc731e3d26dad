"""The rooms keep their doors: what each folder may import (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Folder -> import prefixes its modules must not use.
FORBIDDEN = {
    "db": ("grpc", "nachbar.v1", "nachbar.ai", "nachbar.server", "nachbar.client", "nachbar.cli"),
    "ai": ("grpc", "nachbar.v1", "nachbar.db", "nachbar.server", "nachbar.client", "nachbar.cli"),
    # Glue between the generated code and the domain; clients are for users, not servers.
    "server": ("nachbar.client", "nachbar.cli"),
    "clients/python": ("nachbar.server", "nachbar.cli", "nachbar.db", "nachbar.ai"),
}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_imports_stay_inside_its_layer(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    wrong = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in files
        for module in imported_modules(path)
        if any(module == p or module.startswith(p + ".") for p in FORBIDDEN[folder])
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["codec.py", "defaults.py", "targets.py"])
def test_the_shared_modules_depend_on_the_generated_code_alone(module: str) -> None:
    modules = imported_modules(REPO / "proto" / "nachbar" / "v1" / module)
    nachbar = [m for m in modules if m.startswith("nachbar")]
    assert all(m == "nachbar.v1" or m.startswith("nachbar.v1.") for m in nachbar)
    assert not any(m == "grpc" or m.startswith("grpc.") for m in modules)
