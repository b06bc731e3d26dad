"""int8 variants of the all-MiniLM-L6-v2 bi-encoder: speed over fp32 and STS-B cost, one run.

Each variant is built from the fp32 model nachbar builds (quantization settings, which ops are
quantized, dynamic vs static QDQ, onnxruntime's transformer optimizer fusing attention,
LayerNorm and GELU first) and run by raw onnxruntime with nachbar's session options
(nachbar.ai.onnx_model.SessionOptions, or the fusions a variant names), on the same STS-B
sentences in batches of 32, in rounds that alternate with the fp32 model. Accuracy: STS-B test
Spearman (cosine of the two sentences' mean-pooled vectors), in points (rho x 100), as
bench/rerank_quant_bench.py measures it for the shipped model.

The fused variants need sympy (onnxruntime's transformer optimizer imports it), which nachbar
does not depend on: `uv pip install --python .venv/bin/python sympy` first, or they are
reported as failed to build.

Run: .venv/bin/python bench/int8_bench.py [--texts 1024 --rounds 5 --variants a,b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import onnx_reference as ref
from benchlib import Tally, log, markdown_table

BATCH = 32
HEADS, HIDDEN = 12, 384  # all-MiniLM-L6-v2


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[Path, Path], None]  # (fp32 model, destination)
    # Graph fusions the session turns off; None: nachbar's (SessionOptions).
    disabled_optimizers: tuple[str, ...] | None = None
    threads: int | None = None  # intra-op threads; None: --threads


def _dynamic(
    per_channel: bool, op_types: Sequence[str], *, weights_only: bool = True
) -> Callable[[Path, Path], None]:
    def build(source: Path, destination: Path) -> None:
        from nachbar.ai.build.quantize import quantize_int8

        quantize_int8(
            source,
            destination,
            op_types=op_types,
            per_channel=per_channel,
            weights_only=weights_only,
        )

    return build


def _fused_then(
    quantize: Callable[[Path, Path], None] | None, *, skip_layer_norm: bool = True
) -> Callable[[Path, Path], None]:
    def build(source: Path, destination: Path) -> None:
        from nachbar.ai.build.quantize import fuse_transformer

        fused = destination.with_name("fused.onnx")
        fuse_transformer(source, fused, heads=HEADS, hidden=HIDDEN, skip_layer_norm=skip_layer_norm)
        if quantize is None:
            fused.replace(destination)
        else:
            quantize(fused, destination)
            fused.unlink()

    return build


def _fused_dynamic(per_channel: bool, op_types: Sequence[str]) -> Callable[[Path, Path], None]:
    def quantize(source: Path, destination: Path) -> None:
        from nachbar.ai.build.quantize import quantize_int8

        quantize_int8(
            source, destination, op_types=op_types, per_channel=per_channel, preprocess=False
        )

    return quantize


def _static_qdq(per_channel: bool) -> Callable[[Path, Path], None]:
    def build(source: Path, destination: Path) -> None:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(source.parent / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=256)
        texts = ref.sts_sentences(4096)[-256:]  # calibration: not the timed sentences

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.batches = iter([texts[i : i + 16] for i in range(0, len(texts), 16)])

            def get_next(self) -> dict[str, Any] | None:
                batch = next(self.batches, None)
                if batch is None:
                    return None
                tokenizer.enable_padding()
                encodings = tokenizer.encode_batch(batch)
                return {
                    "input_ids": np.array([e.ids for e in encodings], np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
                }

        prepared = destination.with_name("prepared.onnx")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(destination),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        prepared.unlink()

    return build


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "shipped", "dynamic, per-channel, MatMul (as built today)", _dynamic(True, ["MatMul"])
        ),
        Variant("per-tensor", "dynamic, per-tensor, MatMul", _dynamic(False, ["MatMul"])),
        Variant(
            "gather", "dynamic, per-channel, MatMul + Gather", _dynamic(True, ["MatMul", "Gather"])
        ),
        Variant(
            "attention-products",
            "dynamic, per-channel, every MatMul (also query x key and probabilities x value)",
            _dynamic(True, ["MatMul"], weights_only=False),
        ),
        Variant(
            "shipped-1-thread",
            "dynamic, per-channel, MatMul; 1 intra-op thread (fp32 too)",
            _dynamic(True, ["MatMul"]),
            threads=1,
        ),
        Variant(
            "shipped-all-fusions",
            "dynamic, per-channel, MatMul; onnxruntime's SkipLayerNorm fusion on",
            _dynamic(True, ["MatMul"]),
            disabled_optimizers=(),
        ),
        Variant(
            "fused-matmul",
            "transformer optimizer (no SkipLayerNorm), then dynamic per-channel MatMul",
            _fused_then(_fused_dynamic(True, ["MatMul"]), skip_layer_norm=False),
        ),
        Variant(
            "fused-attention",
            "transformer optimizer (no SkipLayerNorm), then dynamic per-channel MatMul + Attention",
            _fused_then(_fused_dynamic(True, ["MatMul", "Attention"]), skip_layer_norm=False),
        ),
        Variant(
            "qdq-static",
            "static QDQ, per-channel, MatMul (256 calibration sentences)",
            _static_qdq(True),
        ),
    )
}


@dataclass
class Measured:
    variant: str
    description: str
    size_mb: float
    int8: Tally
    fp32: Tally
    spearman: float
    fp32_spearman: float
    cosine_mean: float = 0.0
    cosine_min: float = 0.0
    ops: str = ""
    cpu_ratio: float = 0.0  # fp32 CPU seconds / int8 CPU seconds for the same texts


@dataclass
class Results:
    machine: dict[str, Any]
    texts: int
    rounds: int
    threads: int
    measured: list[Measured] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def stsb_spearman(model: ref.RawTextModel) -> float:
    from nachbar.ai.build.stsb import load_split, spearman

    pairs = load_split("test")
    first = np.concatenate(
        [
            model.embed([p.sentence1 for p in pairs[i : i + BATCH]])
            for i in range(0, len(pairs), BATCH)
        ]
    )
    second = np.concatenate(
        [
            model.embed([p.sentence2 for p in pairs[i : i + BATCH]])
            for i in range(0, len(pairs), BATCH)
        ]
    )
    gold = np.array([p.score for p in pairs])
    return 100.0 * spearman(np.sum(first * second, axis=1), gold)


SHOWN_OPS = (
    "MatMulInteger",
    "QLinearMatMul",
    "QuantizeLinear",
    "MatMul",
    "Attention",
    "QAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
)


def op_summary(path: Path) -> str:
    """How many nodes of the telling op types the variant's file holds."""
    import collections

    import onnx

    counts = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return ", ".join(f"{op} {counts[op]}" for op in SHOWN_OPS if counts[op])


