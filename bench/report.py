"""Turning measurements into the results JSON, the terminal table, the chart and the docs."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

BASELINE = "uvloop-protocol"
FALLBACK_BASELINES = ("asyncio-protocol",)
SCHEMA = 1
CONTENDER_COLOURS = {
    "netpoll": "#d62728",
    "asyncio-protocol": "#1f77b4",
    "asyncio-streams": "#aec7e8",
    "uvloop-protocol": "#2ca02c",
    "uvloop-streams": "#98df8a",
    "epoll": "#7f7f7f",
    "floor-api": "#c5b0d5",
    "floor-api-safe": "#9467bd",
    "floor-api-owned": "#8c564b",
}


# --- aggregation --------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of the headline metric, medians of the latencies."""
    if not runs:
        return {}
    metric = "bytes_per_conn" if "bytes_per_conn" in runs[0] else "rps"
    values = [float(r[metric]) for r in runs if r.get(metric) is not None]
    out: dict[str, Any] = {
        "metric": metric,
        "median": _median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": len(values),
    }
    for key in ("p50_us", "p99_us", "p999_us", "server_cpu", "load_cpu"):
        vals = [float(r[key]) for r in runs if r.get(key) is not None]
        if vals:
            out[key] = round(statistics.median(vals), 3)
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for name in ("netpoll", "uvloop", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision(repo: Path) -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_results(
    *,
    mode: str,
    command: str,
    contenders: list[str],
    workloads: list[Any],
    settings: dict[str, Any],
    measurements: dict[tuple[str, str], list[dict[str, Any]]],
    errors: dict[tuple[str, str], list[str]],
    skipped: dict[str, str],
    started: dt.datetime,
    elapsed_s: float,
    interrupted: bool,
    tool_versions: dict[str, str],
    revision: str | None,
) -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    for w in workloads:
        for case, title in w.cases():
            entries = []
            for contender in contenders:
                if not w.serves(contender):
                    continue  # no server for this workload: no row, not a failure
                runs = measurements.get((case, contender), [])
                entries.append(
                    {
                        "contender": contender,
                        "summary": summarize(runs),
                        "runs": runs,
                        "errors": errors.get((case, contender), []),
                    }
                )
            cases.append(
                {
                    "case": case,
                    "title": title,
                    "workload": w.name,
                    "server_logic": w.server,
                    "tool": w.tool,
                    "conns": w.conns,
                    "size": w.size,
                    "pipeline": w.pipeline,
                    "baseline": w.baseline,
                    "target": w.target,
                    "tls": w.tls,
                    "contenders": entries,
                }
            )
    return {
        "schema": SCHEMA,
        "mode": mode,
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 1),
        "interrupted": interrupted,
        "revision": revision,
        "machine": machine_info(),
        "versions": {**package_versions(), **tool_versions},
        "settings": settings,
        "contenders": contenders,
        "skipped": skipped,
        "cases": cases,
    }


def write_results(results: dict[str, Any], results_dir: Path) -> Path:
    """A timestamped results file (not committed)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started"][:19].replace(":", "").replace("-", "")
    path = results_dir / f"{stamp}-{results['mode']}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def write_results_latest(results: dict[str, Any], results_dir: Path) -> Path:
    """bench/results/latest.json: the results behind docs/benchmarks.md (committed)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "latest.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


# --- reading the results ------------------------------------------------------------------


def baseline_of(results: dict[str, Any]) -> str | None:
    """The contender every ratio is relative to: uvloop Protocol when it ran."""
    ran = set(results["contenders"])
    for name in (BASELINE, *FALLBACK_BASELINES):
        if name in ran:
            return name
    return None


def case_baseline(case: dict[str, Any], baseline: str | None) -> str | None:
    """The contender ``case``'s ratios are relative to: its own, else the report's."""
    own: str | None = case.get("baseline")
    return own or baseline


def _entry(case: dict[str, Any], contender: str) -> dict[str, Any]:
    for e in case["contenders"]:
        if e["contender"] == contender:
            summary: dict[str, Any] = e["summary"]
            return summary
    return {}


