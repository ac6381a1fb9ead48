#!/usr/bin/env bash
# A quick HTTPS hello comparison (not part of `python -m bench` yet): 3 interleaved rounds
# of netpoll (compiled, .venv), netpoll-pure (.venv-pure), asyncio and uvloop Protocol
# servers with one SSLContext, each pinned to core 0, `wrk -t1 -c50 -d5s https://` on
# core 1. Prints "round contender req/s". Needs trustme (the dev extra) and wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=${PY:-.venv/bin/python}
PURE=${PURE:-.venv-pure/bin/python}
"$PY" -c "
import trustme, sys
c = trustme.CA().issue_cert('127.0.0.1')
c.private_key_pem.write_to_path(sys.argv[1] + '/key.pem')
c.cert_chain_pems[0].write_to_path(sys.argv[1] + '/cert.pem')" "$tmp"
port=19443
for round in 1 2 3; do
  for entry in "netpoll:$PY" "netpoll-pure:$PURE" "asyncio:$PY" "uvloop:$PY"; do
    name=${entry%%:*}
    py=${entry#*:}
    port=$((port + 1))
    taskset -c 0 "$py" -m bench.reference.https_server "${name%-pure}" "$port" \
      "$tmp/cert.pem" "$tmp/key.pem" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do
      curl -sk "https://127.0.0.1:$port/" >/dev/null && break
      sleep 0.1  # polling for the server to listen, bounded at 10 s
    done
    taskset -c 1 wrk -t1 -c50 -d1s "https://127.0.0.1:$port/" >/dev/null 2>&1
    rate=$(taskset -c 1 wrk -t1 -c50 -d5s "https://127.0.0.1:$port/" 2>&1 |
      awk '/Requests\/sec/ {print $2}')
    echo "$round $name $rate"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
