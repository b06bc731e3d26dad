"""The quickstart's demo: real CLI commands against a running stack, printed as they run.

It copies the ImageNet sample photos that ship in the foolbox wheel (named by their class), ingests
them into a store indexed by the ConSE image model and texts into a MiniLM store, then searches
photos with sentences, texts with a photo, and reranks the text hits of a question with the
MS MARCO cross-encoder (a query -> passage reranker; the STS-B one scores sentence likeness),
blended with the vector similarities: the configuration bench/RESULTS.md measured not to lose
to vector search alone on either evaluation set.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from nachbar.ai.build.imagenet import imagenet_class_names, sample_photos

REPO = Path(__file__).resolve().parents[2]
NACHBAR = str(Path(sys.executable).parent / "nachbar")
PHOTOS = REPO / "var" / "demo-photos"
TEXTS = Path(__file__).with_name("texts.jsonl")


def run(*args: str) -> None:
    print(f"\n$ nachbar {' '.join(a if ' ' not in a else repr(a) for a in args)}", flush=True)
    subprocess.run([NACHBAR, *args], check=True)


def main() -> None:
    names = imagenet_class_names()
    if PHOTOS.exists():
        shutil.rmtree(PHOTOS)
    PHOTOS.mkdir(parents=True)
    for photo in sample_photos():
        label = names[photo.class_index].replace(" ", "_").replace("/", "_")
        shutil.copy(photo.path, PHOTOS / f"{photo.path.stem.split('_')[1]}-{label}.jpg")

    run(
        "ingest",
        str(PHOTOS),
        "--store",
        "demo-photos",
        "--create",
        "--query-model",
        "all-minilm-l6-v2",
        "--index-model",
        "imagenet-conse-minilm-l6",
    )
    run(
        "ingest",
        str(TEXTS),
        "--store",
        "demo-texts",
        "--create",
        "--query-model",
        "all-minilm-l6-v2",
        "--id-column",
        "id",
    )
    for sentence in ("a photo of a dog", "an off-road vehicle", "fresh fruit"):
        run("search", sentence, "--store", "demo-photos", "-k", "3")
    jeep = sorted(PHOTOS.glob("*jeep*.jpg"))[0]
    run(
        "search",
        "--image",
        str(jeep),
        "--store",
        "demo-texts",
        "-k",
        "3",
        "--query-model",
        "imagenet-conse-minilm-l6",
    )
    run(
        "search",
        "Which animals swim?",
        "--store",
        "demo-texts",
        "-k",
        "3",
        "--rerank",
        "ms-marco-minilm-l12-cross-encoder-int8",
        "--fusion",
        "blend",
    )
    run(
        "search",
        "animals in the water",
        "--store",
        "demo-texts",
        "-k",
        "3",
        "--filter",
        'topic = "animals"',
    )


if __name__ == "__main__":
    main()
