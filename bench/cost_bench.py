"""What one costly request makes nachbar-ai spend: peak memory, memory kept, and time.

Each case runs in a fresh process that loads the models through `ModelManager`, warms up, then
sends one costly request and reports the growth of its peak resident size (VmHWM), of its
resident size after the call (VmRSS), the wall time and the outcome. With `--baseline-python`
(the interpreter of another checkout's environment, such as the main branch's .venv) every case
also runs against that code, interleaved with this one, so both see the same machine load.
Children get a 10 GB address-space limit, so a case that would take more fails with a
MemoryError instead of taking the machine down.

    .venv/bin/python bench/cost_bench.py --baseline-python ../main/.venv/bin/python
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_MODEL = "imagenet-conse-minilm-l6"
TEXT_MODEL = "all-minilm-l6-v2"
MB = 1024 * 1024
ADDRESS_SPACE_LIMIT = 10 * 1024 * MB


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    color: Any = (90, 120, 150, 128) if mode == "RGBA" else (90, 120, 150)
    Image.new(mode, (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _rotated_jpeg(width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate for display: the decoder has to transpose
    buffer = io.BytesIO()
    small = Image.effect_noise((width // 8, height // 8), 40).convert("RGB")
    small.resize((width, height)).save(buffer, "JPEG", quality=85, exif=exif.tobytes())
    return buffer.getvalue()


def _megabyte_texts() -> list[str]:
    rng = np.random.default_rng(7)
    words = np.array(["river", "photo", "dog", "market", "ship", "bread", "guitar", "night"])
    return [" ".join(rng.choice(words, size=175_000)) for _ in range(10)]


# name -> (model, build the inputs, truncation)
CASES: dict[str, tuple[str, Callable[[], list[Any]], str]] = {
    "png 4000x1": (IMAGE_MODEL, lambda: [_png(4000, 1)], "error"),
    "png 65000x2": (IMAGE_MODEL, lambda: [_png(65000, 2)], "error"),
    "png 6000x6000 RGBA": (IMAGE_MODEL, lambda: [_png(6000, 6000, "RGBA")], "error"),
    "jpeg 8000x5000, EXIF-rotated": (IMAGE_MODEL, lambda: [_rotated_jpeg(8000, 5000)], "error"),
    "10 texts of 1 MB, truncation=error": (TEXT_MODEL, _megabyte_texts, "error"),
    "10 texts of 1 MB, truncation=truncate": (TEXT_MODEL, _megabyte_texts, "truncate"),
}


def _memory(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def run_case(name: str, model_dir: Path) -> dict[str, Any]:
    """In the child: one case against whatever nachbar this interpreter imports."""
    from nachbar.ai.models import ModelManager

    model, make_inputs, truncation = CASES[name]
    inputs = make_inputs()
    manager = ModelManager(model_dir)
    if model == IMAGE_MODEL:
        manager.embed(model, [_png(400, 300)])
    else:
        for _ in range(3):  # the model's working memory for ten 256-token texts
            manager.embed(model, [t[:5000] for t in inputs], truncation="truncate")
    peak, resident = _memory("VmHWM"), _memory("VmRSS")
    started = time.perf_counter()
    try:
        manager.embed(model, inputs, truncation=truncation)
        outcome = "embedded"
    except MemoryError:
        outcome = "MemoryError"
    except Exception as error:
        outcome = type(error).__name__
    seconds = time.perf_counter() - started
    return {
        "peak_mb": (_memory("VmHWM") - peak) / MB,
        "kept_mb": (_memory("VmRSS") - resident) / MB,
        "seconds": seconds,
        "outcome": outcome,
    }


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def spawn_case(python: str, name: str, model_dir: Path) -> dict[str, Any]:
    result = subprocess.run(
        [python, __file__, "--child", name, "--model-dir", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_address_space,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        return {"peak_mb": float("nan"), "kept_mb": float("nan"), "seconds": float("nan"),
                "outcome": f"process failed: {tail[:80]}"}  # fmt: skip
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--baseline-python", help="interpreter of the code to compare with")
    parser.add_argument("--skip-baseline", nargs="*", default=[], metavar="CASE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = args.model_dir or Path(
        os.environ.get("NACHBAR_BENCH_MODEL_DIR", "/tmp/nachbar-bench-models")
    )
    if args.child:
        print(json.dumps(run_case(args.child, model_dir)))
        return
    from nachbar.ai.build.builder import build_all

    build_all(model_dir, only=[IMAGE_MODEL, TEXT_MODEL])
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for name in CASES:
        current = spawn_case(sys.executable, name, model_dir)
        baseline = None
        if args.baseline_python and name not in args.skip_baseline:
            baseline = spawn_case(args.baseline_python, name, model_dir)
        rows.append((name, current, baseline))
        print(name, current, baseline, flush=True)
    print(f"load average after: {os.getloadavg()}")
    print("\n| request | peak MB | kept MB | seconds | outcome | baseline: peak MB / s / outcome |")
    print("|---|---|---|---|---|---|")
    for name, current, baseline in rows:
        base = (
            f"{baseline['peak_mb']:.0f} / {baseline['seconds']:.2f} / {baseline['outcome']}"
            if baseline
            else "not run"
        )
        print(
            f"| {name} | {current['peak_mb']:.0f} | {current['kept_mb']:.0f} | "
            f"{current['seconds']:.2f} | {current['outcome']} | {base} |"
        )


if __name__ == "__main__":
    main()
