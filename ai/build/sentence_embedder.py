"""The minimal sentence embedder the build itself needs (ConSE class prompts, accuracy checks).

Mean pooling over real tokens and L2 normalization, as sentence-transformers' all-MiniLM-L6-v2
does. The served models are run by the model runtime in `nachbar.ai`; this one exists so that
building never depends on the serving stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

__all__ = ["SentenceEmbedder", "l2_normalize", "make_session"]

# all-MiniLM-L6-v2 was trained on at most 256 word pieces (sentence_bert_config.json).
DEFAULT_MAX_TOKENS = 256


def make_session(model: onnx.ModelProto | Path, *, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU inference session; `threads=0` lets onnxruntime pick."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    result: npt.NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return result


class SentenceEmbedder:
    """Tokenize, run a BERT encoder graph, mean-pool, L2-normalize."""

    def __init__(
        self,
        model: onnx.ModelProto | Path,
        tokenizer_file: Path,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self._session = make_session(model)
        self._input_names = {node.name for node in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The shipped tokenizer.json pads every input to 128; pad to the batch's longest.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def embed(self, texts: Sequence[str], *, batch_size: int = 128) -> npt.NDArray[np.float32]:
        """Return one unit-length row per text, shape [len(texts), hidden]."""
        if not texts:
            raise ValueError("embed() needs at least one text")
        rows = [
            self._embed_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(rows, axis=0)

    def _embed_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(list(texts))
        feeds: dict[str, npt.NDArray[np.int64]] = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        outputs: list[Any] = self._session.run(
            ["last_hidden_state"], {k: v for k, v in feeds.items() if k in self._input_names}
        )
        hidden = np.asarray(outputs[0], dtype=np.float32)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return l2_normalize(pooled)
