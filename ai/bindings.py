"""How nachbar-ai keeps its state inside nachbar-db.

A store's model bindings are db store metadata, and each entry's original input is a reserved
metadata field, so the two processes can never disagree about what exists.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from nachbar.ai.errors import InvalidInputError
from nachbar.ai.vector_store import Metadata, MetadataValue

RESERVED_PREFIX = "_nachbar"
ORIGINAL_TEXT = "_nachbar_text"
ORIGINAL_IMAGE = "_nachbar_image"

_KEY_QUERY = "nachbar.ai.query_model"
_KEY_INDEX = "nachbar.ai.index_model"
_KEY_ORIGINAL = "nachbar.ai.store_original"
_KEY_SPACE = "nachbar.ai.space"


@dataclass(frozen=True)
class StoreBinding:
    query_model: str
    index_model: str
    store_original: bool
    space: str

    def to_store_metadata(self) -> dict[str, str]:
        return {
            _KEY_QUERY: self.query_model,
            _KEY_INDEX: self.index_model,
            _KEY_ORIGINAL: "true" if self.store_original else "false",
            _KEY_SPACE: self.space,
        }

    @staticmethod
    def from_store_metadata(metadata: Mapping[str, str]) -> StoreBinding | None:
        """None for a db store that nachbar-ai did not create."""
        if _KEY_QUERY not in metadata or _KEY_INDEX not in metadata:
            return None
        return StoreBinding(
            query_model=metadata[_KEY_QUERY],
            index_model=metadata[_KEY_INDEX],
            store_original=metadata.get(_KEY_ORIGINAL) == "true",
            space=metadata.get(_KEY_SPACE, ""),
        )


def content_id(payload: str | bytes) -> str:
    """A stable id from the input itself, so re-sending the same input is an update."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    kind = "t" if isinstance(payload, str) else "i"
    return f"{kind}-{hashlib.sha256(data).hexdigest()[:32]}"


def check_user_metadata(metadata: Mapping[str, MetadataValue], where: str) -> None:
    for key in metadata:
        if key.startswith(RESERVED_PREFIX):
            raise InvalidInputError(
                f"{where}: metadata key {key!r} is reserved (keys starting with "
                f"{RESERVED_PREFIX!r} hold nachbar's own data); rename it"
            )


def with_original(metadata: Metadata, payload: str | bytes, keep: bool) -> Metadata:
    """The metadata to store for an input: the user's, plus the input itself when kept."""
    if not keep:
        return metadata
    key = ORIGINAL_TEXT if isinstance(payload, str) else ORIGINAL_IMAGE
    return {**metadata, key: payload}


def split_original(metadata: Metadata) -> tuple[Metadata, str | bytes | None]:
    """User metadata without the reserved fields, and the stored original if any."""
    original: str | bytes | None = None
    user: Metadata = {}
    for key, value in metadata.items():
        if (key == ORIGINAL_TEXT and isinstance(value, str)) or (
            key == ORIGINAL_IMAGE and isinstance(value, bytes)
        ):
            original = value
        elif not key.startswith(RESERVED_PREFIX):
            user[key] = value
    return user, original


@dataclass(frozen=True)
class Bound:
    """A store's binding, valid for as long as the store keeps this id."""

    store_id: int
    binding: StoreBinding


class BindingCache:
    """Store name -> the binding of the store last seen under it, with its store id.

    A binding never changes during a store's life and store ids are never reused, so an entry
    is right until the name is dropped and created again; every request made with a cached
    entry carries its store id and is refused by the vector store when the name denotes
    another store by then (see AIPipeline). Bounded: the least recently used go first.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Bound] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Bound | None:
        with self._lock:
            bound = self._entries.get(name)
            if bound is not None:
                self._entries.move_to_end(name)
            return bound

    def put(self, name: str, bound: Bound) -> None:
        with self._lock:
            self._entries[name] = bound
            self._entries.move_to_end(name)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def forget(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def __len__(self) -> int:
        return len(self._entries)
