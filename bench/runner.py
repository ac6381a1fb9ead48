"""Running the benchmark: server processes, load tools, measurement and progress.

Every server and every load tool runs in its own process group, registered here, so that
whatever happens (an error, Ctrl-C, SIGTERM) ``ProcessRegistry.kill_all`` leaves nothing
behind. Servers are pinned to one core and load tools to another with ``taskset``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench._net import HOST
from bench.server import serves
from bench.tools import (
    BUILD_DIR,
    INSTALL_HINTS,
    WRK_SCRIPT,
    Toolbox,
    ToolError,
    parse_loadgen_output,
    parse_redis_csv,
    parse_stat_cpu_ticks,
    parse_status_rss_kb,
    parse_wrk_output,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = BUILD_DIR / "logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REDIS_TESTS = ("PING_INLINE", "PING_MBULK", "SET", "GET")


@dataclass(frozen=True)
class Workload:
    """One load configuration; ``server`` names the server-side logic it needs.

    ``redis_tests`` are the redis-benchmark tests a ``redis`` workload measures (its CSV
    names). ``baseline``, when set, is the contender this workload's ratios are relative
    to instead of the report's overall one (a workload uvloop's Protocol does not serve,
    for one), and ``target`` the netpoll / ``baseline`` throughput ratio it aims at.
    ``tls`` workloads run the same server logic behind each contender's TLS layer (one
    certificate and ``SSLContext`` for all) and a TLS client in the load tool.
    """

    name: str
    title: str
    server: str  # echo | frames | http | resp | resp-lines
    tool: str  # loadgen | wrk | redis | idle
    conns: int
    size: int = 0
    pipeline: int = 1
    redis_tests: tuple[str, ...] = REDIS_TESTS
    baseline: str | None = None
    target: float | None = None
    tls: bool = False  # served over TLS (bench.server.TLS_CONTENDERS only)

    def cases(self) -> list[tuple[str, str]]:
        """(case key, title) of every result row this workload produces."""
        if self.tool == "redis":
            # "RESP, 50 conns" -> "RESP GET, 50 conns"; "RESP -P 16, ..." -> "RESP GET -P 16, ..."
            head, _, rest = self.title.partition(",")
            name, _, extra = head.partition(" ")
            return [
                (f"{self.name}:{t}", f"{name} {t}{' ' + extra if extra else ''},{rest}")
                for t in self.redis_tests
            ]
        return [(self.name, self.title)]

    def redis_commands(self) -> str:
        """The ``-t`` argument of redis-benchmark for ``redis_tests`` ("ping,set,get")."""
        # Both PING tests (PING_INLINE, PING_MBULK) come from one "-t ping".
        return ",".join(dict.fromkeys(t.split("_")[0].lower() for t in self.redis_tests))

    def serves(self, contender: str) -> bool:
        """Whether ``contender`` has a server for this workload (see bench.server.ONLY_FOR)."""
        return serves(contender, self.server, self.tls)


def standard_workloads(idle_conns: int, tls_idle_conns: int = 2000) -> list[Workload]:
    return [
        Workload("echo-128-c1", "echo 128 B, 1 conn", "echo", "loadgen", 1, 128),
        Workload("echo-128-c50", "echo 128 B, 50 conns", "echo", "loadgen", 50, 128),
        Workload("echo-4k-c50", "echo 4 KiB, 50 conns", "echo", "loadgen", 50, 4096),
        Workload("frames-128-c50", "frames 128 B, 50 conns", "frames", "loadgen", 50, 128),
        Workload("frames-64k-c10", "frames 64 KiB, 10 conns", "frames", "loadgen", 10, 65536),
        Workload("http-c50", "HTTP wrk, 50 conns", "http", "wrk", 50),
        Workload("resp-c50", "RESP, 50 conns", "resp", "redis", 50),
        Workload("resp-p16-c50", "RESP -P 16, 50 conns", "resp", "redis", 50, pipeline=16),
        # The blocking-style API against asyncio's: each server reads a command field by
        # field (netpoll: read_line/read_binary; Streams: readline/readexactly).
        Workload(
            "resp-lines-c50",
            "RESP, blocking-style parser, 50 conns",
            "resp-lines",
            "redis",
            50,
            redis_tests=("SET", "GET"),
            baseline="asyncio-streams",
            target=1.5,
        ),
        Workload("idle", f"{idle_conns:,} idle conns", "echo", "idle", idle_conns),
        # TLS: the same logic behind each contender's TLS layer (TLS 1.3, OpenSSL's default
        # cipher); netpoll (both builds) against the asyncio and uvloop Protocol servers.
        Workload("https-c50", "HTTPS wrk, 50 conns", "http", "wrk", 50, tls=True),
        Workload(
            "tls-echo-128-c50", "TLS echo 128 B, 50 conns", "echo", "loadgen", 50, 128, tls=True
        ),
        Workload(
            "tls-echo-64k-c10", "TLS echo 64 KiB, 10 conns", "echo", "loadgen", 10, 65536, tls=True
        ),
        Workload(
            "tls-idle",
            f"{tls_idle_conns:,} idle TLS conns",
            "echo",
            "idle",
            tls_idle_conns,
            tls=True,
        ),
    ]


@dataclass(frozen=True)
class Settings:
    warmup: float = 1.0  # seconds of unmeasured load before each measurement
    duration: float = 4.0  # measured seconds per run (loadgen, wrk)
    redis_test_seconds: float = 1.5  # target measured seconds per redis-benchmark test
    runs: int = 3
    server_cpu: int = 0
    load_cpu: int = 1
    server_python: str = sys.executable
    # The interpreter of the netpoll-pure contender: a venv holding the pure build.
    pure_python: str = os.environ.get("NETPOLL_BENCH_PURE_PYTHON") or (
        ".venv-pure/bin/python" if os.path.exists(".venv-pure/bin/python") else sys.executable
    )

    def python_for(self, contender: str) -> str:
        """The interpreter that runs ``contender``'s server."""
        return self.pure_python if contender == "netpoll-pure" else self.server_python


