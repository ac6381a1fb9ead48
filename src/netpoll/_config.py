"""Process-wide configuration: pollers, buffer size, runner, logging, load balancing."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Final

__all__ = [
    "LoadBalance",
    "Runner",
    "configure",
    "disable_runner_pool",
    "get_config",
    "log",
    "logger",
    "set_load_balance",
    "set_logger_output",
    "set_num_loops",
    "set_runner",
]

Runner = Callable[[Any, Callable[[], None]], None]
"""``runner(ctx, task)``: runs a connection's handler task somewhere (Netpoll's gopool)."""


class LoadBalance(enum.Enum):
    """How new connections are spread over the pollers."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    SOURCE_ADDR_HASH = "source_addr_hash"


@dataclass
class _Config:
    poller_num: int = 1
    buffer_size: int = 65536
    runner: Runner | None = None  # None: the built-in inline leader/follower runner
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("netpoll"))
    load_balance: LoadBalance = LoadBalance.ROUND_ROBIN
    always_no_copy_read: bool = False


_config: Final = _Config()  # mutated by configure(), never replaced
# The same object for the request path: an imported Final is a C static to the compiled
# build and a plain global to the pure one (get_config() would be a call in the pure one).
CONFIG: Final = _config
_lock = threading.Lock()
_output_handler: tuple[logging.Logger, logging.Handler] | None = None


def get_config() -> _Config:
    """The live configuration object (read it; change it with ``configure``)."""
    return _config


def logger() -> logging.Logger:
    """The logger netpoll writes to."""
    return _config.logger


class _LogProxy:
    """Stands for the configured logger, looked up at each call (``configure(logger=)``)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(_config.logger, name)


log: Any = _LogProxy()
"""Module-level handle the library logs through; follows ``configure(logger=...)``."""


def _check_positive_int(value: object, name: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def configure(
    poller_num: int | None = None,
    buffer_size: int | None = None,
    runner: Runner | None = None,
    logger: logging.Logger | None = None,
    load_balance: LoadBalance | None = None,
    always_no_copy_read: bool | None = None,
) -> None:
    """Change global settings; arguments left as ``None`` keep their current value.

    ``poller_num`` may change while serving: new connections go to the new set.
    ``buffer_size`` is the receive node size of connections (bytes).
    """
    # Every argument is checked before any is applied: a rejected call changes nothing.
    if poller_num is not None:
        _check_positive_int(poller_num, "poller_num")
    if runner is not None and not callable(runner):
        raise TypeError(f"runner must be callable, not {type(runner).__name__}")
    if load_balance is not None and not isinstance(load_balance, LoadBalance):
        raise TypeError(
            f"load_balance must be a netpoll.LoadBalance, not {type(load_balance).__name__}"
        )
    if buffer_size is not None:
        _check_positive_int(buffer_size, "buffer_size")
        if buffer_size < 1024:
            raise ValueError(f"buffer_size must be >= 1024, got {buffer_size}")
    if logger is not None and not isinstance(logger, logging.Logger):
        raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")
    if poller_num is not None:
        set_num_loops(poller_num)
    if buffer_size is not None:
        _config.buffer_size = buffer_size
    if runner is not None:
        set_runner(runner)
    if logger is not None:
        _config.logger = logger
    if load_balance is not None:
        set_load_balance(load_balance)
    if always_no_copy_read is not None:
        _config.always_no_copy_read = bool(always_no_copy_read)


def set_num_loops(n: int) -> None:
    """Set the number of pollers; running ones keep their connections."""
    _check_positive_int(n, "n")
    with _lock:
        _config.poller_num = n
    from ._poll._manager import manager_if_started

    mgr = manager_if_started()
    if mgr is not None:
        mgr.set_num_loops(n)


def set_load_balance(lb: LoadBalance) -> None:
    """Choose how new connections are assigned to pollers."""
    if not isinstance(lb, LoadBalance):
        raise TypeError(f"lb must be a netpoll.LoadBalance, not {type(lb).__name__}")
    _config.load_balance = lb
    from ._poll._manager import manager_if_started

    mgr = manager_if_started()
    if mgr is not None:
        mgr.set_load_balance(lb)


def set_runner(fn: Runner | None) -> None:
    """Run handler tasks with ``fn(ctx, task)``; ``None`` restores the built-in runner."""
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    _config.runner = fn


def disable_runner_pool() -> None:
    """Run every handler task on a new thread (Netpoll's DisableGopool)."""
    from ._runner import thread_per_task

    set_runner(thread_per_task)


def set_logger_output(f: IO[str]) -> None:
    """Send netpoll's log records to the text stream ``f`` (replacing a previous one)."""
    global _output_handler
    if not hasattr(f, "write"):
        raise TypeError(f"f must be a writable text stream, not {type(f).__name__}")
    log = _config.logger
    with _lock:
        if _output_handler is not None:
            # From whichever logger it went to: configure(logger=) may have changed it since.
            _output_handler[0].removeHandler(_output_handler[1])
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        _output_handler = (log, handler)
