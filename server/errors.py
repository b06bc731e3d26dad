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
from typing import Any, TypeVar

import grpc

from nachbar.ai import errors as ai_errors
from nachbar.client import errors as client_errors
from nachbar.db import errors as db_errors

log = logging.getLogger("nachbar.server")


class RequestError(Exception):
    """A request that cannot be converted to a domain call (a missing or malformed field)."""


class NotReadyError(Exception):
    """The service cannot serve yet (models loading, db unreachable)."""


# Most specific first: the first matching class wins.
ERROR_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (db_errors.StoreNotFoundError, grpc.StatusCode.NOT_FOUND),
    (db_errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (db_errors.StoreExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (db_errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (db_errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (db_errors.DataCorruptionError, grpc.StatusCode.DATA_LOSS),
    (db_errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ai_errors.ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ai_errors.ModelUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.IncompatibleModelsError, grpc.StatusCode.FAILED_PRECONDITION),
    (ai_errors.InputTooLongError, grpc.StatusCode.OUT_OF_RANGE),
    (ai_errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: BaseException) -> grpc.StatusCode | None:
    # Errors relayed from the db through the client keep the db's status.
    if isinstance(error, client_errors.NachbarError):
        return error.code
    for cls, code in ERROR_TABLE:
        if isinstance(error, cls):
            return code
    return None


F = TypeVar("F", bound=Callable[..., Any])


def map_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:  # the one place errors become statuses
            code = status_for(error)
            if code is None:
                request_id = uuid.uuid4().hex[:12]
                log.exception("internal error in %s (request id %s)", method.__name__, request_id)
                context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error (request id {request_id}); the server log has the details",
                )
            message = getattr(error, "message", None) or str(error)
            context.abort(code, message)

    return wrapper  # type: ignore[return-value]


def servicer(cls: type) -> type:
    """Wrap every RPC method (CamelCase, as gRPC names them) of a servicer class with
    `map_errors`; helpers the server itself calls, such as `db_reachable`, stay plain."""
    for name, value in list(vars(cls).items()):
        if callable(value) and name[:1].isupper():
            setattr(cls, name, map_errors(value))
    return cls
