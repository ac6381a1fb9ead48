#!/usr/bin/env bash
# The README's demo: sets up a fresh Debian machine and runs the quick benchmark (about a
# minute): netpoll, asyncio, uvloop and a raw epoll loop on echo, RPC frames, HTTP and RESP.
#
#   scripts/demo.sh                 # quick benchmark
#   scripts/demo.sh --workloads echo-128-c1,idle   # any `python -m bench` arguments
#   PYTHON=python3.13 scripts/demo.sh              # another interpreter for the venv
#
# Installs (with apt-get, when missing): wrk, redis-tools, gcc, util-linux (taskset),
# libssl-dev and openssl (the TLS workloads of a full run);
# creates .venv with $PYTHON (default python3) and installs the compiled build with its bench
# extra (uvloop, matplotlib), and the pure build into .venv-pure; builds the C load generator;
# runs `python -m bench --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo DEBIAN_FRONTEND=noninteractive "$@"
  else
    return 1
  fi
}

apt_updated=0
apt_install() {  # packages...
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: please install $* yourself"
    return 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq || return 1
    apt_updated=1
  fi
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. System tools. A tool that cannot be installed only skips its workloads.
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt_install "${missing[@]}" || say "could not install ${missing[*]}: the benchmark skips what needs them"
fi

# 2. The virtualenv with the project and its bench extra.
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "$PYTHON not found: install Python 3.10 or newer, or set PYTHON=/path/to/python3"
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" -V 2>&1)"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    say "installing python3-venv"
    apt_install python3-venv || { say "cannot create a venv: install python3-venv"; exit 1; }
    "$PYTHON" -m venv .venv
  fi
fi
say "installing netpoll (compiled) with the bench extra (uvloop, matplotlib) into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# Not editable: the compiled modules land in the venv, never beside the sources.
env -u NETPOLL_PURE_PYTHON .venv/bin/python -m pip install -q '.[bench]'
.venv/bin/python -m netpoll | sed 's/^/    /' >&2
if [ ! -x .venv-pure/bin/python ]; then
  "$PYTHON" -m venv .venv-pure
fi
say "installing the pure-Python build into .venv-pure (the netpoll-pure contender)"
NETPOLL_PURE_PYTHON=1 .venv-pure/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
NETPOLL_PURE_PYTHON=1 .venv-pure/bin/python -m pip install -q .

# 3. Build the load generator and show what can run.
say "checking tools and contenders"
.venv/bin/python -m bench --check || say "some contenders or tools are missing (see above): they are skipped"

# 4. The quick benchmark.
say "running the quick benchmark (about a minute)"
exec .venv/bin/python -m bench --quick "$@"
