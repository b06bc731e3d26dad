"""Command-line configuration: every flag has a NACHBAR_* environment twin.

Precedence is flag > environment > default. The parsed result is a frozen dataclass so the rest
of the server never reads the environment itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nachbar.ai import defaults as model_defaults
from nachbar.ai.limits import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_INPUTS,
    DEFAULT_MAX_LOADED_MODELS,
    DEFAULT_MAX_TEXT_BYTES,
    ImageDecode,
)
from nachbar.db.filters import DEFAULT_LIMITS, FilterLimits
from nachbar.server.exposure import (
    DBLinkConfig,
    ExposureConfig,
    add_db_link_flags,
    add_exposure_flags,
    db_link_config,
    exposure_config,
)
from nachbar.v1 import defaults

DEFAULT_HOST = defaults.HOST
DEFAULT_DB_PORT = defaults.DB_PORT
DEFAULT_AI_PORT = defaults.AI_PORT
DEFAULT_MAX_MESSAGE_BYTES = defaults.MAX_MESSAGE_BYTES
DEFAULT_MAX_FILTER_BYTES = 4 * 1024 * 1024
# Protobuf decodes at most 100 nested messages; an all_of/any_of level takes two, plus the request.
MAX_FILTER_DEPTH = 48
default_model_dir = model_defaults.model_dir
DEFAULT_GRAPH_CHECKPOINT_CHANGES = 10_000
DEFAULT_GRAPH_CHECKPOINT_SECONDS = 300.0


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nachbar" / "data"


@dataclass(frozen=True)
class CommonConfig:
    host: str
    port: int
    max_message_bytes: int
    workers: int
    log_level: str
    log_format: str
    port_file: Path | None
    exit_with_parent: bool
    grace_seconds: float
    bulk_workers: int
    max_queued: int
    max_inflight_bytes: int
    interactive_max_bytes: int
    exposure: ExposureConfig = field(default_factory=ExposureConfig)


@dataclass(frozen=True)
class DBConfig(CommonConfig):
    data_dir: Path = field(default_factory=default_data_dir)
    fsync: str = "full"
    filter_limits: FilterLimits = DEFAULT_LIMITS
    max_filter_bytes: int = DEFAULT_MAX_FILTER_BYTES
    graph_checkpoint_changes: int = DEFAULT_GRAPH_CHECKPOINT_CHANGES
    graph_checkpoint_seconds: float = DEFAULT_GRAPH_CHECKPOINT_SECONDS
    engine: str = "embedded"
    milvus_uri: str = ""
    milvus_token: str = field(default="", repr=False)
    milvus_db: str = ""
    milvus_consistency: str = "strong"
    milvus_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class AIConfig(CommonConfig):
    db_host: str = DEFAULT_HOST
    db_port: int = DEFAULT_DB_PORT
    model_dir: Path = field(default_factory=default_model_dir)
    models: tuple[str, ...] = ()
    local_models: tuple[tuple[str, Path], ...] = ()
    allow_downloads: bool = False
    max_loaded_models: int = DEFAULT_MAX_LOADED_MODELS
    max_inputs_per_request: int = DEFAULT_MAX_INPUTS
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    image_decoders: int = 0
    image_decode: ImageDecode = ImageDecode.DRAFT
    batching: bool = True
    max_batch_size: int = 32
    max_batch_wait_ms: float = 0.0
    batch_workers: int = 1
    db_timeout_seconds: float = 30.0
    db_link: DBLinkConfig = field(default_factory=DBLinkConfig)

    @property
    def db_address(self) -> str:
        """One nachbar-db, several (comma-separated hosts, each may carry its own port), or a
        gRPC target such as dns:///nachbar-db (calls are then spread round-robin)."""
        if self.db_host.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
            return (
                f"{self.db_host}:{self.db_port}"
                if self.db_host.startswith("dns:")
                else self.db_host
            )
        hosts = [h.strip() for h in self.db_host.split(",") if h.strip()]
        return ",".join(h if _has_port(h) else _join(h, self.db_port) for h in hosts)


