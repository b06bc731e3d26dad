"""ImageNet class names, prompt templates and photos read from wheels; the check preprocessing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from nachbar.ai.build.imagenet import (
    imagenet_class_names,
    imagenet_templates,
    preprocess,
    sample_photos,
)


def test_class_names_are_read_without_importing_open_clip() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench"
    assert names[251] == "Dalmatian"
    assert names[999] == "toilet paper"
    assert "open_clip" not in sys.modules


def test_templates_become_format_strings() -> None:
    openai = imagenet_templates()
    assert len(openai) == 80
    assert openai[0] == "a bad photo of a {}."
    simple = imagenet_templates("SIMPLE_IMAGENET_TEMPLATES")
    assert simple == (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    )
    assert all(t.count("{}") == 1 for t in openai + simple)


def test_sample_photos_carry_their_class_index() -> None:
    photos = sample_photos()
    assert len(photos) == 20
    assert photos[0].path.name == "imagenet_00_243.jpg" and photos[0].class_index == 243
    assert [p.class_index for p in photos].count(609) == 2  # two jeeps
    assert all(p.path.is_file() for p in photos)


def test_preprocess_matches_the_declared_pipeline() -> None:
    # A horizontal gradient survives resize and crop in a predictable way.
    ramp = np.tile(np.linspace(0, 255, 1024, dtype=np.float32), (683, 1))
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1).astype(np.uint8))
    pixels = preprocess(image)

    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    # shortest edge 683 -> 256, long edge int(256 * 1024 / 683) = 383; crop 224 from the middle
    resized = image.resize((383, 256), Image.Resampling.BILINEAR)
    left, top = (383 - 224) // 2, (256 - 224) // 2
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
    np.testing.assert_allclose(pixels[0], (expected[..., 0] / 255 - 0.5) / 0.5, atol=1e-6)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_preprocess_converts_grayscale_to_rgb() -> None:
    pixels = preprocess(Image.new("L", (300, 300), color=255))
    assert pixels.shape == (3, 224, 224)
    assert pixels == pytest.approx(1.0)
