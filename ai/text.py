"""Tokenization: a model's tokenizer.json, an explicit policy for over-long text, padding.

Cost is bounded per text, whatever its length: a text over `max_text_bytes` is refused under
Truncation.ERROR before it is tokenized, and cut to that many bytes under Truncation.TRUNCATE.
A long text is then tokenized from its beginning only, in a window that doubles until it holds
more tokens than the model's limit (or the whole text): that decides whether it is too long,
and its first tokens are the same as the whole text's, because the window ends between words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from nachbar.ai.errors import (
    InputTooLongError,
    InvalidInputError,
    ModelUnavailableError,
    TextTooLargeError,
)
from nachbar.ai.limits import DEFAULT_MAX_TEXT_BYTES

IntArray = npt.NDArray[np.int64]

# The first window of a long text: characters per token of the limit (prose runs about 4-6),
# and at least this many characters, so that texts of a page or two are measured whole.
_WINDOW_CHARS_PER_TOKEN = 4
_MIN_WINDOW_CHARS = 4096
# How far back from the window's end to look for a space to cut at (longer words are cut).
_WORD_SEARCH_CHARS = 256

# Tried in order when neither tokenizer.json nor config.json names the padding token.
_PAD_TOKEN_CANDIDATES = ("[PAD]", "<pad>", "<|endoftext|>")


class Truncation(StrEnum):
    """What to do with text longer than the model's token limit. Never silent."""

    ERROR = "error"
    TRUNCATE = "truncate"


@dataclass(frozen=True)
class TokenizedText:
    """One tokenized input (a text, or a query/document pair), special tokens included."""

    ids: IntArray
    type_ids: IntArray

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class _Bounded:
    """A text, or as much of its beginning as decides its first `max_tokens` tokens."""

    text: str
    complete: bool


