"""Longer hostile-client soak runs, outside CI; and the table of docs/reliability.md.

The server runs in its own process (tests/hostile/_serverproc.py) so that its descriptors,
RSS and heap are measured alone; the clients run here. Every run samples the server as it
goes and fails (exit status 1) if descriptors, live Connection objects or heap blocks grow
from the first sample after the warm-up to the last, or RSS beyond a tolerance.

    python tools/soak.py churn  [--cycles 1000000] [--threads 4]
    python tools/soak.py resets [--cycles 200000] [--threads 4]
    python tools/soak.py burst  [--connections 10000] [--rounds 5]
    python tools/soak.py all    (the three, with their defaults)
    python tools/soak.py table FIGURES.json   (markdown rows for docs/reliability.md)

``--json PATH`` merges the figures into PATH (the same file the test suite writes when
NETPOLL_RELIABILITY_JSON is set).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

from hostile._harness import (  # noqa: E402
    MiB,
    ServerProcess,
    mib,
    rss_bytes,
    run_threads,
    wait_for,
)
from hostile.test_churn import churn  # noqa: E402
from hostile.test_resets import POINTS, one_reset  # noqa: E402
from hostile.test_scale import open_and_echo  # noqa: E402

RSS_TOLERANCE = 16 * MiB


def sample(srv: ServerProcess, done: int) -> dict[str, Any]:
    st = srv.stats()
    return {
        "done": done,
        "fds": srv.usage().fds,
        "rss_mib": mib(rss_bytes(srv.pid)),
        "pool_mib": mib(st["pool_bytes"]),
        "heap_blocks": st["py_blocks"],
        "live_connections": st["live_connections"],
        "open": st["connections_open"],
    }


def settle(srv: ServerProcess) -> None:
    """Wait until the server has no connection open and has dropped the closed ones (their
    poller's buffer sweep, once a second; the leader thread may still reference the last
    connection it served, so one object may remain)."""
    wait_for(lambda: srv.stats()["connections_open"] == 0, 30, interval=0.1)
    wait_for(lambda: srv.stats()["live_connections"] <= 1, 10, interval=0.25)


def soak(
    name: str,
    step: Callable[[ServerProcess, int], list[BaseException]],
    total: int,
    batches: int,
    handler: str,
) -> dict[str, Any]:
    """Run ``step(srv, n)`` in ``batches`` batches of ``total / batches``, sampling after each."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(Path(tmp) / "server.log", handler=handler, raise_nofile=True)
        with srv:
            per = total // batches
            t0 = time.monotonic()
            errors = step(srv, per)  # the warm-up batch: not counted in the trend
            settle(srv)
            samples = [sample(srv, 0)]
            print(f"{name}: warm-up of {per} done; sampling every {per}")
            print_row(samples[-1])
            for b in range(1, batches):
                errors += step(srv, per)
                settle(srv)
                samples.append(sample(srv, b * per))
                print_row(samples[-1])
            elapsed = time.monotonic() - t0
            log = srv.log_lines()
    first, last = samples[0], samples[-1]
    figures = {
        "total": per * batches,
        "seconds": round(elapsed, 1),
        "per_second": round(per * batches / elapsed),
        "errors": len(errors),
        "fds": [first["fds"], last["fds"]],
        "rss_mib": [first["rss_mib"], last["rss_mib"]],
        "heap_blocks": [first["heap_blocks"], last["heap_blocks"]],
        "live_connections": [first["live_connections"], last["live_connections"]],
        "log_lines": len(log),
        "samples": samples,
    }
    problems = []
    if errors:
        problems.append(f"{len(errors)} client errors, e.g. {errors[0]!r}")
    if last["fds"] > first["fds"]:
        problems.append("descriptors grew")
    if last["live_connections"] > first["live_connections"]:
        problems.append("Connection objects grew")
    if last["heap_blocks"] - first["heap_blocks"] > 2000:
        problems.append("heap blocks grew")
    if (last["rss_mib"] - first["rss_mib"]) * MiB > RSS_TOLERANCE:
        problems.append("RSS grew")
    figures["problems"] = problems
    return figures


def print_row(s: dict[str, Any]) -> None:
    print(
        f"  after {s['done']:>9,}: fds {s['fds']:>5}  rss {s['rss_mib']:>7} MiB  "
        f"pool {s['pool_mib']:>5} MiB  heap blocks {s['heap_blocks']:>8,}  "
        f"live conns {s['live_connections']:>3}",
        flush=True,
    )


def churn_step(threads: int) -> Callable[[ServerProcess, int], list[BaseException]]:
    def step(srv: ServerProcess, n: int) -> list[BaseException]:
        return churn(srv.addr, n, threads, timeout=max(60.0, n / 500))

    return step