def ratio(case: dict[str, Any], contender: str, baseline: str | None) -> float | None:
    if baseline is None:
        return None
    mine, ref = _entry(case, contender).get("median"), _entry(case, baseline).get("median")
    if mine is None or not ref:
        return None
    return float(mine) / float(ref)


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1024:
        return f"{v / 1024:.1f} KiB"
    return f"{v:.0f} B"


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f} µs"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Rows of (case, contender, value, min-max, p50, p99, vs baseline, cpu srv, cpu load).

    A case with a baseline of its own has its ratios relative to that one, marked ``*``
    (``own_baseline_note`` says which). A contender without a server for the case has no
    row.
    """
    baseline = baseline_of(results)
    rows: list[list[str]] = []
    for case in results["cases"]:
        first = True
        base = case_baseline(case, baseline)
        mark = "*" if case.get("baseline") and base != baseline else ""
        for contender in results["contenders"]:
            e = next((x for x in case["contenders"] if x["contender"] == contender), None)
            if e is None:
                continue
            s = e["summary"]
            label = case["title"] if first else ""
            first = False
            if not s or s.get("median") is None:
                why = e["errors"][-1] if e["errors"] else "not run"
                rows.append([label, contender, "failed" if e["errors"] else "-", why[:60]])
                continue
            memory = s["metric"] == "bytes_per_conn"
            fmt = fmt_bytes if memory else fmt_rate
            r = ratio(case, contender, base)
            srv_cpu, load_cpu = s.get("server_cpu"), s.get("load_cpu")
            rows.append(
                [
                    label,
                    contender,
                    fmt(s["median"]) + ("/conn" if memory else "/s"),
                    f"{fmt(s['min'])}-{fmt(s['max'])}" if s["runs"] > 1 else "(1 run)",
                    fmt_us(s.get("p50_us")) if not memory else "-",
                    fmt_us(s.get("p99_us")) if not memory else "-",
                    f"{r:.2f}x{mark}" if r is not None else "-",
                    "-" if srv_cpu is None else f"{srv_cpu:.2f}",
                    "-" if load_cpu is None else f"{load_cpu:.2f}",
                ]
            )
    return rows


def table_header(results: dict[str, Any]) -> list[str]:
    baseline = baseline_of(results) or "baseline"
    return [
        "workload",
        "contender",
        "throughput",
        "min-max",
        "p50",
        "p99",
        f"vs {baseline}",
        "cpu srv",
        "cpu load",
    ]


def own_baseline_note(results: dict[str, Any]) -> list[str]:
    """What the ``*`` ratios are relative to, and how they stand against their target.

    For each case with a baseline of its own (the blocking-style RESP workload's is
    asyncio Streams): netpoll's ratio to it (and netpoll-pure's), next to the target. A
    heading line and one ``* ...`` line per case; nothing when no case has its own.
    """
    baseline = baseline_of(results)
    lines = []
    for case in results["cases"]:
        own = case.get("baseline")
        if not own or own == baseline:
            continue
        parts = []
        for contender in ("netpoll", "netpoll-pure"):
            r = ratio(case, contender, own)
            if r is not None:
                parts.append(f"{contender} / {own} {r:.2f}x")
        if not parts:
            parts.append(f"netpoll / {own}: not measured")
        target = case.get("target")
        if target:
            parts.append(f"target >= {target:g}x")
        lines.append(f"* {case['title']}: " + ", ".join(parts) + ".")
    if not lines:
        return []
    head = "Ratios marked * are relative to the workload's own baseline" + (
        f", not to {baseline} (which has no server for it):" if baseline else ":"
    )
    return [head, *lines]


CPU_LEGEND: Final = (
    "`cpu srv` is the share of its core the server used during the measured run and "
    "`cpu load` the load generator's (measured for the C load generator only; `-` for "
    "wrk and redis-benchmark): the server's should be near 1.00 and the load "
    "generator's below it, or the load generator was the bottleneck."
)


def format_terminal_table(results: dict[str, Any]) -> str:
    header = table_header(results)
    rows = table_rows(results)
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row[: 2 if len(row) == 4 else len(header)]):
            widths[i] = max(widths[i], len(cell))
    right = {2, 3, 4, 5, 6, 7, 8}

    def line(cells: list[str]) -> str:
        if len(cells) == 4 and cells[2] in ("failed", "-"):  # an error row
            return "  ".join(
                [cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2], cells[3]]
            ).rstrip()
        padded = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if row[0] and previous is not None:
            out.append("")
        out.append(line(row))
        previous = row
    return "\n".join(out)


def format_markdown_table(results: dict[str, Any]) -> str:
    header = table_header(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table_rows(results):
        if len(row) == 4:
            row = [row[0], row[1], row[2], row[3].replace("|", "/"), "", "", "", "", ""]
        cells = [row[0] and f"**{row[0]}**", *row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- chart --------------------------------------------------------------------------------


def write_chart(results: dict[str, Any], path: Path) -> str | None:
    """Grouped bars per case, normalized to the baseline; None, or why there is no chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart written"
    baseline = baseline_of(results)
    contenders = results["contenders"]
    rate_cases = [c for c in results["cases"] if c["tool"] != "idle"]
    mem_cases = [c for c in results["cases"] if c["tool"] == "idle"]
    panels = int(bool(rate_cases)) + int(bool(mem_cases))
    if not panels:
        return "nothing to chart"
    width_ratios = [max(len(rate_cases), 1) * 1.0, 1.6][:panels] if panels == 2 else [1.0]
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(max(8.0, 1.05 * len(rate_cases) + 4.0), 6.2),
        gridspec_kw={"width_ratios": width_ratios},
        squeeze=False,
    )
    bar_w = 0.8 / max(len(contenders), 1)

    def bars(ax: Any, cases: list[dict[str, Any]], normalize: bool, scale: float) -> None:
        for i, contender in enumerate(contenders):
            xs, heights, lows, highs = [], [], [], []
            for j, case in enumerate(cases):
                s = _entry(case, contender)
                base = case_baseline(case, baseline)
                ref = _entry(case, base).get("median") if (normalize and base) else None
                if s.get("median") is None or (normalize and not ref):
                    continue
                div = float(ref) if normalize and ref else scale
                xs.append(j + (i - (len(contenders) - 1) / 2) * bar_w)
                heights.append(s["median"] / div)
                lows.append((s["median"] - s["min"]) / div)
                highs.append((s["max"] - s["median"]) / div)
            if xs:
                drawn = ax.bar(
                    xs,
                    heights,
                    bar_w * 0.95,
                    yerr=[lows, highs],
                    capsize=2,
                    label=contender,
                    color=CONTENDER_COLOURS.get(contender),
                    edgecolor="black",
                    linewidth=0.4,
                    error_kw={"elinewidth": 0.8},
                )
                if not normalize:
                    ax.bar_label(drawn, labels=[f"{h:.1f}" for h in heights], fontsize=7, padding=3)
                elif contender == "netpoll" and contender != baseline:
                    ax.bar_label(drawn, labels=[f"{h:.2f}" for h in heights], fontsize=7, padding=2)
        ax.set_xticks(range(len(cases)))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    ax = axes[0][0]
    if rate_cases:
        normalize = baseline is not None
        bars(ax, rate_cases, normalize, 1.0)
        labels = []
        for case in rate_cases:
            base = case_baseline(case, baseline)
            ref = _entry(case, base).get("median") if normalize and base else None
            extra = f"\n({fmt_rate(ref)}/s)" if ref else ""
            if ref and base != baseline:
                extra += f"\nvs {base}"
            labels.append(case["title"].replace(", ", "\n").replace(" -P", "\n-P") + extra)
        ax.set_xticklabels(labels, fontsize=7)
        if normalize:
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_ylabel(f"throughput relative to {baseline} (higher is better)")
        else:
            ax.set_ylabel("requests per second")
        ax.set_title("Throughput (median of runs; error bars: min-max)", fontsize=10)
    if mem_cases:
        mx = axes[0][panels - 1]
        bars(mx, mem_cases, False, 1024.0)
        mx.set_xticklabels([c["title"] for c in mem_cases], fontsize=8)
        mx.set_ylabel("server RSS per idle connection, KiB (lower is better)")
        mx.set_title("Memory", fontsize=10)
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=CONTENDER_COLOURS.get(c, "white"), edgecolor="black", label=c)
        for c in contenders
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=len(contenders),
        fontsize=8.5,
        bbox_to_anchor=(0.5, 0.955),
        frameon=False,
    )
    machine = results["machine"]
    fig.suptitle(
        f"netpoll benchmark ({results['mode']}): {machine['cpu']}, "
        f"Python {machine['python']}, server on 1 core",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --- docs ---------------------------------------------------------------------------------


def format_docs(results: dict[str, Any], chart_name: str | None) -> str:
    m = results["machine"]
    v = results["versions"]
    s = results["settings"]
    baseline = baseline_of(results) or "the baseline"
    tools = ", ".join(v[name] for name in ("wrk", "redis-benchmark", "gcc") if name in v)
    libs = ", ".join(f"{name} {v[name]}" for name in ("netpoll", "uvloop") if name in v)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench` (bench/report.py); edit the generator, not this "
        "file. -->",
        "",
        f"Latest run: {results['started']} ({results['mode']} mode, "
        f"{s['runs']} run{'s' if s['runs'] != 1 else ''} per configuration, "
        f"{format_minutes(results['elapsed_s'])}), revision `{results.get('revision') or '?'}`"
        + (" (interrupted: partial results)" if results.get("interrupted") else "")
        + ".",
        "",
        "```",
        results["command"],
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m['cores']} cores); server pinned to core {s['server_cpu']}, "
        f"load generator to core {s['load_cpu']}",
        f"- Python {m['python']} ({m['python_implementation']}), {m['kernel']}",
    ]
    if libs:
        lines.append(f"- Libraries: {libs}")
    if tools:
        lines.append(f"- Load tools: {tools}")
    lines += ["", "## Results", ""]
    headline = format_headline(results)
    if headline:
        lines += [headline, ""]
    if chart_name:
        lines += [f"![throughput relative to {baseline}, and memory]({chart_name})", ""]
    lines += [
        format_markdown_table(results),
        "",
        f"Throughput is the median of the runs, with the lowest and highest run beside it; "
        f"p50 and p99 are medians of the runs' latency percentiles; `vs {baseline}` divides "
        "by that contender's median (for memory, lower is better). " + CPU_LEGEND,
        "",
    ]
    own = own_baseline_note(results)
    if own:
        lines += [own[0], "", *own[1:], ""]
    tls_note = tls_cpu_note(results)
    if tls_note:
        lines += [*tls_note, ""]
    note = saturation_note(results)
    if note:
        lines += [note, ""]
    if results.get("skipped"):
        lines += ["Skipped:", ""]
        lines += [f"- {k}: {why}" for k, why in results["skipped"].items()]
        lines.append("")
    lines += [
        "## Method",
        "",
        "- Contenders: `netpoll` (this library, its public API only), asyncio with "
        "`Protocol` and with Streams, uvloop with `Protocol` and with Streams, and `epoll`, "
        "a single-threaded level-triggered `select.epoll` loop over non-blocking sockets "
        "(the pure-Python floor). All of them call the same request logic "
        "(`bench/protocols.py`); only the networking layer differs. Three reference floors, "
        "`floor-api`, `floor-api-safe` and `floor-api-owned` (`bench/reference/floors.py`: "
        "netpoll's handlers on a bare epoll loop, without the locking and view revocation "
        "the contract needs, with them as netpoll does them, and with them done more "
        "cheaply), "
        "run only when named with `--contenders`; see docs/performance.md.",
        "- Each server is its own process (`python -m bench.server`) on core "
        f"{s['server_cpu']}; the load comes from core {s['load_cpu']}, bound to 127.0.0.1.",
        "- Echo and frames: the C closed-loop load generator `bench/loadgen.c` (one thread, "
        "epoll; each connection sends a request and waits for the whole reply, checking its "
        f"bytes). {s['warmup']:g} s warm-up, then {s['duration']:g} s measured.",
        f"- HTTP: `wrk -t1 -c50 -d{s['duration']:g}s --latency` after a {s['warmup']:g} s "
        "wrk warm-up; percentiles from wrk's own histogram (`bench/wrk_report.lua`).",
        "- RESP: `redis-benchmark -c 50 -t ping,set,get` with and without `-P 16`; a "
        "warm-up of PINGs sizes `-n` so that each test takes about "
        f"{s['redis_test_seconds']:g} s.",
        "- TLS: the echo and HTTP logic behind each contender's TLS layer, all with one "
        "`ssl.create_default_context(Purpose.CLIENT_AUTH)` and one self-signed P-256 "
        "certificate (`bench/build/tls/`); netpoll's TLS listener (both builds) against "
        "asyncio's and uvloop's `Protocol` servers (`create_server(ssl=...)`). HTTPS is "
        "`wrk -t1 -c50` against `https://`; TLS echo is `bench/loadgen.c --tls 1` (OpenSSL, "
        "TLS 1.3, handshakes done before the measured phase); idle TLS memory is the "
        "server's RSS growth per connection whose handshake is complete. uvloop's TLS echo "
        "depends on glibc's allocator: with its defaults uvloop maps and unmaps a buffer on "
        "every read; with `MALLOC_TOP_PAD_=4194304` it does not, and is faster than netpoll "
        '(docs/performance.md, "TLS", has both runs and the command).',
        "- RESP, blocking-style parser: `redis-benchmark -c 50 -t set,get` (warm-up of SETs "
        "and GETs) against servers that read each command field by field, as a newcomer "
        "writes them: netpoll with `read_line` / `read_binary` / `skip` "
        "(`bench/handlers.py`), asyncio and uvloop Streams with `readline` / `readexactly` "
        "(`bench/server.py`); the same command logic as the RESP rows. Only those "
        "contenders serve it, and its ratios are relative to asyncio Streams.",
        "- Memory: the server's RSS (`/proc/PID/status` VmRSS) before and after opening "
        f"{s.get('idle_conns', 10000):,} idle connections, divided by their number.",
        "- Allocator: servers run with the environment the benchmark was started with. On "
        "glibc, asyncio's receive path (a fresh 256 KiB buffer per read, then shrunk) can "
        "make the heap grow and shrink on every read; `MALLOC_TOP_PAD_=4194304 python -m "
        "bench` removes that cost for the asyncio contenders (measured here: asyncio echo "
        "about 4x faster). Settings of this run: "
        + (", ".join(f"`{k}={v}`" for k, v in s.get("env", {}).items()) or "none")
        + ".",
        "- Order: for each repetition, every workload with every contender in turn, so slow "
        "drift of the machine affects all contenders alike. Every server is killed after "
        "its configuration.",
        "",
        "Reproduce: `scripts/demo.sh` (quick mode) or, in the project's virtualenv, "
        "`python -m bench` (full mode, which rewrites this page, `docs/benchmarks.png` and "
        "`bench/results/latest.json`).",
        "",
    ]
    return "\n".join(lines)


