"""Runners: how a connection's handler task is executed (Netpoll's gopool)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["thread_per_task"]


def thread_per_task(ctx: Any, task: Callable[[], None]) -> None:
    """Run every task on a new daemon thread: simple isolation, at a thread's cost."""
    threading.Thread(target=task, name="netpoll-task", daemon=True).start()
