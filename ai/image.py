"""Image decoding with safety caps, and preprocessing built from preprocessor_config.json.

Decoding refuses oversized inputs from the header, before any pixel is decompressed, then
applies the EXIF orientation and converts every colour mode to RGB. Preprocessing is a chain of
small transforms (resize -> center crop -> rescale -> normalize) configured exactly as the
model's Hugging Face image-processor config says, ending in a CHW float32 array.

JPEGs decode at a reduced DCT scale (1/2, 1/4 or 1/8) when the caller passes `draft_size`
(the preprocessor's `draft_size`: twice its resize target), else at full size.

Every intermediate image is bounded: the decoded one by `max_pixels` (JPEGs much larger than
any model needs decode at 1/2, 1/4 or 1/8 scale first, in either mode), colour conversions run
band by band, a resize whose full result would be huge (an extreme aspect ratio) computes only
the centre that the crop keeps, and pixels become floats only after the crop, at the model's
input size.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

# Importing a plugin registers its format; Image.open(formats=...) only knows registered ones.
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from nachbar.ai.errors import ImageTooLargeError, InvalidInputError
from nachbar.ai.limits import ImageLimits

FloatArray = npt.NDArray[np.float32]

DEFAULT_IMAGE_LIMITS = ImageLimits()
# JPEGs whose short side is at least twice this decode at the largest 1/2, 1/4 or 1/8 scale
# that keeps it: far more than the 224-384 pixels any model here takes, at a quarter of the
# memory or less. Without a draft size, smaller JPEGs decode at full size, exactly as Hugging
# Face's processors do.
JPEG_DRAFT_SHORT_SIDE = 2048
# Draft decoding keeps a JPEG at least this many times the model's resize target. Measured on
# foolbox's photos with efficientnet-lite0 (bench/RESULTS.md): at 1x, 512-pixel photos
# decoded at 1/2 scale straight to the 256-pixel target and their embeddings fell to cosine
# 0.935 of the exact path; at 2x every photo, 0.5 to 12 MP, stayed at 0.999 or above.
DRAFT_MARGIN = 2
# Colour conversions of large images run over bands of about this many pixels.
_BAND_PIXELS = 1 << 20
# A shortest-edge resize whose full result would exceed this computes only the centre the
# crop keeps (only extreme aspect ratios get there: 64:1 at a 256-pixel short side).
_FULL_RESIZE_MAX_PIXELS = 1 << 22
# What the API documents. Pillow opens multi-picture JPEGs (MPO, from phones) as JPEG.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)

# Processor families for which an int "size" means the shortest edge, not a square
# (Hugging Face's `default_to_square=False`); their default resample is bicubic.
_SHORTEST_EDGE_FAMILIES = ("CLIP", "ChineseCLIP", "ConvNext", "Bit")


def decode_image(
    data: bytes,
    limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    *,
    what: str = "The image",
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode encoded image bytes to an upright RGB image (first frame of an animation).

    With `draft_size` (width, height), a JPEG decodes at the smallest 1/2, 1/4 or 1/8 DCT scale
    that keeps both sides at least that large (`ImagePreprocessor.draft_size`); else at full
    size, except for the huge JPEGs reduced to bound memory.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError(f"{what} must be encoded image bytes, got {type(data).__name__}.")
    if len(data) == 0:
        raise InvalidInputError(f"{what} is empty (0 bytes); send an encoded image file.")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"{what} is {len(data)} bytes, over this server's {limits.max_bytes}-byte limit "
            "(--max-image-bytes); send a smaller or more compressed image."
        )
    try:
        # Image.open reads the header only; pixels are decoded by load() below.
        image = Image.open(io.BytesIO(bytes(data)), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"{what} declares too many pixels ({error}); send an image of at most "
            f"{limits.max_pixels} pixels (--max-image-pixels)."
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InvalidInputError(
            f"{what} is not a readable image; send {', '.join(ALLOWED_FORMATS)} bytes."
        ) from error
    width, height = image.size
    if width == 0 or height == 0:
        raise InvalidInputError(f"{what} has no pixels ({width}x{height}).")
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        if draft_size is not None:
            # Never larger a request than the memory cap's, so never a larger decode.
            image.draft(
                image.mode,
                (
                    min(draft_size[0], JPEG_DRAFT_SHORT_SIDE),
                    min(draft_size[1], JPEG_DRAFT_SHORT_SIDE),
                ),
            )
        elif min(width, height) >= 2 * JPEG_DRAFT_SHORT_SIDE:
            image.draft(image.mode, (JPEG_DRAFT_SHORT_SIDE, JPEG_DRAFT_SHORT_SIDE))
    decoded_width, decoded_height = image.size
    if decoded_width * decoded_height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels, over this server's "
            f"{limits.max_pixels}-pixel limit (--max-image-pixels); downscale it before sending."
        )
    try:
        image.seek(0)  # animations: the first frame represents the file
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{what} is too large to decode safely ({error}).") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidInputError(
            f"{what} is corrupt or truncated and cannot be decoded ({error})."
        ) from error
    _upright(image)
    try:
        return _to_rgb(image)
    except ValueError as error:
        raise InvalidInputError(
            f"{what} uses colour mode {image.mode!r}, which cannot be converted to RGB."
        ) from error


def _upright(image: Image.Image) -> None:
    """Apply the EXIF orientation in place (no copy when there is none)."""
    # A malformed EXIF block must not cost the user the image: use it as stored.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, SyntaxError):
        ImageOps.exif_transpose(image, in_place=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        return _high_depth_to_rgb(image)
    if image.mode == "P" or image.mode in _ALPHA_MODES:
        # Transparent pixels become white, as Hugging Face's convert_to_rgb does.
        return _by_bands(image, "RGB", _on_white)
    return image.convert("RGB")


def _on_white(band: Image.Image) -> Image.Image:
    rgba = band if band.mode == "RGBA" else band.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey to 8-bit grey, as RGB."""
    if image.mode == "F":
        # Float images have no fixed range: [0, 1] if they fit, else clip to [0, 255].
        extrema = image.getextrema()
        assert isinstance(extrema[1], float | int)
        scale = 255.0 if extrema[1] <= 1.0 else 1.0
    else:
        scale = 1.0 / 257.0  # 16-bit to 8-bit

    def to_gray(band: Image.Image) -> Image.Image:
        scaled = np.asarray(band, dtype=np.float64) * scale
        gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")

    return _by_bands(image, "RGB", to_gray)