def format_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def write_docs(results: dict[str, Any], docs_dir: Path, chart: Path | None) -> Path:
    path = docs_dir / "benchmarks.md"
    name = None
    if chart is not None and chart.exists():
        name = os.path.relpath(chart, docs_dir)
    text = format_docs(results, name)
    from bench.workers import load_section  # the netpoll.run section, from its own run

    section = load_section()
    if section is not None:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path


def geomean_ratios(results: dict[str, Any], tls: bool = False) -> dict[str, tuple[float, int]]:
    """Per contender: geometric mean of its throughput ratios to the baseline, and count,
    over the plaintext workloads (``tls``: over the TLS ones instead)."""
    import math

    baseline = baseline_of(results)
    out: dict[str, tuple[float, int]] = {}
    if baseline is None:
        return out
    for contender in results["contenders"]:
        logs = []
        for case in results["cases"]:
            if case["tool"] == "idle" or case_baseline(case, baseline) != baseline:
                continue  # memory, or a case measured against its own baseline
            if bool(case.get("tls")) != tls:
                continue
            r = ratio(case, contender, baseline)
            if r:
                logs.append(math.log(r))
        if logs:
            out[contender] = (math.exp(sum(logs) / len(logs)), len(logs))
    return out


def saturation_note(results: dict[str, Any]) -> str:
    """A warning when servers did not keep their core busy (a busy machine, or a slow tool)."""
    low = []
    for case in results["cases"]:
        if case["conns"] == 1:
            continue  # one connection is latency-bound: an idle server core is expected
        for e in case["contenders"]:
            cpu = e["summary"].get("server_cpu")
            if cpu is not None and cpu < 0.8:
                low.append(f"{e['contender']} / {case['title']}")
    if not low:
        return ""
    busy = results["settings"].get("cpu_busy_before")
    before = f" (the machine was {busy:.0%} busy before the run)" if busy else ""
    return (
        f"Note: in {len(low)} row{'s' if len(low) != 1 else ''} the server used less than 80% "
        "of its core, so something else limited it: other processes on the machine"
        f"{before}, the load tool, or latency (e.g. one connection). Treat those figures "
        "as lower bounds."
    )


