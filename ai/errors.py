"""Errors raised by the model layer.

Each class corresponds to one kind of failure the gRPC layer maps to one status code; the
messages are written for the person who sent the request and say what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence


class AIError(Exception):
    """Base class of every error the model layer raises on purpose."""


class ModelNotFoundError(AIError):
    """The name is not in the model registry."""

    def __init__(self, name: str, close_matches: Sequence[str] = ()) -> None:
        self.name = name
        self.close_matches = tuple(close_matches)
        hint = (
            f" Did you mean {', '.join(repr(m) for m in self.close_matches)}?"
            if self.close_matches
            else ""
        )
        super().__init__(
            f"Unknown model {name!r}.{hint} Run `nachbar models list` to see every model."
        )


class ModelUnavailableError(AIError):
    """The model is registered but its files cannot be used (missing, partial or corrupt)."""


class InvalidInputError(AIError):
    """An input cannot be embedded or scored as sent (empty, wrong modality, corrupt image...)."""


class ImageTooLargeError(InvalidInputError):
    """An image exceeds the byte or pixel cap; it is refused before it is decoded."""


class InputTooLongError(AIError):
    """Text exceeds the model's token limit and the truncation policy is `error`."""

    def __init__(self, *, model: str, token_count: int, limit: int, what: str) -> None:
        self.model = model
        self.token_count = token_count
        self.limit = limit
        self.what = what
        super().__init__(
            f"{what} is {token_count} tokens long, over the {limit}-token limit of model "
            f"{model!r}. Send shorter text, or set truncation=TRUNCATE to cut it to the limit."
        )


class IncompatibleModelsError(AIError):
    """Two models were paired whose vectors live in different embedding spaces."""
