"""``python -m bench``: command-line entry point of the benchmark."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from bench import report
from bench.runner import (
    REPO_ROOT,
    Progress,
    Settings,
    Workload,
    check_contender,
    cpu_busy_fraction,
    estimate_seconds,
    format_seconds,
    install_signal_handlers,
    missing_tool,
    run_all,
    standard_workloads,
)
from bench.server import CONTENDERS, REFERENCE_CONTENDERS, raise_nofile_limit
from bench.tools import INSTALL_HINTS, Toolbox

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_DIR = REPO_ROOT / "docs"
QUICK_CONTENDERS = ("netpoll", "netpoll-pure", "asyncio-protocol", "uvloop-protocol", "epoll")
QUICK_WORKLOADS = ("echo-128-c50", "frames-128-c50", "http-c50", "resp-c50")
FULL = Settings()
QUICK = Settings(warmup=0.5, duration=2.0, redis_test_seconds=0.75, runs=1)


def _names(text: str, allowed: list[str], what: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(allowed)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    workload_names = [w.name for w in standard_workloads(10_000)]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Benchmark netpoll against asyncio, uvloop and a raw select.epoll loop.\n\n"
            "Every contender serves the same workloads with the same request logic; each\n"
            "server runs in its own process pinned to one core, the load (a C load\n"
            "generator, wrk, redis-benchmark) runs pinned to another. Results go to\n"
            "bench/results/; the full mode also rewrites docs/benchmarks.md, \n"
            "docs/benchmarks.png and bench/results/latest.json."
        ),
        epilog=(
            f"contenders: {', '.join(CONTENDERS)}\n"
            f"workloads:  {', '.join(workload_names)}\n\n"
            "examples:\n"
            "  python -m bench --quick            about a minute: the README demo\n"
            "  python -m bench                    full: everything, 3 runs (< 25 min)\n"
            "  python -m bench --contenders netpoll,uvloop-protocol --workloads http-c50\n"
            "  python -m bench --workloads resp-lines-c50   blocking-style RESP: netpoll vs "
            "asyncio/uvloop Streams\n"
            "  python -m bench --from-json bench/results/latest.json --write-docs"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one short run of {', '.join(QUICK_WORKLOADS)} with "
        f"{', '.join(QUICK_CONTENDERS)} (about a minute)",
    )
    parser.add_argument(
        "--contenders",
        type=lambda t: _names(t, list(CONTENDERS + REFERENCE_CONTENDERS), "contender"),
        help="comma-separated contenders to run (default: all but the reference floors; "
        "quick: a subset)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda t: _names(t, workload_names, "workload"),
        help="comma-separated workloads to run (default: all; quick: a subset)",
    )
    parser.add_argument("--runs", type=int, help="repetitions of each configuration")
    parser.add_argument("--duration", type=float, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each measurement")
    parser.add_argument(
        "--idle-conns",
        type=int,
        default=10_000,
        metavar="N",
        help="connections held open by the idle (memory) workload (default: %(default)s)",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="core of the servers")
    parser.add_argument("--load-cpu", type=int, default=1, help="core of the load generators")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument(
        "--write-docs",
        action="store_true",
        help="rewrite docs/benchmarks.md, docs/benchmarks.png and bench/results/latest.json "
        "(the default in full mode)",
    )
    docs.add_argument("--no-docs", action="store_true", help="never rewrite the docs")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="do not run anything: print (and with --write-docs publish) saved results",
    )
    parser.add_argument(
        "--list", action="store_true", help="list contenders and workloads, then exit"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="build the load generator, report which tools and contenders are usable, exit",
    )
    return parser


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def publish(results: dict[str, Any], write_docs: bool, results_path: Path | None) -> None:
    """Chart (and docs) for ``results``; paths printed on stderr."""
    if write_docs:
        chart = DOCS_DIR / "benchmarks.png"
    elif results_path is not None:
        chart = results_path.with_suffix(".png")
    else:
        return
    problem = report.write_chart(results, chart)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
    else:
        print(f"chart: {shown(chart)}", file=sys.stderr)
    if write_docs:
        report.write_results_latest(results, RESULTS_DIR)
        doc = report.write_docs(results, DOCS_DIR, None if problem else chart)
        print(f"docs:  {shown(doc)}", file=sys.stderr)


def check_setup(settings: Settings, idle_conns: int) -> int:
    """Build the load generator and report, one line each, what can run here."""
    tools = Toolbox.discover()
    ok = True
    loadgen = tools.build_loadgen()
    lines = [f"loadgen:          {shown(loadgen) if loadgen else tools.loadgen_error}"]
    if loadgen is not None:
        lines.append(f"{'loadgen TLS:':<18}{tools.loadgen_tls_error or 'ok'}")
    tls_files = tools.ensure_tls_files()
    lines.append(
        f"{'TLS certificate:':<18}{shown(tls_files[0]) if tls_files else tools.tls_files_error}"
    )
    for name, path in (
        ("wrk", tools.wrk),
        ("redis-benchmark", tools.redis_benchmark),
        ("taskset", tools.taskset),
    ):
        hint = INSTALL_HINTS[name]
        lines.append(f"{name + ':':<18}{path or 'missing: ' + hint}")
        ok = ok and path is not None
    ok = ok and loadgen is not None
    nofile = raise_nofile_limit()
    lines.append(
        f"{'open files:':<18}{nofile}"
        + ("" if nofile >= idle_conns + 256 else f" (too low for {idle_conns} idle conns)")
    )
    for c in CONTENDERS:
        problem = check_contender(c, settings)
        lines.append(f"{c + ':':<18}{problem or 'ok'}")
        ok = ok and problem is None
    if importlib.util.find_spec("matplotlib") is not None:
        lines.append(f"{'matplotlib:':<18}ok")
    else:
        lines.append(f"{'matplotlib:':<18}missing: pip install matplotlib (no chart otherwise)")
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    idle_conns = args.idle_conns
    all_workloads = standard_workloads(idle_conns)

    if args.list:
        print("contenders:")
        for c in CONTENDERS:
            print(f"  {c}")
        for c in REFERENCE_CONTENDERS:
            print(f"  {c}  (reference floor, only when named; see bench/reference/floors.py)")
        print("workloads:")
        everyone = CONTENDERS + REFERENCE_CONTENDERS
        for w in all_workloads:
            served = [c for c in everyone if w.serves(c)]
            only = "" if len(served) == len(everyone) else f"  (only {', '.join(served)})"
            print(f"  {w.name:<16} {w.title}{only}")
        return 0

    if args.check:
        return check_setup(Settings(), idle_conns)

    if args.from_json is not None:
        try:
            results = json.loads(args.from_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"bench: cannot read {args.from_json}: {exc}", file=sys.stderr)
            return 1
        report.print_summary(results)
        publish(results, args.write_docs, args.from_json)
        return 0

    base = QUICK if args.quick else FULL
    settings = Settings(
        warmup=args.warmup if args.warmup is not None else base.warmup,
        duration=args.duration if args.duration is not None else base.duration,
        redis_test_seconds=(
            args.duration / 2 if args.duration is not None else base.redis_test_seconds
        ),
        runs=args.runs if args.runs is not None else base.runs,
        server_cpu=args.server_cpu,
        load_cpu=args.load_cpu,
    )
    if settings.runs < 1 or settings.duration <= 0 or settings.warmup < 0 or idle_conns < 1:
        parser.error("--runs, --duration and --idle-conns must be positive, --warmup >= 0")
    if settings.duration > 600 or settings.warmup > 600 or settings.runs > 50:
        parser.error("at most 600 s per run, 600 s of warm-up and 50 runs")

    contenders = args.contenders or list(QUICK_CONTENDERS if args.quick else CONTENDERS)
    workload_names = args.workloads or (
        list(QUICK_WORKLOADS) if args.quick else [w.name for w in all_workloads]
    )
    workloads = [w for w in all_workloads if w.name in workload_names]
    if args.quick:
        mode = "quick"
    elif args.contenders or args.workloads or args.runs or args.duration or args.warmup:
        mode = "custom"
    else:
        mode = "full"
    write_docs = (mode == "full" or args.write_docs) and not args.no_docs

    install_signal_handlers()
    nofile = raise_nofile_limit()
    tools = Toolbox.discover()
    say = sys.stderr

    # Pinning: the servers on one core, the load on another.
    try:
        usable = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        usable = set(range(os.cpu_count() or 1))
    if tools.taskset is None:
        print(f"bench: taskset not found, nothing pinned: {INSTALL_HINTS['taskset']}", file=say)
    elif not {settings.server_cpu, settings.load_cpu} <= usable or (
        settings.server_cpu == settings.load_cpu
    ):
        print(
            f"bench: cores {settings.server_cpu} and {settings.load_cpu} are not two usable "
            f"cores here ({sorted(usable)}): nothing pinned",
            file=say,
        )
        tools.taskset = None

    skipped: dict[str, str] = {}
    runnable_contenders = []
    for c in contenders:
        problem = check_contender(c, settings)
        if problem:
            skipped[c] = problem
            print(f"bench: skipping {c}: {problem}", file=say)
        else:
            runnable_contenders.append(c)
    runnable_workloads: list[Workload] = []
    for w in workloads:
        problem = missing_tool(w, tools)
        if problem is None and w.tool == "idle" and nofile < idle_conns + 256:
            problem = (
                f"the open-file limit ({nofile}) is too low for {idle_conns} connections "
                "(raise `ulimit -Hn`, or use --idle-conns)"
            )
        if problem:
            skipped[w.name] = problem
            print(f"bench: skipping {w.name}: {problem}", file=say)
        else:
            runnable_workloads.append(w)
    pairs = [(w, c) for w in runnable_workloads for c in runnable_contenders if w.serves(c)]
    if not pairs:
        print("bench: nothing to run", file=say)
        return 1
    for w in runnable_workloads:
        left_out = [c for c in runnable_contenders if not w.serves(c)]
        if left_out:
            print(f"bench: {w.name} has no server for {', '.join(left_out)}", file=say)

    busy = cpu_busy_fraction()
    if busy is not None and busy > 0.15:
        print(
            f"bench: warning: the machine is {busy:.0%} busy before starting (other "
            "processes): results will be low and noisy",
            file=say,
        )
    total = sum(estimate_seconds(w, settings) for w, _c in pairs) * settings.runs
    print(
        f"bench: {mode} mode, {len(runnable_contenders)} contenders x "
        f"{len(runnable_workloads)} workloads x {settings.runs} run(s), "
        f"about {format_seconds(total)}",
        file=say,
    )
    started = dt.datetime.now().astimezone()
    items = settings.runs * len(pairs)
    outcome = run_all(
        runnable_contenders,
        runnable_workloads,
        settings,
        tools,
        Progress(total_estimate=total, total_items=items),
    )
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench", *(shlex.quote(a) for a in given)])
    results = report.build_results(
        mode=mode,
        command=command,
        contenders=runnable_contenders,
        workloads=runnable_workloads,
        settings={
            "warmup": settings.warmup,
            "duration": settings.duration,
            "redis_test_seconds": settings.redis_test_seconds,
            "runs": settings.runs,
            "server_cpu": settings.server_cpu if tools.taskset else None,
            "load_cpu": settings.load_cpu if tools.taskset else None,
            "idle_conns": idle_conns,
            "cpu_busy_before": busy,
            "env": {
                k: v
                for k, v in sorted(os.environ.items())
                if k.startswith(("MALLOC_", "PYTHONMALLOC", "PYTHONHASHSEED"))
            },
        },
        measurements=outcome.measurements,
        errors=outcome.errors,
        skipped=skipped,
        started=started,
        elapsed_s=outcome.elapsed_s,
        interrupted=outcome.interrupted,
        tool_versions=tools.versions(),
        revision=report.git_revision(REPO_ROOT),
    )
    report.print_summary(results)
    path = report.write_results(results, RESULTS_DIR)
    print(f"\nresults: {shown(path)}", file=say)
    if outcome.interrupted:
        return 130
    publish(results, write_docs, path)
    return 0
