#!/usr/bin/env bash
# Sets up the test environments from the project's own files and runs every check:
# ruff (lint + format) and mypy --strict on src/ once, then the test suite against
#   - the compiled build (mypyc) under the oldest and the newest CPython found (3.10 .. 3.13),
#   - the pure-Python build (NETPOLL_PURE_PYTHON=1) under 3.11 (else the oldest found).
# Each venv (.venv-test310c, .venv-test313c, .venv-test311p) is kept between runs and gets a
# fresh non-editable install of this tree every time (pip rebuilds a local directory), so
# changed sources are recompiled; pytest imports that installed package, not src/. A run
# that finds the other build than it asked for (NETPOLL_EXPECT_BUILD) or runs no test fails.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

find_python() {  # $1 = version such as 3.10; prints a working interpreter path
  local v=$1 cand
  for cand in "python$v" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v"; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys' >/dev/null 2>&1; then
      command -v "$cand"
      return 0
    fi
  done
  return 1
}

pythons=()
pure_python=
for v in 3.10 3.11 3.12 3.13; do
  if py=$(find_python "$v"); then
    pythons+=("$py")
    if [ "$v" = 3.11 ]; then
      pure_python=$py
    fi
  fi
done
if [ ${#pythons[@]} -eq 0 ]; then
  pythons=(python3)
fi
runs=("${pythons[0]} compiled")
if [ ${#pythons[@]} -gt 1 ]; then
  runs+=("${pythons[-1]} compiled")
fi
runs+=("${pure_python:-${pythons[0]}} pure")

setup_venv() {  # $1 = interpreter, $2 = compiled|pure; prints the venv path
  local py=$1 build=$2 ver dir t0
  ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  dir=".venv-test$ver${build:0:1}"
  if [ ! -x "$dir/bin/python" ]; then
    "$py" -m venv "$dir" >&2
  fi
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2 || true
  t0=$SECONDS
  if [ "$build" = pure ]; then
    NETPOLL_PURE_PYTHON=1 "$dir/bin/python" -m pip install -q --disable-pip-version-check \
      '.[dev]' >&2
  else
    env -u NETPOLL_PURE_PYTHON "$dir/bin/python" -m pip install -q --disable-pip-version-check \
      '.[dev]' >&2
  fi
  echo "== $build build installed in $dir ($((SECONDS - t0)) s)" >&2
  echo "$dir"
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
summary=()
first=1
for run in "${runs[@]}"; do
  read -r py build <<<"$run"
  dir=$(setup_venv "$py" "$build")
  if [ $first = 1 ]; then
    first=0
    echo "== ruff check"
    "$dir/bin/ruff" check src tests bench examples setup.py
    echo "== ruff format --check"
    "$dir/bin/ruff" format --check src tests bench examples setup.py
    echo "== mypy --strict src"
    "$dir/bin/mypy" --strict src
  fi
  "$dir/bin/python" -m netpoll
  name="$build build, $("$dir/bin/python" -c 'import platform; print(platform.python_version())')"
  echo "== pytest: $name"
  rc=0
  NETPOLL_EXPECT_BUILD=$build "$dir/bin/python" -m pytest "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
  result=$( (grep -E '^=* ?([0-9]+ (passed|failed|errors?)|no tests ran)' "$log" || true) | tail -n 1 | tr -d '=')
  summary+=("$name: ${result:-no result line} (exit $rc)")
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then
    status=$rc
  fi
done

echo "== summary ($((SECONDS - started)) s)"
passed=0
failed=0
for line in "${summary[@]}"; do
  echo "$line"
  p=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i} END {print s + 0}' <<<"$line")
  f=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(failed|error)/) s += $i} END {print s + 0}' <<<"$line")
  passed=$((passed + p))
  failed=$((failed + f))
done
echo "all runs: $passed passed, $failed failed"
exit $status