@dataclass(frozen=True)
class TokenBatch:
    """Padded model inputs, each [batch, sequence] int64."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray

    def feeds(self) -> dict[str, IntArray]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


class TextTokenizer:
    """A model's tokenizer with the model's token limit enforced per `Truncation` policy.

    Thread-safe: the wrapped tokenizers are never reconfigured after construction.
    """

    def __init__(
        self,
        tokenizer_json: Path,
        *,
        model_name: str,
        max_tokens: int,
        config_json: Path | None = None,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    ) -> None:
        self.model_name = model_name
        self.max_tokens = max_tokens
        self.max_text_bytes = max_text_bytes
        self._exact = _load(tokenizer_json, model_name)
        self.pad_id = _pad_id(self._exact, config_json)
        # Hub tokenizer.json files often carry their own truncation/padding settings (e.g. a
        # fixed 128); both are cleared so that lengths are measured, and limits applied, here.
        self._exact.no_truncation()
        self._exact.no_padding()
        # A second instance does the cutting, so neither is mutated while threads share them.
        self._cutting = _load(tokenizer_json, model_name)
        self._cutting.no_padding()
        self._cutting.enable_truncation(max_length=max_tokens, strategy="longest_first")

    def encode(self, texts: Sequence[str], truncation: Truncation) -> list[TokenizedText]:
        """Tokenize texts; raise InputTooLongError for one over the limit under Truncation.ERROR."""
        admitted = [
            self._admit(text, f"Input {index}", truncation) for index, text in enumerate(texts)
        ]
        bounded = [self._bound(text) for text in admitted]
        encodings = self._encode(
            [b.text for b in bounded],
            [b.complete for b in bounded],
            truncation,
            [f"Input {index}" for index in range(len(texts))],
        )
        return [_to_tokenized(encoding) for encoding in encodings]

    def encode_pairs(
        self, query: str, documents: Sequence[str], truncation: Truncation
    ) -> list[TokenizedText]:
        """Tokenize (query, document) pairs for a cross-encoder, with segment ids 0 and 1.

        Under Truncation.TRUNCATE the longer side is cut first, which is the document in the
        usual short-query case; under Truncation.ERROR an over-long query or pair raises.
        When the query and a document are both over half the limit, which of them keeps the
        odd token of an odd budget is decided by the lengths of the beginnings tokenized.
        """
        query = self._admit(query, "The query", truncation)
        admitted = [
            self._admit(document, f"Document {index}", truncation)
            for index, document in enumerate(documents)
        ]
        bounded_query = self._bound(query)
        if truncation is Truncation.ERROR:
            # Checked on its own so the message blames the query, not every document.
            self._encode([bounded_query.text], [bounded_query.complete], truncation, ["The query"])
        bounded = [self._bound(document) for document in admitted]
        encodings = self._encode(
            [(bounded_query.text, b.text) for b in bounded],
            [bounded_query.complete and b.complete for b in bounded],
            truncation,
            [f"The query with document {index}" for index in range(len(documents))],
        )
        return [_to_tokenized(encoding) for encoding in encodings]

    def pad(self, items: Sequence[TokenizedText]) -> TokenBatch:
        """Right-pad to the longest item; padded positions get attention_mask 0."""
        width = max(item.length for item in items)
        input_ids = np.full((len(items), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), width), dtype=np.int64)
        token_type_ids = np.zeros((len(items), width), dtype=np.int64)
        for row, item in enumerate(items):
            input_ids[row, : item.length] = item.ids
            attention_mask[row, : item.length] = 1
            token_type_ids[row, : item.length] = item.type_ids
        return TokenBatch(input_ids, attention_mask, token_type_ids)

    def _admit(self, text: object, what: str, truncation: Truncation) -> str:
        """`text` checked, and within the byte cap: refused over it, or cut to it."""
        _require_text(text, what)
        assert isinstance(text, str)  # _require_text made sure
        if len(text) * 4 <= self.max_text_bytes:  # no character takes more than 4 bytes
            return text
        encoded = text.encode("utf-8", errors="surrogatepass")
        if len(encoded) <= self.max_text_bytes:
            return text
        if truncation is Truncation.ERROR:
            raise TextTooLargeError(
                model=self.model_name, size=len(encoded), limit=self.max_text_bytes, what=what
            )
        return encoded[: self.max_text_bytes].decode("utf-8", errors="ignore")

    def _bound(self, text: str) -> _Bounded:
        """A beginning of `text` that ends between words and holds more tokens than the limit
        (the first of the doubling windows that does), or all of `text` if none does."""
        window = max(self.max_tokens * _WINDOW_CHARS_PER_TOKEN, _MIN_WINDOW_CHARS)
        while len(text) > window:
            head = _head(text, window)
            tokens = len(self._exact.encode(head, add_special_tokens=False).ids)
            if tokens > self.max_tokens:
                return _Bounded(head, complete=False)
            window *= 2
        return _Bounded(text, complete=True)

    def _encode(
        self,
        inputs: list[str] | list[tuple[str, str]],
        complete: list[bool],
        truncation: Truncation,
        names: list[str],
    ) -> list[Encoding]:
        encodings: list[Encoding] = self._exact.encode_batch(inputs)
        too_long = [i for i, e in enumerate(encodings) if len(e.ids) > self.max_tokens]
        if not too_long:
            return encodings
        if truncation is Truncation.ERROR:
            first = too_long[0]
            raise InputTooLongError(
                model=self.model_name,
                token_count=len(encodings[first].ids),
                limit=self.max_tokens,
                what=names[first],
                at_least=not complete[first],
            )
        cut: list[Encoding] = self._cutting.encode_batch([inputs[i] for i in too_long])
        for index, encoding in zip(too_long, cut, strict=True):
            encodings[index] = encoding
        return encodings


def _head(text: str, chars: int) -> str:
    """The first `chars` characters of `text`, cut back to the last whitespace among them so
    that no word is split (a word longer than the search is cut where it stands)."""
    for end in range(chars, max(chars - _WORD_SEARCH_CHARS, 0), -1):
        if text[end].isspace():
            return text[:end]
    return text[:chars]


def _require_text(text: object, what: str) -> None:
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be text, got {type(text).__name__}.")
    if not text.strip():
        raise InvalidInputError(f"{what} is empty; send non-empty text.")


def _to_tokenized(encoding: Encoding) -> TokenizedText:
    return TokenizedText(
        ids=np.asarray(encoding.ids, dtype=np.int64),
        type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
    )


def _load(path: Path, model_name: str) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for unreadable files
        raise ModelUnavailableError(
            f"The tokenizer of model {model_name!r} cannot be read. Delete the model's files "
            "and fetch or build them again.",
            detail=f"{path}: {error}",
        ) from error


def _pad_id(tokenizer: Tokenizer, config_json: Path | None) -> int:
    padding = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"])
    if config_json is not None and config_json.is_file():
        config = json.loads(config_json.read_text(encoding="utf-8"))
        for section in (config, config.get("text_config") or {}):
            pad = section.get("pad_token_id")
            if isinstance(pad, int):
                return pad
    for token in _PAD_TOKEN_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    # Every position past the end is masked out, so the id only has to exist in the vocabulary.
    return 0
