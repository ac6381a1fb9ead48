"""PollManager: the process's pollers and the balancer that spreads connections over them."""

from __future__ import annotations

import threading
from typing import Any

from .._config import LoadBalance, get_config
from ._balance import new_balancer
from ._poller import Poller
from ._poller import reset_monitor as _reset_monitor

__all__ = ["PollManager", "manager", "manager_if_started", "reset_after_fork"]


class PollManager:
    """Owns N pollers; ``pick`` chooses one for a new connection."""

    def __init__(self, num_loops: int, load_balance: LoadBalance) -> None:
        self._lock = threading.Lock()
        self._all: list[Poller] = []  # every poller ever started, still serving its fds
        self._active: list[Poller] = []  # the set new connections go to
        self._balancer = new_balancer(load_balance)
        self.set_num_loops(num_loops)

    @property
    def pollers(self) -> list[Poller]:
        """The pollers new connections are assigned to."""
        return list(self._active)

    def set_num_loops(self, n: int) -> None:
        """Resize the active set; pollers outside it keep serving what they have."""
        with self._lock:
            while len(self._all) < n:
                self._all.append(Poller(len(self._all)))
            self._active = self._all[:n]

    def set_load_balance(self, lb: LoadBalance) -> None:
        self._balancer = new_balancer(lb)

    def pick(self, remote_addr: Any = None) -> Poller:
        """The poller for a new connection from ``remote_addr``."""
        return self._balancer.pick(self._active, remote_addr)


_manager: PollManager | None = None
_manager_lock = threading.Lock()


def manager() -> PollManager:
    """The process-wide PollManager, created on first use from the configuration."""
    global _manager
    mgr = _manager
    if mgr is None:
        with _manager_lock:
            if _manager is None:
                cfg = get_config()
                _manager = PollManager(cfg.poller_num, cfg.load_balance)
            mgr = _manager
    return mgr


def reset_after_fork() -> None:
    """In a child process made by fork: forget the parent's pollers (their threads did
    not come along), so the first use starts fresh ones."""
    global _manager, _manager_lock
    _manager = None
    _manager_lock = threading.Lock()
    _reset_monitor()


def manager_if_started() -> PollManager | None:
    """The PollManager if one exists (configuration changes apply to it)."""
    return _manager
