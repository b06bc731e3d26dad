"""Tiny ONNX models and tokenizers with the exact signatures of the registry's models.

Each graph has the input/output names, dtypes and dimension semantics of the real file it stands
in for (BERT-style encoders, CLIP towers, ResNet, cross-encoders with and without
token_type_ids) and deterministic weights, so tests can compare the runtime's output with a
numpy computation. `write_model_files` lays a model out exactly as its hub repository (or the
offline builder) does; `populate_hub_cache` builds a Hugging Face cache around such layouts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from nachbar.ai.registry import HubSource, Kind, Modality, ModelSpec, all_specs

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

OPSET = 17
IR_VERSION = 8
POSITIONS = 600  # more than any tiny test sequence, fewer than a real model
POOL = 56  # 224 / 56 = a 4x4 grid of region means per channel

# fmt: off
WORDS = (
    "a", "an", "the", "of", "in", "on", "and", "is", "are", "was", "to", "with", "for", "at",
    "by", "from", "photo", "picture", "image", "cat", "cats", "dog", "dogs", "car", "house",
    "red", "blue", "green", "big", "small", "hello", "world", "query", "document", "text", "long",
    "very", "quick", "brown", "fox", "jumps", "over", "lazy", "search", "engine", "vector",
    "database", "python", "snake", "river", "tree", "sky", "sun", "night", "day", "music",
)
# fmt: on

# The repositories whose real ONNX graph takes no token_type_ids (RoBERTa-family tokenizers).
NO_TOKEN_TYPES = frozenset({"BAAI/bge-reranker-base", "jinaai/jina-reranker-v1-tiny-en"})

CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
RESNET_PREPROCESSOR = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}
# What the offline builder writes (see nachbar.ai.build).
BUILT_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))


def _weights(rng: np.random.Generator, *shape: int) -> FloatArray:
    return rng.normal(0.0, 0.5, size=shape).astype(np.float32)


def _model(
    nodes: list[Any], name: str, inputs: list[Any], outputs: list[Any], init: dict[str, Any]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _ids_input(name: str) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])


# --- text encoders ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyBert:
    """BERT-style encoder: input_ids, attention_mask, token_type_ids -> last_hidden_state.

    hidden = tanh(word[ids] + type[types] + position[0..L)) for real tokens, plus 3.0 on padded
    positions, which stand in for the garbage a real encoder leaves there.
    """

    word: FloatArray
    token_type: FloatArray
    position: FloatArray

    @staticmethod
    def create(seed: str, vocab: int, hidden: int) -> TinyBert:
        rng = _rng(seed)
        return TinyBert(
            _weights(rng, vocab, hidden), _weights(rng, 2, hidden), _weights(rng, POSITIONS, hidden)
        )

    def reference(self, ids: IntArray, types: IntArray, mask: IntArray) -> FloatArray:
        positions = self.position[: ids.shape[1]][None]
        hidden = np.tanh(self.word[ids] + self.token_type[types] + positions)
        result: FloatArray = (hidden + 3.0 * (1 - mask)[..., None]).astype(np.float32)
        return result

    def graph(self) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Gather", ["word", "input_ids"], ["w"]),
            helper.make_node("Gather", ["token_type", "token_type_ids"], ["t"]),
            helper.make_node("Shape", ["input_ids"], ["shape"]),
            helper.make_node("Gather", ["shape", "one_i"], ["length"]),
            helper.make_node("Range", ["zero_i", "length", "one_i"], ["range"]),
            helper.make_node("Gather", ["position", "range"], ["p"]),
            helper.make_node("Add", ["w", "t"], ["wt"]),
            helper.make_node("Add", ["wt", "p"], ["wtp"]),
            helper.make_node("Tanh", ["wtp"], ["h"]),
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one_f", "mask_f"], ["pad_f"]),
            helper.make_node("Mul", ["pad_f", "three_f"], ["pad3"]),
            helper.make_node("Unsqueeze", ["pad3", "last_axis"], ["pad3_u"]),
            helper.make_node("Add", ["h", "pad3_u"], ["last_hidden_state"]),
        ]
        out = helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", self.word.shape[1]]
        )
        init = {
            "word": self.word,
            "token_type": self.token_type,
            "position": self.position,
            "one_i": np.array(1, dtype=np.int64),
            "zero_i": np.array(0, dtype=np.int64),
            "one_f": np.array(1.0, dtype=np.float32),
            "three_f": np.array(3.0, dtype=np.float32),
            "last_axis": np.array([-1], dtype=np.int64),
        }
        inputs = [_ids_input(n) for n in ("input_ids", "attention_mask", "token_type_ids")]
        return _model(nodes, "tiny_bert", inputs, [out], init)


@dataclass(frozen=True)
class TinyClipText:
    """CLIP text tower: input_ids only -> text_embeds (state at the first EOS, projected).

    Like the real export it pools where input_ids is largest (EOS has the highest id) and also
    outputs last_hidden_state, listed first so that picking outputs by position would be wrong.
    """

    word: FloatArray
    projection: FloatArray

    @staticmethod
    def create(seed: str, vocab: int, dimension: int, hidden: int = 16) -> TinyClipText:
        rng = _rng(seed)
        return TinyClipText(_weights(rng, vocab, hidden), _weights(rng, hidden, dimension))

    def reference(self, ids: IntArray) -> FloatArray:
        eos = ids.argmax(axis=1)
        states = np.tanh(self.word[ids])
        result: FloatArray = (states[np.arange(len(ids)), eos] @ self.projection).astype(np.float32)
        return result

    def graph(self) -> onnx.ModelProto:
        hidden = self.word.shape[1]
        nodes = [
            helper.make_node("Gather", ["word", "input_ids"], ["w"]),
            helper.make_node("Tanh", ["w"], ["last_hidden_state"]),
            helper.make_node("ArgMax", ["input_ids"], ["eos"], axis=1, keepdims=1),
            helper.make_node("Unsqueeze", ["eos", "axis2"], ["eos_u"]),
            helper.make_node("Expand", ["eos_u", "expand_shape"], ["eos_x"]),
            helper.make_node("GatherElements", ["last_hidden_state", "eos_x"], ["g"], axis=1),
            helper.make_node("Squeeze", ["g", "axis1"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "projection"], ["text_embeds"]),
        ]
        outputs = [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden]
            ),
            helper.make_tensor_value_info(
                "text_embeds", TensorProto.FLOAT, ["batch", self.projection.shape[1]]
            ),
        ]
        init = {
            "word": self.word,
            "projection": self.projection,
            "axis1": np.array([1], dtype=np.int64),
            "axis2": np.array([2], dtype=np.int64),
            "expand_shape": np.array([1, 1, hidden], dtype=np.int64),
        }
        return _model(nodes, "tiny_clip_text", [_ids_input("input_ids")], outputs, init)


@dataclass(frozen=True)
class TinyCrossEncoder:
    """Cross-encoder: ids, mask (and token types if `with_token_types`) -> logits [batch, 1].

    logit = masked mean of tanh(word[ids] (+ type[types])) . head + bias
    """

    word: FloatArray
    token_type: FloatArray
    head: FloatArray
    bias: FloatArray
    with_token_types: bool

    @staticmethod
    def create(seed: str, vocab: int, with_token_types: bool, hidden: int = 16) -> TinyCrossEncoder:
        rng = _rng(seed)
        return TinyCrossEncoder(
            _weights(rng, vocab, hidden),
            _weights(rng, 2, hidden),
            _weights(rng, hidden, 1),
            _weights(rng, 1),
            with_token_types,
        )

    def reference(self, ids: IntArray, types: IntArray, mask: IntArray) -> FloatArray:
        embedded = self.word[ids]
        if self.with_token_types:
            embedded = embedded + self.token_type[types]
        states = np.tanh(embedded) * mask[..., None]
        pooled = states.sum(axis=1) / mask.sum(axis=1, keepdims=True)
        result: FloatArray = (pooled @ self.head + self.bias).astype(np.float32)
        return result

    def graph(self) -> onnx.ModelProto:
        nodes = [helper.make_node("Gather", ["word", "input_ids"], ["w"])]
        names = ["input_ids", "attention_mask"]
        if self.with_token_types:
            names.append("token_type_ids")
            nodes += [
                helper.make_node("Gather", ["token_type", "token_type_ids"], ["t"]),
                helper.make_node("Add", ["w", "t"], ["wt"]),
                helper.make_node("Tanh", ["wt"], ["h"]),
            ]
        else:
            nodes.append(helper.make_node("Tanh", ["w"], ["h"]))
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_u"]),
            helper.make_node("Mul", ["h", "mask_u"], ["hm"]),
            helper.make_node("ReduceSum", ["hm", "axis1"], ["total"], keepdims=0),
            helper.make_node("ReduceSum", ["mask_u", "axis1"], ["count"], keepdims=0),
            helper.make_node("Div", ["total", "count"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "head"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ]
        init: dict[str, Any] = {
            "word": self.word,
            "head": self.head,
            "bias": self.bias,
            "axis1": np.array([1], dtype=np.int64),
            "last_axis": np.array([-1], dtype=np.int64),
        }
        if self.with_token_types:
            init["token_type"] = self.token_type
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
        return _model(nodes, "tiny_cross_encoder", [_ids_input(n) for n in names], [out], init)


# --- image encoders --------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyVision:
    """Image tower: [batch, 3, 224, 224] -> 4x4 region means per channel -> linear projection.

    `input_name` and `output_name` follow the model it mimics (CLIP vision: pixel_values ->
    image_embeds; torchvision ResNet export: input -> output [batch, dim, 1, 1]).
    """

    projection: FloatArray
    input_name: str
    output_name: str
    conv_layout: bool  # output [batch, dim, 1, 1] like a headless conv net
    decoy_output: str | None  # an extra output listed first (CLIP's last_hidden_state, logits)

    @staticmethod
    def create(
        seed: str,
        dimension: int,
        *,
        input_name: str = "pixel_values",
        output_name: str = "image_embeds",
        conv_layout: bool = False,
        decoy_output: str | None = None,
    ) -> TinyVision:
        projection = _weights(_rng(seed), 3 * 16, dimension)
        return TinyVision(projection, input_name, output_name, conv_layout, decoy_output)

    def reference(self, pixels: FloatArray) -> FloatArray:
        batch = pixels.shape[0]
        regions = pixels.reshape(batch, 3, 4, POOL, 4, POOL).mean(axis=(3, 5))
        result: FloatArray = (regions.reshape(batch, -1) @ self.projection).astype(np.float32)
        return result

    def graph(self) -> onnx.ModelProto:
        dimension = self.projection.shape[1]
        projected = "projected" if self.conv_layout else self.output_name
        nodes = [
            helper.make_node(
                "AveragePool",
                [self.input_name],
                ["pooled"],
                kernel_shape=[POOL, POOL],
                strides=[POOL, POOL],
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "projection"], [projected]),
        ]
        init: dict[str, Any] = {"projection": self.projection}
        if self.conv_layout:
            init["spatial_axes"] = np.array([2, 3], dtype=np.int64)
            nodes.append(
                helper.make_node("Unsqueeze", [projected, "spatial_axes"], [self.output_name])
            )
            out_shape: list[Any] = ["batch", dimension, 1, 1]
        else:
            out_shape = ["batch", dimension]
        outputs = [helper.make_tensor_value_info(self.output_name, TensorProto.FLOAT, out_shape)]
        if self.decoy_output is not None:
            nodes.append(helper.make_node("Identity", ["flat"], [self.decoy_output]))
            outputs.insert(
                0,
                helper.make_tensor_value_info(self.decoy_output, TensorProto.FLOAT, ["batch", 48]),
            )
        pixel_input = helper.make_tensor_value_info(
            self.input_name, TensorProto.FLOAT, ["batch", 3, 224, 224]
        )
        return _model(nodes, "tiny_vision", [pixel_input], outputs, init)


# --- tokenizers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerStyle:
    """Special tokens and pair template of one tokenizer family."""

    specials: tuple[str, ...]  # in id order, before the words
    trailing_specials: tuple[str, ...]  # after the words (CLIP's EOS must have the largest id)
    single: str
    pair: str
    pad: str
    unk: str


BERT_STYLE = TokenizerStyle(
    specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    trailing_specials=(),
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    pad="[PAD]",
    unk="[UNK]",
)
# BERT's vocabulary with ColBERT's query and document markers ([unused0], [unused1]).
COLBERT_STYLE = TokenizerStyle(
    specials=BERT_STYLE.specials,
    trailing_specials=("[unused0]", "[unused1]"),
    single=BERT_STYLE.single,
    pair=BERT_STYLE.pair,
    pad=BERT_STYLE.pad,
    unk=BERT_STYLE.unk,
)
ROBERTA_STYLE = TokenizerStyle(
    specials=("<s>", "<pad>", "</s>", "<unk>"),
    trailing_specials=(),
    single="<s> $A </s>",
    pair="<s> $A </s> </s> $B </s>",
    pad="<pad>",
    unk="<unk>",
)
CLIP_STYLE = TokenizerStyle(
    specials=("<unk>",),
    trailing_specials=("<|startoftext|>", "<|endoftext|>"),
    single="<|startoftext|> $A <|endoftext|>",
    pair="<|startoftext|> $A <|endoftext|> $B <|endoftext|>",
    pad="<|endoftext|>",
    unk="<unk>",
)


def make_tokenizer(style: TokenizerStyle, *, hub_settings: bool = True) -> Tokenizer:
    """A lower-casing WordPiece tokenizer over WORDS (plus "##s" so "photos" splits).

    With `hub_settings` it carries a fixed truncation and padding like many hub tokenizer.json
    files do, which the runtime must clear before measuring lengths.
    """
    tokens = [*style.specials, *WORDS, "##s", *style.trailing_specials]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=style.unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special_ids = [(token, vocab[token]) for token in (*style.specials, *style.trailing_specials)]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=style.single, pair=style.pair, special_tokens=special_ids
    )
    tokenizer.add_special_tokens(list(vocab_specials(style)))
    if hub_settings:
        tokenizer.enable_truncation(max_length=8)
        tokenizer.enable_padding(pad_id=vocab[style.pad], pad_token=style.pad, length=8)
    return tokenizer


def vocab_specials(style: TokenizerStyle) -> tuple[str, ...]:
    return (*style.specials, *style.trailing_specials)


def vocab_size(style: TokenizerStyle) -> int:
    return len(style.specials) + len(WORDS) + 1 + len(style.trailing_specials)


def reference_tokenizer(style: TokenizerStyle) -> Tokenizer:
    """The same tokenizer without length settings, for computing expected token ids."""
    return make_tokenizer(style, hub_settings=False)


# --- which tiny model stands in for which registry entry ------------------------------------


def hub_specs() -> list[ModelSpec]:
    return [spec for spec in all_specs() if not spec.is_built]


def built_specs() -> list[ModelSpec]:
    return [spec for spec in all_specs() if spec.is_built]


def tokenizer_style(spec: ModelSpec) -> TokenizerStyle:
    if spec.output == "text_embeds":
        return CLIP_STYLE
    if spec.late_interaction is not None:
        return COLBERT_STYLE
    if isinstance(spec.source, HubSource) and spec.source.repo_id in NO_TOKEN_TYPES:
        return ROBERTA_STYLE
    return BERT_STYLE


def tiny_for(spec: ModelSpec) -> TinyBert | TinyClipText | TinyCrossEncoder | TinyVision:
    """The tiny stand-in for a registry entry; the same spec always gives the same weights."""
    seed = spec.name
    if spec.modality is Modality.IMAGE:
        if spec.output == "output":  # torchvision ResNet export
            return TinyVision.create(
                seed, spec.dimension, input_name="input", output_name="output", conv_layout=True
            )
        decoy = "last_hidden_state" if not spec.is_built else "logits"
        return TinyVision.create(seed, spec.dimension, decoy_output=decoy)
    style = tokenizer_style(spec)
    vocab = vocab_size(style)
    if spec.kind is Kind.CROSS_ENCODER:
        with_types = style is BERT_STYLE
        return TinyCrossEncoder.create(seed, vocab, with_token_types=with_types)
    if spec.output == "text_embeds":
        return TinyClipText.create(seed, vocab, spec.dimension)
    return TinyBert.create(seed, vocab, spec.dimension)


def write_model_files(spec: ModelSpec, directory: Path) -> None:
    """Write a tiny stand-in for `spec` into `directory` with the real relative layout."""
    files = spec.files
    model_path = directory / files.model
    model_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_for(spec).graph(), str(model_path))
    if files.tokenizer is not None:
        style = tokenizer_style(spec)
        make_tokenizer(style).save(str(directory / files.tokenizer))
    if files.config is not None:
        config = _config_for(spec)
        (directory / files.config).write_text(json.dumps(config), encoding="utf-8")
    if files.preprocessor is not None:
        if spec.is_built:
            preprocessor = BUILT_PREPROCESSOR
        elif spec.output == "output":
            preprocessor = RESNET_PREPROCESSOR
        else:
            preprocessor = CLIP_PREPROCESSOR
        (directory / files.preprocessor).write_text(json.dumps(preprocessor), encoding="utf-8")
    if spec.is_built:
        manifest = {"name": spec.name, "files": {}, "sources": {}, "builder_version": "tiny"}
        (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _config_for(spec: ModelSpec) -> dict[str, Any]:
    style = tokenizer_style(spec)
    if style is CLIP_STYLE:
        # Like CLIP's config.json: the pad id sits in text_config.
        return {"model_type": "clip", "text_config": {"pad_token_id": 1}}
    pad = ROBERTA_STYLE.specials.index("<pad>") if style is ROBERTA_STYLE else 0
    return {"model_type": "bert", "pad_token_id": pad}


FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot_dir(cache_dir: Path, source: HubSource) -> Path:
    """Where huggingface_hub keeps the pinned revision of `source` inside `cache_dir`."""
    repo_folder = cache_dir / f"models--{source.repo_id.replace('/', '--')}"
    commit = source.revision if _is_commit(source.revision) else FAKE_COMMIT
    return repo_folder / "snapshots" / commit


def populate_hub_cache(cache_dir: Path, specs: Iterable[ModelSpec]) -> None:
    """Lay tiny models out as huggingface_hub's cache does (refs/<branch>, snapshots/<sha>)."""
    for spec in specs:
        source = spec.source
        assert isinstance(source, HubSource)
        snapshot = hub_snapshot_dir(cache_dir, source)
        write_model_files(spec, snapshot)
        refs = snapshot.parent.parent / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        branch = "main" if _is_commit(source.revision) else source.revision
        (refs / branch).write_text(snapshot.name, encoding="utf-8")


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
