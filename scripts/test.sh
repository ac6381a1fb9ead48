#!/usr/bin/env bash
# Sets up the test environments from the project's own files and runs every check:
# ruff (lint + format), mypy --strict on src/, and the test suite under the oldest and
# the newest CPython found (3.10 .. 3.13). Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

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
for v in 3.10 3.11 3.12 3.13; do
  if py=$(find_python "$v"); then
    pythons+=("$py")
  fi
done
if [ ${#pythons[@]} -eq 0 ]; then
  pythons=(python3)
fi
selected=("${pythons[0]}")
if [ ${#pythons[@]} -gt 1 ]; then
  selected+=("${pythons[-1]}")
fi

setup_venv() {  # $1 = interpreter; prints the venv path
  local py=$1 ver dir
  ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  dir=".venv-test$ver"
  if [ ! -x "$dir/bin/python" ]; then
    "$py" -m venv "$dir" >&2
  fi
  "$dir/bin/python" -m pip install -q --upgrade pip >&2 || true
  "$dir/bin/python" -m pip install -q -e '.[dev]' >&2
  echo "$dir"
}

first=$(setup_venv "${selected[0]}")
echo "== ruff check"
"$first/bin/ruff" check src tests bench examples
echo "== ruff format --check"
"$first/bin/ruff" format --check src tests bench examples
echo "== mypy --strict src"
"$first/bin/mypy" --strict src

status=0
for py in "${selected[@]}"; do
  dir=$(setup_venv "$py")
  echo "== pytest under $("$dir/bin/python" -V)"
  "$dir/bin/python" -m pytest "$@" || status=$?
done
exit $status
