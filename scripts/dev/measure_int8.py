"""Measure what int8 dynamic quantization costs and buys for the offline models.

    nice .venv/bin/python scripts/dev/measure_int8.py [--model-dir DIR]

Builds the fp32 models if needed (into DIR, default a temporary folder), quantizes them, and
prints file sizes, cosine to fp32 and wall time per batch. The figures quoted in
nachbar/ai/build/quantize.py come from this script.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from nachbar.ai.build.builder import build_all
from nachbar.ai.build.imagenet import preprocess, sample_photos
from nachbar.ai.build.quantize import quantize_int8
from nachbar.ai.build.sentence_embedder import SentenceEmbedder, make_session
from nachbar.ai.defaults import BUILT_FOLDER

ORDINARY = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "How do I reset my password?",
    "Paris is the capital and most populous city of France.",
    "Vector databases index embeddings for similarity search.",
    "The stock market fell sharply on Tuesday after the announcement.",
    "She plays the violin beautifully.",
    "Is it going to rain tomorrow?",
    "A child is riding a bicycle down the street.",
    "Database indexes speed up lookups at the cost of slower writes.",
    "Two dogs are running through a field of tall grass.",
    "The committee postponed its decision until more data is available.",
]
SHORT = ["hello world", "thanks", "good morning", "yes", "capital of France"]


def seconds(run: Callable[[], object], repeats: int = 5) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_text(root: Path, scratch: Path) -> None:
    folder = root / "all-minilm-l6-v2"
    tokenizer = folder / "tokenizer.json"
    variants = {"int8 (all MatMul)": scratch / "minilm-int8.onnx"}
    quantize_int8(folder / "model.onnx", variants["int8 (all MatMul)"])
    fp32 = SentenceEmbedder(folder / "model.onnx", tokenizer)
    reference = {"ordinary": fp32.embed(ORDINARY), "short": fp32.embed(SHORT)}
    batch = [s + " " + s for s in ORDINARY] * 3
    base_time = seconds(lambda: fp32.embed(batch, batch_size=36))
    size = (folder / "model.onnx").stat().st_size / 1e6
    print(f"MiniLM fp32: {size:.1f} MB, {base_time * 1000:.0f} ms per batch of 36")
    for label, path in variants.items():
        model = SentenceEmbedder(path, tokenizer)
        for kind, texts in (("ordinary", ORDINARY), ("short", SHORT)):
            cosines = (reference[kind] * model.embed(texts)).sum(axis=1)
            worst = texts[int(cosines.argmin())]
            print(
                f"  {label} {kind}: cosine mean {cosines.mean():.4f}, "
                f"lowest {cosines.min():.4f} ({worst!r})"
            )
        took = seconds(functools.partial(model.embed, batch, batch_size=36))
        print(
            f"  {label}: {path.stat().st_size / 1e6:.1f} MB, {took * 1000:.0f} ms per batch "
            f"({base_time / took:.2f}x)"
        )


def measure_image(root: Path, scratch: Path) -> None:
    photos = sample_photos()
    pixels = np.stack([preprocess(Image.open(p.path)) for p in photos])
    labels = np.array([p.class_index for p in photos])
    fp32_path = root / "efficientnet-lite0" / "model.onnx"
    int8_path = scratch / "efficientnet-int8.onnx"
    quantize_int8(fp32_path, int8_path, op_types=("Conv", "MatMul"))
    results = {}
    for label, path in (("fp32", fp32_path), ("int8", int8_path)):
        session = make_session(onnx.load(str(path)))
        features, logits = session.run(None, {"pixel_values": pixels})
        took = seconds(functools.partial(session.run, None, {"pixel_values": pixels}), 3)
        top1 = float((logits.argmax(axis=1) == labels).mean())
        results[label] = features
        print(
            f"EfficientNet-Lite0 {label}: {path.stat().st_size / 1e6:.1f} MB, "
            f"{took * 1000:.0f} ms per 20 photos, top-1 {top1:.2f}"
        )
    a, b = results["fp32"], results["int8"]
    cosines = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"  int8 feature cosine to fp32: mean {cosines.mean():.3f}, lowest {cosines.min():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nachbar-int8-") as scratch:
        model_dir = args.model_dir or Path(scratch) / "models"
        build_all(model_dir, only=["all-minilm-l6-v2", "efficientnet-lite0"])
        measure_text(model_dir / BUILT_FOLDER, Path(scratch))
        measure_image(model_dir / BUILT_FOLDER, Path(scratch))


if __name__ == "__main__":
    main()
