"""One exception class per gRPC status code, so callers can `except NotFound:`."""

from __future__ import annotations

import grpc


class NachbarError(Exception):
    """A failed call. `code` is the gRPC status; `message` says what to do."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(NachbarError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(NachbarError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(NachbarError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(NachbarError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(NachbarError):
    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(NachbarError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(NachbarError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(NachbarError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(NachbarError):
    code = grpc.StatusCode.DATA_LOSS


class Internal(NachbarError):
    code = grpc.StatusCode.INTERNAL


class Aborted(NachbarError):
    """The request named a store that was dropped and created again since it was read
    (nachbar-db's expected_store_id): read it again and retry."""

    code = grpc.StatusCode.ABORTED


class Cancelled(NachbarError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(NachbarError):
    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[NachbarError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        DataLoss,
        Internal,
        Aborted,
        Cancelled,
        Unimplemented,
    )
}


def from_rpc_error(error: grpc.RpcError) -> NachbarError:
    """The typed exception for a failed call (works for sync and asyncio errors)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _BY_CODE.get(code, NachbarError)
    return cls(details or code.name, code)