def _has_port(host: str) -> bool:
    tail = host.rsplit("]", 1)[-1] if host.startswith("[") else host
    return tail.count(":") == 1 and tail.rsplit(":", 1)[1].isdigit()


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class _EnvDefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def _env(name: str, default: Any) -> Any:
    return os.environ.get(f"NACHBAR_{name}", default)


def env_bool(name: str, default: bool) -> bool:
    """NACHBAR_<name> as a flag (1, true, yes or on), or `default` when it is unset."""
    return _env_bool(name, default)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(f"NACHBAR_{name}")
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _add_common(parser: argparse.ArgumentParser, default_port: int, prefix: str) -> None:
    parser.add_argument(
        "--host",
        default=_env(f"{prefix}_HOST", DEFAULT_HOST),
        help=f"interface to listen on [env NACHBAR_{prefix}_HOST]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(_env(f"{prefix}_PORT", default_port)),
        help=f"port to listen on; 0 picks a free one [env NACHBAR_{prefix}_PORT]",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(_env("MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)),
        help="largest request or response; bigger ones get RESOURCE_EXHAUSTED "
        "[env NACHBAR_MAX_MESSAGE_BYTES]",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", 16)),
        help="interactive requests (searches, key lookups, small Embed, Ping) run at once "
        "[env NACHBAR_WORKERS]",
    )
    parser.add_argument(
        "--bulk-workers",
        type=int,
        default=int(_env("BULK_WORKERS", 2)),
        help="bulk requests (writes, deletes, index changes, GetByPredicate, large requests) run "
        "at once; they never take an interactive worker [env NACHBAR_BULK_WORKERS]",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=int(_env("MAX_QUEUED", 128)),
        help="requests of each lane that may wait for a worker; more get RESOURCE_EXHAUSTED "
        "[env NACHBAR_MAX_QUEUED]",
    )
    parser.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=int(_env("MAX_INFLIGHT_BYTES", 0)),
        help="request bytes all requests in progress may hold (bulk ones 3/4 of it); a request "
        "past it gets RESOURCE_EXHAUSTED. 0: twice --max-message-bytes "
        "[env NACHBAR_MAX_INFLIGHT_BYTES]",
    )
    parser.add_argument(
        "--interactive-max-bytes",
        type=int,
        default=int(_env("INTERACTIVE_MAX_BYTES", 256 * 1024)),
        help="requests larger than this go to the bulk lane whatever their method "
        "[env NACHBAR_INTERACTIVE_MAX_BYTES]",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="[env NACHBAR_LOG_LEVEL]",
    )
    parser.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="[env NACHBAR_LOG_FORMAT]",
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        default=_env("PORT_FILE", None),
        help="write the bound port here once serving (useful with --port 0) "
        "[env NACHBAR_PORT_FILE]",
    )
    parser.add_argument(
        "--exit-with-parent",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("EXIT_WITH_PARENT", False),
        help="shut down gracefully when the parent process exits [env NACHBAR_EXIT_WITH_PARENT]",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("GRACE_SECONDS", 10.0)),
        help="how long shutdown waits for in-flight requests [env NACHBAR_GRACE_SECONDS]",
    )
    add_exposure_flags(parser, prefix)


