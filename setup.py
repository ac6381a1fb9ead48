"""Build script: one source, two builds.

``pip install .`` (or ``-e .``) compiles the library's own modules to C extensions with
mypyc when a C compiler and Python's headers are there. Where compiling is impossible (no
compiler, mypyc missing or failing, a compile error) it warns in the build log and installs
the same modules as plain Python; ``NETPOLL_PURE_PYTHON=1`` at install time asks for that.
``python -m netpoll`` tells which build is installed. The metadata is in pyproject.toml.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"
PACKAGE = SRC / "netpoll"

# Modules that stay interpreted in the compiled build, and why.
INTERPRETED = {
    "__main__.py": "run by `python -m`, which needs a code object",
    "_errors.py": "exceptions with several builtin bases (mypyc: not implemented)",
    "_nocopy.py": "runtime_checkable Protocols (a compiled class is no Protocol at run time)",
}
# The shared library of the compiled modules (a top-level module, as mypyc lays it out).
GROUP = "netpoll"


def _warn(message: str) -> None:
    bar = "*" * 78
    sys.stderr.write(
        f"\n{bar}\nnetpoll: WARNING: {message}\n"
        "netpoll: installing the pure-Python build (same behaviour, slower)\n"
        f"{bar}\n\n"
    )
    sys.stderr.flush()


def _pure_requested() -> bool:
    value = os.environ.get("NETPOLL_PURE_PYTHON", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _compiler_problem() -> str | None:
    """Why a C extension cannot be built here, or None if a probe compiles."""
    if sys.implementation.name != "cpython":
        return f"mypyc compiles for CPython only, not {sys.implementation.name}"
    try:
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    except Exception:  # no probe possible: build_ext's own failure is still caught
        return None
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("#include <Python.h>\nint netpoll_probe(void) { return 0; }\n")
        try:
            compiler: Any = new_compiler()
            customize_compiler(compiler)
            compiler.compile(
                [str(probe)], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]]
            )
        except Exception as exc:
            return f"no working C compiler with Python's headers ({exc})"
    return None


def _stale_extensions() -> list[Path]:
    """Compiled modules of this interpreter lying in the source tree (editable builds)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return [*PACKAGE.rglob(f"*{suffix}"), *SRC.glob(f"{GROUP}__mypyc*{suffix}")]


# Rewrites of the C that mypyc emits for the argument checks of its wrappers (the
# functions Python calls). A compiled function checks its arguments' types before its
# body runs, with a message that names no argument ("int object expected; got str"), and
# it unboxes an ``int`` or ``float`` argument, so the body's own checks no longer see that
# it was a bool. The pure modules name the argument (API.md: bad arguments raise
# ValueError/TypeError naming it) and take no bool for a size or a timeout: so the
# wrapper's TypeError reads "NAME must be TYPE, not GOT", and an argument unboxed to an
# int or a float refuses a bool. mypyc names a wrapper's arguments obj_NAME.
_ARGUMENT_CHECKS = [
    (  # the type error names the argument
        re.compile(r'CPy_TypeError\("([^"%\\]*)", obj_(\w+)\)'),
        r'PyErr_Format(PyExc_TypeError, "\2 must be \1, not %.200s", Py_TYPE(obj_\2)->tp_name)',
    ),
    (  # an int argument is no bool
        re.compile(r"PyLong_Check\(obj_(\w+)\)(\)\)\s*arg_\1 = CPyTagged_BorrowFromObject)"),
        r"(PyLong_Check(obj_\1) && !PyBool_Check(obj_\1))\2",
    ),
    (  # a float argument is no bool
        re.compile(r"= PyFloat_AsDouble\(obj_(\w+)\);"),
        r"= PyBool_Check(obj_\1) ? (PyErr_SetNone(PyExc_TypeError), -1.0)"
        r" : PyFloat_AsDouble(obj_\1);",
    ),
]


def _check_arguments_as_pure(extensions: list[Any]) -> None:
    """Apply ``_ARGUMENT_CHECKS`` to mypyc's C sources (warn if one no longer matches)."""
    counts = [0] * len(_ARGUMENT_CHECKS)
    for path in sorted({ROOT / src for ext in extensions for src in ext.sources}):
        text = path.read_text()
        for i, (pattern, replacement) in enumerate(_ARGUMENT_CHECKS):
            text, n = pattern.subn(replacement, text)
            counts[i] += n
        path.write_text(text)
    print(f"netpoll: argument checks rewritten in mypyc's wrappers: {counts}")
    if not all(counts):
        sys.stderr.write(
            f"netpoll: WARNING: some argument-check rewrites matched nothing ({counts}): "
            "has mypyc's output changed? Its type errors may not name the argument.\n"
        )


def _mypyc_extensions() -> list[Any]:
    """mypyc's extensions for the package, or [] (with a warning) if it fails."""
    try:
        from mypyc.build import mypycify
    except Exception as exc:
        _warn(f"mypyc is not available ({exc!r})")
        return []
    paths = [
        path.relative_to(ROOT).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in INTERPRETED
    ]
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypyc writes its C sources under build/ and reads pyproject's config
    try:
        extensions = list(mypycify(paths, group_name=GROUP))
        _check_arguments_as_pure(extensions)
        return extensions
    except (Exception, SystemExit) as exc:  # mypyc exits on errors it reported
        _warn(f"mypyc could not translate the modules ({exc!r}); its messages are above")
        return []
    finally:
        os.chdir(cwd)


# The commands that build the modules (pip's build backend runs bdist_wheel or
# editable_wheel); the metadata and sdist steps need no mypyc run.
_BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "editable_wheel", "develop", "install"}


def _planned_extensions() -> list[Any]:
    if _pure_requested():
        print("netpoll: NETPOLL_PURE_PYTHON is set: building the pure-Python modules")
        return []
    if not _BUILD_COMMANDS.intersection(sys.argv[1:]):
        # A stand-in for the compiled modules: tells setuptools there are some.
        return [Extension("netpoll.__compiled__", sources=["src/netpoll/__init__.py"])]
    problem = _compiler_problem()
    if problem is not None:
        _warn(problem)
        return []
    return _mypyc_extensions()


class BuildPy(build_py):
    """In an editable build, drop compiled modules a previous build left in ``src/``."""

    def run(self) -> None:
        if getattr(self, "editable_mode", False):
            for path in _stale_extensions():
                path.unlink()
        super().run()


class BuildExt(build_ext):
    """Compile the extensions; on failure warn, remove what was built and go on pure."""

    def run(self) -> None:
        # Modules a previous build compiled and this one does not would go into the wheel
        # with the rest of the build directory.
        current = {self._output(ext, inplace=False).resolve() for ext in self.extensions}
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        for path in Path(self.build_lib).rglob(f"*{suffix}"):
            if path.resolve() not in current:
                path.unlink()
        try:
            super().run()
        except Exception as exc:  # a compile or link error, a missing tool
            in_source = self.inplace or getattr(self, "editable_mode", False)
            for ext in self.extensions:
                self._output(ext, inplace=False).unlink(missing_ok=True)
                if in_source:
                    self._output(ext, inplace=True).unlink(missing_ok=True)
            self.extensions = []  # the wheel then holds the plain modules only
            _warn(f"compiling the extensions failed ({exc})")

    def _output(self, ext: Any, *, inplace: bool) -> Path:
        """Where ``ext`` is built: under build/, or in the source tree."""
        saved, self.inplace = self.inplace, inplace
        try:
            return Path(self.get_ext_fullpath(ext.name))
        finally:
            self.inplace = saved


setup(
    ext_modules=_planned_extensions(),
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
)
