"""Find a model's files on disk, downloading hub models into the cache when allowed.

Errors say what the operator can do; the directories involved go in their `detail`, which the
server logs and never sends to clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nachbar.ai.defaults import built_dir, hub_cache_dir
from nachbar.ai.errors import ModelUnavailableError
from nachbar.ai.registry import BuiltSource, HubSource, ModelSpec


def resolve_model_dir(
    spec: ModelSpec,
    model_dir: Path,
    *,
    offline: bool,
    local_dirs: Mapping[str, Path] | None = None,
) -> Path:
    """Return the directory that holds every file of `spec` (paths as in `spec.files`).

    Built models live in `<model_dir>/built/<name>/`. A hub model is read from a local directory
    when `local_dirs` maps its name or repo id to one (same relative layout as the repository);
    otherwise from the hub cache `<model_dir>/hub`, downloading the pinned revision first unless
    `offline`. Raises ModelUnavailableError saying what to run when files are missing.
    """
    source = spec.source
    if isinstance(source, BuiltSource):
        return _require_files(
            spec,
            built_dir(model_dir, spec.name),
            fix=(
                f"Build the offline models with `nachbar models build` (it writes "
                f"{source.builder_name!r} into the model dir)."
            ),
        )
    local = _local_dir_for(spec, source, local_dirs or {})
    if local is not None:
        return _require_files(
            spec,
            local,
            fix=(
                f"The local directory given for it (--local-model) must be laid out like the "
                f"hub repository {source.repo_id}: copy the missing files there."
            ),
        )
    snapshot = _snapshot(spec, source, model_dir, offline=offline)
    return _require_files(spec, snapshot, fix=_fetch_hint(spec, offline=offline))


def missing_files(spec: ModelSpec, directory: Path) -> list[str]:
    """Files of `spec` absent (or empty) under `directory`."""
    missing = []
    for relative in spec.files.all():
        path = directory / relative
        if not path.is_file() or path.stat().st_size == 0:
            missing.append(relative)
    return missing


def _require_files(spec: ModelSpec, directory: Path, *, fix: str) -> Path:
    missing = missing_files(spec, directory)
    if missing:
        raise ModelUnavailableError(
            f"Model {spec.name!r} is not available on this server: {', '.join(missing)} "
            f"missing. {fix}",
            detail=f"looked in {directory}",
        )
    return directory


def _local_dir_for(
    spec: ModelSpec, source: HubSource, local_dirs: Mapping[str, Path]
) -> Path | None:
    folded = {name.casefold(): Path(path) for name, path in local_dirs.items()}
    return folded.get(spec.name.casefold()) or folded.get(source.repo_id.casefold())


def _fetch_hint(spec: ModelSpec, *, offline: bool) -> str:
    download = (
        "start nachbar-ai with --allow-downloads so that requests may download it"
        if offline
        else "retry once the hub is reachable"
    )
    return (
        f"The operator can fetch it with `nachbar models fetch {spec.name}`, {download}, or "
        f"serve it from a directory laid out like the hub repository with "
        f"`--local-model {spec.name}=DIR`."
    )


def _snapshot(spec: ModelSpec, source: HubSource, model_dir: Path, *, offline: bool) -> Path:
    # Imported here: huggingface_hub is slow to import and only hub models need it.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache_dir = hub_cache_dir(model_dir)
    where = f"hub cache {cache_dir}"

    def download(local_files_only: bool) -> str:
        return snapshot_download(
            source.repo_id,
            revision=source.revision,
            allow_patterns=list(spec.files.all()),
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )

    hub_offline = False
    try:
        try:
            path = download(offline)
        except OfflineModeIsEnabled:
            # HF_HUB_OFFLINE is set: huggingface_hub >= 1 refuses to download instead of
            # falling back to its cache, so look in the cache ourselves.
            hub_offline = True
            path = download(True)
    except LocalEntryNotFoundError as error:
        if offline:
            reason = "this server does not download models on request"
        elif hub_offline:
            reason = "HF_HUB_OFFLINE is set in the environment, which forbids downloads"
        else:
            reason = "the model hub could not be reached"
        raise ModelUnavailableError(
            f"Model {spec.name!r} ({source.describe()}) is not on this server and {reason}. "
            f"{_fetch_hint(spec, offline=offline)}",
            detail=f"{where}; `nachbar models fetch {spec.name} --model-dir {model_dir}`"
            f" fetches it ({error})",
        ) from error
    except RevisionNotFoundError as error:
        raise ModelUnavailableError(
            f"Revision {source.revision!r} of {source.repo_id} does not exist on the hub; the "
            "registry pin is stale. Upgrade nachbar or use a local directory for this model.",
            detail=str(error),
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelUnavailableError(
            f"Hub repository {source.repo_id} was not found (deleted, renamed or gated). "
            f"Use a local directory for {spec.name!r}.",
            detail=str(error),
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise ModelUnavailableError(
            f"Downloading {spec.name!r} ({source.describe()}) failed. "
            f"{_fetch_hint(spec, offline=offline)}",
            detail=f"{where}: {error}",
        ) from error
    return Path(path)
