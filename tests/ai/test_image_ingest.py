"""Fast image ingest: parallel decoding, draft (DCT-scaled) JPEG decoding and its tolerance,
the exact mode's pixels, and a request's images reaching the model without a copy."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nachbar.ai.build.imagenet import sample_photos
from nachbar.ai.errors import InvalidInputError, ModelUnavailableError
from nachbar.ai.image import DRAFT_MARGIN, ImagePreprocessor, decode_image
from nachbar.ai.inference import DecoderPool, _consecutive_rows
from nachbar.ai.limits import ImageDecode, InputLimits
from nachbar.ai.models import IMAGE_CHUNK, ModelManager
from tests.ai.test_built_models import built_dir_with
from tests.ai.tiny_models import BUILT_PREPROCESSOR, CLIP_PREPROCESSOR, RESNET_PREPROCESSOR

EFFICIENTNET = "efficientnet-lite0"
# Lowest cosine to the exact path allowed for draft-decoded photos; bench/RESULTS.md reports
# 0.999 and above on these photos.
DRAFT_COSINE = 0.995


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def enlarged(data: bytes, size: tuple[int, int], noise: float, seed: int) -> bytes:
    """A camera-size JPEG made from a photo: upscaled, with sensor-like grain so the large
    file has fine detail for the DCT scaling to drop."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    grain = np.random.default_rng(seed).normal(0.0, noise, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    return jpeg(Image.fromarray(pixels))


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """foolbox's 512x512 photos and larger JPEGs made from them (2 MP, 3 MP, 12 MP)."""
    originals = [photo.path.read_bytes() for photo in sample_photos()]
    larger = [
        enlarged(originals[0], (1728, 1152), 0.0, 0),
        enlarged(originals[1], (2048, 1536), 6.0, 1),
        enlarged(originals[2], (1536, 2048), 6.0, 2),
        enlarged(originals[3], (4000, 3000), 4.0, 3),
    ]
    return originals + larger


def old_preprocessing(preprocessor: ImagePreprocessor, image: Image.Image) -> np.ndarray[Any, Any]:
    """The chain as it ran before the lookup table: float32 pixels through each array step."""
    for step in preprocessor.image_steps:
        image = step(image)
    pixels = np.asarray(image, dtype=np.float32)
    for array_step in preprocessor.array_steps:
        pixels = array_step(pixels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


@pytest.mark.parametrize("config", [BUILT_PREPROCESSOR, CLIP_PREPROCESSOR, RESNET_PREPROCESSOR])
def test_exact_preprocessing_gives_the_same_bits_as_before(
    config: dict[str, Any], photos: list[bytes]
) -> None:
    preprocessor = ImagePreprocessor.from_config(config)
    for data in photos[:3] + photos[-2:]:
        image = decode_image(data)
        assert np.array_equal(preprocessor(image), old_preprocessing(preprocessor, image))


def test_draft_decoding_keeps_twice_the_resize_target() -> None:
    preprocessor = ImagePreprocessor.from_config(BUILT_PREPROCESSOR)  # shortest edge 256
    draft = preprocessor.draft_size
    assert draft == (256 * DRAFT_MARGIN, 256 * DRAFT_MARGIN)
    big = jpeg(Image.new("RGB", (4000, 3000), (90, 120, 30)))
    assert decode_image(big, draft_size=draft).size == (1000, 750)  # 1/4: 1/8 would be < 512
    assert decode_image(big).size == (4000, 3000)  # exact: full size
    small = jpeg(Image.new("RGB", (1000, 600), (90, 120, 30)))
    assert decode_image(small, draft_size=draft).size == (1000, 600)  # 1/2 would be < 512
    # Other formats have no reduced decoding.
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 2000)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), draft_size=draft).size == (2000, 2000)


def _embed(model_dir: Path, decode: ImageDecode, images: list[bytes]) -> np.ndarray[Any, Any]:
    limits = InputLimits(image_decode=decode)
    with ModelManager(model_dir, limits=limits) as manager:
        return manager.embed(EFFICIENTNET, images)


