"""Runners: how a connection's handler task is executed (Netpoll's gopool)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["slow_pool", "thread_per_task"]

_SLOW_POOL_THREADS = 256
_slow_pool: ThreadPoolExecutor | None = None
_slow_lock = threading.Lock()


def slow_pool() -> ThreadPoolExecutor:
    """Threads for the tasks of connections whose handlers block where nobody can see."""
    global _slow_pool
    pool = _slow_pool
    if pool is None:
        with _slow_lock:
            if _slow_pool is None:
                _slow_pool = ThreadPoolExecutor(_SLOW_POOL_THREADS, "netpoll-slow")
            pool = _slow_pool
    return pool


def thread_per_task(ctx: Any, task: Callable[[], None]) -> None:
    """Run every task on a new daemon thread: simple isolation, at a thread's cost."""
    threading.Thread(target=task, name="netpoll-task", daemon=True).start()
