"""The defaults every side of the contract shares, read from `defaults.json` beside the protos.

One file for every language: the Python client, the servers and the CLI read it here; the
TypeScript client reads the same file (its build copies it with the .proto files), and a test
runs both clients against one scripted server to check that they send the same requests.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_FILE = "defaults.json"
_TYPES: dict[str, type] = {
    "host": str,
    "db_port": int,
    "ai_port": int,
    "timeout_seconds": int,
    "max_message_bytes": int,
    "store_original": bool,
    "truncation": str,
    "page_limit": int,
    "db_upsert_batch": int,
    "ai_upsert_batch": int,
}


def load() -> dict[str, Any]:
    """The values of defaults.json, each checked against its type."""
    values: dict[str, Any] = json.loads(resources.files("nachbar.v1").joinpath(_FILE).read_text())
    if set(values) != set(_TYPES):
        raise RuntimeError(f"{_FILE} must hold exactly {sorted(_TYPES)}, not {sorted(values)}")
    for key, kind in _TYPES.items():
        if type(values[key]) is not kind:
            raise RuntimeError(f"{_FILE}: {key} must be a {kind.__name__}, not {values[key]!r}")
    return values


_VALUES = load()

#: Where the services listen and clients connect unless told otherwise.
HOST: str = _VALUES["host"]
DB_PORT: int = _VALUES["db_port"]
AI_PORT: int = _VALUES["ai_port"]
DB_ADDRESS = f"{HOST}:{DB_PORT}"
AI_ADDRESS = f"{HOST}:{AI_PORT}"
#: Deadline of each client call.
TIMEOUT_SECONDS: float = float(_VALUES["timeout_seconds"])
#: Largest request or response, for the servers and the clients' channels.
MAX_MESSAGE_BYTES: int = _VALUES["max_message_bytes"]
#: nachbar-ai CreateStore: keep each input so it can be returned and reranked.
STORE_ORIGINAL: bool = _VALUES["store_original"]
#: Text over a model's token limit: "error" (the safe choice) or "truncate".
TRUNCATION: str = _VALUES["truncation"]
#: GetByPredicate page size the clients ask for (the server takes 0 as the same).
PAGE_LIMIT: int = _VALUES["page_limit"]
#: Entries per Upsert request when a client splits a long iterable.
DB_UPSERT_BATCH: int = _VALUES["db_upsert_batch"]
AI_UPSERT_BATCH: int = _VALUES["ai_upsert_batch"]
