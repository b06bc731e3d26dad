"""The Milvus engine: nachbar stores as Milvus collections, nachbar-db itself stateless.

pymilvus reaches milvus-lite in-process (a `*.db` path), a Milvus standalone server or a
distributed cluster (`http://host:19530`), or Zilliz Cloud, with only the URI changed. Several
nachbar-db processes may serve one cluster: every fact lives in Milvus.

Layout in Milvus (database `--milvus-db`):

    collection "nachbar_<escaped store name>"      one per store
        id      VARCHAR primary key (nachbar's string id, up to 1024 characters)
        vector  FLOAT_VECTOR(dimension), index HNSW(M, efConstruction) or FLAT, the store's metric
        meta    JSON: typed metadata (nachbar.db.milvus_filters has the layout)
        p<n>_t, p<n>_i, p<n>_f, p<n>_s   INT8, INT64, DOUBLE, VARCHAR: typed columns of the
                    fields the store was created with predicate indexes on (up to
                    MAX_TYPED_FIELDS), which filters on them read instead of the JSON
        properties: "nachbar.store" (JSON: name, store_id, dimension, metric, index,
                    store_metadata),
                    "nachbar.predicate_indexes" (JSON list of field names),
                    "nachbar.typed_fields" (JSON list: the fields of p0, p1, ...; absent on
                    collections made before typed columns, which have none)

Semantics are the embedded engine's (the tests under tests/db run over both):
- Filters are translated by nachbar.db.milvus_filters, exact for every type and missing field.
- Scores have nachbar's direction (cosine similarity, -squared L2, dot product), ties by id.
  Exact plans score in float64 from the vectors, as the embedded engine does; the HNSW plan keeps
  Milvus's float32 scores (what the wire carries anyway) and so fetches no vectors.
- Planner: a filtered search counts its matches first (a count of the same filter from the last
  COUNT_SECONDS is reused: the count only picks the plan); few matches are scored exactly here,
  more go to Milvus's HNSW with ef >= k, widened by the filter's selectivity (against the
  store's size, counted at most every STORE_SIZE_SECONDS); a short answer recounts and falls
  back to the exact scan, so a search returns exactly min(k, matches).
- Upsert reports inserted/updated by counting which of its ids exist first.

What differs (README "Engines"): a batch is validated whole, then written by one Milvus upsert,
which Milvus does not make atomic against readers or a crash half-way; metadata over
MAX_METADATA_BYTES is refused (Milvus caps a JSON value at 64 KiB); durability and consistency
are Milvus's (the consistency level is `--milvus-consistency`); counts, ListStores and
GetByPredicate pages cost Milvus queries; a predicate index declared when the store is created
gives its field typed columns (fast filters), one created later is recorded but its field is
filtered through the JSON (Milvus 2.3 cannot add a field to a collection; the answers are the
same); there is no keyword index, so hybrid and keyword-only search are refused with
UnsupportedError (the embedded engine has them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from nachbar.db import filters, validation
from nachbar.db import milvus_filters as mf
from nachbar.db.errors import (
    DBError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StoreChangedError,
    StoreExistsError,
    StoreNotFoundError,
    UnavailableError,
    UnsupportedError,
)
from nachbar.db.store import select_metadata
from nachbar.db.types import (
    ALL_METADATA,
    Entry,
    EntryBatch,
    ExactConfig,
    HnswConfig,
    HybridOptions,
    IndexConfig,
    Match,
    MetadataSelection,
    Metric,
    Page,
    SearchMode,
    SearchResult,
    StoreInfo,
    StoreSpec,
    UpsertResult,
)

DEFAULT_HYBRID = HybridOptions()
log = logging.getLogger("nachbar.db")

CONSISTENCY_LEVELS = ("strong", "bounded", "session", "eventually")
COLLECTION_PREFIX = "nachbar_"
STORE_PROPERTY = "nachbar.store"
PRED_INDEX_PROPERTY = "nachbar.predicate_indexes"
TYPED_FIELDS_PROPERTY = "nachbar.typed_fields"
# Fields with typed columns per store: 4 Milvus fields each, under Milvus's default limit of 64
# fields per collection.
MAX_TYPED_FIELDS = 8
# A VARCHAR column holds any metadata string: the whole JSON is at most MAX_METADATA_BYTES.
MAX_VARCHAR_BYTES = 65535
# The store's size sizes the filtered HNSW beam only, so a count this old is good enough.
STORE_SIZE_SECONDS = 5.0
# A filter's match count picks the search plan only (a short answer recounts), so one counted
# this long ago is reused: searches repeating a filter skip the count query.
COUNT_SECONDS = 5.0
MAX_CACHED_COUNTS = 1024
FORMAT = 1
MAX_ID_BYTES = 4096  # 1024 characters of up to 4 UTF-8 bytes
# Milvus refuses a JSON value over 64 KiB (measured on a 2.3 server); checked here first so the
# caller hears which entry and what to do.
MAX_METADATA_BYTES = 65536
# A filtered search scores its matches here, exactly, when at most this many match: fetching a
# few hundred rows costs about what one Milvus search does, and gives recall 1.
EXACT_SCAN_MAX_ENTRIES = 1000
# Rows per Milvus call when fetching, looking up or deleting many.
BATCH = 1000
# Milvus's HNSW is asked for up to this ef when a filtered search came back short, before
# falling back to the exact scan.
RETRY_EF_FACTOR = 4
MAX_MILVUS_EF = 32768
MAX_FILTER_EF_FACTOR = 8.0
MAX_COLLECTION_NAME = 255
MAX_MILVUS_DIMENSION = 32768  # Milvus's default proxy.maxDimension
_METRICS = {Metric.COSINE: "COSINE", Metric.L2: "L2", Metric.INNER_PRODUCT: "IP"}

T = TypeVar("T")


@dataclass(frozen=True)
class MilvusSettings:
    uri: str
    token: str = ""
    db_name: str = ""
    consistency: str = "strong"
    timeout_seconds: float = 30.0


def collection_name(store: str) -> str:
    """The collection of a store: letters and digits kept, '_' '.' '-' escaped as _0 _1 _2 (a
    collection name may hold only letters, digits and '_'); a name that would grow past Milvus's
    255 characters is "_3" and a hash instead (the store's own name is in its properties)."""
    escaped = "".join(
        ch if ch.isascii() and ch.isalnum() else f"_{'_.-'.index(ch)}" for ch in store
    )
    if len(COLLECTION_PREFIX) + len(escaped) <= MAX_COLLECTION_NAME:
        return COLLECTION_PREFIX + escaped
    return COLLECTION_PREFIX + "_3" + hashlib.sha256(store.encode("utf-8")).hexdigest()


@dataclass
class _Store:
    """What data calls need of a store; cached per process (a store's spec never changes)."""

    collection: str
    spec: StoreSpec
    # Never reused for a name: the creation time in microseconds (below 2^53, so JavaScript
    # numbers hold it), later than any id the name had before.
    store_id: int
    # Field name -> prefix of its typed columns (nachbar.db.milvus_filters.columns_of).
    columns: dict[str, str] = field(default_factory=dict)


class MilvusEngine:
    """nachbar.db.interface.Engine on Milvus. Thread-safe (pymilvus clients are)."""

    def __init__(
        self, settings: MilvusSettings, filter_limits: filters.FilterLimits = filters.DEFAULT_LIMITS
    ) -> None:
        consistency = settings.consistency.lower()
        if consistency not in CONSISTENCY_LEVELS:
            raise InvalidArgumentError(
                f"Milvus consistency level {settings.consistency!r} is unknown; use one of "
                f"{', '.join(CONSISTENCY_LEVELS)}"
            )
        self.settings = settings
        self.filter_limits = filter_limits
        self._consistency = consistency.capitalize()
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._lite = False
        self._stores: dict[str, _Store] = {}
        # collection -> (entries, time.monotonic() when counted)
        self._sizes: dict[str, tuple[int, float]] = {}
        # (collection, filter expression) -> (matches, time.monotonic() when counted), oldest
        # use first
        self._counts: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._counts_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls, settings: MilvusSettings, filter_limits: filters.FilterLimits = filters.DEFAULT_LIMITS
    ) -> MilvusEngine:
        """Connect now, so that a wrong token or database stops the server at start. A cluster
        that cannot be reached (not up yet, or down later) makes requests UNAVAILABLE, and each
        request tries again, so nachbar-db recovers by itself once it is back."""
        engine = cls(settings, filter_limits)
        try:
            engine._connected()
        except UnavailableError as error:
            log.warning("%s; serving anyway, requests fail with UNAVAILABLE until it is", error)
        return engine

    # ---- connection ----------------------------------------------------------------------

    def _connected(self) -> Any:
        with self._client_lock:
            if self._closed:
                raise DBError("the Milvus engine is closed; open it again")
            if self._client is None:
                try:
                    from pymilvus import MilvusClient
                except ImportError:
                    raise DBError(
                        'the Milvus engine needs pymilvus: pip install "nachbar[milvus]"'
                    ) from None
                # pymilvus logs every failed call at ERROR (and sets its level on import); each
                # is translated and reported here.
                logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
                try:
                    client = MilvusClient(
                        uri=self.settings.uri,
                        token=self.settings.token,
                        db_name=self.settings.db_name,
                        timeout=min(self._timeout, 5.0),
                        # Its own channel, so that dropping a failed one really reconnects.
                        dedicated=True,
                    )
                    version = str(client.get_server_version(timeout=self._timeout))
                except Exception as error:
                    where = f"connecting to Milvus at {self.settings.uri}"
                    raise _translate(error, where) from None
                self._lite = version.startswith("milvus_lite")
                self._client = client
                log.info("connected to Milvus %s at %s", version, self.settings.uri)
            return self._client

    @property
    def _timeout(self) -> float:
        return self.settings.timeout_seconds

    def _call(self, action: Callable[[Any], T], what: str = "") -> T:
        client = self._connected()
        try:
            return action(client)
        except DBError:
            raise
        except Exception as error:
            translated = _translate(error, what)
            if isinstance(translated, UnavailableError):
                self._reconnect_later(client)
            raise translated from None

    def _reconnect_later(self, client: Any) -> None:
        """Drop a client whose channel failed: the next request connects afresh instead of
        waiting out gRPC's reconnect backoff."""
        with self._client_lock:
            if self._client is not client:
                return
            self._client = None
        try:
            client.close()
        except Exception:
            log.debug("closing a failed Milvus client failed", exc_info=True)

    # ---- stores --------------------------------------------------------------------------

    def create_store(
        self, spec: StoreSpec, *, if_not_exists: bool = False
    ) -> tuple[StoreInfo, bool]:
        spec = validation.store_spec(spec)
        name = spec.name
        if spec.keyword_fields is not None:
            raise _no_keywords(name)
        if spec.dimension > MAX_MILVUS_DIMENSION:
            raise InvalidArgumentError(
                f"store {name!r}: dimension {spec.dimension} is more than Milvus holds "
                f"({MAX_MILVUS_DIMENSION}); reduce the vectors' dimension or use the embedded "
                "engine"
            )
        existing = self._describe(name)
        if existing is None:
            typed = list(spec.predicate_indexes)[:MAX_TYPED_FIELDS]
            created = _Store(
                collection_name(name), spec, _new_store_id(), mf.columns_of(sorted(typed))
            )
            try:
                self._create_collection(created)
            except StoreExistsError:
                existing = self._describe(name)  # another process created it meanwhile
            else:
                log.info("created store %r (%d-d, %s) in Milvus", name, spec.dimension, spec.metric)
                return self._info(self._remember(created), count=0), True
        if existing is None:
            raise UnavailableError(f"store {name!r} was created and dropped at once; try again")
        same = (existing.spec.dimension, existing.spec.metric) == (spec.dimension, spec.metric)
        if if_not_exists and same:
            return self._info(self._remember(existing)), False
        detail = ""
        if if_not_exists:
            detail = (
                f"with dimension {existing.spec.dimension} and metric {existing.spec.metric}, "
                f"not {spec.dimension} and {spec.metric}; use another name or drop it first"
            )
        raise StoreExistsError(name, detail)

    def _create_collection(self, store: _Store) -> None:
        from pymilvus import DataType, MilvusClient

        spec, collection = store.spec, store.collection
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(mf.ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dimension)
        schema.add_field(mf.META_FIELD, DataType.JSON)
        for prefix in store.columns.values():
            schema.add_field(f"{prefix}_t", DataType.INT8)
            schema.add_field(f"{prefix}_i", DataType.INT64)
            schema.add_field(f"{prefix}_f", DataType.DOUBLE)
            schema.add_field(f"{prefix}_s", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
        index = MilvusClient.prepare_index_params()
        if isinstance(spec.index, HnswConfig):
            index.add_index(
                "vector",
                index_type="HNSW",
                metric_type=_METRICS[spec.metric],
                params={"M": spec.index.m, "efConstruction": spec.index.ef_construction},
            )
        else:
            index.add_index("vector", index_type="FLAT", metric_type=_METRICS[spec.metric])
        properties = {
            STORE_PROPERTY: _spec_json(spec, store.store_id),
            PRED_INDEX_PROPERTY: json.dumps(list(spec.predicate_indexes)),
            TYPED_FIELDS_PROPERTY: json.dumps(list(store.columns)),
        }
        try:
            self._call(
                lambda c: c.create_collection(
                    collection,
                    schema=schema,
                    index_params=index,
                    consistency_level=self._consistency,
                    properties=properties,
                    timeout=self._timeout,
                ),
                f"creating store {spec.name!r}",
            )
        except DBError as error:
            if "already exist" in error.message.lower():
                raise StoreExistsError(spec.name) from None
            raise

    def drop_store(
        self, name: str, *, missing_ok: bool = False, expected_store_id: int = 0
    ) -> bool:
        validation.store_name(name)
        collection = collection_name(name)
        self._stores.pop(name, None)
        self._sizes.pop(collection, None)
        current = self._describe(name)
        if current is None:
            if missing_ok:
                return False
            raise StoreNotFoundError(name)
        _check_id(current, expected_store_id)
        self._call(lambda c: c.drop_collection(collection, timeout=self._timeout))
        log.info("dropped store %r from Milvus", name)
        return True

    def list_stores(self) -> list[StoreInfo]:
        collections = self._call(lambda c: c.list_collections(timeout=self._timeout))
        out = []
        for collection in sorted(collections):
            if not collection.startswith(COLLECTION_PREFIX):
                continue
            try:
                description = self._describe_collection(collection)
                store = _store_from_properties(collection, description.get("properties") or {})
            except (_MissingCollectionError, ValueError):
                continue  # dropped meanwhile, or not a nachbar store
            if store is None or collection_name(store.spec.name) != collection:
                continue
            try:
                out.append(self._info(self._remember(store)))
            except StoreNotFoundError:
                continue
        return sorted(out, key=lambda info: info.name)

    def get_store(self, name: str) -> StoreInfo:
        validation.store_name(name)
        store = self._describe(name)
        if store is None:
            raise StoreNotFoundError(name)
        return self._info(self._remember(store))

    def _describe(self, name: str) -> _Store | None:
        """The store as Milvus has it now, or None when there is no such store."""
        collection = collection_name(name)
        try:
            description = self._describe_collection(collection)
        except _MissingCollectionError:
            return None
        try:
            store = _store_from_properties(collection, description.get("properties") or {})
        except ValueError as error:
            raise DBError(
                f"Milvus collection {collection!r} has a damaged nachbar spec: {error}"
            ) from None
        if store is None:
            raise StoreExistsError(
                name,
                f"as Milvus collection {collection!r}, which nachbar did not create; use another "
                "name",
            )
        return store

    def _describe_collection(self, collection: str) -> dict[str, Any]:
        description: dict[str, Any] = self._call(
            lambda c: c.describe_collection(collection, timeout=self._timeout)
        )
        return description

    def _remember(self, store: _Store) -> _Store:
        self._stores[store.spec.name] = store
        return store

    def _store(self, name: str, expected_store_id: int = 0) -> _Store:
        """The store, from the cache; with `expected_store_id`, as Milvus has it now (another
        nachbar-db may have dropped and created it again), and StoreChangedError unless it is
        that store."""
        validation.store_name(name)
        store = None if expected_store_id else self._stores.get(name)
        if store is None:
            store = self._describe(name)
            if store is None:
                self._stores.pop(name, None)
                raise StoreNotFoundError(name)
            self._remember(store)
        _check_id(store, expected_store_id)
        return store

    def _on_store(self, name: str, action: Callable[[_Store], T], expected_store_id: int = 0) -> T:
        """Run a data call; when the cached spec is stale (the store was dropped or replaced by
        another process), forget it and run once more with the current one."""
        store = self._store(name, expected_store_id)
        try:
            return action(store)
        except (_MissingCollectionError, _StaleStoreError):
            self._stores.pop(name, None)
        store = self._store(name, expected_store_id)
        try:
            return action(store)
        except _MissingCollectionError:
            self._stores.pop(name, None)
            raise StoreNotFoundError(name) from None
        except _StaleStoreError as error:
            raise DBError(f"store {name!r}: Milvus refused the request: {error}") from None

    def _info(self, store: _Store, count: int | None = None) -> StoreInfo:
        spec = store.spec
        if count is None:
            count = self._count(store.collection, "", spec.name)
        self._sizes[store.collection] = (count, time.monotonic())
        return StoreInfo(
            name=spec.name,
            dimension=spec.dimension,
            metric=spec.metric,
            index=spec.index,
            predicate_indexes=spec.predicate_indexes,
            store_metadata=dict(spec.store_metadata),
            count=count,
            # Milvus does not report a collection's bytes; this is the raw vectors' share.
            bytes_used=count * spec.dimension * 4,
            store_id=store.store_id,
        )

    # ---- writes --------------------------------------------------------------------------

    def upsert(
        self, name: str, entries: Sequence[Entry] | EntryBatch, *, expected_store_id: int = 0
    ) -> UpsertResult:
        def run(store: _Store) -> UpsertResult:
            ids, vectors, metas = validation.upsert_batch(store.spec, entries)
            rows = []
            for entry_id, vector, meta in zip(ids, vectors, metas, strict=True):
                stored = mf.encode_metadata(meta)
                size = mf.encoded_size(stored)
                if size > MAX_METADATA_BYTES:
                    raise InvalidArgumentError(
                        f"store {name!r}: entry {entry_id!r} has {size} bytes of metadata as "
                        f"Milvus JSON, over Milvus's limit of {MAX_METADATA_BYTES}; keep large "
                        "texts and images outside the store (for example store_original=false "
                        "and a reference in metadata)"
                    )
                row = {mf.ID_FIELD: entry_id, "vector": vector, mf.META_FIELD: stored}
                if store.columns:
                    row.update(mf.encode_columns(meta, store.columns))
                rows.append(row)
            # The ids are distinct (validated), so counting them is enough; a count answers
            # with one row, not with the ids.
            existing = sum(
                self._matching(store, mf.ids_in(ids[start : start + BATCH]))
                for start in range(0, len(ids), BATCH)
            )
            # A batch of new ids is inserted: Milvus's upsert is a delete plus an insert, and
            # the deletes would only cost (its compaction has to apply them).
            write = "upsert" if existing else "insert"
            self._data_call(
                store,
                lambda c: getattr(c, write)(store.collection, rows, timeout=self._timeout),
            )
            self._forget_counts(store)
            return UpsertResult(inserted=len(ids) - existing, updated=existing)

        return self._on_store(name, run, expected_store_id)

    def delete_keys(self, name: str, ids: Sequence[str], *, expected_store_id: int = 0) -> int:
        wanted = validation.entry_ids(ids, name)

        def run(store: _Store) -> int:
            present = sorted(self._existing(store, wanted))
            self._delete_ids(store, present)
            return len(present)

        return self._on_store(name, run, expected_store_id)

    def delete_by_predicate(
        self, name: str, filter: filters.Filter, *, expected_store_id: int = 0
    ) -> int:
        if filter is None:
            raise InvalidArgumentError(
                f"store {name!r}: DeleteByPredicate needs a filter; to delete everything, drop "
                "the store"
            )
        filters.validate(filter, self.filter_limits)

        def run(store: _Store) -> int:
            expr = mf.to_query(mf.translate(filter, store.columns))
            if expr is None:
                return 0
            ids = [row[mf.ID_FIELD] for row in self._scan(store, expr, [mf.ID_FIELD])]
            self._delete_ids(store, ids)
            return len(ids)

        return self._on_store(name, run, expected_store_id)

    def _delete_ids(self, store: _Store, ids: list[str]) -> None:
        for start in range(0, len(ids), BATCH):
            expr = mf.ids_in(ids[start : start + BATCH])

            def delete(client: Any, expr: str = expr) -> Any:
                return client.delete(store.collection, filter=expr, timeout=self._timeout)

            self._data_call(store, delete)
        self._forget_counts(store)

    def create_pred_index(self, name: str, fields: Sequence[str]) -> int:
        wanted = validation.field_names(fields, f"store {name!r}")

        def run(store: _Store) -> int:
            current = self._pred_indexes(store)
            new = [f for f in wanted if f not in current]
            if new:
                self._set_pred_indexes(store, current | set(new))
                untyped = [f for f in new if f not in store.columns]
                if untyped:
                    log.info(
                        "store %r: %s filtered through the JSON metadata; Milvus cannot add "
                        "typed columns to a collection, so declare predicate indexes when "
                        "creating a store",
                        name,
                        ", ".join(repr(f) for f in untyped),
                    )
            return len(new)

        return self._on_store(name, run)

    def drop_pred_index(self, name: str, fields: Sequence[str], *, missing_ok: bool = False) -> int:
        wanted = validation.field_names(fields, f"store {name!r}")

        def run(store: _Store) -> int:
            current = self._pred_indexes(store)
            missing = [f for f in wanted if f not in current]
            if missing and not missing_ok:
                indexed = ", ".join(repr(f) for f in sorted(current)) or "none"
                raise NotFoundError(
                    f"store {name!r} has no predicate index on "
                    f"{', '.join(repr(f) for f in missing)} (indexed fields: {indexed}); "
                    "set missing_ok to ignore fields without an index"
                )
            present = [f for f in wanted if f in current]
            if present:
                self._set_pred_indexes(store, current - set(present))
            return len(present)

        return self._on_store(name, run)

    def _pred_indexes(self, store: _Store) -> set[str]:
        current = self._describe(store.spec.name)
        if current is None:
            raise StoreNotFoundError(store.spec.name)
        return set(current.spec.predicate_indexes)

    def _set_pred_indexes(self, store: _Store, fields: set[str]) -> None:
        value = json.dumps(sorted(fields))
        self._data_call(
            store,
            lambda c: c.alter_collection_properties(
                store.collection, properties={PRED_INDEX_PROPERTY: value}, timeout=self._timeout
            ),
        )
        self._stores.pop(store.spec.name, None)

    # ---- reads ---------------------------------------------------------------------------

    def get_keys(
        self,
        name: str,
        ids: Sequence[str],
        *,
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
    ) -> tuple[list[Entry], list[str]]:
        wanted = validation.entry_ids(ids, name)
        metadata = validation.metadata_selection(name, metadata)

        def run(store: _Store) -> tuple[list[Entry], list[str]]:
            found = {e.id: e for e in self._fetch(store, wanted, include_vectors)}
            return (
                [_selected(found[i], metadata) for i in wanted if i in found],
                [i for i in wanted if i not in found],
            )

        return self._on_store(name, run, expected_store_id)

    def get_by_predicate(
        self,
        name: str,
        filter: filters.Filter | None,
        *,
        limit: int = 100,
        page_token: str = "",
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
    ) -> Page:
        validation.store_name(name)
        limit = validation.page_limit(name, limit)
        metadata = validation.metadata_selection(name, metadata)
        after = validation.decode_page_token(name, page_token)
        if filter is not None:
            filters.validate(filter, self.filter_limits)

        def run(store: _Store) -> Page:
            expr: mf.Expr = True if filter is None else mf.translate(filter, store.columns)
            if after is not None:
                expr = mf.all_of([expr, mf.id_after(after)])
            query = mf.to_query(expr)
            if query is None:
                return Page(entries=[], next_page_token="")
            fields = [mf.ID_FIELD, mf.META_FIELD] + (["vector"] if include_vectors else [])
            rows = self._first_rows(store, query, fields, limit + 1)
            entries = [_selected(_entry(row, include_vectors), metadata) for row in rows[:limit]]
            token = validation.encode_page_token(entries[-1].id) if len(rows) > limit else ""
            return Page(entries=entries, next_page_token=token)

        return self._on_store(name, run, expected_store_id)

    def _first_rows(
        self, store: _Store, expr: str, fields: list[str], count: int
    ) -> list[dict[str, Any]]:
        """The `count` rows with the smallest ids matching `expr`, in id order."""
        if self._lite:
            # milvus-lite answers a limited query with an arbitrary subset: take all and sort.
            rows = list(self._scan(store, expr, fields))
        else:
            # Milvus answers a limited query with the smallest primary keys (its query iterator
            # relies on that).
            rows = self._query(store, expr, fields, limit=count)
        rows.sort(key=lambda row: str(row[mf.ID_FIELD]))
        return rows[:count]

    def create_keyword_index(self, name: str, fields: Sequence[str]) -> tuple[bool, int]:
        raise _no_keywords(name)

    def drop_keyword_index(self, name: str, *, missing_ok: bool = False) -> bool:
        raise _no_keywords(name)

    def get_sim_n(
        self,
        name: str,
        query: np.ndarray | None,
        k: int,
        *,
        filter: filters.Filter | None = None,
        mode: SearchMode = SearchMode.AUTO,
        ef: int = 0,
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
        keywords: str = "",
        fusion: HybridOptions = DEFAULT_HYBRID,
    ) -> SearchResult:
        if keywords:
            raise _no_keywords(name)
        if query is None:
            query = np.zeros(0, dtype=np.float32)  # refused below as a wrong dimension
        k, ef, mode = validation.search_args(name, k, ef, mode)
        metadata = validation.metadata_selection(name, metadata)
        if filter is not None:
            filters.validate(filter, self.filter_limits)

        def run(store: _Store) -> SearchResult:
            spec = store.spec
            q = validation.vector(
                query, store=name, dimension=spec.dimension, metric=spec.metric, what="the query"
            )
            expr: mf.Expr = True if filter is None else mf.translate(filter, store.columns)
            condition = mf.to_query(expr)
            if condition is None:
                return SearchResult(matches=[], plan="exact")
            filtered = expr is not True
            graph = isinstance(spec.index, HnswConfig)
            if not graph:
                # FLAT is Milvus's brute force: exact, and min(k, matches) by construction.
                found = self._search(store, q, k, condition if filtered else "", 0, vectors=True)
                return self._result(spec, q, k, found, "exact", include_vectors)
            if mode == SearchMode.EXACT:
                return self._exact(store, q, k, condition, include_vectors)
            matching: int | None = None
            fresh = True
            if filtered:
                matching, fresh = self._filter_count(store, condition)
                if matching == 0 and not fresh:
                    matching, fresh = self._filter_count(store, condition, recount=True)
                if matching == 0:
                    return SearchResult(matches=[], plan="exact")
                if mode == SearchMode.AUTO and matching <= EXACT_SCAN_MAX_ENTRIES:
                    return self._exact(store, q, k, condition, include_vectors)
            want = k if matching is None else min(k, matching)
            assert isinstance(spec.index, HnswConfig)
            beam = max(ef or spec.index.ef_search, want)
            if matching is not None:
                # Milvus's filtered HNSW walks past the excluded entries: fewer matches near the
                # query need a wider beam for the same recall (x2 at 25%, x3.2 at 10%).
                total = max(matching, self._store_size(store))
                factor = min(MAX_FILTER_EF_FACTOR, math.sqrt(total / matching))
                beam = min(MAX_MILVUS_EF, math.ceil(beam * factor))
            approximate = condition if filtered else ""
            found = self._search(store, q, want, approximate, beam, vectors=include_vectors)
            if len(found) < want:
                if matching is None or not fresh:
                    matching, fresh = self._filter_count(store, condition, recount=True)
                    want = min(k, matching)
                if len(found) < want and beam < MAX_MILVUS_EF:
                    beam = min(MAX_MILVUS_EF, beam * RETRY_EF_FACTOR)
                    found = self._search(store, q, want, approximate, beam, vectors=include_vectors)
                if len(found) < want:
                    log.info(
                        "store %r: Milvus HNSW found %d of %d matches; scanning exactly",
                        name,
                        len(found),
                        want,
                    )
                    return self._exact(store, q, k, condition, include_vectors)
            return self._result(spec, q, want, found, "hnsw", include_vectors)

        result = self._on_store(name, run, expected_store_id)
        if metadata.everything:
            return result
        return replace(result, matches=[_selected(m, metadata) for m in result.matches])

    def _search(
        self, store: _Store, query: np.ndarray, limit: int, expr: str, ef: int, *, vectors: bool
    ) -> list[dict[str, Any]]:
        """Milvus's nearest rows, with their distance and, when `vectors`, their vector (to
        rescore exactly, or to return)."""
        params: dict[str, Any] = {"metric_type": _METRICS[store.spec.metric]}
        if ef:
            params["params"] = {"ef": ef}
        hits = self._data_call(
            store,
            lambda c: c.search(
                store.collection,
                data=[query.tolist()],
                filter=expr,
                limit=limit,
                output_fields=[mf.META_FIELD, "vector"] if vectors else [mf.META_FIELD],
                search_params=params,
                consistency_level=self._consistency,
                timeout=self._timeout,
            ),
        )
        return [{"id": hit["id"], "distance": hit["distance"], **hit["entity"]} for hit in hits[0]]

    def _exact(
        self, store: _Store, query: np.ndarray, k: int, expr: str, include_vectors: bool
    ) -> SearchResult:
        rows = list(self._scan(store, expr, [mf.ID_FIELD, mf.META_FIELD, "vector"]))
        return self._result(store.spec, query, k, rows, "exact", include_vectors)

    def _result(
        self,
        spec: StoreSpec,
        query: np.ndarray,
        want: int,
        rows: list[dict[str, Any]],
        plan: str,
        include_vectors: bool,
    ) -> SearchResult:
        """Matches best first, ties by id. The exact plan scores in float64 from the vectors,
        as the embedded engine does; the HNSW plan keeps Milvus's float32 scores (the wire
        carries float32 anyway), which spares fetching every candidate's vector."""
        if not rows:
            return SearchResult(matches=[], plan=plan)
        ids = [str(row[mf.ID_FIELD]) for row in rows]
        vectors = (
            np.asarray([row["vector"] for row in rows], dtype=np.float32)
            if "vector" in rows[0]
            else None
        )
        if plan == "exact":
            assert vectors is not None
            ranked = rank_exactly(ids, vectors, query, spec.metric, want)
        else:
            # Milvus's L2 is the squared distance; COSINE and IP are similarities already.
            sign = -1.0 if spec.metric == Metric.L2 else 1.0
            scores = [sign * float(row["distance"]) for row in rows]
            order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:want]
            ranked = [(i, scores[i]) for i in order]
        matches = [
            Match(
                id=ids[i],
                score=score,
                metadata=mf.decode_metadata(rows[i][mf.META_FIELD]),
                vector=vectors[i].copy() if include_vectors and vectors is not None else None,
            )
            for i, score in ranked
        ]
        return SearchResult(matches=matches, plan=plan)

    # ---- Milvus calls --------------------------------------------------------------------

    def _count(self, collection: str, expr: str, name: str) -> int:
        try:
            rows = self._call(
                lambda c: c.query(
                    collection,
                    filter=expr,
                    output_fields=["count(*)"],
                    consistency_level=self._consistency,
                    timeout=self._timeout,
                ),
                f"counting entries of store {name!r}",
            )
        except _MissingCollectionError:
            self._stores.pop(name, None)
            raise StoreNotFoundError(name) from None
        return int(rows[0]["count(*)"])

    def _matching(self, store: _Store, expr: str) -> int:
        """How many rows match `expr` (a data call: a stale store or an unloaded collection is
        handled as for queries)."""
        rows: list[dict[str, Any]] = self._data_call(
            store,
            lambda c: c.query(
                store.collection,
                filter=expr,
                output_fields=["count(*)"],
                consistency_level=self._consistency,
                timeout=self._timeout,
            ),
        )
        return int(rows[0]["count(*)"])

    def _filter_count(self, store: _Store, expr: str, *, recount: bool = False) -> tuple[int, bool]:
        """How many entries match `expr`, and whether that was counted now: a count of the last
        COUNT_SECONDS is reused unless `recount`. It only picks the plan and sizes the beam; the
        answers come from Milvus at the read's consistency level, and a short answer recounts."""
        key = (store.collection, expr)
        if not recount:
            with self._counts_lock:
                cached = self._counts.get(key)
            if cached is not None and time.monotonic() - cached[1] < COUNT_SECONDS:
                return cached[0], False
        count = self._matching(store, expr)
        with self._counts_lock:
            self._counts[key] = (count, time.monotonic())
            self._counts.move_to_end(key)
            while len(self._counts) > MAX_CACHED_COUNTS:
                self._counts.popitem(last=False)
        return count, True

    def _forget_counts(self, store: _Store) -> None:
        """After this process wrote to the store: its cached counts are off."""
        with self._counts_lock:
            for key in [key for key in self._counts if key[0] == store.collection]:
                del self._counts[key]
            self._sizes.pop(store.collection, None)

    def _store_size(self, store: _Store) -> int:
        """The store's entry count, counted at most every STORE_SIZE_SECONDS."""
        now = time.monotonic()
        cached = self._sizes.get(store.collection)
        if cached is not None and now - cached[1] < STORE_SIZE_SECONDS:
            return cached[0]
        size = self._count(store.collection, "", store.spec.name)
        self._sizes[store.collection] = (size, now)
        return size

    def _existing(self, store: _Store, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), BATCH):
            rows = self._query(store, mf.ids_in(ids[start : start + BATCH]), [mf.ID_FIELD])
            found.update(row[mf.ID_FIELD] for row in rows)
        return found

    def _fetch(self, store: _Store, ids: list[str], include_vectors: bool) -> list[Entry]:
        fields = [mf.ID_FIELD, mf.META_FIELD] + (["vector"] if include_vectors else [])
        out: list[Entry] = []
        for start in range(0, len(ids), BATCH):
            rows = self._query(store, mf.ids_in(ids[start : start + BATCH]), fields)
            out.extend(_entry(row, include_vectors) for row in rows)
        return out

    def _scan(self, store: _Store, expr: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        """Every row matching `expr`: by id pages on Milvus, at once on milvus-lite (which has
        no ordered pages and holds little)."""
        if self._lite:
            yield from self._query(store, expr, fields, limit=None)
            return
        after: str | None = None
        while True:
            page_expr = expr if after is None else f"({expr} and {mf.id_after(after)})"
            rows = self._query(store, page_expr, fields, limit=BATCH)
            yield from rows
            if len(rows) < BATCH:
                return
            after = max(row[mf.ID_FIELD] for row in rows)

    def _query(
        self, store: _Store, expr: str, fields: list[str], limit: int | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {} if limit is None else {"limit": limit}
        rows: list[dict[str, Any]] = self._data_call(
            store,
            lambda c: c.query(
                store.collection,
                filter=expr,
                output_fields=fields,
                consistency_level=self._consistency,
                timeout=self._timeout,
                # Vectors as views of one float32 array, not as lists of Python floats.
                strict_float32=True,
                **kwargs,
            ),
        )
        return rows

    def _data_call(self, store: _Store, action: Callable[[Any], T]) -> T:
        try:
            return self._call(action, f"store {store.spec.name!r}")
        except _NotLoadedError:
            # Loading is cluster state: a restarted cluster or another tool may have released
            # the collection.
            self._call(lambda c: c.load_collection(store.collection, timeout=self._timeout))
            return self._call(action, f"store {store.spec.name!r}")

    # ---- lifecycle -----------------------------------------------------------------------

    def flush(self) -> None:
        """Nothing to do: Milvus owns durability (nachbar keeps no state)."""

    def close(self) -> None:
        with self._client_lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection is not worth an error
                log.debug("closing the Milvus client failed", exc_info=True)

    def __enter__(self) -> MilvusEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- helpers -------------------------------------------------------------------------------


class _StaleStoreError(DBError):
    """Milvus refused a data call in a way that a changed store explains (the cached spec no
    longer matches the collection)."""


class _NotLoadedError(DBError):
    """The collection is not loaded into Milvus's query nodes."""


class _MissingCollectionError(DBError):
    """The collection does not exist (the caller knows which store that is)."""


def _translate(error: Exception, what: str) -> DBError:
    """A pymilvus or gRPC error as the nachbar error that says what happened."""
    code = getattr(error, "code", None)
    code_value = code() if callable(code) else code
    code_name = getattr(code_value, "name", None)  # a grpc.StatusCode
    message = str(getattr(error, "message", "") or error)
    lowered = message.lower()
    where = f"{what}: " if what else ""
    if (
        code_name in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        or code_value == 2
        or ("fail connecting" in lowered or "connection refused" in lowered)
    ):
        return UnavailableError(
            f"{where}Milvus is unreachable or too slow ({message.splitlines()[0][:200]}); retry "
            "once it is back"
        )
    if code_value in (100, 4) or (
        "collection not found" in lowered
        or "can't find collection" in lowered
        or "not exist" in lowered
    ):
        return _MissingCollectionError(f"{where}{message}")
    if code_value in (8, 9) or "rate limit" in lowered:
        return ResourceExhaustedError(f"{where}Milvus is rate limiting ({message}); slow down")
    if code_value == 101 or "not loaded" in lowered or "released" in lowered:
        return _NotLoadedError(f"{where}{message}")
    if "dimension" in lowered or "metric type not match" in lowered:
        return _StaleStoreError(message)
    if "already exist" in lowered:
        return DBError(f"{where}{message}")
    return DBError(f"{where}Milvus refused the request: {message}")


_Item = TypeVar("_Item", Entry, Match)


def _selected(item: _Item, selection: MetadataSelection) -> _Item:
    """`item` with only the metadata `selection` returns."""
    if selection.everything:
        return item
    kept, omitted = select_metadata(item.metadata, selection)
    return replace(item, metadata=kept, omitted_keys=omitted)


def _entry(row: dict[str, Any], include_vectors: bool) -> Entry:
    vector = np.asarray(row["vector"], dtype=np.float32) if include_vectors else None
    return Entry(
        id=str(row[mf.ID_FIELD]), vector=vector, metadata=mf.decode_metadata(row[mf.META_FIELD])
    )


def _new_store_id() -> int:
    """A store id later than every one this process made before (creation time in µs)."""
    global _last_store_id
    with _store_id_lock:
        _last_store_id = max(time.time_ns() // 1000, _last_store_id + 1)
        return _last_store_id


_last_store_id = 0
_store_id_lock = threading.Lock()


def _check_id(store: _Store, expected_store_id: int) -> None:
    if expected_store_id and store.store_id != expected_store_id:
        raise StoreChangedError(store.spec.name, expected_store_id, store.store_id)


def _spec_json(spec: StoreSpec, store_id: int) -> str:
    index: dict[str, Any] = {"kind": "exact"}
    if isinstance(spec.index, HnswConfig):
        index = {
            "kind": "hnsw",
            "m": spec.index.m,
            "ef_construction": spec.index.ef_construction,
            "ef_search": spec.index.ef_search,
        }
    return json.dumps(
        {
            "format": FORMAT,
            "name": spec.name,
            "store_id": store_id,
            "dimension": spec.dimension,
            "metric": spec.metric.value,
            "index": index,
            "store_metadata": dict(spec.store_metadata),
        },
        ensure_ascii=False,
    )


def _store_from_properties(collection: str, properties: dict[str, str]) -> _Store | None:
    raw = properties.get(STORE_PROPERTY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        index_data = data["index"]
        index: IndexConfig = ExactConfig()
        if index_data["kind"] == "hnsw":
            index = HnswConfig(
                m=int(index_data["m"]),
                ef_construction=int(index_data["ef_construction"]),
                ef_search=int(index_data["ef_search"]),
            )
        fields = json.loads(properties.get(PRED_INDEX_PROPERTY, "[]"))
        typed = json.loads(properties.get(TYPED_FIELDS_PROPERTY, "[]"))
        spec = StoreSpec(
            name=str(data["name"]),
            dimension=int(data["dimension"]),
            metric=Metric(data["metric"]),
            index=index,
            predicate_indexes=tuple(sorted(str(f) for f in fields)),
            store_metadata={str(k): str(v) for k, v in data["store_metadata"].items()},
        )
        return _Store(
            collection, spec, int(data["store_id"]), mf.columns_of([str(f) for f in typed])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{STORE_PROPERTY} is not what nachbar wrote ({error})") from None


def rank_exactly(
    ids: list[str], vectors: np.ndarray, query: np.ndarray, metric: Metric, want: int
) -> list[tuple[int, float]]:
    """The best `want` rows with exact float64 scores, best first, equal scores by id: the
    embedded engine's ranking (nachbar.db.store), so both engines order alike."""
    stored = vectors.astype(np.float64)
    q = query.astype(np.float64)
    if metric == Metric.L2:
        diff = stored - q
        scores = -np.einsum("ij,ij->i", diff, diff)
    else:
        scores = np.einsum("ij,j->i", stored, q)
        if metric == Metric.COSINE:
            norms = np.sqrt(np.einsum("ij,ij->i", stored, stored))
            scores = scores / (norms * np.sqrt(q.dot(q)))
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:want]
    return [(i, float(scores[i])) for i in order]


def _no_keywords(store: str) -> UnsupportedError:
    return UnsupportedError(
        f"store {store!r}: keyword and hybrid search need a keyword index, which the Milvus "
        "engine does not have; run nachbar-db with the embedded engine (the default) for them, "
        "or search by vector only"
    )
