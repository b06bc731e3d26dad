"""Measure onnxruntime's SkipLayerNormalization fusion on the built MiniLM models.

    .venv/bin/python scripts/dev/measure_fusions.py [--model-dir DIR] [--rounds 4]

Runs each built bi-encoder and cross-encoder (fp32 and int8) with onnxruntime's default graph
fusions and with `SkipLayerNormFusion` disabled, interleaved in rounds, batch 32 of STS-B
sentences (pairs for the cross-encoders), the runtime's thread settings. Prints throughput,
the ratio to fp32 with default fusions, and the largest output difference the setting makes.
The choice in nachbar.ai.onnx_model.SessionOptions comes from this script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import onnx_reference as ref

from nachbar.server.config import default_model_dir

FUSION = "SkipLayerNormFusion"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=ref.cpu_count())
    args = parser.parse_args()
    model_dir = args.model_dir or default_model_dir()
    names = [ref.TEXT_MODEL, ref.TEXT_MODEL_INT8, ref.CROSS_ENCODER, ref.CROSS_ENCODER_INT8]
    ref.ensure_built(model_dir, names)
    texts = ref.sts_sentences(1024)
    pairs = [(texts[i], f"{texts[i + 1]} {texts[i + 2]}") for i in range(0, 768, 3)]

    for family in (
        (ref.TEXT_MODEL, ref.TEXT_MODEL_INT8),
        (ref.CROSS_ENCODER, ref.CROSS_ENCODER_INT8),
    ):
        cross = family[0] == ref.CROSS_ENCODER
        work: list[object] = list(pairs if cross else texts)
        batches = [work[i : i + 32] for i in range(0, len(work), 32)]
        runs = {}
        for name in family:
            for disabled in ([], [FUSION]):
                model = ref.RawTextModel(
                    ref.built_dir(model_dir, name),
                    max_tokens=ref.MAX_TOKENS[name],
                    threads=args.threads,
                )
                model.session = ref.make_session(
                    ref.built_dir(model_dir, name) / "model.onnx", args.threads, disabled
                )
                label = f"{name}{' without ' + FUSION if disabled else ''}"
                runs[label] = model.score if cross else model.embed
        outputs = {label: np.asarray(run(batches[0])) for label, run in runs.items()}
        seconds = dict.fromkeys(runs, 0.0)
        for _ in range(args.rounds):
            for label, run in runs.items():
                start = time.perf_counter()
                for batch in batches:
                    run(batch)
                seconds[label] += time.perf_counter() - start
        baseline = seconds[family[0]]
        unit = "pairs/s" if cross else "texts/s"
        for label in runs:
            twin = label.removesuffix(f" without {FUSION}")
            delta = float(np.abs(outputs[label] - outputs[twin]).max())
            rate = args.rounds * len(work) / seconds[label]
            print(
                f"{label:60s} {rate:8.0f} {unit}  x{baseline / seconds[label]:.2f} fp32  "
                f"max |change| {delta:.2e}"
            )


if __name__ == "__main__":
    main()
