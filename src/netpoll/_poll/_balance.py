"""Load balancers: which poller a new connection goes to."""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from .._config import LoadBalance

__all__ = ["Balancer", "new_balancer"]

T = TypeVar("T")


class Balancer:
    """Picks one of ``items`` for a connection from ``remote_addr``."""

    kind: ClassVar[LoadBalance] = LoadBalance.ROUND_ROBIN

    def pick(self, items: Sequence[T], remote_addr: Any) -> T:
        raise NotImplementedError


class _RoundRobin(Balancer):
    kind: ClassVar[LoadBalance] = LoadBalance.ROUND_ROBIN

    def __init__(self) -> None:
        self._counter = itertools.count()  # next() on a count is atomic

    def pick(self, items: Sequence[T], remote_addr: Any) -> T:
        return items[next(self._counter) % len(items)]


class _Random(Balancer):
    kind: ClassVar[LoadBalance] = LoadBalance.RANDOM

    def pick(self, items: Sequence[T], remote_addr: Any) -> T:
        return items[random.randrange(len(items))]


class _SourceAddrHash(Balancer):
    """Every connection from one remote host lands on the same poller."""

    kind: ClassVar[LoadBalance] = LoadBalance.SOURCE_ADDR_HASH

    def pick(self, items: Sequence[T], remote_addr: Any) -> T:
        host = remote_addr[0] if isinstance(remote_addr, tuple) else remote_addr
        key = str(host).encode()
        return items[zlib.crc32(key) % len(items)]


def new_balancer(kind: LoadBalance) -> Balancer:
    """The balancer for ``kind``."""
    if kind is LoadBalance.ROUND_ROBIN:
        return _RoundRobin()
    if kind is LoadBalance.RANDOM:
        return _Random()
    if kind is LoadBalance.SOURCE_ADDR_HASH:
        return _SourceAddrHash()
    raise ValueError(f"unknown load balance {kind!r}")
