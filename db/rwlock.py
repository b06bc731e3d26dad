"""A readers-writer lock: many concurrent readers or one writer.

hnswlib's `add_items` must not run beside `knn_query`, while any number of searches may run
together; each store holds one of these. Waiting writers block new readers so that a steady
stream of searches cannot starve an upsert, and readers that were waiting when a writer lets go
enter before the next writer does, so that a writer taking the lock again and again (a large
upsert is applied a piece at a time) cannot starve the searches either. Not reentrant: never
take it twice in one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._readers_turn = False  # set when a writer leaves while readers wait

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._readers_waiting += 1
            try:
                while self._writer or (self._writers_waiting and not self._readers_turn):
                    self._cond.wait()
            finally:
                self._readers_waiting -= 1
                if not self._readers_waiting and self._readers_turn:
                    self._readers_turn = False
                    self._cond.notify_all()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers or self._readers_turn:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers_turn = self._readers_waiting > 0
                self._cond.notify_all()
