from __future__ import annotations

import io
import struct
import time
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from nachbar.ai.errors import ImageTooLargeError, InvalidInputError
from nachbar.ai.image import CenterCrop, ImagePreprocessor, ResizeShortestEdge, decode_image
from nachbar.ai.limits import ImageLimits
from tests.ai.tiny_models import BUILT_PREPROCESSOR, CLIP_PREPROCESSOR, RESNET_PREPROCESSOR


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header but carries a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


# --- decoding --------------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    # Stored 60 wide x 20 high, tagged "rotate 90 CW to display" (orientation 6).
    stored = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(stored, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 60)
    assert decoded.mode == "RGB"


def test_no_orientation_tag_keeps_the_stored_size() -> None:
    decoded = decode_image(encode(Image.new("RGB", (60, 20)), "JPEG"))
    assert decoded.size == (60, 20)


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white background
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("LA", (50, 255), (50, 50, 50)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
    ],
)
def test_every_colour_mode_becomes_rgb(mode: str, color: Any, expected: tuple[int, ...]) -> None:
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    decoded = decode_image(encode(Image.new(mode, (4, 4), color), fmt))
    assert decoded.mode == "RGB"
    pixel = decoded.getpixel((1, 1))
    assert isinstance(pixel, tuple)
    assert np.allclose(pixel, expected, atol=2)