def _by_bands(
    image: Image.Image, mode: str, convert: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """`convert` applied to bands of rows, so its temporaries stay small for large images;
    for pixel-wise conversions only, which is all this is used for."""
    width, height = image.size
    rows = max(1, _BAND_PIXELS // width)
    if rows >= height:
        return convert(image)
    out = Image.new(mode, image.size)
    for top in range(0, height, rows):
        out.paste(convert(image.crop((0, top, width, min(top + rows, height)))), (0, top))
    return out


# --- preprocessing transforms -----------------------------------------------------------------


class ArrayTransform(Protocol):
    def __call__(self, pixels: FloatArray) -> FloatArray: ...


class ImageTransform(Protocol):
    def __call__(self, image: Image.Image) -> Image.Image: ...


@dataclass(frozen=True)
class ResizeShortestEdge:
    """Scale so the shorter side is `size`; the longer side is floored, as Hugging Face does.

    With `keep` (height, width), only the centre of that size is needed by the crop that
    follows: a result too large to compute whole is then computed for that centre only.
    """

    size: int
    resample: Image.Resampling
    keep: tuple[int, int] | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width <= height:
            new_width, new_height = self.size, int(self.size * height / width)
        else:
            new_width, new_height = int(self.size * width / height), self.size
        if self.keep is None or new_width * new_height <= _FULL_RESIZE_MAX_PIXELS:
            return image.resize((new_width, new_height), resample=self.resample)
        return _resize_centre(image, (new_width, new_height), self.keep, self.resample)


# How far each filter reaches, in source pixels at scale 1 (Pillow's own supports).
_FILTER_SUPPORT = {
    Image.Resampling.NEAREST: 0.5,
    Image.Resampling.BOX: 0.5,
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.HAMMING: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}


def _resize_centre(
    image: Image.Image,
    size: tuple[int, int],
    keep: tuple[int, int],
    resample: Image.Resampling,
) -> Image.Image:
    """The centre `keep` (height, width) of `image` resized to `size` (width, height), without
    computing the rest: Pillow resamples a source box, here only the rows and columns the
    centre needs. Equal to resizing whole and cropping up to rounding (the order of the two
    passes may differ from a whole resize)."""
    width, height = image.size
    new_width, new_height = size
    out_width, out_height = min(keep[1], new_width), min(keep[0], new_height)
    left, top = (new_width - out_width) // 2, (new_height - out_height) // 2
    x_scale, y_scale = width / new_width, height / new_height
    # Source rows the vertical pass reads for the kept rows, with a pixel to spare.
    reach = _FILTER_SUPPORT[resample] * max(y_scale, 1.0) + 1.0
    first_row = max(0, math.floor(top * y_scale - reach))
    end_row = min(height, math.ceil((top + out_height) * y_scale + reach))
    columns = image.resize(
        (out_width, end_row - first_row),
        resample=resample,
        box=(left * x_scale, first_row, (left + out_width) * x_scale, end_row),
    )
    return columns.resize(
        (out_width, out_height),
        resample=resample,
        box=(0, top * y_scale - first_row, out_width, (top + out_height) * y_scale - first_row),
    )


@dataclass(frozen=True)
class ResizeExact:
    height: int
    width: int
    resample: Image.Resampling

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.width, self.height), resample=self.resample)