def format_headline(results: dict[str, Any]) -> str:
    baseline = baseline_of(results)
    if baseline is None:
        return ""
    out = []
    for tls in (False, True):
        means = geomean_ratios(results, tls)
        if not means:
            continue
        parts = [f"{c} {m:.2f}x" for c, (m, _n) in means.items() if c != baseline]
        count = max(n for _m, n in means.values())
        out.append(
            f"Throughput relative to {baseline}, geometric mean over {count} "
            f"{'TLS ' if tls else ''}workload{'s' if count != 1 else ''}: " + ", ".join(parts) + "."
        )
    return "\n\n".join(out)


def tls_cpu_note(results: dict[str, Any]) -> list[str]:
    """Server CPU per request on the TLS rows: where the load tool limits the rate (wrk's
    own TLS on one core), this, not the rate, compares the servers."""
    rows = []
    for case in results["cases"]:
        if not case.get("tls") or case["tool"] == "idle":
            continue
        parts = []
        for e in case["contenders"]:
            summary = e["summary"]
            rps = summary.get("median") if summary.get("metric") == "rps" else None
            cpu = summary.get("server_cpu")
            if rps and cpu:
                parts.append(f"{e['contender']} {cpu / rps * 1e6:.1f} µs")
        if parts:
            rows.append(f"- {case['title']}: " + ", ".join(parts))
    if not rows:
        return []
    return [
        "Server CPU per request on the TLS rows (the server's share of its core divided by "
        "its rate): where a server does not fill its core, the load tool's own TLS is the "
        "limit, and this figure, not the rate, compares the servers.",
        "",
        *rows,
    ]


def print_summary(results: dict[str, Any], stream: Any = None) -> None:
    stream = stream or sys.stdout
    m = results["machine"]
    print(
        f"\nnetpoll benchmark, {results['mode']} mode: {m['cpu']}, Python {m['python']}, "
        f"{m['kernel']}",
        file=stream,
    )
    print(format_terminal_table(results), file=stream)
    print("\n" + CPU_LEGEND.replace("`", ""), file=stream)
    for extra in (
        format_headline(results),
        "\n".join(own_baseline_note(results)),
        saturation_note(results),
    ):
        if extra:
            print("\n" + extra, file=stream)
