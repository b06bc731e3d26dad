"""What the storage engine reports about its work, for whoever watches (metrics).

The server implements `StorageObserver` with Prometheus; the engine only calls it, so it stays
free of it. `NO_OBSERVER` does nothing.
"""

from __future__ import annotations

from typing import Protocol


class StorageObserver(Protocol):
    def committed(self, seconds: float) -> None:
        """One SQLite COMMIT (the durable part of a write) took `seconds`."""
        ...

    def graphs_saved(self, seconds: float) -> None:
        """Saving one store's changed HNSW graph (a checkpoint) took `seconds`."""
        ...


class NoObserver:
    def committed(self, seconds: float) -> None:
        pass

    def graphs_saved(self, seconds: float) -> None:
        pass


NO_OBSERVER: StorageObserver = NoObserver()
