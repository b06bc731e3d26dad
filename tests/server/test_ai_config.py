from __future__ import annotations

import pytest

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