# --- processes ----------------------------------------------------------------------------


class ProcessRegistry:
    """Every child process group this benchmark started and has not reaped yet."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[Any]] = {}

    def spawn(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
        self._procs[proc.pid] = proc
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap."""
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            # The leader may be gone while others in its group live on: kill the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._procs.pop(proc.pid, None)

    def kill_all(self) -> None:
        for proc in list(self._procs.values()):
            self.stop(proc, grace=0.5)


REGISTRY = ProcessRegistry()


def pinned(cpu: int | None, cmd: Sequence[str], tools: Toolbox) -> list[str]:
    if cpu is None or tools.taskset is None:
        return list(cmd)
    return [tools.taskset, "-c", str(cpu), *cmd]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@functools.cache
def imports_netpoll(python: str) -> bool:
    """Whether ``python`` imports netpoll by itself, from a build installed in its
    environment (an editable install counts: it maps the package to ``src/``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run(
            [python, "-c", "import netpoll"],
            capture_output=True,
            timeout=60,
            cwd=REPO_ROOT / "bench",  # not the repository root, nor src/: nothing to find
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def child_env(python: str) -> dict[str, str]:
    """The environment of a server run by ``python``: ``bench`` importable, and netpoll
    from ``src/`` only when that interpreter has no build of its own. (Put first on the
    path, ``src/`` would shadow an installed build: a venv with the compiled build
    installed, as scripts/demo.sh makes it, would serve the pure sources.)"""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if not imports_netpoll(python):
        paths.insert(0, str(REPO_ROOT / "src"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class Server:
    """A benchmark server subprocess: started and ready in ``__enter__``, gone after exit."""

    def __init__(
        self,
        contender: str,
        workload: str,
        settings: Settings,
        tools: Toolbox,
        log_name: str,
        tls: bool = False,
    ) -> None:
        self.contender = contender
        self.workload = workload
        self.tls = tls
        self.settings = settings
        self.tools = tools
        self.port = free_port()
        self.log_path = LOG_DIR / f"{log_name}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def __enter__(self) -> Server:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.settings.python_for(self.contender),
            "-m",
            "bench.server",
            "--contender",
            self.contender,
            "--workload",
            self.workload,
            "--port",
            str(self.port),
        ]
        if self.tls:
            files = self.tools.ensure_tls_files()
            if files is None:
                raise ToolError(self.tools.tls_files_error or "no TLS certificate")
            cmd += ["--tls-cert", str(files[0]), "--tls-key", str(files[1])]
        with open(self.log_path, "wb") as log:
            self.proc = REGISTRY.spawn(
                pinned(self.settings.server_cpu, cmd, self.tools),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=child_env(self.settings.python_for(self.contender)),
            )
        try:
            self._wait_ready(timeout=30.0)
        except BaseException:
            REGISTRY.stop(self.proc)
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    line = self.proc.stdout.readline()
                    if line.startswith(b"READY"):
                        return
                    if not line:
                        break
                elif self.proc.poll() is not None:
                    break
        self.proc.poll()
        detail = tail(self.log_path) or "no output"
        if self.proc.returncode is not None:
            raise ToolError(f"server exited with status {self.proc.returncode}: {detail}")
        raise ToolError(f"server not ready after {timeout:.0f} s: {detail}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            REGISTRY.stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            return parse_stat_cpu_ticks(f.read()) / CLK_TCK

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            return parse_status_rss_kb(f.read())

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def run_tool(cmd: Sequence[str], timeout: float) -> str:
    """Run a load tool to completion in its own process group; its stdout."""
    proc = REGISTRY.spawn(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    finally:
        REGISTRY.stop(proc)
    text: str = out.decode(errors="replace")
    if proc.returncode != 0 and not text.strip():
        message = err.decode(errors="replace").strip().splitlines()
        raise ToolError(
            f"{Path(cmd[0]).name} exited with status {proc.returncode}: "
            f"{message[-1] if message else 'no output'}"
        )
    return text


@contextlib.contextmanager
def cpu_window(server: Server) -> Iterator[dict[str, float]]:
    """Measures the share of a core the server used while the block ran."""
    box: dict[str, float] = {}
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    yield box
    if server.alive():
        box["server_cpu"] = round((server.cpu_seconds() - cpu0) / (time.monotonic() - t0), 3)


# --- one measurement per tool -------------------------------------------------------------


def measure_loadgen(server: Server, w: Workload, s: Settings, tools: Toolbox) -> dict[str, Any]:
    assert tools.loadgen is not None
    cmd = [
        str(tools.loadgen),
        "--mode",
        w.server,
        "--port",
        str(server.port),
        "--conns",
        str(w.conns),
        "--size",
        str(w.size),
        "--warmup",
        str(s.warmup),
        "--duration",
        str(s.duration),
        "--tls",
        str(int(w.tls)),
    ]
    with cpu_window(server) as cpu:
        text = run_tool(pinned(s.load_cpu, cmd, tools), timeout=s.warmup + s.duration + 30)
    data = parse_loadgen_output(text)
    keys = ("rps", "p50_us", "p99_us", "p999_us", "mean_us", "requests")
    result: dict[str, Any] = {k: data[k] for k in keys}
    result["load_cpu"] = data.get("cpu_frac")
    result.update(cpu)
    return result


def measure_wrk(server: Server, w: Workload, s: Settings, tools: Toolbox) -> dict[str, Any]:
    assert tools.wrk is not None
    url = f"{'https' if w.tls else 'http'}://{HOST}:{server.port}/"
    base = [tools.wrk, "-t1", f"-c{w.conns}"]
    if s.warmup > 0:
        run_tool(pinned(s.load_cpu, [*base, f"-d{s.warmup:g}s", url], tools), s.warmup + 30)
    cmd = [*base, f"-d{s.duration:g}s", "--latency", "-s", str(WRK_SCRIPT), url]
    with cpu_window(server) as cpu:
        text = run_tool(pinned(s.load_cpu, cmd, tools), timeout=s.duration + 30)
    data = parse_wrk_output(text)
    if data.get("errors"):
        raise ToolError(f"wrk saw {data['errors']} socket errors or non-2xx responses")
    result: dict[str, Any] = {
        k: data[k] for k in ("rps", "p50_us", "p99_us", "p999_us") if k in data
    }
    result.update(cpu)
    return result


def measure_redis(
    server: Server, w: Workload, s: Settings, tools: Toolbox
) -> dict[str, dict[str, Any]]:
    """One measurement per redis-benchmark test, keyed by case."""
    assert tools.redis_benchmark is not None
    base = [tools.redis_benchmark, "-h", HOST, "-p", str(server.port), "-c", str(w.conns)]
    if w.pipeline > 1:
        base += ["-P", str(w.pipeline)]
    commands = w.redis_commands()
    # Warm-up with a fixed count of PINGs (of the measured commands when the workload
    # measures no PING, so that the rate is theirs); its rate sizes the measured runs (-n),
    # so each test takes about redis_test_seconds whatever the server's speed.
    warm_commands = "ping" if "ping" in commands.split(",") else commands
    warm_n = (40_000 if w.pipeline > 1 else 10_000) if s.warmup > 0 else 2_000 * w.pipeline
    warm_cmd = [*base, "-t", warm_commands, "-n", str(warm_n), "--csv"]
    warm = parse_redis_csv(run_tool(pinned(s.load_cpu, warm_cmd, tools), 60))
    rate = max(v["rps"] for v in warm.values())
    n = int(min(max(rate * s.redis_test_seconds, 5_000), 20_000_000))
    cmd = [*base, "-t", commands, "-n", str(n), "--csv"]
    # Bounded by count (-n) and, should the server crawl, by time.
    timeout = len(w.redis_tests) * s.redis_test_seconds * 10 + 60
    with cpu_window(server) as cpu:
        tests = parse_redis_csv(run_tool(pinned(s.load_cpu, cmd, tools), timeout))
    out: dict[str, dict[str, Any]] = {}
    for test in w.redis_tests:
        if test not in tests:
            raise ToolError(f"redis-benchmark printed no {test} result")
        entry: dict[str, Any] = {
            k: tests[test][k] for k in ("rps", "p50_us", "p99_us") if k in tests[test]
        }
        entry["requests"] = n
        entry.update(cpu)
        out[f"{w.name}:{test}"] = entry
    return out


def measure_idle(server: Server, w: Workload, s: Settings, tools: Toolbox) -> dict[str, Any]:
    """Server RSS growth per connection while ``w.conns`` connections sit idle."""
    assert tools.loadgen is not None
    # Exercise the accept and request path once, so its first-use costs are not counted.
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    for _ in range(3):
        with socket.create_connection((HOST, server.port), timeout=5) as raw:
            sock = client_ctx.wrap_socket(raw) if w.tls else raw
            sock.sendall(b"warm-up")
            sock.recv(64)
    time.sleep(0.3)
    fds_before = server.open_fds()
    rss_before = server.rss_kb()
    cmd = [
        str(tools.loadgen),
        "--mode",
        "idle",
        "--port",
        str(server.port),
        "--conns",
        str(w.conns),
        "--hold",
        "120",
        "--tls",
        str(int(w.tls)),
    ]
    proc = REGISTRY.spawn(
        pinned(s.load_cpu, cmd, tools),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=90):
                raise ToolError("the idle-connection opener did not report within 90 s")
            line = proc.stdout.readline().decode(errors="replace")
        opened = parse_loadgen_output(line)
        deadline = time.monotonic() + 60
        while server.open_fds() < fds_before + w.conns:
            if not server.alive():
                raise ToolError(f"server died holding idle connections: {tail(server.log_path)}")
            if time.monotonic() > deadline:
                raise ToolError(
                    f"server accepted only {server.open_fds() - fds_before} of {w.conns} "
                    "connections within 60 s"
                )
            time.sleep(0.05)
        time.sleep(0.5)  # let deferred per-connection setup finish
        rss_after = server.rss_kb()
    finally:
        REGISTRY.stop(proc, grace=10)
    return {
        "bytes_per_conn": round((rss_after - rss_before) * 1024 / w.conns, 1),
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "conns": w.conns,
        "connect_s": opened.get("connect_s"),
    }


def measure(
    contender: str, w: Workload, s: Settings, tools: Toolbox, log_name: str
) -> dict[str, dict[str, Any]]:
    """Start a server, measure ``w`` once, stop the server; results keyed by case."""
    with Server(contender, w.server, s, tools, log_name, w.tls) as server:
        if w.tool == "loadgen":
            result = {w.name: measure_loadgen(server, w, s, tools)}
        elif w.tool == "wrk":
            result = {w.name: measure_wrk(server, w, s, tools)}
        elif w.tool == "redis":
            result = measure_redis(server, w, s, tools)
        elif w.tool == "idle":
            result = {w.name: measure_idle(server, w, s, tools)}
        else:
            raise ValueError(f"unknown tool {w.tool!r}")
        if not server.alive():
            raise ToolError(f"server died during the run: {tail(server.log_path)}")
    return result


def missing_tool(w: Workload, tools: Toolbox) -> str | None:
    """Why ``w`` cannot run here (one line saying what to install), or None."""
    if w.tls and tools.ensure_tls_files() is None:
        return tools.tls_files_error
    if w.tool in ("loadgen", "idle"):
        if tools.build_loadgen() is None:
            return tools.loadgen_error
        if w.tls and tools.loadgen_tls_error is not None:
            return tools.loadgen_tls_error
    elif w.tool == "wrk" and tools.wrk is None:
        return f"wrk not found: {INSTALL_HINTS['wrk']}"
    elif w.tool == "redis" and tools.redis_benchmark is None:
        return f"redis-benchmark not found: {INSTALL_HINTS['redis-benchmark']}"
    return None


def estimate_seconds(w: Workload, s: Settings) -> float:
    """A rough duration of one run, for the progress display."""
    startup = 0.8
    if w.tool in ("loadgen", "wrk"):
        return startup + s.warmup + s.duration + 0.2
    if w.tool == "redis":
        return startup + 1.0 + len(w.redis_tests) * s.redis_test_seconds * 1.3
    return startup + 2.0 + w.conns / (800 if w.tls else 4000)  # TLS: a handshake each


def check_contender(contender: str, s: Settings) -> str | None:
    """Why ``contender`` cannot run here, or None (asks a server subprocess)."""
    cmd = [s.python_for(contender), "-m", "bench.server", "--check", "--contender", contender]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env=child_env(s.python_for(contender)),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot start {s.python_for(contender)}: {exc}"
    if proc.returncode == 0:
        return None
    lines = (proc.stdout.strip() or proc.stderr.strip() or "check failed").splitlines()
    return lines[-1]


def cpu_busy_fraction(interval: float = 0.5) -> float | None:
    """Share of all CPU time spent busy over ``interval`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else round(1 - (idle1 - idle0) / total, 3)


# --- progress -----------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    total_estimate: float
    total_items: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done_items: int = 0
    done_estimate: float = 0.0
    started: float = field(default_factory=time.monotonic)
    _width: int = 0

    @property
    def interactive(self) -> bool:
        return self.stream.isatty()

    def show(self, text: str) -> None:
        if self.interactive:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A message that stays (printed above the status line)."""
        if self.interactive and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, contender: str, w: Workload, run: int, runs: int) -> None:
        elapsed = time.monotonic() - self.started
        remaining = self.total_estimate - self.done_estimate
        if self.done_estimate > 0:
            remaining *= elapsed / self.done_estimate  # correct the estimate by experience
        self.show(
            f"[{self.done_items + 1}/{self.total_items}] {contender:<16} {w.name:<15} "
            f"run {run}/{runs}  elapsed {format_seconds(elapsed)}, "
            f"~{format_seconds(remaining)} left"
        )

    def finish(self, estimate: float) -> None:
        self.done_items += 1
        self.done_estimate += estimate

    def close(self) -> None:
        if self.interactive and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


# --- the whole run ------------------------------------------------------------------------


@dataclass
class RunOutcome:
    measurements: dict[tuple[str, str], list[dict[str, Any]]]  # (case, contender) -> runs
    errors: dict[tuple[str, str], list[str]]
    interrupted: bool
    elapsed_s: float


def run_all(
    contenders: list[str],
    workloads: list[Workload],
    settings: Settings,
    tools: Toolbox,
    progress: Progress | None = None,
) -> RunOutcome:
    """Every (workload, contender) ``settings.runs`` times, run-major so drift hits all.

    A contender without a server for a workload (``Workload.serves``) is left out of it.
    """
    plan = [
        (run, w, c)
        for run in range(1, settings.runs + 1)
        for w in workloads
        for c in contenders
        if w.serves(c)
    ]
    total = sum(estimate_seconds(w, settings) for _, w, _ in plan)
    if progress is None:
        progress = Progress(total_estimate=total, total_items=len(plan))
    measurements: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    started = time.monotonic()
    interrupted = False
    try:
        for run, w, contender in plan:
            progress.start(contender, w, run, settings.runs)
            try:
                results = measure(contender, w, settings, tools, f"{contender}-{w.name}")
            except (ToolError, OSError, ValueError, json.JSONDecodeError) as exc:
                for case, _title in w.cases():
                    errors.setdefault((case, contender), []).append(str(exc))
                progress.note(f"  {contender} / {w.name} run {run}: {exc}")
            else:
                for case, result in results.items():
                    result["run"] = run
                    measurements.setdefault((case, contender), []).append(result)
            progress.finish(estimate_seconds(w, settings))
    except KeyboardInterrupt:
        interrupted = True
        progress.note("interrupted: stopping servers and load generators")
    finally:
        REGISTRY.kill_all()
        progress.close()
    return RunOutcome(measurements, errors, interrupted, time.monotonic() - started)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, handler)
    # Even when started with SIGINT ignored (a background job of a script), Ctrl-C stops.
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
