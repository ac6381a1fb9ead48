"""Harness for the hostile-client suite: live servers, well-behaved clients, measurements.

- ``LiveServer``: an ``EventLoop`` serving in a thread of the test process.
- ``ServerProcess``: an ``EventLoop`` in a child process (``_serverproc.py``) with its own
  descriptor limit; it answers ``stats`` / ``shutdown`` commands on stdin.
- ``Canaries``: well-behaved clients doing request/response round trips while a hostile
  case runs; they check every byte and record their worst stall.
- ``usage()``/``cpu_seconds()``: descriptors, RSS and CPU time of a process, from /proc.
- ``Case``: one hostile case: canaries alongside, a baseline before, the common checks
  after (descriptors, RSS beyond the block pool, live heap blocks, Connection objects).
- ``record()``: merges a case's figures into the JSON file named by
  ``NETPOLL_RELIABILITY_JSON`` (``python tools/soak.py table FILE`` prints them as the
  rows of docs/reliability.md).

Nothing here sleeps to synchronise: waits are on Events, queues or a predicate polled
until a deadline (``wait_for``), and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netpoll

# One frame echo handler for both kinds of server (in-process and _serverproc.py).
from ._serverproc import frame_echo as frame_echo

ROOT = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = Path(__file__).resolve().with_name("_serverproc.py")
FIGURES_ENV = "NETPOLL_RELIABILITY_JSON"
MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
IO_TIMEOUT = 5.0  # the longest a single client socket operation may block
MAX_STALL = 1.0  # the bound on a well-behaved client's worst round trip during a case
# How long the heap-block check waits for idle slow-pool threads to exit (IDLE_EXIT, 10 s)
BLOCKS_SETTLE = 13.0

# --------------------------------------------------------------------------- /proc


def fd_count(pid: int | None = None) -> int:
    """Open descriptors of a process (this one by default)."""
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")  # pragma: no cover


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid or 'self'}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def pool_bytes() -> int:
    """Bytes parked in this process's LinkBuffer block pool (bounded per size class)."""
    from netpoll._linkbuffer import POOL

    return POOL.pooled_bytes()


def mib(n: float) -> float:
    return round(n / MiB, 1)


@dataclass(frozen=True)
class Usage:
    """Descriptors, RSS, the block pool's share of it, and live Python heap blocks."""

    fds: int
    rss: int
    pool: int = 0
    blocks: int = 0  # sys.getallocatedblocks() after a collection: objects alive

    @property
    def rss_mib(self) -> float:
        return mib(self.rss)

    def growth_beyond_pool(self, before: Usage) -> int:
        """RSS growth since ``before`` not explained by blocks parked in the pool.

        The pool keeps up to 16 MiB per block size for reuse by design; anything else
        that stays resident after the connections are gone counts against the case.
        """
        return (self.rss - before.rss) - max(0, self.pool - before.pool)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


def trim_heap() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``), so RSS shows live memory
    rather than what the allocator happens to keep cached in its arenas."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def heap_blocks() -> int:
    """Python heap blocks allocated in this process after a full collection."""
    gc.collect()
    return sys.getallocatedblocks()


def usage(pid: int | None = None, stats: dict[str, Any] | None = None) -> Usage:
    """This process's usage, or another one's (pool and heap blocks from its ``stats``)."""
    if pid is None:
        blocks = heap_blocks()
        trim_heap()
        return Usage(fd_count(), rss_bytes(), pool_bytes(), blocks)
    stats = stats or {}
    return Usage(
        fd_count(pid), rss_bytes(pid), stats.get("pool_bytes", 0), stats.get("py_blocks", 0)
    )


def memory_figures(before: Usage, after: Usage, peak: int | None = None) -> dict[str, Any]:
    figures = {
        "fds_before": before.fds,
        "fds_after": after.fds,
        "rss_before_mib": before.rss_mib,
        "rss_after_mib": after.rss_mib,
        "pool_before_mib": mib(before.pool),
        "pool_after_mib": mib(after.pool),
        "rss_growth_beyond_pool_mib": mib(after.growth_beyond_pool(before)),
        "heap_blocks_before": before.blocks,
        "heap_blocks_after": after.blocks,
    }
    if peak is not None:
        figures["rss_peak_mib"] = mib(peak)
    return figures


