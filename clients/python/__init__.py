"""Python clients for nachbar: `DBClient`/`AsyncDBClient` for nachbar-db and
`AIClient`/`AsyncAIClient` for nachbar-ai. Results are plain dataclasses; failures raise
`NachbarError` subclasses named after their gRPC status."""

from nachbar.client._ai_calls import Image, Item, Text
from nachbar.client.ai import AIClient, AsyncAIClient
from nachbar.client.db import AsyncDBClient, DBClient
from nachbar.client.errors import (
    AlreadyExists,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NachbarError,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from nachbar.client.types import (
    AIMatch,
    AISearchResult,
    AIStoreInfo,
    Entry,
    Exact,
    Hnsw,
    Match,
    Metric,
    ModelInfo,
    Page,
    RerankResult,
    SearchMode,
    SearchResult,
    StoreInfo,
    UpsertResult,
)
from nachbar.client.values import Field, Filter, filter_from_dict

__all__ = [
    "AIClient",
    "AIMatch",
    "AISearchResult",
    "AIStoreInfo",
    "AlreadyExists",
    "AsyncAIClient",
    "AsyncDBClient",
    "DBClient",
    "DataLoss",
    "DeadlineExceeded",
    "Entry",
    "Exact",
    "FailedPrecondition",
    "Field",
    "Filter",
    "Hnsw",
    "Image",
    "Internal",
    "InvalidArgument",
    "Item",
    "Match",
    "Metric",
    "ModelInfo",
    "NachbarError",
    "NotFound",
    "OutOfRange",
    "Page",
    "RerankResult",
    "ResourceExhausted",
    "SearchMode",
    "SearchResult",
    "StoreInfo",
    "Text",
    "Unavailable",
    "UpsertResult",
    "filter_from_dict",
]