def _common_kwargs(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.max_message_bytes <= 0:
        raise SystemExit("--max-message-bytes must be positive")
    for flag, value in (("--workers", ns.workers), ("--bulk-workers", ns.bulk_workers)):
        if value <= 0:
            raise SystemExit(f"{flag} must be positive, got {value}")
    if ns.max_queued < 0 or ns.max_inflight_bytes < 0 or ns.interactive_max_bytes < 0:
        raise SystemExit(
            "--max-queued, --max-inflight-bytes and --interactive-max-bytes must not be negative"
        )
    return {
        "host": ns.host,
        "port": ns.port,
        "max_message_bytes": ns.max_message_bytes,
        "workers": ns.workers,
        "log_level": ns.log_level,
        "log_format": ns.log_format,
        "port_file": Path(ns.port_file) if ns.port_file else None,
        "exit_with_parent": ns.exit_with_parent,
        "grace_seconds": ns.grace_seconds,
        "bulk_workers": ns.bulk_workers,
        "max_queued": ns.max_queued,
        "max_inflight_bytes": ns.max_inflight_bytes or 2 * ns.max_message_bytes,
        "interactive_max_bytes": ns.interactive_max_bytes,
    }


def db_parser(prog: str = "nachbar-db") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="nachbar-db: durable vector stores over gRPC.",
        formatter_class=_EnvDefaultsFormatter,
    )
    _add_common(parser, DEFAULT_DB_PORT, "DB")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR", default_data_dir())),
        help="where stores live [env NACHBAR_DATA_DIR]",
    )
    parser.add_argument(
        "--fsync",
        default=_env("FSYNC", "full"),
        choices=["full", "normal", "off"],
        help="full: every acknowledged write survives a crash or power loss; normal: survives a "
        "process crash, not power loss; off: fastest, may lose recent writes [env NACHBAR_FSYNC]",
    )
    parser.add_argument(
        "--max-filter-conditions",
        type=int,
        default=int(_env("MAX_FILTER_CONDITIONS", DEFAULT_LIMITS.max_conditions)),
        help="most conditions in one filter; without a predicate index each costs a test per "
        "entry [env NACHBAR_MAX_FILTER_CONDITIONS]",
    )
    parser.add_argument(
        "--max-filter-depth",
        type=int,
        default=int(_env("MAX_FILTER_DEPTH", DEFAULT_LIMITS.max_depth)),
        help=f"most levels of all_of / any_of / not in one filter (at most {MAX_FILTER_DEPTH}) "
        "[env NACHBAR_MAX_FILTER_DEPTH]",
    )
    parser.add_argument(
        "--max-filter-values",
        type=int,
        default=int(_env("MAX_FILTER_VALUES", DEFAULT_LIMITS.max_values)),
        help="most values in one in / not_in condition [env NACHBAR_MAX_FILTER_VALUES]",
    )
    parser.add_argument(
        "--max-filter-bytes",
        type=int,
        default=int(_env("MAX_FILTER_BYTES", DEFAULT_MAX_FILTER_BYTES)),
        help="largest encoded filter [env NACHBAR_MAX_FILTER_BYTES]",
    )
    parser.add_argument(
        "--graph-checkpoint-changes",
        type=int,
        default=int(_env("GRAPH_CHECKPOINT_CHANGES", DEFAULT_GRAPH_CHECKPOINT_CHANGES)),
        help="save a store's HNSW graph in the background once this many entries changed since "
        "its last save, which bounds what a restart after a crash replays; 0: off "
        "[env NACHBAR_GRAPH_CHECKPOINT_CHANGES]",
    )
    parser.add_argument(
        "--graph-checkpoint-seconds",
        type=float,
        default=float(_env("GRAPH_CHECKPOINT_SECONDS", DEFAULT_GRAPH_CHECKPOINT_SECONDS)),
        help="save a store's HNSW graph in the background once its oldest unsaved change is "
        "this old; 0: off [env NACHBAR_GRAPH_CHECKPOINT_SECONDS]",
    )
    parser.add_argument(
        "--engine",
        default=_env("ENGINE", "embedded"),
        choices=["embedded", "milvus"],
        help="embedded: HNSW graphs and SQLite in --data-dir; milvus: stores are collections "
        "of the Milvus at --milvus-uri and this process keeps no state [env NACHBAR_ENGINE]",
    )
    parser.add_argument(
        "--milvus-uri",
        default=_env("MILVUS_URI", ""),
        help="with --engine milvus: http://host:19530 for a Milvus server or cluster, or a "
        "path ending in .db for milvus-lite in this process [env NACHBAR_MILVUS_URI]",
    )
    parser.add_argument(
        "--milvus-token",
        default=_env("MILVUS_TOKEN", ""),
        help="Milvus credentials, user:password or an API key; prefer the environment "
        "variable [env NACHBAR_MILVUS_TOKEN]",
    )
    parser.add_argument(
        "--milvus-db",
        default=_env("MILVUS_DB", ""),
        help="Milvus database holding the stores; empty: Milvus's default [env NACHBAR_MILVUS_DB]",
    )
    parser.add_argument(
        "--milvus-consistency",
        default=_env("MILVUS_CONSISTENCY", "strong"),
        choices=["strong", "bounded", "session", "eventually"],
        help="Milvus consistency level of every read; strong: every read sees every "
        "acknowledged write, from any nachbar-db [env NACHBAR_MILVUS_CONSISTENCY]",
    )
    parser.add_argument(
        "--milvus-timeout",
        type=float,
        default=float(_env("MILVUS_TIMEOUT", 30.0)),
        help="seconds each Milvus call may take before the request fails with UNAVAILABLE "
        "[env NACHBAR_MILVUS_TIMEOUT]",
    )
    return parser


