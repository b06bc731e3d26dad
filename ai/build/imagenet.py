"""ImageNet class names, prompt templates and sample photos, read from installed wheels.

Class names and the CLIP prompt templates come from `open_clip/zero_shot_metadata.py`; the file
is parsed with `ast` rather than imported, because importing open_clip pulls in torch. The
sample photos are the 20 ImageNet validation images that ship with foolbox, named
`imagenet_<position>_<class index>.jpg`.

`preprocess` reproduces the preprocessing the built image models declare in their
`preprocessor_config.json`; the build uses it only to check accuracy.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from nachbar.ai.build.sources import FOOLBOX, OPEN_CLIP, locate, package_files

__all__ = [
    "CROP_SIZE",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "RESIZE_SHORTEST_EDGE",
    "LabeledPhoto",
    "imagenet_class_names",
    "imagenet_templates",
    "preprocess",
    "sample_photos",
]

ZERO_SHOT_METADATA = "open_clip/zero_shot_metadata.py"
_SAMPLE_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.jpg")

RESIZE_SHORTEST_EDGE = 256
CROP_SIZE = 224
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


class MetadataFormatError(ValueError):
    """open_clip's zero-shot metadata file no longer has the expected literal layout."""


@dataclass(frozen=True, slots=True)
class LabeledPhoto:
    """A real photo with its ImageNet-1k class index."""

    path: Path
    class_index: int


def _metadata_tuple(name: str) -> list[ast.expr]:
    source = locate(OPEN_CLIP, ZERO_SHOT_METADATA).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == name
            and isinstance(node.value, ast.Tuple | ast.List)
        ):
            return list(node.value.elts)
    raise MetadataFormatError(f"{ZERO_SHOT_METADATA} has no literal tuple {name}")


# A few ImageNet-1k superclasses (WordNet hypernyms) by class index. Prompts naming them let a
# generic query ("a photo of a dog") reach photos of specific classes ("bull mastiff").
_SUPERCLASS_INDEXES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("fish", (*range(0, 7), *range(389, 398))),
    ("bird", (*range(7, 25), *range(80, 101), *range(127, 147))),
    ("turtle", tuple(range(33, 38))),
    ("lizard", tuple(range(38, 49))),
    ("snake", tuple(range(52, 69))),
    ("dog", tuple(range(151, 269))),
    ("cat", tuple(range(281, 286))),
    ("wild cat", tuple(range(286, 294))),
    ("bear", tuple(range(294, 298))),
    ("insect", tuple(range(300, 321))),
    ("butterfly", tuple(range(321, 327))),
    ("ape", tuple(range(365, 370))),
    ("monkey", tuple(range(370, 383))),
    ("car", (436, 468, 511, 609, 627, 656, 661, 717, 751, 817)),
    ("truck", (555, 569, 675, 867)),
    ("bus", (654, 779, 874)),
)


def imagenet_superclasses() -> dict[int, str]:
    """Class index -> the generic name of its superclass, for the classes that have one here."""
    return {index: name for name, indexes in _SUPERCLASS_INDEXES for index in indexes}


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (CLIP's cleaned-up wording)."""
    names = []
    for element in _metadata_tuple("IMAGENET_CLASSNAMES"):
        if not (isinstance(element, ast.Constant) and isinstance(element.value, str)):
            raise MetadataFormatError("IMAGENET_CLASSNAMES holds a non-string entry")
        names.append(element.value)
    if len(names) != 1000:
        raise MetadataFormatError(f"IMAGENET_CLASSNAMES has {len(names)} names, expected 1000")
    return tuple(names)


def imagenet_templates(name: str = "OPENAI_IMAGENET_TEMPLATES") -> tuple[str, ...]:
    """Prompt templates such as 'a photo of a {}.' from a tuple of `lambda c: f'...{c}...'`."""
    templates = []
    for element in _metadata_tuple(name):
        if not (isinstance(element, ast.Lambda) and isinstance(element.body, ast.JoinedStr)):
            raise MetadataFormatError(f"{name} holds something other than an f-string lambda")
        parts = []
        for piece in element.body.values:
            if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
                parts.append(piece.value.replace("{", "{{").replace("}", "}}"))
            elif isinstance(piece, ast.FormattedValue) and isinstance(piece.value, ast.Name):
                parts.append("{}")
            else:
                raise MetadataFormatError(f"{name} has a template this parser cannot read")
        templates.append("".join(parts))
    return tuple(templates)


def sample_photos() -> tuple[LabeledPhoto, ...]:
    """foolbox's ImageNet sample photos, in file order."""
    photos = []
    for relative in package_files(FOOLBOX, "foolbox/data/"):
        match = _SAMPLE_NAME.fullmatch(Path(relative).name)
        if match:
            photos.append(LabeledPhoto(locate(FOOLBOX, relative), int(match.group(2))))
    if not photos:
        raise FileNotFoundError("foolbox is installed but ships no foolbox/data/imagenet_*.jpg")
    return tuple(sorted(photos, key=lambda photo: photo.path.name))


def preprocess(image: Image.Image) -> npt.NDArray[np.float32]:
    """RGB, bilinear resize of the shortest edge to 256, center crop 224, scale to [-1, 1].

    Returns [3, 224, 224], the layout of `pixel_values` (batch it with np.stack).
    """
    image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    # Same arithmetic as the Hugging Face image processors: the long edge is truncated.
    resized_long = int(RESIZE_SHORTEST_EDGE * long / short)
    size = (
        (RESIZE_SHORTEST_EDGE, resized_long)
        if width <= height
        else (resized_long, RESIZE_SHORTEST_EDGE)
    )
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = (image.width - CROP_SIZE) // 2
    top = (image.height - CROP_SIZE) // 2
    image = image.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean, std = np.array(IMAGE_MEAN, np.float32), np.array(IMAGE_STD, np.float32)
    normalized: npt.NDArray[np.float32] = (pixels - mean) / std
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))
