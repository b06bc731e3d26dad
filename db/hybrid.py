"""Keyword (BM25) search and its fusion with vector search: the pure parts.

A store's keyword index is an SQLite FTS5 table (nachbar.db.storage) over named metadata fields
of each entry: string and string-list values, joined by newlines into one document (nachbar-ai
keeps an entry's original text under `_nachbar_text`, so that field makes text stores keyword-
searchable, and a caption field does the same for image stores). Entries without any of the
fields are simply not in the keyword index.

Tokenizer: FTS5's `unicode61 remove_diacritics 2`: words are runs of Unicode letters and digits,
case-folded, with diacritics removed ("Café" matches "cafe"); no stemming and no stop words.

Queries are never passed to FTS5 as query syntax: the words of the keyword text (the same
letters-and-digits runs) are each quoted and joined with OR, so punctuation, quotes, `*`, `:`,
`NEAR` or `AND` in user text are just words or separators, never an FTS5 syntax error. The score
is BM25 (FTS5's `bm25()`, negated so that higher is better, as with every other score).

Cost bounds: a keyword text is at most MAX_KEYWORD_BYTES (UTF-8), and only its first
MAX_KEYWORD_TERMS distinct words are searched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from nachbar.db.errors import InvalidArgumentError
from nachbar.db.types import HybridFusion, HybridOptions, MetadataValue

K = TypeVar("K", bound=Hashable)

TOKENIZER = "unicode61 remove_diacritics 2"
MAX_KEYWORD_BYTES = 4096
MAX_KEYWORD_TERMS = 32
DEFAULT_RRF_K = 60
DEFAULT_VECTOR_WEIGHT = 0.5
# Candidates each side contributes to the fusion: max(k, this) unless the request says.
DEFAULT_HYBRID_CANDIDATES = 100
MAX_HYBRID_CANDIDATES = 10_000
_WORD = re.compile(r"[^\W_]+")


def match_expression(keywords: str, store: str) -> str:
    """The FTS5 MATCH expression for a user's keyword text: an OR of its quoted words."""
    if not isinstance(keywords, str):
        raise InvalidArgumentError(f"store {store!r}: keywords must be a string")
    size = len(keywords.encode("utf-8", "surrogatepass"))
    if size > MAX_KEYWORD_BYTES:
        raise InvalidArgumentError(
            f"store {store!r}: the keyword query is {size} bytes, over the limit of "
            f"{MAX_KEYWORD_BYTES}; send fewer words"
        )
    if not keywords.strip():
        raise InvalidArgumentError(
            f"store {store!r}: the keyword query is empty or only whitespace; give some words, "
            "or leave keywords unset for a vector-only search"
        )
    terms: list[str] = []
    for word in _WORD.findall(keywords):
        term = word.casefold()
        if term not in terms:
            terms.append(term)
        if len(terms) == MAX_KEYWORD_TERMS:
            break
    if not terms:
        raise InvalidArgumentError(
            f"store {store!r}: the keyword query {keywords[:60]!r} has no words (letters or "
            "digits) to search for"
        )
    return " OR ".join(f'"{term}"' for term in terms)


def document(metadata: Mapping[str, MetadataValue], fields: Sequence[str]) -> str:
    """The text an entry contributes to the keyword index: its string (and string-list)
    values of `fields`, in field order, one per line; empty when it has none."""
    parts: list[str] = []
    for field_name in fields:
        value = metadata.get(field_name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(p for p in parts if p)


def hybrid_options(store: str, options: HybridOptions, k: int) -> tuple[HybridOptions, int]:
    """The options with defaults resolved, and the candidate depth of each side."""
    try:
        fusion = HybridFusion(options.fusion)
    except ValueError:
        raise InvalidArgumentError(
            f"store {store!r}: unknown hybrid fusion {options.fusion!r}; use rrf or blend"
        ) from None
    rrf_k = options.rrf_k
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or not 0 <= rrf_k <= 100_000:
        raise InvalidArgumentError(
            f"store {store!r}: rrf_k is {rrf_k!r}; use 0 (the default, {DEFAULT_RRF_K}) to 100000"
        )
    weight = options.vector_weight
    if not isinstance(weight, float | int) or not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise InvalidArgumentError(
            f"store {store!r}: vector_weight is {weight!r}; use a number from 0 (keywords "
            "only) to 1 (vector only)"
        )
    candidates = options.candidates
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
        raise InvalidArgumentError(
            f"store {store!r}: hybrid candidates is {candidates!r}; use 0 (max(k, "
            f"{DEFAULT_HYBRID_CANDIDATES})) or at least k"
        )
    depth = candidates or max(k, DEFAULT_HYBRID_CANDIDATES)
    if depth < k:
        raise InvalidArgumentError(
            f"store {store!r}: hybrid candidates ({candidates}) must be at least k ({k})"
        )
    if depth > MAX_HYBRID_CANDIDATES:
        raise InvalidArgumentError(
            f"store {store!r}: hybrid candidates ({depth}) is more than "
            f"{MAX_HYBRID_CANDIDATES}; ask for fewer"
        )
    resolved = HybridOptions(
        fusion=fusion,
        rrf_k=rrf_k or DEFAULT_RRF_K,
        vector_weight=float(weight),
        candidates=depth,
    )
    return resolved, depth


@dataclass(frozen=True)
class Fused(Generic[K]):
    key: K
    score: float  # the fused score that orders the results
    vector_score: float | None  # None: the vector side did not find the entry
    keyword_score: float | None  # None: the keyword side did not find it


def fuse(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    options: HybridOptions,
    tie_key: Callable[[K], str],
) -> list[Fused[K]]:
    """Fuse two ranked lists (best first, each key at most once) into one, best first, ties by
    `tie_key`.

    RRF: score = sum over the lists that hold the entry of 1 / (rrf_k + rank), rank from 1.
    BLEND: each list's scores min-max normalized to [0, 1] over that list (all equal: 1), then
    vector_weight * vector + (1 - vector_weight) * keyword, a missing side counting 0.
    """
    vector_scores = dict(vector)
    keyword_scores = dict(keyword)
    fused: dict[K, float] = {}
    if options.fusion == HybridFusion.RRF:
        for ranked in (vector, keyword):
            for rank, (key, _) in enumerate(ranked, start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (options.rrf_k + rank)
    else:
        weight = options.vector_weight
        for ranked, share in ((vector, weight), (keyword, 1.0 - weight)):
            for key, normalized in _min_max(ranked):
                fused[key] = fused.get(key, 0.0) + share * normalized
    order = sorted(fused.items(), key=lambda item: (-item[1], tie_key(item[0])))
    return [
        Fused(key, score, vector_scores.get(key), keyword_scores.get(key)) for key, score in order
    ]


def _min_max(ranked: Sequence[tuple[K, float]]) -> list[tuple[K, float]]:
    if not ranked:
        return []
    scores = [score for _, score in ranked]
    low, high = min(scores), max(scores)
    if high == low:
        return [(key, 1.0) for key, _ in ranked]
    return [(key, (score - low) / (high - low)) for key, score in ranked]
