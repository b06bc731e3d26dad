"""Errors raised by the model layer.

Each class corresponds to one kind of failure the gRPC layer maps to one status code. The
message is written for the person who sent the request and says what to do next; `detail` holds
what only the operator should see (file paths, the underlying cause), which the server logs and
never sends.
"""

from __future__ import annotations

from collections.abc import Sequence


class AIError(Exception):
    """Base class of every error the model layer raises on purpose."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


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
    """Text exceeds the model's token limit and the truncation policy is `error`.

    `at_least`: only the text's beginning was tokenized (enough to know it is too long), so
    `token_count` is a lower bound.
    """

    def __init__(
        self, *, model: str, token_count: int, limit: int, what: str, at_least: bool = False
    ) -> None:
        self.model = model
        self.token_count = token_count
        self.limit = limit
        self.what = what
        count = f"at least {token_count}" if at_least else str(token_count)
        super().__init__(
            f"{what} is {count} tokens long, over the {limit}-token limit of model "
            f"{model!r}. Send shorter text, or set truncation=TRUNCATE to cut it to the limit."
        )


class TextTooLargeError(InputTooLongError):
    """Text exceeds the server's byte limit for one text and the truncation policy is `error`.

    Checked before tokenizing, so an oversized text costs no tokenizer memory.
    """

    def __init__(self, *, model: str, size: int, limit: int, what: str) -> None:
        self.model = model
        self.token_count = 0
        self.limit = limit
        self.what = what
        AIError.__init__(
            self,
            f"{what} is {size} bytes long, over this server's limit of {limit} bytes for one "
            "text (--max-text-bytes), far beyond any model's token limit. Send shorter text, "
            "or set truncation=TRUNCATE to embed its beginning.",
        )


class IncompatibleModelsError(AIError):
    """Two models were paired whose vectors live in different embedding spaces."""


class TrainedNotFoundError(AIError):
    """A store has no adapter or re-scorer of that name."""


class TrainedExistsError(AIError):
    """An adapter or re-scorer of that name is stored or training already."""


class StaleTrainedError(AIError):
    """An adapter or re-scorer no longer fits its store (the store was created again, or its
    space or dimension differ)."""


class TrainingBusyError(AIError):
    """The training queue is full."""
