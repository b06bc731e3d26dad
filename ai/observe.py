"""What the model layer reports about its work, for whoever watches (metrics, traces).

The server implements `ModelObserver` with Prometheus and OpenTelemetry; the model layer only
calls it, so it stays free of both. `NO_OBSERVER` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Protocol


class ModelObserver(Protocol):
    def stage(self, name: str, attributes: Mapping[str, str | int]) -> AbstractContextManager[None]:
        """Wraps one step of a request (tokenizing, decoding images, inference, reranking)."""
        ...

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def batch_ran(self, model: str, size: int, seconds: float) -> None:
        """One ONNX run of `size` items (merged from one or more requests) took `seconds`."""
        ...


class NoObserver:
    @contextlib.contextmanager
    def stage(self, name: str, attributes: Mapping[str, str | int]) -> Iterator[None]:
        yield

    def model_loaded(self, model: str, seconds: float) -> None:
        pass

    def batch_ran(self, model: str, size: int, seconds: float) -> None:
        pass


NO_OBSERVER: ModelObserver = NoObserver()