def test_draft_embeddings_stay_within_tolerance_of_the_exact_path(photos: list[bytes]) -> None:
    model_dir = built_dir_with(EFFICIENTNET)
    exact = _embed(model_dir, ImageDecode.EXACT, photos)
    draft = _embed(model_dir, ImageDecode.DRAFT, photos)
    cosines = np.sum(exact * draft, axis=1)
    assert cosines.min() >= DRAFT_COSINE, cosines
    # The 512-pixel photos are not reduced (1/2 would fall below 512): identical vectors.
    assert np.array_equal(exact[:20], draft[:20])
    # The large ones are, so they differ, a little.
    assert cosines[-1] < 1.0


def test_parallel_decoding_gives_the_vectors_of_one_thread(photos: list[bytes]) -> None:
    model_dir = built_dir_with(EFFICIENTNET)
    images = photos[:6] + photos[-3:] + photos[6:9]  # more than one chunk, in request order
    assert len(images) > IMAGE_CHUNK
    parallel = _embed(model_dir, ImageDecode.DRAFT, images)
    with ModelManager(model_dir, limits=InputLimits(image_decoders=1)) as manager:
        serial = np.concatenate([manager.embed(EFFICIENTNET, [image]) for image in images])
    assert np.allclose(parallel, serial, atol=1e-5)


def test_a_bad_image_fails_its_request_by_index_and_the_pool_keeps_serving(
    tiny_model_dir: Path,
) -> None:
    good = jpeg(Image.new("RGB", (40, 30), (10, 200, 30)))
    with ModelManager(tiny_model_dir, limits=InputLimits(image_decoders=2)) as manager:
        with pytest.raises(InvalidInputError, match="Input 5 is not a readable image"):
            manager.embed("efficientnet-lite0", [good] * 5 + [b"not an image"] + [good] * 4)
        # In a later chunk (IMAGE_CHUNK images are queued while the next ones decode), the
        # index still counts from the request's first image.
        late = IMAGE_CHUNK + 2
        with pytest.raises(InvalidInputError, match=f"Input {late} is not a readable image"):
            manager.embed("efficientnet-lite0", [good] * late + [b"not an image"] + [good])
        assert manager.embed("efficientnet-lite0", [good] * 3).shape[0] == 3


def test_the_pool_bounds_what_each_request_queues() -> None:
    pool = DecoderPool(2)
    running, most = 0, 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.01)
        with lock:
            running -= 1

    submitted: list[int] = []
    original = pool._executor.submit

    def counting_submit(fn: Any) -> Any:
        submitted.append(pool._executor._work_queue.qsize())  # queued, not started
        return original(fn)

    pool._executor.submit = counting_submit  # type: ignore[method-assign,assignment]
    try:
        pool.run([job] * 12)
    finally:
        pool.close()
    assert most == 2
    assert max(submitted) <= 2


def test_a_requests_images_reach_the_model_without_a_copy() -> None:
    batch = np.zeros((4, 3, 2, 2), dtype=np.float32)
    rows = list(batch)
    whole = _consecutive_rows(rows)
    assert whole is not None and np.shares_memory(whole, batch) and whole.shape == batch.shape
    middle = _consecutive_rows(rows[1:3])
    assert middle is not None and np.shares_memory(middle, batch[1:3])
    # Rows out of order, or from two requests, are stacked instead.
    assert _consecutive_rows([rows[1], rows[0]]) is None
    assert _consecutive_rows([rows[0], np.zeros((3, 2, 2), dtype=np.float32)]) is None


def test_a_closed_pool_refuses_work_as_a_closed_model_manager() -> None:
    pool = DecoderPool(1)
    ran: list[int] = []
    pool.run([lambda: ran.append(1)])
    pool.close()
    with pytest.raises(ModelUnavailableError, match="shutting down"):
        pool.run([lambda: ran.append(2)])
    assert ran == [1]