@dataclass(frozen=True)
class CenterCrop:
    """Crop the centre [height, width], zero-padding a smaller image as Hugging Face does (the
    odd pixel of padding goes after, the odd pixel cropped away goes before)."""

    height: int
    width: int

    def __call__(self, image: Image.Image) -> Image.Image:
        cols, rows = image.size
        if (rows, cols) == (self.height, self.width):
            return image
        left = (cols - self.width) // 2 if cols >= self.width else -((self.width - cols) // 2)
        top = (rows - self.height) // 2 if rows >= self.height else -((self.height - rows) // 2)
        # Pillow fills the part of the box outside the image with zeros.
        return image.crop((left, top, left + self.width, top + self.height))


@dataclass(frozen=True)
class Rescale:
    factor: float

    def __call__(self, pixels: FloatArray) -> FloatArray:
        return pixels * np.float32(self.factor)


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, pixels: FloatArray) -> FloatArray:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return (pixels - mean) / std


@dataclass(frozen=True)
class ImagePreprocessor:
    """RGB image -> CHW float32 array of a fixed size.

    The array steps act on each pixel's channels alone (rescale, normalize), so they are
    applied once to the 256 possible values of each channel, and the image's bytes are then
    looked up in that table straight into the output: the same float32 arithmetic, so the same
    bits, without the float copies of the whole image each step would make.
    """

    image_steps: tuple[ImageTransform, ...]
    array_steps: tuple[ArrayTransform, ...]
    output_size: tuple[int, int]  # (height, width)
    # [channel, byte value] -> the float the array steps make of it.
    _lookup: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
        for array_step in self.array_steps:
            levels = array_step(levels)
        lookup = np.ascontiguousarray(levels.T, dtype=np.float32)
        lookup.setflags(write=False)
        object.__setattr__(self, "_lookup", lookup)

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The smallest (width, height) a JPEG may be decoded at by DCT scaling: twice the
        resize target, so the resize still downscales at least 2x and its antialiasing filter,
        not the DCT, decides what the model sees. None: full size (no resize)."""
        for step in self.image_steps:
            if isinstance(step, ResizeShortestEdge):
                side = DRAFT_MARGIN * step.size
                return (side, side)
            if isinstance(step, ResizeExact):
                # An EXIF rotation may swap the sides after decoding.
                side = DRAFT_MARGIN * max(step.width, step.height)
                return (side, side)
        return None

    def __call__(self, image: Image.Image) -> FloatArray:
        pixels = np.empty((3, *self.output_size), dtype=np.float32)
        self.into(image, pixels)
        return pixels

    def into(self, image: Image.Image, out: FloatArray) -> None:
        """Preprocess `image` into `out`, a [3, height, width] float32 array (e.g. a row of a
        batch), so the model input is written once."""
        for image_step in self.image_steps:
            image = image_step(image)
        if (image.height, image.width) != self.output_size:
            # Only possible when the config resizes without cropping to a fixed size.
            raise InvalidInputError(
                f"preprocessing produced {image.height}x{image.width} pixels, "
                f"expected {self.output_size[0]}x{self.output_size[1]}"
            )
        # Only now, at the model's input size, do pixels become floats.
        channels = np.asarray(image, dtype=np.uint8)
        for channel in range(3):
            np.take(self._lookup[channel], channels[:, :, channel], out=out[channel])

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> ImagePreprocessor:
        """Build the chain from a Hugging Face image-processor config (preprocessor_config.json).

        Raises ValueError for a config this runtime cannot follow exactly.
        """
        family = str(
            config.get("image_processor_type") or config.get("feature_extractor_type") or ""
        )
        shortest_edge_family = family.startswith(_SHORTEST_EDGE_FAMILIES)
        default_resample = (
            Image.Resampling.BICUBIC if shortest_edge_family else Image.Resampling.BILINEAR
        )
        resample = _resample(config.get("resample", default_resample))

        image_steps: list[ImageTransform] = []
        array_steps: list[ArrayTransform] = []
        output_size: tuple[int, int] | None = None
        shortest_edge: int | None = None
        crop: int | tuple[int, int] | None = None

        if config.get("do_resize", "size" in config):
            size = _size(config.get("size"), square=not shortest_edge_family)
            crop_pct = config.get("crop_pct")
            if family.startswith("ConvNext") and isinstance(size, int):
                if size < 384:
                    # ConvNeXt evaluation: resize to size / crop_pct, then crop to size.
                    shortest_edge = int(size / float(crop_pct or 0.875))
                    crop = (size, size)
                else:
                    image_steps.append(ResizeExact(size, size, resample))
                output_size = (size, size)
            elif isinstance(size, int):
                shortest_edge = size
            else:
                image_steps.append(ResizeExact(size[0], size[1], resample))
                output_size = size

        if config.get("do_center_crop", False) and not family.startswith("ConvNext"):
            crop = _size(config.get("crop_size"), square=True)
            if isinstance(crop, int):
                crop = (crop, crop)
            output_size = crop

        if shortest_edge is not None:
            keep = crop if isinstance(crop, tuple) else None
            image_steps.append(ResizeShortestEdge(shortest_edge, resample, keep=keep))
        if isinstance(crop, tuple):
            image_steps.append(CenterCrop(crop[0], crop[1]))

        if config.get("do_rescale", True):
            array_steps.append(Rescale(float(config.get("rescale_factor", 1 / 255))))

        if config.get("do_normalize", "image_mean" in config):
            array_steps.append(
                Normalize(
                    _triple(config.get("image_mean"), "image_mean"),
                    _triple(config.get("image_std"), "image_std"),
                )
            )

        if output_size is None:
            raise ValueError(
                "it does not produce a fixed image size (it needs a center crop or a "
                "resize to an exact height and width)"
            )
        return ImagePreprocessor(tuple(image_steps), tuple(array_steps), output_size)


def _size(raw: object, *, square: bool) -> int | tuple[int, int]:
    """An HF size entry: a shortest edge (int) or an exact (height, width).

    A bare int means a square when `square`, else a shortest edge; the dict forms say which.
    """
    if isinstance(raw, int):
        return (raw, raw) if square else raw
    if isinstance(raw, Mapping):
        if "height" in raw and "width" in raw:
            return (int(raw["height"]), int(raw["width"]))
        if "shortest_edge" in raw and "longest_edge" not in raw:
            return int(raw["shortest_edge"])
    raise ValueError(f"unsupported size entry {raw!r}")


def _triple(raw: object, name: str) -> tuple[float, float, float]:
    if isinstance(raw, int | float):
        return (float(raw), float(raw), float(raw))
    if isinstance(raw, Sequence) and len(raw) == 3:
        return (float(raw[0]), float(raw[1]), float(raw[2]))
    raise ValueError(f"{name} must be one number or three, got {raw!r}")


_RESAMPLE_NAMES = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _resample(raw: object) -> Image.Resampling:
    # Hugging Face stores PIL's own integer codes (2 = bilinear, 3 = bicubic, ...).
    if isinstance(raw, int):
        return Image.Resampling(raw)
    if isinstance(raw, str) and raw.lower() in _RESAMPLE_NAMES:
        return _RESAMPLE_NAMES[raw.lower()]
    raise ValueError(f"unsupported resample {raw!r}")
