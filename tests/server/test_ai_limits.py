"""nachbar-ai as a real process under costly requests: its memory stays bounded, the answers are
precise, it keeps serving, and errors carry a request id but no server path.

Memory is read from /proc/<pid>/status: VmHWM is the process's peak resident size so far, so
its growth across a batch of requests bounds what any of them cost at its worst moment.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nachbar.client import AIClient, FailedPrecondition, InvalidArgument, OutOfRange
from tests.models_fixture import built_model_dir
from tests.servers import ServerProcess, spawn

TEXT_MODEL = "all-minilm-l6-v2"
IMAGE_MODEL = "imagenet-conse-minilm-l6"
HUB_MODEL = "BAAI/bge-small-en-v1.5"
HUB_RERANKER = "Xenova/ms-marco-MiniLM-L-6-v2"
MB = 1024 * 1024
# A request may cost the server this much memory at its peak, at most.
PEAK_BUDGET = 200 * MB
ABSOLUTE_PATH = re.compile(r"(?<![\w.<>-])/[\w.+-]+/")


def memory(pid: int, field: str) -> int:
    """A size from /proc/<pid>/status, in bytes (VmHWM: peak resident, VmRSS: resident)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, f"no {field} in /proc/{pid}/status"
    return int(match.group(1)) * 1024


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 90).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header but carries a few bytes of pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    workdir = tmp_path_factory.mktemp("ai-limits")
    models = built_model_dir([TEXT_MODEL, IMAGE_MODEL])
    db = spawn("nachbar-db", ["--data-dir", str(workdir / "data")], workdir)
    try:
        ai = spawn(
            "nachbar-ai",
            [
                "--db-port",
                str(db.port),
                "--model-dir",
                str(models),
                "--models",
                f"{TEXT_MODEL},{IMAGE_MODEL}",
                "--max-loaded-models",
                "3",
            ],
            workdir,
        )
    except BaseException:
        db.terminate()
        raise
    yield ai, models
    ai.terminate()
    db.terminate()


@pytest.fixture(scope="module")
def client(servers: tuple[ServerProcess, Path]) -> Iterator[AIClient]:
    with AIClient(servers[0].address, timeout=120) as ai:
        # Warm up: the first calls of each kind allocate what every later call reuses.
        ai.embed(IMAGE_MODEL, [png(300, 200)])
        ai.embed(TEXT_MODEL, ["warm up " * 200], truncation="truncate")
        yield ai


def test_extreme_aspect_ratios_cost_little_and_embed(
    servers: tuple[ServerProcess, Path], client: AIClient
) -> None:
    pid = servers[0].proc.pid
    reference = np.asarray(client.embed(IMAGE_MODEL, [png(300, 300)])[0])
    before = memory(pid, "VmHWM")
    # Each of these once made the server allocate gigabytes: the resize to a 256-pixel short
    # side had no bound on the long side (4000x1 became 1024000x256).
    for width, height in [(4000, 1), (1, 4000), (65000, 2), (2, 65000), (20000, 3)]:
        (vector,) = client.embed(IMAGE_MODEL, [png(width, height)])
        assert len(vector) == 384 and np.isfinite(vector).all(), (width, height)
        # The same flat grey as the square reference: the centre crop sees the same pixels.
        assert float(np.dot(vector, reference)) > 0.99, (width, height)
    growth = memory(pid, "VmHWM") - before
    print(f"peak growth over five extreme aspect ratios: {growth / MB:.1f} MB")
    assert growth < PEAK_BUDGET