def model_dir_with(fp32_dir: Path, model: Path, workdir: Path, name: str) -> Path:
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in ("tokenizer.json", "config.json"):
        shutil.copyfile(fp32_dir / file, folder / file)
    if model != folder / "model.onnx":
        shutil.copyfile(model, folder / "model.onnx")
    return folder


def raw_model(folder: Path, threads: int, disabled: tuple[str, ...] | None) -> ref.RawTextModel:
    model = ref.RawTextModel(folder, max_tokens=256, threads=threads)
    if disabled is not None:
        model.session = ref.make_session(folder / "model.onnx", threads, disabled)
        model.inputs = {i.name for i in model.session.get_inputs()}
    return model


def interleaved(
    paths: dict[str, tuple[Tally, Callable[[list[str]], object]]],
    batches: list[list[str]],
    rounds: int,
) -> dict[str, float]:
    """Time the paths batch by batch, alternating which goes first, so both see the same
    machine load however it changes; return each path's CPU seconds."""
    cpu = dict.fromkeys(paths, 0.0)
    keys = list(paths)
    for number in range(rounds):
        for index, batch in enumerate(batches):
            order = keys if (number + index) % 2 == 0 else keys[::-1]
            for key in order:
                tally, embed = paths[key]
                wall, process = time.perf_counter(), time.process_time()
                embed(batch)
                tally.seconds += time.perf_counter() - wall
                cpu[key] += time.process_time() - process
                tally.items += len(batch)
    return cpu


