"""The one error table: every failed request gets a status, a request id in its message and in
the server log, and no server directory in what the client sees."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from nachbar.ai.errors import InvalidInputError, ModelUnavailableError
from nachbar.server.errors import UpstreamError, keep_private, map_errors


class Aborted(Exception):
    pass


class FakeContext:
    """The part of grpc.ServicerContext that map_errors uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


def call_failing(error: Exception) -> FakeContext:
    @map_errors
    def Method(self: Any, request: Any, context: Any) -> None:
        raise error

    context = FakeContext()
    with pytest.raises(Aborted):
        Method(None, None, context)
    return context


def request_id(message: str) -> str:
    found = re.search(r"\(request id ([0-9a-f]{12})\)$", message)
    assert found is not None, message
    return found.group(1)


def test_domain_errors_carry_a_request_id_and_keep_their_detail_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "models"
    keep_private(model_dir, "<model-dir>")
    error = ModelUnavailableError(
        f"Model 'm' files are missing in {model_dir}/built/m.", detail=f"looked in {model_dir}"
    )
    with caplog.at_level(logging.INFO, logger="nachbar.server"):
        context = call_failing(error)
    assert context.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(tmp_path) not in context.details
    assert "missing in <model-dir>/built/m." in context.details
    rid = request_id(context.details)
    (record,) = [r for r in caplog.records if rid in r.getMessage()]
    assert record.levelno == logging.WARNING  # the operator has something to do
    assert f"looked in {model_dir}" in record.getMessage()


def test_caller_errors_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="nachbar.server"):
        context = call_failing(InvalidInputError("Input 0 is empty."))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details.startswith("Input 0 is empty. (request id ")
    rid = request_id(context.details)
    assert [r.levelno for r in caplog.records if rid in r.getMessage()] == [logging.INFO]


def test_unexpected_errors_are_internal_with_the_traceback_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="nachbar.server"):
        context = call_failing(KeyError("/secret/path"))
    assert context.code == grpc.StatusCode.INTERNAL
    assert "/secret/path" not in context.details
    rid = request_id(context.details.replace("; the server log has the details", ""))
    (record,) = [r for r in caplog.records if rid in r.getMessage()]
    assert record.exc_info is not None and "/secret/path" in str(record.exc_info[1])


def test_errors_relayed_from_the_db_keep_its_request_id() -> None:
    relayed = UpstreamError(
        grpc.StatusCode.NOT_FOUND, "store 'x' does not exist (request id 0123456789ab)"
    )
    context = call_failing(relayed)
    assert context.code == grpc.StatusCode.NOT_FOUND
    assert context.details == "store 'x' does not exist (request id 0123456789ab)"