def test_palette_image_with_transparency() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    data = encode(image, "PNG", transparency=0)
    assert decode_image(data).getpixel((0, 0)) == (0, 255, 0)
    image.putpixel((0, 0), 0)  # the transparent index
    assert decode_image(encode(image, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_the_first_frame() -> None:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=50, loop=0)
    pixel = decode_image(data).getpixel((4, 4))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 200 and pixel[2] < 50


def test_zero_bytes_are_invalid() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(b"")


def test_garbage_is_invalid() -> None:
    with pytest.raises(InvalidInputError, match="not a readable image") as caught:
        decode_image(b"this is not an image at all", what="Input 3")
    assert "Input 3" in str(caught.value)
    assert not isinstance(caught.value, ImageTooLargeError)


def test_truncated_image_is_invalid() -> None:
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(InvalidInputError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_unsupported_format_is_refused() -> None:
    # Pillow reads PPM, but the API does not accept it.
    with pytest.raises(InvalidInputError, match="JPEG, PNG"):
        decode_image(encode(Image.new("RGB", (4, 4)), "PPM"))


def test_byte_cap() -> None:
    data = encode(Image.new("RGB", (16, 16)), "PNG")
    with pytest.raises(ImageTooLargeError, match="byte limit"):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert decode_image(data, ImageLimits(max_bytes=len(data))).size == (16, 16)


def test_pixel_cap_is_checked_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(Image.new("RGB", (2000, 1000)), "PNG")  # compresses to a few kB

    def refuse_to_decode(self: ImageFile.ImageFile) -> Any:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_decode)
    with pytest.raises(ImageTooLargeError, match="2000x1000") as caught:
        decode_image(data, ImageLimits(max_pixels=1_999_999))
    assert "downscale" in str(caught.value)


def test_absurd_header_sizes_are_too_large_not_corrupt() -> None:
    # 100000 x 100000 declared in 33 bytes: refused from the header.
    with pytest.raises(ImageTooLargeError):
        decode_image(png_header_only(100_000, 100_000))
    with pytest.raises(ImageTooLargeError):
        decode_image(png_header_only(8000, 8000))  # 64 MP: over the default 40 MP cap


def test_image_too_large_is_an_invalid_input() -> None:
    assert issubclass(ImageTooLargeError, InvalidInputError)


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocessing_numerics_match_a_hand_computation() -> None:
    # 6 wide x 4 high, every pixel different.
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    image = Image.fromarray(pixels, "RGB")
    config = {
        "do_resize": True,
        "size": {"shortest_edge": 2},
        "resample": 0,  # nearest
        "do_center_crop": True,
        "crop_size": {"height": 2, "width": 2},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.5, 0.25, 0.125],
    }
    out = ImagePreprocessor.from_config(config)(image)
    # Nearest 6x4 -> 3x2 keeps source rows 1, 3 and columns 1, 3, 5; the 2x2 centre crop of a
    # 3-wide image starts at column (3 - 2) // 2 = 0, so columns 1 and 3 remain.
    kept = pixels[[1, 3]][:, [1, 3]].astype(np.float64)
    expected = ((kept / 255 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 0.125]).transpose(2, 0, 1)
    assert out.shape == (3, 2, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_shortest_edge_resize_floors_the_long_side_like_hugging_face() -> None:
    resize = ResizeShortestEdge(224, Image.Resampling.BILINEAR)
    assert resize(Image.new("RGB", (300, 200))).size == (336, 224)
    assert resize(Image.new("RGB", (200, 333))).size == (224, 372)  # 372.96 floors to 372


def test_center_crop_pads_small_images_with_zeros() -> None:
    crop = CenterCrop(4, 4)
    out = np.asarray(crop(Image.new("RGB", (3, 2), (1, 1, 1))))
    assert out.shape == (4, 4, 3)
    assert out.sum() == 2 * 3 * 3
    # 2 rows gain one above and one below; 3 columns gain one on the right ((4 - 3) // 2 = 0).
    assert out[0].sum() == out[3].sum() == out[:, 3].sum() == 0


def test_clip_config_resizes_shortest_edge_then_crops() -> None:
    pre = ImagePreprocessor.from_config(CLIP_PREPROCESSOR)
    assert pre.output_size == (224, 224)
    assert pre.image_steps == (
        ResizeShortestEdge(224, Image.Resampling.BICUBIC, keep=(224, 224)),
        CenterCrop(224, 224),
    )
    out = pre(Image.new("RGB", (640, 480), (255, 255, 255)))
    assert out.shape == (3, 224, 224)
    np.testing.assert_allclose(out[0], (1 - 0.48145466) / 0.26862954, rtol=1e-5)


def test_convnext_config_uses_crop_pct() -> None:
    pre = ImagePreprocessor.from_config(RESNET_PREPROCESSOR)
    assert pre.image_steps == (
        ResizeShortestEdge(256, Image.Resampling.BICUBIC, keep=(224, 224)),
        CenterCrop(224, 224),
    )
    assert pre(Image.new("RGB", (500, 300))).shape == (3, 224, 224)


def test_built_model_config() -> None:
    pre = ImagePreprocessor.from_config(BUILT_PREPROCESSOR)
    assert pre.image_steps == (
        ResizeShortestEdge(256, Image.Resampling.BILINEAR, keep=(224, 224)),
        CenterCrop(224, 224),
    )
    out = pre(Image.new("RGB", (300, 300), (0, 0, 0)))
    np.testing.assert_allclose(out, -1.0)  # (0 - 0.5) / 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"do_center_crop": False}, "fixed image size"),
        ({"resample": 99}, "99"),
        ({"size": {"longest_edge": 300}}, "size entry"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ],
)
def test_configs_that_cannot_be_followed_exactly_are_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ImagePreprocessor.from_config({**CLIP_PREPROCESSOR, **change})


def test_square_size_for_non_clip_processors() -> None:
    config = {"image_processor_type": "ViTImageProcessor", "size": 32, "do_rescale": True}
    pre = ImagePreprocessor.from_config(config)
    assert pre.output_size == (32, 32)
    assert pre(Image.new("RGB", (100, 10))).shape == (3, 32, 32)


# --- bounded cost: every intermediate image is capped ----------------------------------------


