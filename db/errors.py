"""Errors raised by nachbar.db.

Every error carries a `message` written for the person who sent the request: it names the store,
field or file involved and says what to do next. The server maps each class to one status code.
"""

from __future__ import annotations


class DBError(Exception):
    """Base class of every error nachbar.db raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreNotFoundError(DBError):
    """The named store does not exist."""

    def __init__(self, store: str) -> None:
        super().__init__(
            f"store {store!r} does not exist; create it with CreateStore or pick one from "
            "ListStores"
        )
        self.store = store


class StoreChangedError(DBError):
    """The name no longer denotes the store the request expected: it was dropped and created
    again (store ids are never reused)."""

    def __init__(self, store: str, expected_id: int, actual_id: int) -> None:
        super().__init__(
            f"store {store!r} is not the store with id {expected_id} the request expected: it "
            f"was dropped and created again (now id {actual_id}); read it with GetStore and "
            "retry"
        )
        self.store = store


class StoreExistsError(DBError):
    """A store with that name exists already (and is not compatible with the request)."""

    def __init__(self, store: str, detail: str = "") -> None:
        message = f"store {store!r} already exists"
        message += f" {detail}" if detail else "; choose another name or drop it first"
        super().__init__(message)
        self.store = store


class InvalidArgumentError(DBError):
    """The request is malformed: bad name, dimension, vector, metadata, filter or limit."""


class NotFoundError(DBError):
    """Something inside a store that the request names does not exist (e.g. a predicate index)."""


class DataCorruptionError(DBError):
    """A file in the data directory is corrupt or truncated; the message names the file."""


class ResourceExhaustedError(DBError):
    """Out of memory or disk space, or a request beyond what the server will take on."""


class UnavailableError(DBError):
    """A backing service (a Milvus cluster) cannot be reached now; retrying later may work."""


class FailedPreconditionError(DBError):
    """The store is not in the state the request needs (e.g. a keyword search on a store
    without a keyword index); the message says what to set up first."""


class UnsupportedError(DBError):
    """The engine serving the request cannot do it (e.g. keyword search on Milvus); the message
    names the engine that can."""