def parse_db_config(argv: Sequence[str] | None = None) -> DBConfig:
    parser = db_parser()
    ns = parser.parse_args(argv)
    for flag in ("max_filter_conditions", "max_filter_depth", "max_filter_values"):
        if getattr(ns, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(ns, flag)}")
    if ns.max_filter_depth > MAX_FILTER_DEPTH:
        parser.error(
            f"--max-filter-depth must be at most {MAX_FILTER_DEPTH}, got {ns.max_filter_depth}: "
            "protobuf decodes no deeper filters"
        )
    if ns.max_filter_bytes < 1:
        parser.error(f"--max-filter-bytes must be at least 1, got {ns.max_filter_bytes}")
    if ns.graph_checkpoint_changes < 0:
        parser.error(
            f"--graph-checkpoint-changes must be 0 (off) or more, got {ns.graph_checkpoint_changes}"
        )
    if ns.graph_checkpoint_seconds < 0:
        parser.error(
            f"--graph-checkpoint-seconds must be 0 (off) or more, got {ns.graph_checkpoint_seconds}"
        )
    if ns.engine == "milvus" and not ns.milvus_uri:
        parser.error("--engine milvus needs --milvus-uri (or NACHBAR_MILVUS_URI)")
    if ns.milvus_timeout <= 0:
        parser.error(f"--milvus-timeout must be positive, got {ns.milvus_timeout}")
    return DBConfig(
        **_common_kwargs(ns),
        exposure=exposure_config(parser, ns),
        data_dir=ns.data_dir,
        fsync=ns.fsync,
        filter_limits=FilterLimits(
            max_conditions=ns.max_filter_conditions,
            max_depth=ns.max_filter_depth,
            max_values=ns.max_filter_values,
        ),
        max_filter_bytes=ns.max_filter_bytes,
        graph_checkpoint_changes=ns.graph_checkpoint_changes,
        graph_checkpoint_seconds=ns.graph_checkpoint_seconds,
        engine=ns.engine,
        milvus_uri=ns.milvus_uri,
        milvus_token=ns.milvus_token,
        milvus_db=ns.milvus_db,
        milvus_consistency=ns.milvus_consistency,
        milvus_timeout_seconds=ns.milvus_timeout,
    )


def _parse_local_model(raw: str) -> tuple[str, Path]:
    name, sep, path = raw.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {raw!r}")
    return name, Path(path)