def run(names: Sequence[str], config: argparse.Namespace) -> Results:
    ref.ensure_built(config.model_dir, [ref.TEXT_MODEL])
    fp32_dir = ref.built_dir(config.model_dir, ref.TEXT_MODEL)
    texts = ref.sts_sentences(config.texts)
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    results = Results(benchlib.machine_facts(), len(texts), config.rounds, config.threads)
    sample = ref.sts_sentences(600, splits=("dev",))
    spearman_cache: dict[tuple[int, tuple[str, ...] | None], float] = {}
    with benchlib.scratch_dir("nachbar-int8-bench-") as workdir:
        for name in names:
            variant = VARIANTS[name]
            log(f"{name}: building ({variant.description})")
            folder = workdir / name
            folder.mkdir()
            try:
                variant.build(fp32_dir / "model.onnx", folder / "model.onnx")
            except Exception as error:  # a variant onnxruntime cannot make is a result too
                results.failed[name] = f"build failed: {type(error).__name__}: {error}"
                log(results.failed[name])
                continue
            model_dir_with(fp32_dir, folder / "model.onnx", workdir, name)
            threads = variant.threads or config.threads
            try:
                int8 = raw_model(folder, threads, variant.disabled_optimizers)
            except Exception as error:
                results.failed[name] = f"session failed: {type(error).__name__}: {error}"
                log(results.failed[name])
                continue
            fp32 = raw_model(fp32_dir, threads, variant.disabled_optimizers)
            log(f"{name}: STS-B and speed")
            key = (threads, variant.disabled_optimizers)
            if key not in spearman_cache:
                spearman_cache[key] = stsb_spearman(fp32)
            reference, quantized = fp32.embed(sample), int8.embed(sample)
            cosines = np.sum(reference * quantized, axis=1)
            row = Measured(
                name,
                variant.description,
                (folder / "model.onnx").stat().st_size / 1e6,
                Tally(f"{name} int8"),
                Tally(f"{name} fp32"),
                stsb_spearman(int8),
                spearman_cache[key],
                float(cosines.mean()),
                float(cosines.min()),
            )

            for model in (int8, fp32):  # warm-up
                model.embed(batches[0])
            cpu = interleaved(
                {"int8": (row.int8, int8.embed), "fp32": (row.fp32, fp32.embed)},
                batches,
                config.rounds,
            )
            row.cpu_ratio = cpu["fp32"] / cpu["int8"]
            row.ops = op_summary(folder / "model.onnx")
            results.measured.append(row)
            log(
                f"{name}: x{row.int8.per_second / row.fp32.per_second:.2f}, Spearman "
                f"{row.spearman:.2f} vs {row.fp32_spearman:.2f}"
            )
    if config.runtime:
        log("the built int8 model through nachbar's runtime")
        results.measured.append(runtime_row(config, batches, spearman_cache))
    results.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def runtime_row(
    config: argparse.Namespace,
    batches: list[list[str]],
    spearman_cache: dict[tuple[int, tuple[str, ...] | None], float],
) -> Measured:
    """all-minilm-l6-v2-int8 as built, against all-minilm-l6-v2, through nachbar's model
    runtime (ModelManager, dynamic batching on, its own session settings)."""
    from nachbar.ai.models import ModelManager

    ref.ensure_built(config.model_dir, [ref.TEXT_MODEL_INT8])
    int8_dir = ref.built_dir(config.model_dir, ref.TEXT_MODEL_INT8)
    int8_model = raw_model(int8_dir, config.threads, None)
    row = Measured(
        "built, nachbar runtime",
        f"{ref.TEXT_MODEL_INT8} as built, embedded through ModelManager",
        (int8_dir / "model.onnx").stat().st_size / 1e6,
        Tally("runtime int8"),
        Tally("runtime fp32"),
        stsb_spearman(int8_model),
        spearman_cache.get((config.threads, None), float("nan")),
    )
    with ModelManager(config.model_dir) as manager:
        for name in (ref.TEXT_MODEL, ref.TEXT_MODEL_INT8):
            manager.embed(name, batches[0])
        cpu = interleaved(
            {
                "int8": (row.int8, lambda batch: manager.embed(ref.TEXT_MODEL_INT8, batch)),
                "fp32": (row.fp32, lambda batch: manager.embed(ref.TEXT_MODEL, batch)),
            },
            batches,
            config.rounds,
        )
    row.cpu_ratio = cpu["fp32"] / cpu["int8"]
    row.ops = op_summary(int8_dir / "model.onnx")
    return row


def render(results: Results) -> str:
    machine = results.machine
    lines = [
        "## int8_bench: int8 variants of all-minilm-l6-v2",
        "",
        f"{machine['date']}; {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']} GiB; load average before {machine['load_average']}, after "
        f"{machine['load_average_after']}; raw onnxruntime, {results.texts} STS-B sentences in "
        f"batches of {BATCH}, {results.rounds} rounds alternating int8 and fp32 batch by batch, "
        f"{results.threads} intra-op threads unless the variant says otherwise",
        "",
        markdown_table(
            [
                "variant",
                "what",
                "MB",
                "int8 texts/s",
                "fp32 texts/s",
                "int8 / fp32",
                "by CPU time",
                "STS-B Spearman int8 (fp32)",
                "cost, points",
                "cosine to fp32 mean / min",
                "ops in the file",
            ],
            [
                [
                    m.variant,
                    m.description,
                    f"{m.size_mb:.0f}",
                    f"{m.int8.per_second:,.0f}",
                    f"{m.fp32.per_second:,.0f}",
                    f"{m.int8.per_second / m.fp32.per_second:.2f}",
                    f"{m.cpu_ratio:.2f}",
                    f"{m.spearman:.2f} ({m.fp32_spearman:.2f})",
                    f"{m.fp32_spearman - m.spearman:+.2f}",
                    f"{m.cosine_mean:.4f} / {m.cosine_min:.4f}" if m.cosine_mean else "-",
                    m.ops,
                ]
                for m in results.measured
            ],
        ),
    ]
    if results.failed:
        lines += ["", *(f"- {name}: {why}" for name, why in results.failed.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=benchlib.DEFAULT_MODEL_DIR)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=ref.cpu_count())
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--runtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the built int8 model against fp32 through nachbar's runtime",
    )
    config = parser.parse_args(argv)
    names = [n.strip() for n in config.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    results = run(names, config)
    benchlib.publish("int8_bench", {"results": results}, render(results))


if __name__ == "__main__":
    main()
