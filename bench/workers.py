"""``python -m bench.workers``: ``netpoll.run`` with one worker against two.

    python -m bench.workers [--rounds 3] [--duration 5] [--warmup 1] [--write-docs]

The examples' servers (``examples/http_hello.py`` and ``examples/echo_server.py``) start
through ``netpoll.run(..., workers=N)`` for N = 1 and 2, one configuration after another
in each round (so drift of the machine touches both alike). One worker is pinned to
core 0; two workers (and their supervisor) may use cores 0 and 1. The load always comes
from core 1: ``wrk -t1 -c50`` for HTTP, the C load generator (echo 128 B, 50 connections)
for echo. Measured: requests per second, and the server's CPU per request: utime + stime
of the supervisor and every worker over the measured window, divided by the requests.

On a two-core machine the second worker shares core 1 with the load generator, so the
figures cannot show two workers doubling throughput; what they can show is whether the
work spreads without waste (CPU per request) and what a second worker gains when it has
only part of a core. Results go to ``bench/results/workers.json``; ``--write-docs`` also
rewrites the "netpoll.run" section of ``docs/benchmarks.md`` (``python -m bench``
keeps that section when it regenerates the page).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._net import HOST
from bench.runner import (
    CLK_TCK,
    REGISTRY,
    REPO_ROOT,
    free_port,
    install_signal_handlers,
    pinned,
    run_tool,
)
from bench.tools import Toolbox, ToolError, parse_loadgen_output, parse_wrk_output

RESULTS_PATH = REPO_ROOT / "bench" / "results" / "workers.json"
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- netpoll.run section: written by `python -m bench.workers --write-docs` -->"
END = "<!-- end of the netpoll.run section -->"
EXAMPLES = {"http": "examples/http_hello.py", "echo": "examples/echo_server.py"}
TITLES = {"http": "HTTP `wrk -t1 -c50`", "echo": "echo 128 B x 50 conns"}


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and all its descendants now alive, in seconds."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += [p for p, pp in parents.items() if pp == pid]
    return total / CLK_TCK


def wait_listening(port: int, proc: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolError(f"the server exited with status {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)  # polling for the listener, bounded by the deadline
    raise ToolError(f"no server listening on port {port} after {timeout:.0f} s")


def measure(
    kind: str, workers: int, args: argparse.Namespace, tools: Toolbox, python: str
) -> dict[str, Any]:
    port = free_port()
    cores = "0" if workers == 1 else "0,1"
    cmd = [python, EXAMPLES[kind], "--port", str(port), "--workers", str(workers)]
    if tools.taskset is not None:
        cmd = [tools.taskset, "-c", cores, *cmd]
    proc = REGISTRY.spawn(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        if kind == "http":
            assert tools.wrk is not None
            url = f"http://{HOST}:{port}/"
            warm = [tools.wrk, "-t1", "-c50", f"-d{args.warmup:g}s", url]
            run_tool(pinned(1, warm, tools), args.warmup + 30)
            cpu0, t0 = tree_cpu_seconds(proc.pid), time.monotonic()
            load = [tools.wrk, "-t1", "-c50", f"-d{args.duration:g}s", url]
            out = run_tool(pinned(1, load, tools), args.duration + 30)
            cpu1, t1 = tree_cpu_seconds(proc.pid), time.monotonic()
            rps = float(parse_wrk_output(out)["rps"])
            requests = rps * (t1 - t0)
        else:
            loadgen = tools.build_loadgen()
            if loadgen is None:
                raise ToolError(tools.loadgen_error or "no load generator")
            base = [str(loadgen), "--mode", "echo", "--port", str(port), "--conns", "50"]
            base += ["--size", "128", "--warmup", "0"]
            if args.warmup > 0:
                warm = [*base, "--duration", f"{args.warmup:g}"]
                run_tool(pinned(1, warm, tools), args.warmup + 60)
            load = [*base, "--duration", f"{args.duration:g}"]
            cpu0, t0 = tree_cpu_seconds(proc.pid), time.monotonic()
            data = parse_loadgen_output(run_tool(pinned(1, load, tools), args.duration + 60))
            cpu1, t1 = tree_cpu_seconds(proc.pid), time.monotonic()
            rps = float(data["rps"])
            requests = float(data["requests"])
        if proc.poll() is not None:
            raise ToolError("the server died during the run")
        return {
            "rps": round(rps, 1),
            "cpu_us_per_request": round((cpu1 - cpu0) / requests * 1e6, 2),
            "server_cores_busy": round((cpu1 - cpu0) / (t1 - t0), 2),
        }
    finally:
        REGISTRY.stop(proc, grace=8.0)


def format_section(results: dict[str, Any]) -> str:
    """The markdown of the netpoll.run section of docs/benchmarks.md."""
    lines = [
        BEGIN,
        "## netpoll.run: one and two workers",
        "",
        f"Run {results['started']} at revision `{results.get('revision') or '?'}`, "
        f"{results['rounds']} round{'s' if results['rounds'] != 1 else ''}, medians (each "
        "run's figure in brackets):",
        "",
        "```",
        results["command"],
        "```",
        "",
        "| workload | workers | req/s | server CPU per request | server cores busy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in ("http", "echo"):
        for workers in (1, 2):
            runs = results["runs"].get(f"{kind}-{workers}", [])
            if not runs:
                continue
            rps = [r["rps"] for r in runs]
            cpu = [r["cpu_us_per_request"] for r in runs]
            busy = [r["server_cores_busy"] for r in runs]
            each = ", ".join(f"{r / 1000:.1f}k" for r in rps)
            lines.append(
                f"| {TITLES[kind]} | {workers} | {statistics.median(rps) / 1000:.1f}k ({each}) "
                f"| {statistics.median(cpu):.1f} µs | {statistics.median(busy):.2f} |"
            )
    lines += [
        "",
        "One worker is pinned to core 0, two workers (and the supervisor) to cores 0 and 1; "
        "the load tool always runs on core 1. Server CPU is the utime + stime of the "
        "supervisor and the workers over the measured window, divided by the requests. What "
        "these can and cannot show: on this two-core machine the second worker shares core 1 "
        "with the load generator, so two workers cannot double the throughput here. They "
        "show whether the shared listener spreads the work without waste (close CPU per "
        "request for one and two workers: little is spent on contention or on waking idle "
        "workers) and what a second worker gains from part of a core. With a core per worker and "
        "one for the load, throughput would grow with the workers until the load "
        "generator or the loopback saturates.",
        END,
    ]
    return "\n".join(lines)


def load_section() -> str | None:
    """The section from the last ``python -m bench.workers`` run, if there is one."""
    try:
        return format_section(json.loads(RESULTS_PATH.read_text()))
    except (OSError, ValueError, KeyError):
        return None


def write_docs_section(section: str) -> None:
    text = DOCS_PATH.read_text() if DOCS_PATH.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS_PATH.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 20 and 0 < args.duration <= 120 and 0 <= args.warmup <= 60):
        parser.error("--rounds 1..20, --duration up to 120 s, --warmup up to 60 s")
    install_signal_handlers()
    tools = Toolbox.discover()
    if tools.wrk is None or tools.build_loadgen() is None:
        print("bench.workers: needs wrk and the C load generator (see python -m bench --check)")
        return 1
    started = dt.datetime.now()
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for r in range(args.rounds):
            for kind in ("http", "echo"):
                for workers in (1, 2):
                    fig = measure(kind, workers, args, tools, sys.executable)
                    runs.setdefault(f"{kind}-{workers}", []).append(fig)
                    print(f"round {r + 1} {kind} workers={workers}: {fig}", flush=True)
    finally:
        REGISTRY.kill_all()
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    results = {
        "started": started.isoformat(timespec="seconds"),
        "revision": rev or None,
        "command": "python -m bench.workers "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "runs": runs,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    section = format_section(results)
    print("\n" + section)
    if args.write_docs:
        write_docs_section(section)
        print(f"\ndocs: {os.path.relpath(DOCS_PATH)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