class PeakRss:
    """Samples a process's RSS every ``interval`` seconds until stopped; keeps the peak."""

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss_bytes(self.pid))


def live_connections() -> int:
    """netpoll.Connection objects still alive in this process (after a collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is netpoll.Connection)


def settle_connections(baseline: int, timeout: float = 5.0) -> int:
    """Wait until no more Connection objects are alive than ``baseline``; return the count.

    A closed connection stays referenced until its poller's next buffer sweep (1 s).
    """
    wait_for(lambda: live_connections() <= baseline, timeout, interval=0.2)
    return live_connections()


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.01) -> bool:
    """Check ``pred`` until it is true or ``timeout`` passes; returns its last truth value."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: waiting on it bounds each pause
    while True:
        if pred():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return bool(pred())
        tick.wait(min(interval, left))


def settle_fds(
    baseline: int, pid: int | None = None, tolerance: int = 0, timeout: float = 10.0
) -> int:
    """Wait until the descriptor count is back to ``baseline`` (+ tolerance); return it."""
    wait_for(lambda: fd_count(pid) <= baseline + tolerance, timeout)
    return fd_count(pid)


# --------------------------------------------------------------------------- figures


def record(case: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` for ``case`` into the JSON file named by NETPOLL_RELIABILITY_JSON."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    p = Path(path)
    try:
        data = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        data = {}
    entry = dict(figures)
    entry["python"] = sys.version.split()[0]
    data[case] = entry
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(p)


# --------------------------------------------------------------------------- sockets


def frame(payload: bytes) -> bytes:
    """A 4-byte big-endian length and the payload."""
    return struct.pack(">I", len(payload)) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket with a timeout; raises on EOF."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_closed(sock: socket.socket, limit: int = 64 * MiB) -> tuple[bytes, str]:
    """Read until the peer closes: (data, "eof" | "reset" | "timeout" | "limit")."""
    buf = bytearray()
    while len(buf) < limit:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(buf), "reset"
        except TimeoutError:
            return bytes(buf), "timeout"
        if not chunk:
            return bytes(buf), "eof"
        buf += chunk
    return bytes(buf), "limit"


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER on and a zero timeout: the kernel sends a RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect(addr: Any, timeout: float = IO_TIMEOUT) -> socket.socket:
    """A blocking client socket (TCP_NODELAY on TCP) with a timeout."""
    family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(addr)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        s.close()
        raise
    return s


def run_threads(target: Callable[[int], None], n: int, timeout: float) -> list[BaseException]:
    """Run ``target(i)`` on ``n`` threads; join within ``timeout``; return their exceptions."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    alive = sum(t.is_alive() for t in threads)
    if alive:
        errors.append(TimeoutError(f"{alive} of {n} client threads still running after {timeout}s"))
    return errors


# --------------------------------------------------------------------------- handlers


# --------------------------------------------------------------------------- protocols


def pattern(cid: int, seq: int, size: int) -> bytes:
    """Deterministic payload bytes naming their client and sequence number."""
    unit = b"<c%d.s%d>" % (cid, seq)
    return (unit * (size // len(unit) + 1))[:size]


class Proto:
    """What a well-behaved client sends and expects back."""

    name = "frame-echo"
    sizes = (1, 13, 512, 4000, 9000, 70000)

    def request(self, cid: int, seq: int) -> bytes:
        return frame(pattern(cid, seq, self.sizes[seq % len(self.sizes)]))

    def expected(self, request: bytes) -> bytes:
        return request


class RpcUpper(Proto):
    """examples/rpc.py: the reply is the frame with its payload upper-cased."""

    name = "rpc"

    def expected(self, request: bytes) -> bytes:
        return frame(request[4:].upper())


class HttpHello(Proto):
    """examples/http_hello.py: GET requests, the fixed Hello World response."""

    name = "http"

    def __init__(self, response: bytes) -> None:
        self.response = response

    def request(self, cid: int, seq: int) -> bytes:
        return b"GET /canary/%d/%d HTTP/1.1\r\nHost: canary\r\n\r\n" % (cid, seq)

    def expected(self, request: bytes) -> bytes:
        return self.response


# --------------------------------------------------------------------------- canaries


@dataclass
class CanaryReport:
    clients: int
    rounds: list[int]
    bytes: int
    worst_stall: float
    errors: list[str] = field(default_factory=list)

    def check(self, max_stall: float = MAX_STALL, min_rounds: int = 3) -> None:
        assert not self.errors, f"well-behaved clients failed: {self.errors[:3]}"
        assert min(self.rounds) >= min_rounds, (
            f"a well-behaved client was starved: rounds per client {self.rounds}"
        )
        assert self.worst_stall <= max_stall, (
            f"a well-behaved client stalled {self.worst_stall:.3f}s (bound {max_stall}s)"
        )

    def figures(self) -> dict[str, Any]:
        return {
            "canaries": self.clients,
            "canary_rounds": sum(self.rounds),
            "canary_bytes": self.bytes,
            "worst_stall_ms": round(self.worst_stall * 1000, 1),
        }


class Canaries:
    """``count`` clients doing round trips (``pace`` s apart) until stopped, checking bytes.

    Connected (and one round trip done) in ``start()``, so a baseline taken afterwards
    includes their descriptors.
    """

    def __init__(
        self,
        addr: Any,
        proto: Proto | None = None,
        count: int = 3,
        pace: float = 0.005,
    ) -> None:
        self.addr = addr
        self.proto = proto or Proto()
        self.count = count
        self.pace = pace
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._rounds = [0] * count
        self._bytes = [0] * count
        self._worst = [0.0] * count
        self._errors: list[str] = []
        self.report: CanaryReport | None = None

    def _round(self, i: int, sock: socket.socket, seq: int) -> None:
        req = self.proto.request(i, seq)
        want = self.proto.expected(req)
        t0 = time.monotonic()
        sock.sendall(req)
        got = recv_exact(sock, len(want))
        dt = time.monotonic() - t0
        if got != want:
            at = next((k for k in range(len(want)) if got[k] != want[k]), -1)
            raise AssertionError(f"canary {i} round {seq}: reply differs at byte {at}")
        self._rounds[i] += 1
        self._bytes[i] += len(req) + len(got)
        self._worst[i] = max(self._worst[i], dt)

    def start(self) -> Canaries:
        for i in range(self.count):
            sock = connect(self.addr)
            self._socks.append(sock)
            self._round(i, sock, 0)
        self._rounds = [0] * self.count
        self._worst = [0.0] * self.count
        self._bytes = [0] * self.count
        for i, sock in enumerate(self._socks):
            t = threading.Thread(target=self._run, args=(i, sock), name=f"canary-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, i: int, sock: socket.socket) -> None:
        seq = 1
        try:
            while not self._stop.is_set():
                self._round(i, sock, seq)
                seq += 1
                if self.pace:
                    self._stop.wait(self.pace)
        except Exception as exc:
            self._errors.append(f"canary {i}: {exc!r}")

    @property
    def worst_stall(self) -> float:
        return max(self._worst)

    def stop(self) -> CanaryReport:
        if self.report is None:
            self._stop.set()
            for t in self._threads:
                t.join(IO_TIMEOUT * 2)
            for t in self._threads:
                if t.is_alive():
                    self._errors.append(f"{t.name} did not stop")
            for s in self._socks:
                s.close()
            self.report = CanaryReport(
                self.count, list(self._rounds), sum(self._bytes), max(self._worst), self._errors
            )
        return self.report

    def __enter__(self) -> Canaries:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- servers


class LiveServer:
    """An EventLoop serving a listener (TCP on 127.0.0.1, or a unix path) in a thread."""

    def __init__(
        self,
        on_request: Callable[[Any, netpoll.Connection], Any],
        *,
        path: str | None = None,
        **loop_kwargs: Any,
    ) -> None:
        self.loop = netpoll.EventLoop(on_request, **loop_kwargs)
        if path is None:
            self.listener = netpoll.create_listener("tcp", "127.0.0.1:0")
        else:
            self.listener = netpoll.create_listener("unix", path)
        self.addr: Any = self.listener.addr
        self.serve_error: BaseException | None = None
        self._served = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="live-server", daemon=True)

    def _serve(self) -> None:
        try:
            self.loop.serve(self.listener)
        except BaseException as exc:
            self.serve_error = exc
        finally:
            self._served.set()

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    def stats(self) -> netpoll.ServerStats:
        return self.loop.stats()

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.loop.shutdown(timeout)
        finally:
            assert self._served.wait(timeout), "serve() did not return after shutdown()"
            with contextlib.suppress(OSError):
                self.listener.close()
        if self.serve_error is not None:
            raise AssertionError(f"serve() raised {self.serve_error!r}") from self.serve_error

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """An EventLoop in a child process; ``stats()`` and ``stop()`` talk over its stdin/stdout.

    ``options`` go to _serverproc.py: handler ("frame", "echo", "http" or "rpc"), unix (a
    socket path), nofile (soft RLIMIT_NOFILE), raise_nofile (soft limit to the hard one),
    loop (EventLoop keywords).
    Its log (the "netpoll" logger at INFO, one line per record) goes to ``log_path``.

    The child runs with MALLOC_ARENA_MAX=1: with glibc's default of one malloc arena per
    thread, memory freed by short-lived handler threads stays cached in their arenas
    (measured: a server answering 8 MiB frames plateaus ~64 MiB above its start even after
    malloc_trim, flat heap and descriptors); with one arena, RSS after malloc_trim follows
    live memory, so it is a leak signal. ``arena_max=None`` keeps the default.
    """

    def __init__(self, log_path: Path, arena_max: int | None = 1, **options: Any) -> None:
        self.log_path = log_path
        self.arena_max = arena_max
        self.options = options
        self.proc: subprocess.Popen[str] | None = None
        self.pid = 0
        self.addr: Any = None
        self.info: dict[str, Any] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = dict(os.environ)
        package_root = Path(netpoll.__file__).resolve().parent.parent  # the netpoll under test
        env["PYTHONPATH"] = os.pathsep.join(
            [str(package_root), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        if self.arena_max is not None:
            env["MALLOC_ARENA_MAX"] = str(self.arena_max)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), json.dumps(self.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, name="serverproc-stdout", daemon=True).start()
        self.info = self._reply(timeout)
        self.pid = self.info["pid"]
        addr = self.info["addr"]
        self.addr = tuple(addr) if isinstance(addr, list) else addr
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"server process silent for {timeout}s") from None
        if line is None:
            raise AssertionError(f"server process exited; log:\n{self.log_text()[-2000:]}")
        return dict(json.loads(line))

    def command(self, cmd: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout)

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def usage(self) -> Usage:
        """Descriptors, RSS (after the child's gc and malloc_trim), pool and heap blocks."""
        return usage(self.pid, self.stats())

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_lines(self, levels: tuple[str, ...] = ()) -> list[str]:
        """The child's log lines (one per record), only those of ``levels`` if given."""
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        if levels:
            lines = [ln for ln in lines if any(f" {lv} " in ln for lv in levels)]
        return lines

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the child to shut down gracefully; kill it if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(OSError, AssertionError, ValueError):
                    self.command("shutdown", timeout)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            return proc.returncode
        finally:
            self.proc = None
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- logging


@dataclass(frozen=True)
class Rec:
    """What the suite keeps of a log record: keeping the record itself would keep its
    exception's traceback, and with it the frames and the Connection they reference."""

    levelno: int
    levelname: str
    message: str
    exc: str | None  # the exception's type name, if the record carried one


class LogCapture(logging.Filter):
    """Collects the "netpoll" logger's records at ``level`` and above while active.

    It is a filter on that logger that keeps a summary (``Rec``) of each record and then
    drops it: no handler sees it, so nothing (pytest's own capture included) keeps the
    record, whose traceback would keep closed connections alive.
    """

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__()
        self.level = level
        self.records: list[Rec] = []
        self._logger = logging.getLogger("netpoll")
        self._saved_level = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            exc_type = record.exc_info[0] if record.exc_info else None
            try:
                message = record.getMessage()
            except Exception as err:  # a record whose arguments fail to format
                message = f"<unformattable: {err!r}>"
            self.records.append(
                Rec(record.levelno, record.levelname, message, exc_type and exc_type.__name__)
            )
        return False

    def __enter__(self) -> LogCapture:
        log = self._logger
        self._saved_level = log.level
        if log.getEffectiveLevel() > self.level:
            log.setLevel(self.level)
        log.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeFilter(self)
        self._logger.setLevel(self._saved_level)

    def at_least(self, level: int) -> list[Rec]:
        return [r for r in list(self.records) if r.levelno >= level]

    def describe(self, level: int = logging.WARNING, limit: int = 3) -> str:
        recs = self.at_least(level)
        return "; ".join(f"{r.levelname}: {r.message}" for r in recs[:limit])


# --------------------------------------------------------------------------- a case


class Case:
    """One hostile case against a live server, with well-behaved clients alongside.

    ``start()`` connects the canaries, runs ``warm_up`` (the case in miniature, so that
    allocator arenas, pools and threads exist before measuring), then takes the baseline
    (descriptors, RSS, pool, live Connection objects, server counters) and starts timing
    and RSS sampling.
    ``finish()`` (after the hostile clients are gone) waits for the server to be back to
    the canaries' connections only and for descriptors to return, takes the "after"
    figures and stops the canaries. ``check()`` asserts the common bounds; ``record()``
    writes the figures. Works with a ``LiveServer`` (this process) or a ``ServerProcess``.
    """

    def __init__(
        self,
        name: str,
        server: LiveServer | ServerProcess,
        proto: Proto | None = None,
        canaries: int = 3,
        pace: float = 0.005,
        warm_up: Callable[[], Any] | None = None,
        block_slack: int = 1000,
    ) -> None:
        self.name = name
        self.warm_up = warm_up
        self.block_slack = block_slack
        self.server = server
        self.canaries = Canaries(server.addr, proto, canaries, pace)
        self.pid = server.pid if isinstance(server, ServerProcess) else None
        self.figures: dict[str, Any] = {}
        self.before = Usage(0, 0)
        self.after = Usage(0, 0)
        self.conns_before = self.conns_after = 0
        self.stats0: dict[str, Any] = {}
        self.stats1: dict[str, Any] = {}
        self.settled = False
        self.report: CanaryReport | None = None
        self._peak: PeakRss | None = None
        self._t0 = 0.0

    def stats(self) -> dict[str, Any]:
        if isinstance(self.server, ServerProcess):
            return self.server.stats()
        return dataclasses.asdict(self.server.stats())

    def delta(self, key: str) -> int:
        """How much a server counter moved from the baseline to ``finish()`` (or now)."""
        return int((self.stats1 or self.stats())[key]) - int(self.stats0[key])

    @property
    def peak_rss(self) -> int:
        """The highest RSS sampled since ``start()``."""
        return self._peak.peak if self._peak is not None else 0

    def _usage(self) -> Usage:
        self.figures["rss_untrimmed_mib"] = mib(rss_bytes(self.pid))  # as the allocator left it
        if self.pid is None:
            return usage()
        return usage(self.pid, self.stats())

    def start(self) -> Case:
        if self.pid is None:
            # Connections of earlier tests die with their poller's next sweep; the leader
            # thread may still reference the last connection it served.
            settle_connections(1)
        self.canaries.start()
        if self.warm_up is not None:  # the case in miniature: arenas, pools, threads exist
            conns = live_connections() if self.pid is None else self.stats()["live_connections"]
            t0 = time.monotonic()
            self.warm_up()
            wait_for(lambda: self.stats()["connections_open"] == self.canaries.count, 10)
            self.figures["warm_up_s"] = round(time.monotonic() - t0, 2)
            if self.pid is None:
                settle_connections(conns)
            else:
                wait_for(lambda: self.stats()["live_connections"] <= conns, 10, interval=0.25)
        self.stats0 = self.stats()
        self.before = self._usage()
        self.conns_before = (
            live_connections() if self.pid is None else self.stats()["live_connections"]
        )
        self._peak = PeakRss(self.pid).__enter__()
        self._t0 = time.monotonic()
        return self

    def finish(self, timeout: float = 10.0) -> None:
        """Call once the hostile clients are closed."""
        self.figures["duration_s"] = round(time.monotonic() - self._t0, 2)
        count = self.canaries.count
        self.settled = wait_for(lambda: self.stats()["connections_open"] == count, timeout)
        settle_fds(self.before.fds, self.pid, timeout=timeout)
        self.stats1 = self.stats()
        assert self._peak is not None
        self._peak.__exit__()
        # closed connections are dropped by their poller's next buffer sweep (1 s)
        if self.pid is None:
            self.conns_after = settle_connections(self.conns_before)
        else:
            count = self.conns_before
            wait_for(lambda: self.stats()["live_connections"] <= count, timeout, interval=0.25)
            self.conns_after = self.stats()["live_connections"]
        self.figures["live_connection_objects"] = [self.conns_before, self.conns_after]
        self.figures["slow_pool_threads"] = [
            self.stats0["slow_pool_threads"],
            self.stats1["slow_pool_threads"],
        ]
        self.after = self._usage()
        if self.after.blocks - self.before.blocks > self.block_slack:
            # Slow-pool threads the case started stay parked (with their frames and
            # thread state) until they have been idle for IDLE_EXIT seconds; a leak stays.
            t0 = time.monotonic()
            wait_for(self._blocks_within_slack, BLOCKS_SETTLE, interval=0.5)
            self.figures["blocks_settle_s"] = round(time.monotonic() - t0, 2)
        self.report = self.canaries.stop()
        self.figures.update(self.report.figures())
        self.figures.update(memory_figures(self.before, self.after, self._peak.peak))

    def _blocks_within_slack(self) -> bool:
        self.after = self._usage()
        return self.after.blocks - self.before.blocks <= self.block_slack

    def check(
        self,
        rss_slack: int,
        max_stall: float = MAX_STALL,
        min_rounds: int = 3,
    ) -> None:
        """The bounds every case shares.

        ``rss_slack``: RSS growth allowed beyond what the block pool keeps (allocator
        arenas of short-lived threads make RSS drift by a few MiB without any leak).
        ``block_slack`` (given to the constructor): growth allowed in live Python heap
        blocks; a leak of one object per hostile connection exceeds it in every case with
        thousands of connections. ``finish()`` gives idle slow-pool threads up to
        ``BLOCKS_SETTLE`` seconds to exit before this is judged.
        """
        assert self.report is not None, "finish() was not called"
        assert self.settled, (
            f"server still has {self.stats()['connections_open']} connections "
            f"(only the {self.canaries.count} well-behaved ones should remain)"
        )
        assert self.after.fds == self.before.fds, (
            f"descriptors: {self.before.fds} before, {self.after.fds} after"
        )
        growth = self.after.growth_beyond_pool(self.before)
        assert growth <= rss_slack, (
            f"RSS grew {mib(growth)} MiB beyond the block pool (bound {mib(rss_slack)} MiB): "
            f"{self.before.rss_mib} -> {self.after.rss_mib} MiB"
        )
        blocks = self.after.blocks - self.before.blocks
        assert blocks <= self.block_slack, (
            f"{blocks} more Python heap blocks alive than before (bound {self.block_slack}); "
            f"slow-pool threads {self.stats0['slow_pool_threads']} before, "
            f"{self.stats()['slow_pool_threads']} after"
        )
        assert self.conns_after <= self.conns_before, (
            f"{self.conns_after - self.conns_before} Connection objects outlived their sockets"
        )
        self.report.check(max_stall, min_rounds)

    def record(self, **extra: Any) -> None:
        self.figures.update(extra)
        record(self.name, self.figures)

    def __enter__(self) -> Case:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.report is None:
            self.canaries.stop()
            if self._peak is not None:
                self._peak.__exit__()
