"""Fixtures for the model runtime tests: a model directory full of tiny stand-in models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nachbar.ai.models import ModelManager
from tests.ai.tiny_models import built_specs, hub_specs, populate_hub_cache, write_model_files


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir whose hub cache and built/ folder hold a tiny stand-in for every model."""
    model_dir = tmp_path_factory.mktemp("tiny-models")
    populate_hub_cache(model_dir / "hub", hub_specs())
    for spec in built_specs():
        write_model_files(spec, model_dir / "built" / spec.name)
    return model_dir


@pytest.fixture
def tiny_manager(tiny_model_dir: Path) -> Iterator[ModelManager]:
    with ModelManager(tiny_model_dir, offline=True) as manager:
        yield manager
