"""Seconds as the API takes them: one reading of ``None``, 0, infinity and bad values.

Every module that accepts a timeout (connections, the server, the dialer, ``mux``,
``netpoll.run``) checks it here, so they all agree on what "no limit" means.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NO_LIMIT", "keepalive_seconds", "timeout_value", "wait_limit"]

NO_LIMIT: Final = 1e9  # seconds; a timeout this long or longer is no timeout
_MAX_KEEPALIVE: Final = 32767  # the kernel's limit for TCP_KEEPIDLE and TCP_KEEPINTVL


# The helpers take ``object``, not ``float``: compiled, a ``float`` parameter would turn
# a bool into 1.0 or 0.0 before the check below could refuse it.


def timeout_value(t: object, name: str) -> float:
    """Seconds as a float, 0.0 meaning none: ``None``, 0, infinity and anything from
    ``NO_LIMIT`` seconds (about 31 years) up mean no limit."""
    if t is None:
        return 0.0
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(t).__name__}")
    if not t >= 0:  # NaN fails this too
        raise ValueError(f"{name} must be >= 0, got {t}")
    if t >= NO_LIMIT:  # also keeps deadlines within what the OS waits accept
        return 0.0
    return float(t)


def wait_limit(t: object, name: str) -> float | None:
    """Seconds a wait may last: ``None`` for no limit (``None``, infinity, ``NO_LIMIT``
    up), 0 for not waiting at all (where ``timeout_value`` reads 0 as no limit)."""
    seconds = timeout_value(t, name)  # checks t
    if seconds or t == 0:  # t == 0 is 0 or 0.0 here: a bool was refused above
        return seconds
    return None


def keepalive_seconds(t: object, name: str) -> int:
    """Whole seconds for a keepalive option, 1 to the kernel's limit (infinity: the limit)."""
    if t is None:
        raise TypeError(f"{name} must be a number of seconds, not None")
    value = timeout_value(t, name)
    if not value:
        return 1 if t == 0 else _MAX_KEEPALIVE
    return min(max(int(value), 1), _MAX_KEEPALIVE)
