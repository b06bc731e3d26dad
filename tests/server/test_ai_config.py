from __future__ import annotations

import pytest

from nachbar.ai.limits import ImageDecode
from nachbar.server.config import parse_ai_config


def test_batch_flags_and_their_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_ai_config([]).batch_workers == 1
    monkeypatch.setenv("NACHBAR_BATCH_WORKERS", "3")
    monkeypatch.setenv("NACHBAR_MAX_BATCH_SIZE", "16")
    config = parse_ai_config([])
    assert (config.batch_workers, config.max_batch_size) == (3, 16)
    assert parse_ai_config(["--batch-workers", "0"]).batch_workers == 0  # the flag wins


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-workers", "-1"], "--batch-workers must be 0"),
        (["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
        (["--max-batch-wait-ms", "-2"], "--max-batch-wait-ms must not be negative"),
    ],
)
def test_bad_batch_settings_are_refused_at_parse_time(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_ai_config(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_downloads_are_off_unless_the_operator_allows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NACHBAR_ALLOW_DOWNLOADS", raising=False)
    assert parse_ai_config([]).allow_downloads is False
    assert parse_ai_config(["--allow-downloads"]).allow_downloads is True
    # The former flag still parses and means what it meant: no downloads.
    assert parse_ai_config(["--hub-offline"]).allow_downloads is False
    monkeypatch.setenv("NACHBAR_ALLOW_DOWNLOADS", "1")
    assert parse_ai_config([]).allow_downloads is True
    assert parse_ai_config(["--no-allow-downloads"]).allow_downloads is False


def test_limit_flags_and_their_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = parse_ai_config([])
    assert (defaults.max_loaded_models, defaults.max_inputs_per_request) == (4, 256)
    assert (defaults.max_text_bytes, defaults.max_image_pixels) == (65536, 40_000_000)
    flags = {
        "max_loaded_models": ("--max-loaded-models", "NACHBAR_MAX_LOADED_MODELS"),
        "max_inputs_per_request": ("--max-inputs-per-request", "NACHBAR_MAX_INPUTS_PER_REQUEST"),
        "max_text_bytes": ("--max-text-bytes", "NACHBAR_MAX_TEXT_BYTES"),
        "max_image_bytes": ("--max-image-bytes", "NACHBAR_MAX_IMAGE_BYTES"),
        "max_image_pixels": ("--max-image-pixels", "NACHBAR_MAX_IMAGE_PIXELS"),
        "image_decoders": ("--image-decoders", "NACHBAR_IMAGE_DECODERS"),
    }
    for field, (flag, env) in flags.items():
        monkeypatch.setenv(env, "7")
        assert getattr(parse_ai_config([]), field) == 7, env
        assert getattr(parse_ai_config([flag, "9"]), field) == 9, flag  # the flag wins
        monkeypatch.delenv(env)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-text-bytes", "0"], "--max-text-bytes must be at least 1"),
        (["--max-inputs-per-request", "0"], "--max-inputs-per-request must be at least 1"),
        (["--image-decoders", "-1"], "--image-decoders must be 0"),
        (["--max-loaded-models", "-1"], "--max-loaded-models must be 0"),
        (["--max-loaded-models", "1", "--models", "a,b"], "less than the 2 models"),
    ],
)
def test_bad_limits_are_refused_at_parse_time(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_ai_config(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_image_decode_mode_flag_and_its_environment_twin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_ai_config([]).image_decode is ImageDecode.DRAFT
    assert parse_ai_config(["--image-decode", "exact"]).image_decode is ImageDecode.EXACT
    monkeypatch.setenv("NACHBAR_IMAGE_DECODE", "exact")
    assert parse_ai_config([]).image_decode is ImageDecode.EXACT
    assert parse_ai_config(["--image-decode", "draft"]).image_decode is ImageDecode.DRAFT
    monkeypatch.setenv("NACHBAR_IMAGE_DECODE", "fast")
    with pytest.raises(SystemExit):
        parse_ai_config([])
    assert "takes draft or exact, not 'fast'" in capsys.readouterr().err
