"""Where nachbar-ai keeps adapters and re-scorers: a companion store in nachbar-db.

Each store's trained models live in one db store of the same dimension, named
`_nachbar_trained.<hash of the store name>`: the weights as vectors (rows of `dimension`
floats, exact index, L2 so values are stored as given) and one header entry per model with its
description as metadata. Both db engines keep vectors and small metadata, so this works on the
embedded engine and on Milvus alike (Milvus caps an entry's metadata at 64 KiB, which weights
would exceed). A 384 x 384 adapter takes 385 entries (590 KB of floats); a re-scorer over
384-dimensional vectors about 880 (1.3 MB).

Writes are rows first, header last: a model without its header is invisible and a failed save
deletes its rows, so a failed training leaves nothing readable behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from nachbar.ai.tailoring import (
    Artifact,
    Kind,
    TrainedInfo,
    info_from_metadata,
    info_metadata,
    pack,
    unpack,
)
from nachbar.ai.vector_store import FloatArray, StoreNotFoundError
from nachbar.server.ai_store import DBVectorStore
from nachbar.v1 import common_pb2, db_pb2
from nachbar.v1.codec import fill_metadata, metadata_from_proto

COMPANION_PREFIX = "_nachbar_trained."
FOR_STORE_KEY = "nachbar.ai.trained_for"
ROLE_FIELD = "kind"
# Floats per write or read request, well under the default message limit.
FLOATS_PER_REQUEST = 512 * 1024
METRIC_NAMES = {
    common_pb2.METRIC_COSINE: "cosine",
    common_pb2.METRIC_L2: "l2",
    common_pb2.METRIC_INNER_PRODUCT: "ip",
}


def companion_name(store: str) -> str:
    return COMPANION_PREFIX + hashlib.sha256(store.encode("utf-8")).hexdigest()[:32]


def _header_id(kind: Kind, name: str) -> str:
    return f"{kind.value}/{name}"


def _row_ids(kind: Kind, name: str, rows: int) -> list[str]:
    return [f"{kind.value}/{name}/{i}" for i in range(rows)]


class DBTrainedHome:
    """nachbar.ai.tailoring.TrainedHome over nachbar-db."""

    def __init__(self, db: DBVectorStore) -> None:
        self._db = db

    # -- trained models ------------------------------------------------------------------------

    def save(self, store: str, artifact: Artifact) -> None:
        info = artifact.info
        rows, shapes = pack(artifact.arrays, info.dimension)
        companion = self._companion(store, info.dimension)
        row_ids = _row_ids(info.kind, info.name, len(rows))
        per_request = max(1, FLOATS_PER_REQUEST // info.dimension)
        try:
            for start in range(0, len(rows), per_request):
                request = db_pb2.UpsertRequest(store=companion)
                for entry_id, row in zip(
                    row_ids[start : start + per_request],
                    rows[start : start + per_request],
                    strict=True,
                ):
                    request.entries.add(id=entry_id, vector=row.tolist())
                self._db.call("Upsert", request)
            header = db_pb2.UpsertRequest(store=companion)
            entry = header.entries.add(
                id=_header_id(info.kind, info.name), vector=[0.0] * info.dimension
            )
            fill_metadata(entry.metadata, {**info_metadata(info, shapes), "rows": len(rows)})
            self._db.call("Upsert", header)
        except Exception:
            self._delete(companion, row_ids)
            raise

    def load(self, store: str, kind: Kind, name: str) -> Artifact | None:
        companion = companion_name(store)
        try:
            response = self._db.call(
                "GetKey", db_pb2.GetKeyRequest(store=companion, ids=[_header_id(kind, name)])
            )
        except StoreNotFoundError:
            return None
        if not response.entries:
            return None
        metadata = metadata_from_proto(response.entries[0].metadata)
        info, shapes = info_from_metadata(metadata)
        count = int(metadata["rows"])  # type: ignore[arg-type]
        _, rows, missing = self._read_vectors(companion, _row_ids(kind, name, count), 0)
        if missing:
            return None  # dropped while being read
        return Artifact(info, unpack(rows, shapes))

    def infos(self, store: str, kind: Kind) -> list[TrainedInfo]:
        condition = common_pb2.Condition(field=ROLE_FIELD, op=common_pb2.Condition.OP_EQ)
        condition.value.string_value = kind.value
        out: list[TrainedInfo] = []
        token = ""
        while True:
            request = db_pb2.GetByPredicateRequest(
                store=companion_name(store), limit=100, page_token=token
            )
            request.filter.condition.CopyFrom(condition)
            try:
                page = self._db.call("GetByPredicate", request)
            except StoreNotFoundError:
                return []
            out.extend(info_from_metadata(metadata_from_proto(e.metadata))[0] for e in page.entries)
            token = page.next_page_token
            if not token:
                return out

    def drop(self, store: str, kind: Kind, name: str) -> bool:
        companion = companion_name(store)
        try:
            response = self._db.call(
                "GetKey", db_pb2.GetKeyRequest(store=companion, ids=[_header_id(kind, name)])
            )
        except StoreNotFoundError:
            return False
        if not response.entries:
            return False
        metadata = metadata_from_proto(response.entries[0].metadata)
        count = int(metadata["rows"])  # type: ignore[arg-type]
        # Header first: the model is gone the moment it is, whatever happens to the rows.
        self._delete(companion, [_header_id(kind, name)])
        self._delete(companion, _row_ids(kind, name, count))
        return True

    def drop_all(self, store: str) -> None:
        self._db.call(
            "DropStore", db_pb2.DropStoreRequest(store=companion_name(store), missing_ok=True)
        )

    # -- the store's vectors -------------------------------------------------------------------

    def store_metric(self, store: str) -> str:
        info = self._db.call("GetStore", db_pb2.GetStoreRequest(store=store)).store
        return METRIC_NAMES.get(info.metric, "cosine")

    def vectors(
        self, store: str, ids: Sequence[str], *, expected_store_id: int
    ) -> tuple[list[str], FloatArray, list[str]]:
        return self._read_vectors(store, ids, expected_store_id)

    def scan(
        self, store: str, limit: int, *, expected_store_id: int
    ) -> tuple[list[str], FloatArray]:
        ids: list[str] = []
        parts: list[FloatArray] = []
        token = ""
        while len(ids) < limit:
            request = db_pb2.GetByPredicateRequest(
                store=store,
                limit=min(1000, limit - len(ids)),
                page_token=token,
                include_vectors=True,
                include_metadata=False,
                expected_store_id=expected_store_id,
            )
            page = self._db.call("GetByPredicate", request)
            ids.extend(e.id for e in page.entries)
            if page.entries:
                parts.append(np.asarray([list(e.vector) for e in page.entries], np.float32))
            token = page.next_page_token
            if not token:
                break
        if not parts:
            return [], np.zeros((0, 0), np.float32)
        return ids, np.concatenate(parts)

    # -- internals -----------------------------------------------------------------------------

    def _companion(self, store: str, dimension: int) -> str:
        name = companion_name(store)
        request = db_pb2.CreateStoreRequest(
            store=name,
            dimension=dimension,
            metric=common_pb2.METRIC_L2,
            index=common_pb2.IndexConfig(exact=common_pb2.ExactParams()),
            predicate_indexes=[ROLE_FIELD],
            store_metadata={FOR_STORE_KEY: store},
            if_not_exists=True,
        )
        self._db.call("CreateStore", request)
        return name

    def _read_vectors(
        self, store: str, ids: Sequence[str], expected_store_id: int
    ) -> tuple[list[str], FloatArray, list[str]]:
        found: list[str] = []
        missing: list[str] = []
        rows: list[list[float]] = []
        per_request = 500
        for start in range(0, len(ids), per_request):
            request = db_pb2.GetKeyRequest(
                store=store,
                ids=list(ids[start : start + per_request]),
                include_vectors=True,
                include_metadata=False,
                expected_store_id=expected_store_id,
            )
            response = self._db.call("GetKey", request)
            found.extend(e.id for e in response.entries)
            rows.extend(list(e.vector) for e in response.entries)
            missing.extend(response.missing_ids)
        array = np.asarray(rows, np.float32) if rows else np.zeros((0, 0), np.float32)
        return found, array, missing

    def _delete(self, store: str, ids: list[str]) -> None:
        for start in range(0, len(ids), 10_000):
            self._db.call(
                "DeleteKeys", db_pb2.DeleteKeysRequest(store=store, ids=ids[start : start + 10_000])
            )