def resets_step(threads: int) -> Callable[[ServerProcess, int], list[BaseException]]:
    seed = [0]

    def step(srv: ServerProcess, n: int) -> list[BaseException]:
        seed[0] += 1
        counts = dict.fromkeys(POINTS, 0)

        def worker(t: int) -> None:
            rng = random.Random(seed[0] * 1000 + t)
            for _ in range(n // threads):
                one_reset(srv.addr, rng, counts)

        return run_threads(worker, threads, timeout=max(60.0, n / 200))

    return step


def burst_step(srv: ServerProcess, n: int) -> list[BaseException]:
    """``n`` connections at once, one echo each, held; then idle; then all closed.

    Prints the server's RSS with all open, idle for 3 s as the allocator left it (no
    malloc_trim), and after malloc_trim.
    """
    t0 = time.monotonic()
    socks, echoed = open_and_echo(srv.addr, n, t0 + 60)
    served = time.monotonic() - t0
    at_peak = rss_bytes(srv.pid)
    threading.Event().wait(3.0)  # a measuring interval: the buffer sweep runs meanwhile
    idle_untrimmed = rss_bytes(srv.pid)
    idle_trimmed = srv.usage().rss  # the stats command runs gc and malloc_trim first
    for s in socks:
        s.close()
    print(
        f"  {n} connections served in {served:.2f}s ({echoed} echoes intact); server RSS "
        f"all open {mib(at_peak)} MiB, idle 3 s later {mib(idle_untrimmed)} MiB untrimmed, "
        f"{mib(idle_trimmed)} MiB after malloc_trim",
        flush=True,
    )
    return [] if echoed == n else [AssertionError(f"{n - echoed} echoes missing")]


COMMON = {
    "duration_s",
    "fds_before",
    "fds_after",
    "rss_before_mib",
    "rss_peak_mib",
    "rss_after_mib",
    "rss_growth_beyond_pool_mib",
    "worst_stall_ms",
    "heap_blocks_before",
    "heap_blocks_after",
}
NOISE = {
    "python",
    "canary_bytes",
    "canaries",
    "pool_before_mib",
    "pool_after_mib",
    "rss_untrimmed_mib",
    "samples",
    "problems",
}


def table(path: Path) -> None:
    """The case table of docs/reliability.md, from a figures JSON."""
    data = json.loads(path.read_text())
    print(
        "| case | s | fds before→after | RSS MiB before / peak / after (beyond pool) "
        "| heap blocks Δ | worst stall ms | case figures |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in sorted(data):
        f = data[case]
        fds = f"{f['fds_before']}→{f['fds_after']}" if "fds_before" in f else ""
        rss = (
            f"{f['rss_before_mib']} / {f.get('rss_peak_mib', '-')} / {f['rss_after_mib']} "
            f"({f['rss_growth_beyond_pool_mib']:+})"
            if "rss_before_mib" in f
            else ""
        )
        blocks = (
            f"{f['heap_blocks_after'] - f['heap_blocks_before']:+}"
            if "heap_blocks_before" in f
            else ""
        )
        rest = ", ".join(
            f"{k}={v}" for k, v in sorted(f.items()) if k not in COMMON and k not in NOISE
        )
        print(
            f"| {case} | {f.get('duration_s', '')} | {fds} | {rss} | {blocks} "
            f"| {f.get('worst_stall_ms', '')} | {rest} |"
        )


def record(path: str | None, name: str, figures: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[name] = {**figures, "python": sys.version.split()[0]}
    p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=["churn", "resets", "burst", "all", "table"])
    ap.add_argument("path", nargs="?", help="figures JSON (for table)")
    ap.add_argument("--cycles", type=int, default=None)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--json", default=os.environ.get("NETPOLL_RELIABILITY_JSON"))
    args = ap.parse_args(argv)
    if args.what == "table":
        if not args.path:
            ap.error("table needs the figures JSON path")
        table(Path(args.path))
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runs: list[tuple[str, Callable[[ServerProcess, int], list[BaseException]], int, int, str]] = []
    if args.what in ("churn", "all"):
        runs.append(
            ("soak-churn", churn_step(args.threads), args.cycles or 1_000_000, args.batches, "echo")
        )
    if args.what in ("resets", "all"):
        runs.append(
            (
                "soak-resets",
                resets_step(args.threads),
                args.cycles or 200_000,
                args.batches,
                "frame",
            )
        )
    if args.what in ("burst", "all"):
        n = args.connections
        if hard != resource.RLIM_INFINITY and hard < n + 200:
            print(f"burst: hard RLIMIT_NOFILE {hard} is too low for {n} connections")
            return 2
        runs.append(("soak-burst", burst_step, n * (args.rounds + 1), args.rounds + 1, "frame"))
    failed = False
    for name, step, total, batches, handler in runs:
        figures = soak(name, step, total, batches, handler)
        record(args.json, name, figures)
        verdict = "FAIL: " + "; ".join(figures["problems"]) if figures["problems"] else "ok"
        print(
            f"{name}: {figures['total']:,} in {figures['seconds']}s "
            f"({figures['per_second']:,}/s); fds {figures['fds']}, RSS {figures['rss_mib']} MiB, "
            f"heap blocks {figures['heap_blocks']}, live connections "
            f"{figures['live_connections']}: {verdict}",
            flush=True,
        )
        failed |= bool(figures["problems"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
