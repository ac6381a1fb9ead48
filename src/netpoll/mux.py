"""Multiplexing writers onto one connection: ``ShardQueue`` (Netpoll's mux package)."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from . import _config
from ._config import log as _log
from ._errors import ConnectionClosedError
from ._nocopy import Writer
from ._timeouts import wait_limit

__all__ = ["ShardQueue", "WriterGetter"]


WriterGetter = Callable[[], "tuple[Writer | None, bool]"]
"""Returns ``(writer, is_nil)``; a nil result is skipped."""


class ShardQueue:
    """Collects writers from many threads and appends them to ``conn`` in order, then flushes.

    ``add`` never blocks on the network: one drain task at a time appends every queued
    writer to the connection (zero-copy) and flushes once per batch. Writers added by one
    thread go out in the order they were added. ``close()`` waits for queued work to go
    out and then refuses new work.
    """

    def __init__(self, size: int, conn: Any) -> None:
        if type(size) is not int:
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        self._size = size
        self._conn = conn
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._shards: list[deque[tuple[int, WriterGetter]]] = [deque() for _ in range(size)]
        self._seq = itertools.count()
        self._head = 0  # sequence number the drain hands out next
        self._pending = 0
        self._draining = False
        self._drainer = 0  # ident of the thread running the drain task, while one runs
        self._closed = False

    @property
    def size(self) -> int:
        """Number of shards."""
        return self._size

    def __len__(self) -> int:
        return self._pending

    def add(self, *getters: WriterGetter) -> None:
        """Queue writer getters; they are called, appended and flushed by the drain task."""
        if not getters:
            return
        for g in getters:
            if not callable(g):
                raise TypeError(f"getters must be callables, not {type(g).__name__}")
        with self._lock:
            if self._closed:
                raise ConnectionClosedError("ShardQueue is closed")
            for g in getters:
                seq = next(self._seq)
                self._shards[seq % self._size].append((seq, g))
            self._pending += len(getters)
            start = not self._draining
            self._draining = True
        if start:
            runner = _config.get_config().runner
            if runner is None:
                threading.Thread(target=self._drain, name="netpoll-mux", daemon=True).start()
            else:
                runner(None, self._drain)

    def _take_batch(self) -> list[WriterGetter]:
        """Everything queued, in sequence order. Lock held."""
        out: list[WriterGetter] = []
        shards = self._shards
        while self._pending:
            shard = shards[self._head % self._size]
            if not shard or shard[0][0] != self._head:
                break  # the next number is being added right now by another thread
            out.append(shard.popleft()[1])
            self._head += 1
            self._pending -= 1
        return out

    def _drain(self) -> None:
        conn = self._conn
        me = threading.get_ident()
        while True:
            with self._lock:
                self._drainer = me
                batch = self._take_batch()
                if not batch:
                    self._draining = False
                    self._drainer = 0
                    self._idle.notify_all()
                    return
            try:
                wrote = False
                for getter in batch:
                    writer, is_nil = getter()
                    if is_nil or writer is None:
                        continue
                    conn.append(writer)
                    wrote = True
                if wrote:
                    conn.flush()
            except ConnectionClosedError:
                self._fail_all()
                return
            except Exception:
                _log.exception("netpoll: ShardQueue failed to write; closing the connection")
                self._fail_all()
                try:
                    conn.close()
                except Exception:
                    pass
                return

    def _fail_all(self) -> None:
        with self._lock:
            for shard in self._shards:
                shard.clear()
            self._pending = 0
            self._head = next(self._seq)  # skip the numbers never drained
            self._seq = itertools.count(self._head)
            self._draining = False
            self._drainer = 0
            self._closed = True
            self._idle.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Wait for queued writers to be flushed, then refuse further ``add`` calls.

        ``timeout`` is in seconds (``None`` or infinity: no limit; 0: don't wait). Called
        from a getter, on the drain thread itself, it only refuses further work: waiting
        there would wait for itself.
        """
        timeout = wait_limit(timeout, "timeout")
        with self._lock:
            self._closed = True
            if threading.get_ident() == self._drainer:
                return
            if not self._idle.wait_for(lambda: not self._draining, timeout):
                raise TimeoutError("ShardQueue.close timed out with writes still queued")
