"""The one table that turns domain errors into gRPC status codes.

Every servicer method is wrapped by `map_errors`: a domain error becomes its status with the
error's own message; anything unexpected becomes INTERNAL with a request id that is logged with
the traceback.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from nachbar.ai import errors as ai_errors
from nachbar.ai import vector_store
from nachbar.db import errors as db_errors

log = logging.getLogger("nachbar.server")


class RequestError(Exception):
    """A request that cannot be converted to a domain call (a missing or malformed field)."""


class NotReadyError(Exception):
    """The service cannot serve yet (models loading, db unreachable)."""


class UpstreamError(Exception):
    """A status another service answered (nachbar-db, for nachbar-ai), relayed as it came."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Overloaded(Exception):
    """Admission control turned a request away (a full queue, the in-flight byte budget)."""


# Most specific first: the first matching class wins.
ERROR_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (db_errors.StoreNotFoundError, grpc.StatusCode.NOT_FOUND),
    (db_errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (db_errors.StoreExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (db_errors.StoreChangedError, grpc.StatusCode.ABORTED),
    (db_errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (db_errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (db_errors.DataCorruptionError, grpc.StatusCode.DATA_LOSS),
    (ai_errors.ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (vector_store.StoreNotFoundError, grpc.StatusCode.NOT_FOUND),
    (vector_store.StoreChangedError, grpc.StatusCode.ABORTED),
    (ai_errors.ModelUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.IncompatibleModelsError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.InputTooLongError, grpc.StatusCode.OUT_OF_RANGE),
    (ai_errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(error: BaseException) -> grpc.StatusCode | None:
    # Errors relayed from the db keep the db's status.
    if isinstance(error, UpstreamError):
        return error.code
    for cls, code in ERROR_TABLE:
        if isinstance(error, cls):
            return code
    return None


F = TypeVar("F", bound=Callable[..., Any])


def abort_for(context: grpc.ServicerContext, error: Exception, where: str) -> NoReturn:
    """End the RPC with the status the table gives `error` (INTERNAL, logged, if none)."""
    code = status_for(error)
    if code is None:
        request_id = uuid.uuid4().hex[:12]
        log.error("internal error in %s (request id %s)", where, request_id, exc_info=error)
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id}); the server log has the details",
        )
    message = getattr(error, "message", None) or str(error)
    context.abort(code, message)


def map_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:  # the one place errors become statuses
            abort_for(context, error, method.__name__)

    return wrapper  # type: ignore[return-value]


def servicer(cls: type) -> type:
    """Wrap every RPC method (CamelCase, as gRPC names them) of a servicer class with
    `map_errors`; other methods stay plain."""
    for name, value in list(vars(cls).items()):
        if callable(value) and name[:1].isupper():
            setattr(cls, name, map_errors(value))
    return cls
