"""What one request may cost nachbar-ai: the caps, their defaults, and why those defaults.

Plain data without heavy imports, so the server's flag parser can show the defaults without
loading the model runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# One text's UTF-8 size: 25 times what 512 tokens of prose take, so it refuses no text a model
# could take whole, while a text at the cap costs the tokenizer a few MB at most.
DEFAULT_MAX_TEXT_BYTES = 64 * 1024
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024
# A 40 MP image takes up to about 320 MB while it is decoded and converted to RGB.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# Four times what the clients send per upsert; 256 images are about 150 MB of model input.
DEFAULT_MAX_INPUTS = 256
# The offline defaults with their int8 twins, or two models and a reranker, without unloading.
DEFAULT_MAX_LOADED_MODELS = 4


class ImageDecode(StrEnum):
    """How JPEGs larger than a model needs are decoded."""

    # At the smallest 1/2, 1/4 or 1/8 DCT scale that still leaves the model's resize a
    # downscale: several times faster on camera photos, embeddings within the tolerance
    # measured in bench/RESULTS.md (cosine to EXACT >= 0.99 on the photos there).
    DRAFT = "draft"
    # At full size (only JPEGs with a short side of 4096 or more are reduced, to bound memory),
    # as Hugging Face's processors decode them.
    EXACT = "exact"


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every image before decoding."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    # Pixels after decoding (huge JPEGs decode at a reduced scale first).
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class InputLimits:
    """What one request may cost, checked before the work starts."""

    # Texts, images or documents in one request.
    max_inputs: int = DEFAULT_MAX_INPUTS
    # UTF-8 bytes of one text; longer ones are refused, or read only this far when truncating.
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    image: ImageLimits = field(default_factory=ImageLimits)
    # Threads that decode and preprocess images, shared by all requests: at most this many
    # images are decoded at once, and the decoded image is the largest thing a request makes,
    # so this bounds their sum; 0: one per CPU, as more gain no speed.
    image_decoders: int = 0
    image_decode: ImageDecode = ImageDecode.DRAFT

    def __post_init__(self) -> None:
        for name, value in (
            ("max_inputs", self.max_inputs),
            ("max_text_bytes", self.max_text_bytes),
            ("image.max_bytes", self.image.max_bytes),
            ("image.max_pixels", self.image.max_pixels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.image_decoders < 0:
            raise ValueError(
                f"image_decoders must be 0 (one per CPU) or more, got {self.image_decoders}"
            )
