"""The one table that turns domain errors into gRPC status codes.

Every servicer method is wrapped by `map_errors`: a domain error becomes its status with the
error's own message; anything unexpected becomes INTERNAL. Every failed request names its
request id (server/logs.py: the caller's `x-request-id`, or a new one), which ends the message
the client sees and starts the server's log line about it. The log line holds what clients
never see: an error's `detail` (file paths, causes) and, for INTERNAL, the traceback; the
server's own directories are replaced by their names in client messages.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from nachbar.ai import errors as ai_errors
from nachbar.ai import vector_store
from nachbar.db import errors as db_errors
from nachbar.server import auth
from nachbar.server.logs import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    new_request_id,
    valid_request_id,
)

log = logging.getLogger("nachbar.server")


class RequestError(Exception):
    """A request that cannot be converted to a domain call (a missing or malformed field)."""


class ResponseTooLargeError(Exception):
    """A read's response would exceed what the client can receive; refused before building."""


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
    (db_errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (db_errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (db_errors.UnsupportedError, grpc.StatusCode.UNIMPLEMENTED),
    (ai_errors.ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ai_errors.TrainedNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ai_errors.TrainedExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (ai_errors.StaleTrainedError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.TrainingBusyError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (vector_store.StoreNotFoundError, grpc.StatusCode.NOT_FOUND),
    (vector_store.StoreChangedError, grpc.StatusCode.ABORTED),
    (ai_errors.ModelUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.IncompatibleModelsError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.InputTooLongError, grpc.StatusCode.OUT_OF_RANGE),
    (ai_errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResponseTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (auth.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (auth.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)


# Statuses the operator may have to act on are logged as warnings; the rest are the caller's.
_OPERATOR_STATUSES = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
    }
)
# How a message names its request. Only relayed messages (nachbar-db's, through nachbar-ai)
# already end with one: the db's id is kept, so one id finds the request in both logs.
_REQUEST_ID = re.compile(rf" \(request id ({REQUEST_ID_PATTERN})\)$")

_private_paths: dict[str, str] = {}
_private_paths_lock = threading.Lock()


def keep_private(path: Path, name: str) -> None:
    """Show `path` (a server directory: data, models) to clients as `name`, e.g. <model-dir>."""
    with _private_paths_lock:
        for form in {str(path), str(Path(path).absolute()), str(Path(path).resolve())}:
            if form not in ("", ".", "/"):
                _private_paths[form] = name


def redact(message: str) -> str:
    """`message` with every private directory replaced by its name, longest paths first."""
    with _private_paths_lock:
        paths = sorted(_private_paths.items(), key=lambda item: -len(item[0]))
    for path, name in paths:
        message = message.replace(path, name)
    return message


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
    """End the RPC with the status the table gives `error` (INTERNAL, logged, if none). The
    client's message carries a request id; details (paths and such) stay in the server log."""
    code = status_for(error)
    message = getattr(error, "message", None) or str(error)
    # An error relayed from nachbar-db keeps the id the db logged it under.
    relayed = _REQUEST_ID.search(message)
    if relayed is not None:
        request_id, message = relayed.group(1), message[: relayed.start()]
    else:
        request_id = REQUEST_ID.get() or _callers_request_id(context) or new_request_id()
    if code is None:
        log.error("request %s: internal error in %s", request_id, where, exc_info=error)
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id}); the server log has the details",
        )
    detail = getattr(error, "detail", "")
    log.log(
        logging.WARNING if code in _OPERATOR_STATUSES else logging.INFO,
        "request %s: %s failed with %s: %s%s",
        request_id,
        where,
        code.name,
        message,
        f" [{detail}]" if detail else "",
    )
    context.abort(code, f"{redact(message)} (request id {request_id})")


def _callers_request_id(context: grpc.ServicerContext) -> str | None:
    """The caller's `x-request-id`, read here when no interceptor has (a plain server)."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return valid_request_id(value)
    return None


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