def ai_parser(prog: str = "nachbar-ai") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="nachbar-ai: embeds text and images, searches and reranks.",
        formatter_class=_EnvDefaultsFormatter,
    )
    _add_common(parser, DEFAULT_AI_PORT, "AI")
    parser.add_argument(
        "--db-host",
        default=_env("DB_HOST", DEFAULT_HOST),
        help="nachbar-db host; several replicas as host1,host2 (or host1:port1,host2:port2) "
        "or a dns:///name, and calls are spread round-robin [env NACHBAR_DB_HOST]",
    )
    parser.add_argument(
        "--db-port",
        type=int,
        default=int(_env("DB_PORT", DEFAULT_DB_PORT)),
        help="nachbar-db port [env NACHBAR_DB_PORT]",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(_env("MODEL_DIR", default_model_dir())),
        help="model cache: built models and hub downloads [env NACHBAR_MODEL_DIR]",
    )
    parser.add_argument(
        "--models",
        default=_env("MODELS", ",".join(model_defaults.PRELOADED_MODELS)),
        help="comma-separated models to load at start and keep loaded; others load on first "
        "use [env NACHBAR_MODELS]",
    )
    parser.add_argument(
        "--local-model",
        action="append",
        type=_parse_local_model,
        default=[_parse_local_model(x) for x in _env("LOCAL_MODELS", "").split(",") if x],
        metavar="NAME=DIR",
        help="serve a hub model from a local directory laid out like its hub repo; repeatable "
        "[env NACHBAR_LOCAL_MODELS, comma-separated]",
    )
    parser.add_argument(
        "--allow-downloads",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("ALLOW_DOWNLOADS", False),
        help="let nachbar-ai download hub models it does not have (at start for --models, or "
        "when a request names one); off: only built, cached or --local-model files are used, "
        "and a request for any other model gets FAILED_PRECONDITION "
        "[env NACHBAR_ALLOW_DOWNLOADS]",
    )
    # The former spelling, from when downloads were on by default: the same as
    # --no-allow-downloads, which is now the default.
    parser.add_argument(
        "--hub-offline", dest="allow_downloads", action="store_false", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--max-loaded-models",
        type=int,
        default=int(_env("MAX_LOADED_MODELS", DEFAULT_MAX_LOADED_MODELS)),
        help="most models kept loaded; loading another unloads the least recently used one "
        "not named in --models; 0: no limit [env NACHBAR_MAX_LOADED_MODELS]",
    )
    parser.add_argument(
        "--max-inputs-per-request",
        type=int,
        default=int(_env("MAX_INPUTS_PER_REQUEST", DEFAULT_MAX_INPUTS)),
        help="most texts, images or documents in one request [env NACHBAR_MAX_INPUTS_PER_REQUEST]",
    )
    parser.add_argument(
        "--max-text-bytes",
        type=int,
        default=int(_env("MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES)),
        help="largest text (UTF-8 bytes); a longer one is refused with OUT_OF_RANGE, or read "
        "only this far when the request truncates [env NACHBAR_MAX_TEXT_BYTES]",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=int(_env("MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES)),
        help="largest encoded image [env NACHBAR_MAX_IMAGE_BYTES]",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=int(_env("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)),
        help="most pixels an image may decode to (checked from its header; JPEGs with a short "
        "side of 4096 or more decode at a reduced scale first); decoding takes up to about 8 "
        "bytes per pixel [env NACHBAR_MAX_IMAGE_PIXELS]",
    )
    parser.add_argument(
        "--image-decoders",
        type=int,
        default=int(_env("IMAGE_DECODERS", 0)),
        help="threads that decode and preprocess images in parallel, shared by all requests; "
        "also how many images are decoded at once, which bounds their memory; 0: one per CPU "
        "[env NACHBAR_IMAGE_DECODERS]",
    )
    parser.add_argument(
        "--image-decode",
        choices=[mode.value for mode in ImageDecode],
        default=_env("IMAGE_DECODE", ImageDecode.DRAFT.value),
        help="draft: JPEGs larger than the model needs decode at a reduced DCT scale (1/2 to "
        "1/8, never below twice the model's resize target), a quarter of the CPU for a 12 MP "
        "photo, embeddings within the tolerance in bench/RESULTS.md; exact: at full size, as "
        "Hugging Face's processors do [env NACHBAR_IMAGE_DECODE]",
    )
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("BATCHING", True),
        help="merge concurrent requests to one model into batches [env NACHBAR_BATCHING]",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=int(_env("MAX_BATCH_SIZE", 32)),
        help="largest merged batch [env NACHBAR_MAX_BATCH_SIZE]",
    )
    parser.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=float(_env("MAX_BATCH_WAIT_MS", 0.0)),
        help="how long a request to an idle model may wait for others to join its batch; "
        "requests that arrive while a batch runs are merged either way "
        "[env NACHBAR_MAX_BATCH_WAIT_MS]",
    )
    parser.add_argument(
        "--batch-workers",
        type=int,
        default=int(_env("BATCH_WORKERS", 1)),
        help="batches each model runs side by side, each on CPUs / workers threads; "
        "1: one batch on every CPU (fastest single query), 0: one per CPU (~15%% more "
        "throughput for bulk embedding) [env NACHBAR_BATCH_WORKERS]",
    )
    add_db_link_flags(parser)
    return parser


def parse_ai_config(argv: Sequence[str] | None = None) -> AIConfig:
    parser = ai_parser()
    ns = parser.parse_args(argv)
    if ns.max_batch_size < 1:
        parser.error(f"--max-batch-size must be at least 1, got {ns.max_batch_size}")
    if ns.max_batch_wait_ms < 0:
        parser.error(f"--max-batch-wait-ms must not be negative, got {ns.max_batch_wait_ms}")
    if ns.batch_workers < 0:
        parser.error(f"--batch-workers must be 0 (one per CPU) or more, got {ns.batch_workers}")
    for flag in ("max_inputs_per_request", "max_text_bytes", "max_image_bytes", "max_image_pixels"):
        if getattr(ns, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(ns, flag)}")
    if ns.image_decode not in {mode.value for mode in ImageDecode}:
        parser.error(
            f"--image-decode (or NACHBAR_IMAGE_DECODE) takes draft or exact, not "
            f"{ns.image_decode!r}"
        )
    if ns.image_decoders < 0:
        parser.error(f"--image-decoders must be 0 (one per CPU) or more, got {ns.image_decoders}")
    models = tuple(m.strip() for m in ns.models.split(",") if m.strip())
    if ns.max_loaded_models < 0:
        parser.error(
            f"--max-loaded-models must be 0 (no limit) or more, got {ns.max_loaded_models}"
        )
    if 0 < ns.max_loaded_models < len(set(models)):
        parser.error(
            f"--max-loaded-models {ns.max_loaded_models} is less than the {len(set(models))} "
            "models named in --models, which stay loaded; raise it or name fewer"
        )
    return AIConfig(
        **_common_kwargs(ns),
        exposure=exposure_config(parser, ns),
        db_link=db_link_config(parser, ns),
        db_host=ns.db_host,
        db_port=ns.db_port,
        model_dir=ns.model_dir,
        models=models,
        local_models=tuple(ns.local_model),
        allow_downloads=ns.allow_downloads,
        max_loaded_models=ns.max_loaded_models,
        max_inputs_per_request=ns.max_inputs_per_request,
        max_text_bytes=ns.max_text_bytes,
        max_image_bytes=ns.max_image_bytes,
        max_image_pixels=ns.max_image_pixels,
        image_decoders=ns.image_decoders,
        image_decode=ImageDecode(ns.image_decode),
        batching=ns.batching,
        max_batch_size=ns.max_batch_size,
        max_batch_wait_ms=ns.max_batch_wait_ms,
        batch_workers=ns.batch_workers,
    )