def smooth_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Gradients and slow waves: a stand-in for a photo that resizes without clipping."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127 + 100 * np.sin(xs / max(width, 1) * 7 + ys / max(height, 1) * 3),
        127 + 100 * np.cos(xs / 37.0 + ys / 11.0),
        (xs + ys) % 256,
    ]
    pixels = np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.mark.parametrize(
    ("size", "resample"),
    [
        ((3000, 8), Image.Resampling.BILINEAR),  # resized whole it would be 96000x256
        ((9, 2500), Image.Resampling.BICUBIC),
        ((20000, 300), Image.Resampling.BILINEAR),  # a downscale on both axes
    ],
)
def test_extreme_aspect_ratios_resize_only_the_centre_the_crop_keeps(
    size: tuple[int, int], resample: Image.Resampling
) -> None:
    image = smooth_image(*size)
    resize = ResizeShortestEdge(256, resample, keep=(224, 224))
    width, height = size
    full_size = (
        (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    )
    assert full_size[0] * full_size[1] > 1 << 22  # past the whole-resize threshold
    centre = CenterCrop(224, 224)(resize(image))
    assert centre.size == (224, 224)
    # What resizing whole and cropping gives (affordable here, in a test, for these sizes).
    expected = np.asarray(CenterCrop(224, 224)(image.resize(full_size, resample=resample)))
    difference = np.abs(np.asarray(centre).astype(int) - expected)
    assert difference.max() <= 2 and difference.mean() < 0.1


def test_ordinary_sizes_resize_whole_exactly_like_hugging_face() -> None:
    image = smooth_image(640, 427)
    resize = ResizeShortestEdge(256, Image.Resampling.BICUBIC, keep=(224, 224))
    assert np.array_equal(
        np.asarray(resize(image)), np.asarray(image.resize((383, 256), Image.Resampling.BICUBIC))
    )


def test_extreme_aspect_ratio_preprocessing_is_fast() -> None:
    pre = ImagePreprocessor.from_config(BUILT_PREPROCESSOR)
    for size in [(65000, 2), (2, 65000), (4000, 1)]:
        started = time.perf_counter()
        out = pre(decode_image(encode(Image.new("RGB", size, (10, 200, 30)), "PNG")))
        # It took 16-25 s and about 5 GB when the whole 8320000x256 resize was computed.
        assert time.perf_counter() - started < 2.0, size
        assert out.shape == (3, 224, 224)
        np.testing.assert_allclose(out[1], (200 / 255 - 0.5) / 0.5, atol=1e-6)


def test_pixels_become_floats_only_at_the_model_input_size(monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[tuple[int, ...]] = []
    original = np.asarray

    def watching_asarray(value: Any, dtype: Any = None, **options: Any) -> Any:
        array = original(value, dtype=dtype, **options)
        if isinstance(value, Image.Image):
            converted.append(array.shape)
        return array

    monkeypatch.setattr(np, "asarray", watching_asarray)
    pixels = ImagePreprocessor.from_config(CLIP_PREPROCESSOR)(Image.new("RGB", (3000, 2000)))
    # The image's bytes are read once, at the crop's size, and looked up into the floats.
    assert converted == [(224, 224, 3)]
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.dtype(np.float32)


def test_huge_jpegs_decode_at_a_reduced_scale_and_count_their_decoded_pixels() -> None:
    data = encode(smooth_image(512, 512).resize((4096, 4096)), "JPEG", quality=80)
    limits = ImageLimits(max_pixels=5_000_000)  # 16.8 MP in the header, 4.2 MP decoded
    decoded = decode_image(data, limits)
    assert decoded.size == (2048, 2048)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((2048, 2048)))
    assert np.abs(np.asarray(decoded).astype(int) - reference).mean() < 3
    # Other formats have no reduced decoding: the header size is what they decode to.
    with pytest.raises(ImageTooLargeError, match="--max-image-pixels"):
        decode_image(png_header_only(4096, 4096), limits)
    # JPEGs a bit smaller decode at full size, as Hugging Face's processors decode them.
    assert decode_image(encode(smooth_image(3000, 2000), "JPEG")).size == (3000, 2000)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_large_images_convert_band_by_band_to_the_same_pixels(mode: str) -> None:
    # 1500 x 1000 = 1.5 MP: over the 1 MP band, so converted in two bands.
    image = smooth_image(1500, 1000)
    if mode == "I;16":
        gray = np.asarray(image)[..., 0]
        data = encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")
        expected = np.repeat(gray[..., None], 3, axis=2)  # 257 * v back to v exactly
    else:
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray((np.indices((1000, 1500))[1] % 256).astype(np.uint8)))
        image = image.convert(mode)
        whole = image.convert("RGBA")
        background = Image.new("RGBA", whole.size, (255, 255, 255, 255))
        expected = np.asarray(Image.alpha_composite(background, whole).convert("RGB"))
        data = encode(image, "PNG")
    decoded = np.asarray(decode_image(data))
    assert decoded.shape == (1000, 1500, 3)
    assert np.array_equal(decoded, expected)