def test_oversized_images_are_refused_within_bounded_memory(
    servers: tuple[ServerProcess, Path], client: AIClient
) -> None:
    pid = servers[0].proc.pid
    before = memory(pid, "VmHWM")
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")  # 900 MP in a few hundred KB
    cases = [
        (bomb.getvalue(), "--max-image-pixels"),
        (png_header_only(100_000, 100_000), "--max-image-pixels|too many pixels"),
        (png_header_only(70_000, 1_000), "--max-image-pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable image"),
    ]
    for data, pattern in cases:
        with pytest.raises(InvalidArgument, match=pattern) as caught:
            client.embed(IMAGE_MODEL, [data])
        assert "request id" in caught.value.message
    # A 200-frame animation: only the first frame is decoded.
    frames = [Image.new("P", (1000, 1000), i) for i in range(200)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert len(client.embed(IMAGE_MODEL, [gif.getvalue()])[0]) == 384
    growth = memory(pid, "VmHWM") - before
    print(f"peak growth over image bombs and a 200-frame GIF: {growth / MB:.1f} MB")
    assert growth < PEAK_BUDGET
    assert len(client.embed(IMAGE_MODEL, [png(64, 64)])[0]) == 384  # still serving


def test_megabyte_texts_cost_what_their_first_tokens_cost(
    servers: tuple[ServerProcess, Path], client: AIClient
) -> None:
    pid = servers[0].proc.pid
    rng = np.random.default_rng(7)
    words = np.array(["river", "photo", "dog", "market", "ship", "bread", "guitar", "night"])
    texts = [" ".join(rng.choice(words, size=175_000)) for _ in range(10)]  # ~1 MB each
    assert all(len(t) > 1_000_000 for t in texts)
    beginnings = [t[:5000] for t in texts]  # already far over the 256-token limit
    # The model's own working memory for ten 256-token texts, reached on the first runs.
    for _ in range(3):
        expected = np.asarray(client.embed(TEXT_MODEL, beginnings, truncation="truncate"))
    before_peak, before_resident = memory(pid, "VmHWM"), memory(pid, "VmRSS")

    with pytest.raises(OutOfRange, match="--max-text-bytes") as caught:
        client.embed(TEXT_MODEL, texts)
    assert "Input 0" in caught.value.message
    truncated = np.asarray(client.embed(TEXT_MODEL, texts, truncation="truncate"))

    growth = memory(pid, "VmHWM") - before_peak
    kept = memory(pid, "VmRSS") - before_resident
    print(
        f"ten 1 MB texts beyond ten 5 kB ones: peak {growth / MB:.1f} MB, kept {kept / MB:.1f} MB"
    )
    # Tokenizing them whole cost 880 MB, which stayed; only the 10 MB request itself is left.
    assert growth < 100 * MB
    assert kept < 60 * MB
    # Only the first tokens count: the beginnings alone embed the same.
    np.testing.assert_allclose(truncated, expected, atol=1e-5)


def test_too_many_inputs_in_one_request_are_refused(client: AIClient) -> None:
    with pytest.raises(InvalidArgument, match=r"257 inputs.*--max-inputs-per-request"):
        client.embed(TEXT_MODEL, ["cat"] * 257)
    assert len(client.embed(TEXT_MODEL, ["cat"] * 256)) == 256


def test_requests_cannot_download_models_and_errors_hide_server_paths(
    servers: tuple[ServerProcess, Path], client: AIClient
) -> None:
    ai, model_dir = servers
    with pytest.raises(FailedPrecondition) as caught:
        client.embed(HUB_MODEL, ["a text"])
    message = caught.value.message
    assert "does not download models on request" in message
    assert "--allow-downloads" in message and f"nachbar models fetch {HUB_MODEL}" in message
    assert ABSOLUTE_PATH.search(message) is None, message
    assert str(model_dir) not in message
    found = re.search(r"\(request id ([0-9a-f]{12})\)$", message)
    assert found is not None, message
    # The server log has the same request id, with the directory it looked in.
    logged = [line for line in ai.log().splitlines() if found.group(1) in line]
    assert logged and str(model_dir) in logged[0]

    with pytest.raises(FailedPrecondition, match="does not download") as reranked:
        client.rerank(HUB_RERANKER, "query", ["a document"])
    assert ABSOLUTE_PATH.search(reranked.value.message) is None
    assert HUB_MODEL not in client.info().loaded_models


def test_loaded_models_are_bounded_and_the_startup_ones_stay(client: AIClient) -> None:
    # Three slots: the two --models and one more, so each new model unloads the previous one.
    for extra in ("all-minilm-l6-v2-int8", "efficientnet-lite0"):
        built_model_dir([extra])
    client.embed("all-minilm-l6-v2-int8", ["cat"])
    assert set(client.info().loaded_models) == {TEXT_MODEL, IMAGE_MODEL, "all-minilm-l6-v2-int8"}
    client.embed("efficientnet-lite0", [png(64, 64)])
    assert set(client.info().loaded_models) == {TEXT_MODEL, IMAGE_MODEL, "efficientnet-lite0"}
    assert len(client.embed("all-minilm-l6-v2-int8", ["cat"])[0]) == 384  # loads again
