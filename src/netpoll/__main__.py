"""``python -m netpoll``: the facts a bug report needs.

The version, the build (compiled or pure, and which modules are compiled), the Python
and the poll backend a new poller would use (``NETPOLL_BACKEND`` can force ``poll``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import sys
from importlib.machinery import EXTENSION_SUFFIXES

import netpoll
from netpoll._poll._backend import new_backend


def module_builds() -> tuple[list[str], list[str]]:
    """The package's modules, split into (compiled, interpreted)."""
    names = ["netpoll"]
    for info in pkgutil.walk_packages(netpoll.__path__, "netpoll."):
        if info.name != "netpoll.__main__":
            names.append(info.name)
    compiled: list[str] = []
    interpreted: list[str] = []
    for name in sorted(names):
        module = importlib.import_module(name)
        path = getattr(module, "__file__", None) or ""
        (compiled if path.endswith(tuple(EXTENSION_SUFFIXES)) else interpreted).append(name)
    return compiled, interpreted


def backend_name() -> str:
    """The readiness backend a poller gets here."""
    try:
        backend = new_backend()
    except Exception as exc:  # reported, not raised: this output goes into bug reports
        return f"unavailable ({exc!r})"
    try:
        return backend.name
    finally:
        backend.close()


def report() -> str:
    compiled, interpreted = module_builds()
    build = "compiled (mypyc)" if netpoll.compiled else "pure (interpreted Python)"
    forced = os.environ.get("NETPOLL_BACKEND")
    lines = [
        f"netpoll {netpoll.__version__}",
        f"build: {build}",
        f"  compiled modules: {', '.join(compiled) or 'none'}",
        f"  interpreted modules: {', '.join(interpreted) or 'none'}",
        f"  location: {os.path.dirname(netpoll.__file__ or '')}",
        f"python: {platform.python_implementation()} {platform.python_version()}"
        f" ({sys.executable})",
        f"platform: {platform.platform()}",
        f"poll backend: {backend_name()}" + (f" (NETPOLL_BACKEND={forced})" if forced else ""),
    ]
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
