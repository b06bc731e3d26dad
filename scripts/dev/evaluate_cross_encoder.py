"""Measure the built stsb-minilm-l6-cross-encoder, fp32 and dynamic int8, on STS-B.

Development tool: builds the ONNX model from the committed artifact into a temporary folder,
quantizes it exactly as the `-int8` twin is built (`nachbar.ai.build.quantize.quantize_int8`:
onnxruntime dynamic quantization, per-channel int8 MatMul weights), and prints the Spearman
correlation of both on the full dev and test splits as JSON. These are the numbers in the
artifact's MODEL_CARD.md. Run with

    nice .venv/bin/python scripts/dev/evaluate_cross_encoder.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from nachbar.ai.build import stsb
from nachbar.ai.build.cross_encoder import build_cross_encoder, pair_scorer
from nachbar.ai.build.quantize import quantize_int8


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        built = Path(folder)
        build_cross_encoder(built)
        quantized = built / "model.int8.onnx"
        quantize_int8(built / "model.onnx", quantized)
        results: dict[str, dict[str, float]] = {}
        for precision, model in (("fp32", built / "model.onnx"), ("int8", quantized)):
            scorer = pair_scorer(model, built / "tokenizer.json", threads=2)
            results[precision] = {
                split: round(stsb.evaluate(scorer, stsb.load_split(split)), 4)
                for split in ("dev", "test")
            }
        results["size_mb"] = {
            "fp32": round((built / "model.onnx").stat().st_size / 1e6, 1),
            "int8": round(quantized.stat().st_size / 1e6, 1),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
