"""The build under test: ``netpoll.compiled``, ``python -m netpoll``, no runtime packages."""

from __future__ import annotations

import importlib
import os
import platform
import re
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest

import netpoll

# Modules setup.py leaves interpreted in the compiled build (and __main__).
INTERPRETED = {"netpoll._errors", "netpoll._nocopy"}
CORE = ["netpoll._connection", "netpoll._linkbuffer", "netpoll._server", "netpoll._poll._poller"]


def _is_extension(name: str) -> bool:
    path = getattr(importlib.import_module(name), "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_compiled_is_a_bool_and_matches_the_modules() -> None:
    assert "compiled" in netpoll.__all__
    assert type(netpoll.compiled) is bool
    for name in CORE:
        assert _is_extension(name) is netpoll.compiled, name
    for name in INTERPRETED:
        assert not _is_extension(name), name


def test_compiled_matches_the_expected_build() -> None:
    expected = os.environ.get("NETPOLL_EXPECT_BUILD")
    if not expected:
        pytest.skip("NETPOLL_EXPECT_BUILD is not set")
    assert netpoll.compiled is (expected == "compiled")


def test_python_m_netpoll_reports_version_build_python_and_backend() -> None:
    out = _run("-m", "netpoll")
    lines = out.splitlines()
    assert lines[0] == f"netpoll {netpoll.__version__}"
    build = "compiled" if netpoll.compiled else "pure"
    assert f"build: {build}" in out
    assert f"python: {platform.python_implementation()} {platform.python_version()}" in out
    default = "epoll" if hasattr(__import__("select"), "epoll") else "poll"
    assert f"poll backend: {default}" in out
    listed = next(line for line in lines if "compiled modules:" in line)
    assert ("netpoll._connection" in listed) is netpoll.compiled


def test_python_m_netpoll_shows_a_forced_backend() -> None:
    out = _run("-m", "netpoll", env={"NETPOLL_BACKEND": "poll"})
    assert "poll backend: poll (NETPOLL_BACKEND=poll)" in out


def test_importing_netpoll_loads_no_package_beyond_the_standard_library() -> None:
    """Either build runs on the standard library alone: no mypyc runtime package
    (mypy_extensions, librt), nothing else installed alongside."""
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import netpoll, netpoll.mux, netpoll.__main__\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    loaded = set(_run("-c", script).split())
    allowed = set(sys.stdlib_module_names) | {"netpoll", "netpoll__mypyc"}
    assert loaded <= allowed, sorted(loaded - allowed)


def _load_pyproject() -> dict[str, Any]:
    try:
        import tomllib as toml  # Python 3.11+
    except ModuleNotFoundError:
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ModuleNotFoundError:
            pytest.skip("neither tomllib (Python 3.11+) nor tomli is available to read TOML")
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    with path.open("rb") as f:
        data: dict[str, Any] = toml.load(f)
    return data


def test_pyproject_license_is_an_spdx_string() -> None:
    """The packaging metadata uses PEP 639's SPDX string (``license = "Apache-2.0"``), so
    ``pip install`` prints no setuptools deprecation of a ``project.license`` table: no
    ``License ::`` classifier beside it (setuptools rejects the pair), and a build
    requirement on setuptools >= 77, the first release that takes the string form."""
    data = _load_pyproject()
    project = data["project"]
    license_ = project.get("license")
    assert isinstance(license_, str), f"project.license is {license_!r}, not an SPDX string"
    assert license_ == "Apache-2.0"
    classifiers = project.get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")], classifiers
    requires = data["build-system"]["requires"]
    bounds = []
    for req in requires:
        spec = req.split(";", 1)[0].strip()
        m = re.fullmatch(r"setuptools\s*(?:\[[^\]]*\])?\s*([<>=!~].*)?", spec, re.IGNORECASE)
        if m is None:
            continue  # another package (setuptools-scm is not setuptools)
        for lower in re.finditer(r"(>=|==|~=|>)\s*(\d+)", m.group(1) or ""):
            bounds.append(int(lower.group(2)))
    assert bounds, f"no lower bound on setuptools in [build-system].requires: {requires}"
    assert max(bounds) >= 77, f"setuptools lower bound {max(bounds)} < 77: {requires}"
