"""Runners: where a connection's handler task runs when it does not run inline.

The slow pool takes the tasks of connections whose handlers block where the library
cannot see (a sleep, a database call), and every task of a poller for a while after its
leader got stuck. It grows as needed and shrinks when quiet:

- at most ``MAX_RUNNING`` of its threads run tasks at once; a task beyond that waits in
  a queue. A thread whose handler waits for input (``next(n)`` and friends, through
  ``input_wait_begin``/``input_wait_end``) does not count, so clients that stall mid-frame
  cannot starve the others however many they are;
- a thread idle for ``IDLE_EXIT`` seconds exits;
- its threads are daemon threads: a process never waits for a blocked handler at exit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "IDLE_EXIT",
    "MAX_RUNNING",
    "SLOW_POOL",
    "SlowPool",
    "input_wait_begin",
    "input_wait_end",
    "thread_per_task",
]

MAX_RUNNING: Final = 1024
IDLE_EXIT: Final = 10.0

Task = Callable[[], None]


class _Worker:
    __slots__ = ("gate", "task")

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.gate.acquire()
        self.task: Task | None = None


_tls = threading.local()


class SlowPool:
    """A growing, self-trimming pool of daemon threads (see the module docstring).

    State, all under ``_lock`` (a leaf lock: nothing is called while holding it but
    ``Thread.start``): ``_queue`` of tasks no thread took yet; ``_idle`` workers parked on
    their gate; ``_threads`` alive; ``_running`` threads running a task and not waiting
    for input. A connection's lock may be held when calling in (connection lock first).
    """

    def __init__(self, max_running: int = MAX_RUNNING, idle_exit: float = IDLE_EXIT) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Task] = deque()
        self._idle: list[_Worker] = []
        self._threads = 0
        self._running = 0
        self.max_running = max_running
        self.idle_exit = idle_exit

    def reset_after_fork(self) -> None:
        """In a child process made by fork: the threads did not come along."""
        self._lock = threading.Lock()
        self._queue.clear()
        self._idle.clear()
        self._threads = self._running = 0

    @property
    def threads(self) -> int:
        """Threads alive in the pool (running, waiting for input, or idle)."""
        with self._lock:
            return self._threads

    def submit(self, task: Task) -> None:
        """Run ``task`` on a pool thread: an idle one, a new one, or the next one free."""
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
                worker.task = task
                self._running += 1
                worker.gate.release()
                return
            if self._running >= self.max_running:
                self._queue.append(task)
                return
            self._start_locked(task)

    def _start_locked(self, task: Task) -> bool:
        """Start a thread for ``task``; False (task queued) if the OS refused a thread."""
        self._threads += 1
        self._running += 1
        # Handed over through a worker, not the thread's arguments, which the Thread
        # object keeps (and with them the connection) for as long as the thread lives.
        worker = _Worker()
        worker.task = task
        t = threading.Thread(target=self._work, args=(worker,), name="netpoll-slow", daemon=True)
        try:
            t.start()
        except RuntimeError:  # out of threads: the task waits for a running one to finish
            self._threads -= 1
            self._running -= 1
            self._queue.appendleft(task)
            if not self._threads:
                raise
            return False
        return True

    def _work(self, worker: _Worker) -> None:
        _tls.pool = self
        task, worker.task = worker.task, None
        while task is not None:
            try:
                task()
            except BaseException:  # pragma: no cover - tasks handle their own errors
                from ._config import log

                log.exception("netpoll: a slow-pool task failed")
            task = None  # an idle thread must not keep the last task's connection alive
            task = self._next_task()

    def _next_task(self) -> Task | None:
        """The next task for this thread; None when it should exit (idle too long)."""
        with self._lock:
            self._running -= 1
            if self._queue and self._running < self.max_running:
                self._running += 1
                return self._queue.popleft()
            worker = _Worker()
            self._idle.append(worker)
        if not worker.gate.acquire(timeout=self.idle_exit):
            with self._lock:
                if worker in self._idle:
                    self._idle.remove(worker)
                    self._threads -= 1
                    return None
            worker.gate.acquire()  # a task was handed over just as the wait timed out
        task, worker.task = worker.task, None
        return task

    def _input_wait(self, delta: int) -> None:
        with self._lock:
            self._running += delta
            while self._queue and self._running < self.max_running:
                task = self._queue.popleft()
                if self._idle:
                    worker = self._idle.pop()
                    worker.task = task
                    self._running += 1
                    worker.gate.release()
                elif not self._start_locked(task):
                    break


SLOW_POOL: Final = SlowPool()


def input_wait_begin() -> bool:
    """A handler is about to wait for input: on a pool thread, free its running slot.

    Returns whether a slot was freed (pass it to ``input_wait_end``).
    """
    pool: SlowPool | None = getattr(_tls, "pool", None)
    if pool is None:
        return False
    pool._input_wait(-1)
    return True


def input_wait_end(freed: bool) -> None:
    """The wait is over: take the slot back (the pool may run over its cap briefly)."""
    if freed:
        pool: SlowPool = _tls.pool
        pool._input_wait(1)


def thread_per_task(ctx: Any, task: Callable[[], None]) -> None:
    """Run every task on a new daemon thread: simple isolation, at a thread's cost."""
    threading.Thread(target=task, name="netpoll-task", daemon=True).start()
