"""``netpoll.run`` as real processes: workers, signals, restarts, reloads, stats.

Every test starts ``tests/run_app.py`` in a session of its own (``start_new_session``),
synchronises on what it logs (``SERVING pid=N`` once a worker accepts, ``SLEEPING`` when
a handler starts sleeping) and on bounded retry loops, never on a bare sleep. At the end
(``finally``) it kills whatever of that session is left and asserts that no process it
saw (the supervisor, every worker) is still alive: gone, or a zombie waiting for a parent
that is not ours to reap.

Bugs found are pinned by deterministic tests marked ``xfail(strict=True)`` under a flag
each (UNEVEN_SPREAD, CONNECTING_CLOSED_AT_DRAIN, SIGNAL_LOST_OFF_MAIN; the fixed
UNASKED_CLOSED_AT_DRAIN); the load tests that meet one of them only by chance XFAIL on
the evidence (a split, a dropped first request, a stack dump) rather than fail at random,
and fail on anything else. Flip a flag to False once its bug is fixed.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll

APP = Path(__file__).with_name("run_app.py")
# Bug found in netpoll.run's reload (test_sighup_reload_answers_connections_not_asked_yet):
# a worker that drains closed at once the connections it had accepted whose first
# request had not arrived. Fixed by Connection._drain's FIRST_REQUEST_GRACE; set to True
# to run against a tree without the fix (that test then XFAILs, strictly).
UNASKED_CLOSED_AT_DRAIN = False
# Known bug (test_sighup_reload_answers_connections_still_in_on_connect): a connection
# still in its connect task (on_connect) when its worker begins draining, or accepted as
# the drain begins, is closed the moment that task ends, without that grace. The reload
# under load (test_sighup_reload_drops_nothing) then drops a first request now and then
# (an XFAIL there while this is True). Set to False once fixed.
CONNECTING_CLOSED_AT_DRAIN = False
# Known bug (test_paced_connections_spread_over_workers): the workers sharing the listener
# do not take turns; whichever the kernel's EPOLLEXCLUSIVE wake-up finds first waiting
# takes every connection that arrives while it is idle. Set to False once fixed.
UNEVEN_SPREAD = False
# Known bug (test_stop_signal_delivered_to_another_thread): a process that serves acts
# on SIGINT/SIGTERM/SIGUSR1 only if the kernel hands the signal to its main thread,
# which waits in EventLoop.serve on an untimed Event.wait; delivered to another thread
# (the kernel may pick any), the Python handler waits until the main thread wakes up,
# i.e. forever. Tests that meet it by chance XFAIL on the evidence (a stack dump still
# in serve). Set to False once fixed.
SIGNAL_LOST_OFF_MAIN = False
_IN_SERVE = re.compile(r'_server\.py", line \d+ in serve')
IO_TIMEOUT = 10.0  # the longest a single client socket operation may block
START_TIMEOUT = 30.0  # for the workers to be serving, on a loaded machine

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="netpoll.run(workers>1) is Linux-only"
)


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (state, ppid, pgrp, session, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True if ``pid`` runs: not gone (``os.kill(pid, 0)``) and not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process now
        return False
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def children_of(ppid: int) -> set[int]:
    """Live processes whose parent is ``ppid``."""
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is not None and int(fields[1]) == ppid and fields[0] not in ("Z", "X"):
            out.add(int(name))
    return out


def session_members(sid: int) -> set[int]:
    """Live processes of session ``sid`` (the supervisor's, started with a new session)."""
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is not None and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.add(int(name))
    return out


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``pred`` until true or ``timeout``; paced by an Event wait, not a sleep."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        pause.wait(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- clients


class Client:
    """A blocking line client with a receive buffer."""

    def __init__(self, family: int, address: Any, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""
        self.used = False
        self.requests = 0  # requests sent on it
        self.pid = 0  # the worker that answered a "pid" request on it

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\n")

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"EOF after {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def request(self, line: bytes) -> bytes:
        self.requests += 1
        self.send(line)
        reply = self.read_line()
        self.used = True
        return reply

    def ask_pid(self) -> int:
        self.pid = int(self.request(b"pid"))
        return self.pid

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- the app


class AppProcess:
    """``tests/run_app.py`` in a session of its own, its output collected by threads."""

    def __init__(
        self,
        workers: int,
        *,
        network: str = "tcp",
        address: str | None = None,
        shutdown_timeout: float = 10.0,
        mode: str = "normal",
        trace: bool = False,
        connect_delay: float = 0.0,
    ) -> None:
        self.workers = workers
        self.network = network
        if address is None:
            self.port = free_port()
            address = f"127.0.0.1:{self.port}"
            self.family = socket.AF_INET
            self.sockaddr: Any = ("127.0.0.1", self.port)
        else:
            self.family = socket.AF_UNIX
            self.sockaddr = address
        self.address = address
        self.cond = threading.Condition()
        self.err: list[str] = []
        self.out: list[str] = []
        self.seen: set[int] = set()
        self.dumps: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                str(APP),
                "--workers",
                str(workers),
                "--network",
                network,
                "--address",
                address,
                "--shutdown-timeout",
                str(shutdown_timeout),
                "--mode",
                mode,
                *(["--trace"] if trace else []),
                "--connect-delay",
                str(connect_delay),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------ output

    def _read(self, stream: Any, into: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                into.append(line)
                for key in ("APP pid=", "SERVING pid="):
                    if key in line:
                        self.seen.add(int(line.split(key)[1].split()[0]))
                self.cond.notify_all()
        stream.close()

    def _watch(self) -> None:
        """Record every child of the supervisor while it lives (workers come and go)."""
        pause = threading.Event()
        while self._watching and self.proc.poll() is None:
            kids = children_of(self.pid)
            with self.cond:
                self.seen |= kids
            pause.wait(0.05)

    def stderr(self) -> str:
        with self.cond:
            return "\n".join(self.err)

    def stdout(self) -> str:
        with self.cond:
            return "\n".join(self.out)

    def count(self, text: str) -> int:
        with self.cond:
            return sum(text in line for line in self.err)

    def wait_log(self, text: str, timeout: float, count: int = 1) -> bool:
        """Wait until ``text`` appears in at least ``count`` stderr lines."""
        with self.cond:
            return self.cond.wait_for(
                lambda: sum(text in line for line in self.err) >= count, timeout
            )

    def wait_serving(self, count: int | None = None, timeout: float = START_TIMEOUT) -> None:
        n = self.workers if count is None else count
        if not self.wait_log("SERVING pid=", timeout, n):
            raise AssertionError(f"{n} worker(s) not serving in {timeout}s:\n{self.stderr()}")
        # and a request is answered, through the kernel's queue of the listener
        c = self.connect()
        try:
            c.ask_pid()
        finally:
            c.close()

    def workers_now(self) -> set[int]:
        kids = children_of(self.pid)
        with self.cond:
            self.seen |= kids
        return kids

    # ------------------------------------------------------------ clients

    def connect(self, timeout: float = IO_TIMEOUT) -> Client:
        return Client(self.family, self.sockaddr, timeout)

    # ------------------------------------------------------------ signals, exit

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float, dump_after: float = 6.0) -> int:
        """The supervisor's exit code; fails the test if it is not gone in ``timeout``.
        Processes of the app still running after ``dump_after`` seconds are asked for
        their threads' stacks (SIGUSR2: faulthandler, into the stderr collected)."""
        code: int | None = None
        if dump_after < timeout:
            try:
                code = self.proc.wait(dump_after)
            except subprocess.TimeoutExpired:
                self.dump_stacks()
        if code is None:
            try:
                code = self.proc.wait(max(0.0, timeout - dump_after))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"supervisor {self.pid} still running after {timeout}s:\n{self.stderr()}"
                ) from None
        for t in self._readers:  # the workers' copies of the pipes close as they exit
            t.join(5.0)
        return code

    def dump_stacks(self) -> str:
        """Ask every live process of the app for its threads' stacks (faulthandler, on
        stderr); the text of the dumps (kept in ``dumps``)."""
        pids = session_members(self.pid) | {p for p in self.seen if alive(p)}
        with self.cond:
            start = len(self.err)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass
        if pids:  # every dump ends in the main thread's bottom frame
            self.wait_log(" in <module>", 3.0, self.count(" in <module>") + len(pids))
        with self.cond:
            text = "\n".join(self.err[start:])
        self.dumps.append(text)
        return text

    def stuck_in_serve(self) -> bool:
        """A dump (taken because a process did not stop in time) shows a thread still
        waiting in ``EventLoop.serve``: the process never acted on its stop signal."""
        return any(_IN_SERVE.search(text) for text in self.dumps)

    def cleanup(self) -> None:
        """Kill what is left of the session and reap the supervisor."""
        self._watching = False
        if self.proc.poll() is None:
            self.workers_now()
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for pid in session_members(self.pid) | {p for p in self.seen if alive(p)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not session_members(self.pid), 10.0)
        for t in self._readers:
            t.join(5.0)

    def assert_none_left(self) -> None:
        """Every pid seen is gone (``os.kill(pid, 0)`` raises ProcessLookupError) once
        its parent reaped it; a zombie whose parent is not this process (an orphan
        reparented to an init that does not reap) counts as gone too."""
        pids = {self.pid, *self.seen}

        def exists(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True

        wait_for(lambda: not any(exists(p) for p in pids), 5.0)
        left = {p for p in pids if alive(p)} | session_members(self.pid)
        assert not left, f"processes left: {sorted(left)} (seen {sorted(pids)})"


@pytest.fixture
def apps() -> Iterator[list[AppProcess]]:
    """Processes to clean up; every test asserts at its end that none is left."""
    started: list[AppProcess] = []
    try:
        yield started
    finally:
        for app in started:
            app.cleanup()
        for app in started:
            app.assert_none_left()


def start(apps: list[AppProcess], workers: int, **kwargs: Any) -> AppProcess:
    app = AppProcess(workers, **kwargs)
    apps.append(app)
    return app


def finish(app: AppProcess) -> None:
    """The test's own end-of-test check (the fixture checks again after cleanup)."""
    app.cleanup()
    app.assert_none_left()


def xfail_if_signal_lost(app: AppProcess, what: str) -> None:
    """While SIGNAL_LOST_OFF_MAIN stands: a process found still in ``serve`` long after
    its stop signal met that bug (see test_stop_signal_delivered_to_another_thread)."""
    if SIGNAL_LOST_OFF_MAIN and app.stuck_in_serve():
        finish(app)
        pytest.xfail(
            f"known bug (test_stop_signal_delivered_to_another_thread): {what}; "
            f"stacks:\n{chr(10).join(app.dumps)}"
        )


def assert_exit(app: AppProcess, code: int, expected: int = 0) -> None:
    """The supervisor exited with ``expected``; otherwise the failure, or the known bug
    of a lost stop signal when the stacks dumped on the way show it."""
    if code != expected:
        xfail_if_signal_lost(app, f"exit {code}, a process never acted on its stop signal")
    assert code == expected, app.stderr()


def expect_eof(app: AppProcess, c: Client, within: float, what: str) -> None:
    """The server closes ``c`` within ``within`` seconds (EOF; a reset counts too)."""
    c.sock.settimeout(within)
    try:
        data = c.sock.recv(16)
    except ConnectionResetError:
        return
    except TimeoutError:
        app.dump_stacks()
        xfail_if_signal_lost(app, f"{what}: connection still open after {within}s")
        raise AssertionError(
            f"{what}: connection still open after {within}s:\n{app.stderr()}"
        ) from None
    assert data == b"", data


def connections_on_one_worker(
    app: AppProcess, n: int, limit: int = 200
) -> tuple[int, list[Client]]:
    """Open connections until one worker holds ``n`` of them: (its pid, those); the
    others are closed. (Which worker gets a connection is the kernel's choice.)"""
    got: dict[int, list[Client]] = {}
    try:
        for _ in range(limit):
            c = app.connect()
            got.setdefault(c.ask_pid(), []).append(c)
            for pid, conns in got.items():
                if len(conns) >= n:
                    return pid, got.pop(pid)
        raise AssertionError(f"no worker got {n} of {limit} connections")
    finally:
        for conns in got.values():
            for c in conns:
                c.close()


def concurrent_pids(app: AppProcess, n: int) -> list[int]:
    """``n`` clients connect at once (a barrier), each asks ``pid``; all the connections
    stay open until every one was answered. The pids that answered."""
    barrier = threading.Barrier(n)
    pids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        c: Client | None = None
        try:
            barrier.wait(IO_TIMEOUT)
            c = app.connect()
            pid = c.ask_pid()
            with lock:
                pids.append(pid)
            barrier.wait(IO_TIMEOUT)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            barrier.abort()
        finally:
            if c is not None:
                c.close()

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT * 3)
    assert not errors, errors
    assert len(pids) == n
    return pids


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(90)
def test_connections_spread_over_workers(apps: list[AppProcess]) -> None:
    app = start(apps, 2)
    app.wait_serving()
    workers = app.workers_now()
    assert len(workers) == 2, workers
    n = 40
    pids = concurrent_pids(app, n)
    split = {pid: pids.count(pid) for pid in sorted(workers | set(pids))}
    print(f"spread of {n} concurrent connections over 2 workers: {split}")
    assert set(pids) <= workers, (split, workers)
    for pid in set(pids):  # each answered by a child of the supervisor
        fields = _stat(pid)
        assert fields is not None and int(fields[1]) == app.pid, (pid, fields)
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)
    even = min(split.values()) >= n // 5
    if not even and UNEVEN_SPREAD:
        pytest.xfail(f"known bug (see test_paced_connections_spread_over_workers): {split}")
    assert even, f"uneven spread: {split}"


@pytest.mark.xfail(
    UNEVEN_SPREAD,
    strict=True,
    reason=(
        "bug: connections do not spread over the workers unless they arrive faster than "
        "a worker accepts: EPOLLEXCLUSIVE wakes the first waiting epoll on the listener's "
        "wait queue, always the same idle worker, so persistent connections arriving one "
        "at a time all land on one worker (20/0 here), leaving the other core idle"
    ),
)
@pytest.mark.timeout(60)
def test_paced_connections_spread_over_workers(apps: list[AppProcess]) -> None:
    """Persistent connections arriving one at a time (a pool of RPC clients starting up)
    are shared by the workers, as the design promises ("connections spread evenly")."""
    app = start(apps, 2)
    app.wait_serving()
    workers = app.workers_now()
    conns: list[Client] = []
    pause = threading.Event()
    try:
        for _ in range(20):
            pause.wait(0.05)  # the workload: a client every 50ms (not a synchronisation)
            c = app.connect()
            c.ask_pid()
            conns.append(c)
    finally:
        for c in conns:
            c.close()
    split = {pid: sum(c.pid == pid for c in conns) for pid in sorted(workers)}
    print(f"spread of 20 connections arriving 50ms apart, kept open: {split}")
    assert sum(split.values()) == len(conns), (split, workers)
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)
    assert min(split.values()) >= len(conns) // 5, f"uneven spread: {split}"


@pytest.mark.timeout(90)
def test_kill9_worker_is_replaced_others_unaffected(apps: list[AppProcess]) -> None:
    app = start(apps, 2)
    app.wait_serving()
    workers = app.workers_now()
    assert len(workers) == 2, workers
    survivor, conns = connections_on_one_worker(app, 3)
    (victim,) = workers - {survivor}
    done = threading.Event()
    counts = [0] * len(conns)
    errors: list[BaseException] = []

    def loop(i: int, c: Client) -> None:
        try:
            while not done.is_set():
                assert c.request(b"echo x%d" % counts[i]) == b"x%d" % counts[i]
                counts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(conns)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    new: set[int] = set()
    replaced_at = 0.0

    def replaced() -> bool:
        nonlocal replaced_at
        if not new:
            new.update(app.workers_now() - {victim, survivor})
            if new:
                replaced_at = time.monotonic()
        return bool(new)

    try:
        wait_for(lambda: bool(errors) or min(counts) >= 10, 10.0)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        at_kill = sum(counts)
        # requests go on for 1.5s in all, and at least 1s after the kill; meanwhile
        # watch for the replacement
        end = max(t0 + 1.5, killed_at + 1.0)
        wait_for(lambda: bool(errors) or (replaced() and time.monotonic() >= end), 3.0)
    finally:
        done.set()
        for t in threads:
            t.join(IO_TIMEOUT + 5)
        for c in conns:
            c.close()
    assert not errors, errors
    assert min(counts) >= 10, counts
    assert sum(counts) > at_kill, (at_kill, counts)  # requests went on after the kill
    assert wait_for(lambda: not alive(victim), 5.0)
    assert replaced(), f"no new worker 3s after the kill:\n{app.stderr()}"
    assert replaced_at - killed_at < 3.0
    print(
        f"requests on the surviving worker: {sum(counts)} ({at_kill} before the kill), "
        f"none failed; replacement seen {replaced_at - killed_at:.2f}s after the kill"
    )
    assert "was killed by SIGKILL; restarting it" in app.stderr()
    assert app.wait_log(f"SERVING pid={min(new)}", START_TIMEOUT)
    answered: set[int] = set()
    for _ in range(20):
        c = app.connect()
        try:
            answered.add(c.ask_pid())
        finally:
            c.close()
    assert answered <= {survivor} | new, answered
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)


@pytest.mark.timeout(90)
def test_sigterm_lets_requests_in_flight_finish(apps: list[AppProcess]) -> None:
    timeout = 10.0
    app = start(apps, 2, shutdown_timeout=timeout)
    app.wait_serving()
    conns = [app.connect() for _ in range(6)]
    try:
        for c in conns:
            c.send(b"sleep 1")
        assert app.wait_log("SLEEPING pid=", 15.0, len(conns)), app.stderr()
        t0 = time.monotonic()
        app.signal(signal.SIGTERM)
        replies = [c.read_line() for c in conns]
        assert replies == [b"done"] * len(conns)
        for c in conns:  # then the drained connection is closed
            expect_eof(app, c, 5.0, "SIGTERM, request answered")
    finally:
        for c in conns:
            c.close()
    code = app.wait_exit(timeout + 5.0)
    elapsed = time.monotonic() - t0
    print(f"SIGTERM with 6 requests of 1s in flight: exit {code} after {elapsed:.2f}s")
    assert_exit(app, code)
    assert "RUN RETURNED" in app.stdout()
    assert elapsed < timeout + 5.0
    assert app.count("stopping 2 worker(s) gracefully") == 1
    assert "Traceback" not in app.stderr()
    finish(app)


@pytest.mark.timeout(90)
def test_second_sigterm_stops_at_once(apps: list[AppProcess]) -> None:
    app = start(apps, 2, shutdown_timeout=30.0)
    app.wait_serving()
    conns = [app.connect() for _ in range(2)]
    try:
        for c in conns:
            c.send(b"sleep 30")
        assert app.wait_log("SLEEPING pid=", 15.0, len(conns)), app.stderr()
        app.signal(signal.SIGTERM)
        assert app.wait_log("stopping 2 worker(s) gracefully", 10.0)
        threading.Event().wait(0.3)  # the pause between the two signals under test
        t0 = time.monotonic()
        app.signal(signal.SIGTERM)
        # the workers close everything and exit: the supervisor returns normally
        code = app.wait_exit(10.0, dump_after=1.5)
        elapsed = time.monotonic() - t0
        for c in conns:  # closed without an answer
            try:
                assert c.sock.recv(16) == b""
            except ConnectionResetError:
                pass
    finally:
        for c in conns:
            c.close()
    print(f"second SIGTERM with `sleep 30` in flight: exit {code} after {elapsed:.2f}s")
    assert_exit(app, code)
    assert "RUN RETURNED" in app.stdout()
    assert elapsed < 5.0, elapsed
    assert app.count("second stop signal: workers close everything now") == 1
    assert "killing them" not in app.stderr()
    finish(app)


@pytest.mark.timeout(90)
def test_sigint_to_the_process_group_counts_once(apps: list[AppProcess]) -> None:
    app = start(apps, 2)
    app.wait_serving()
    assert os.getpgid(app.pid) == app.pid
    workers = app.workers_now()
    assert all(os.getpgid(w) == app.pid for w in workers)
    os.killpg(app.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code = app.wait_exit(20.0)
    err = app.stderr()
    assert_exit(app, code)
    assert "RUN RETURNED" in app.stdout()
    assert app.count("stopping 2 worker(s) gracefully") == 1, err
    assert "second stop signal" not in err
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    finish(app)


@pytest.mark.timeout(60)
def test_workers_exit_when_the_supervisor_is_killed(apps: list[AppProcess]) -> None:
    app = start(apps, 2)
    app.wait_serving()
    workers = app.workers_now()
    assert len(workers) == 2
    conn = app.connect()  # an idle connection on one of them
    try:
        conn.ask_pid()
        app._watching = False
        app.signal(signal.SIGKILL)
        t0 = time.monotonic()
        assert app.proc.wait(10.0) == -signal.SIGKILL
        gone = wait_for(lambda: not any(alive(w) for w in workers), 3.0)
        elapsed = time.monotonic() - t0
        assert gone, f"workers {[w for w in workers if alive(w)]} alive 3s later"
        assert conn.sock.recv(16) == b""
    finally:
        conn.close()
    print(f"workers gone {elapsed:.2f}s after the supervisor's SIGKILL")
    assert app.wait_log("lost its supervisor; stopping", 10.0, 2), app.stderr()
    finish(app)


@pytest.mark.timeout(120)
def test_sighup_reload_drops_nothing(apps: list[AppProcess]) -> None:
    app = start(apps, 2)
    app.wait_serving()
    old = app.workers_now()
    assert len(old) == 2
    stop = threading.Event()
    lock = threading.Lock()
    failures: list[tuple[float, bool, str]] = []  # (time, unanswered first request, what)
    answers: list[tuple[float, int]] = []  # (time, pid)
    idle_closes: list[int] = []  # pids of persistent connections closed between requests
    counts = {"requests": 0, "new_connections": 0}

    def record(pid: int) -> None:
        with lock:
            answers.append((time.monotonic(), pid))
            counts["requests"] += 1

    def fresh() -> Client:
        c = app.connect()
        with lock:
            counts["new_connections"] += 1
        return c

    hup_at = float("inf")

    def fail(i: int, kind: str, c: Client | None, exc: BaseException) -> None:
        """A failed request: what connection, its how-manieth request, when."""
        n = 0 if c is None else c.requests
        now = time.monotonic()
        text = (
            f"client {i} {kind} request #{n} (pid {c.pid if c else '?'}, "
            f"{now - hup_at:+.3f}s from SIGHUP): {exc!r}"
        )
        unasked = n == 1 and isinstance(exc, (EOFError, ConnectionResetError))
        with lock:
            failures.append((now, unasked, text))

    def ask(i: int, kind: str, c: Client) -> bool:
        """One request; False if the connection was closed between two requests by an
        old worker that drains (the graceful close of an idle keep-alive connection:
        the caller retries on a new connection); any other error is a failure."""
        try:
            record(c.ask_pid())
            return True
        except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
            between = c.used and not c.buf and time.monotonic() >= hup_at
            if between and c.pid in old:
                with lock:
                    idle_closes.append(c.pid)
            else:
                fail(i, kind, c, exc)
        except Exception as exc:
            fail(i, kind, c, exc)
        return False

    def client(i: int) -> None:
        persistent: Client | None = None
        while not stop.is_set():
            c: Client | None = None
            try:
                # a persistent connection: one request a round
                if persistent is None:
                    persistent = fresh()
                if not ask(i, "persistent", persistent):
                    persistent.close()
                    persistent = None
                    continue
                # a new connection: a few requests
                c = fresh()
                for _ in range(3):
                    if not ask(i, "new-connection", c):
                        break
            except Exception as exc:  # connect() failed
                fail(i, "connect", None, exc)
            finally:
                if c is not None:
                    c.close()
        if persistent is not None:
            persistent.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        stop.wait(0.5)  # load before the reload
        hup_at = time.monotonic()
        app.signal(signal.SIGHUP)
        reloaded = app.wait_log("replaced by", 30.0, 2)
        gone = wait_for(lambda: not any(alive(p) for p in old), 15.0)
        reload_done = time.monotonic()
        stop.wait(max(t0 + 3.0, reload_done + 0.5) - time.monotonic())  # and after it
    finally:
        stop.set()
        for t in threads:
            t.join(IO_TIMEOUT * 2)
    err = app.stderr()
    assert reloaded, f"reload not done 30s after SIGHUP:\n{err}"
    if not gone:  # an old worker told to drain is still there
        app.dump_stacks()
        xfail_if_signal_lost(app, f"old workers {[p for p in old if alive(p)]} never drained")
    assert gone, f"old workers {[p for p in old if alive(p)]} still alive:\n{app.stderr()}"
    new = app.workers_now()
    # The bugs of test_sighup_reload_answers_connections_not_asked_yet (fixed) and
    # ..._still_in_on_connect: a connection an old worker accepted as it began draining
    # is closed before its first request is answered. Counted apart (an XFAIL) while
    # either flag says the bug stands; any other failure fails this test.
    known = UNASKED_CLOSED_AT_DRAIN or CONNECTING_CLOSED_AT_DRAIN
    dropped = [
        text
        for when, unasked, text in failures
        if known and unasked and hup_at <= when <= reload_done + 0.2
    ]
    others = [text for _, _, text in failures if text not in dropped]
    print(
        f"SIGHUP under load: {counts['requests']} requests on {counts['new_connections']} "
        f"new connections, failures={len(others)}, first requests dropped at the drain "
        f"(known bug)={len(dropped)}, idle keep-alive connections closed between requests by "
        f"draining workers (retried)={len(idle_closes)}, reload took "
        f"{reload_done - hup_at:.2f}s"
    )
    for text in dropped:
        print(f"  known bug: {text}")
    assert not others, others
    assert counts["requests"] > 100, counts
    assert len(new) == 2 and not (new & old), (old, new)
    late = {pid for when, pid in answers if when > reload_done + 0.1}
    assert late and late <= new, (late, new)
    assert {pid for _, pid in answers} >= old
    assert app.count("SIGHUP: replacing the workers one by one") == 1
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    assert "RUN RETURNED" in app.stdout()
    finish(app)
    if dropped:
        pytest.xfail(
            f"known bug (see test_sighup_reload_answers_connections_still_in_on_connect): "
            f"{len(dropped)} first request(s) on new connections dropped by the reload"
        )


@pytest.mark.xfail(
    UNASKED_CLOSED_AT_DRAIN,
    strict=True,
    reason=(
        "bug: on SIGHUP an old worker's drain (EventLoop.shutdown -> Connection._drain) "
        "closed at once every connection with nothing buffered, including those it "
        "accepted whose first request has not arrived yet: their clients get EOF or a "
        "reset on that first request, so a reload drops connections (under load too: "
        "see test_sighup_reload_drops_nothing)"
    ),
)
@pytest.mark.timeout(60)
def test_sighup_reload_answers_connections_not_asked_yet(apps: list[AppProcess]) -> None:
    """Connections accepted by an old worker but not asked anything yet when the reload
    starts must not be dropped: their first request, sent just after the old workers
    were told to drain, is answered (Go's http.Server gives such new connections 5s)."""
    app = start(apps, 2)
    app.wait_serving()
    silent = [app.connect() for _ in range(4)]
    replies: list[bytes | str] = []
    try:

        def held() -> bool:  # the workers have accepted all of them (SIGUSR1 stats)
            n = app.count("stats of")
            app.signal(signal.SIGUSR1)
            if not app.wait_log("stats of", 5.0, n + 1):
                return False
            last = [ln for ln in app.stderr().splitlines() if "stats of" in ln][-1]
            return f"connections_open={len(silent)}," in last

        assert wait_for(held, 20.0, 0.1), app.stderr()
        hup_at = time.monotonic()
        app.signal(signal.SIGHUP)
        assert app.wait_log("replaced by", 30.0, 2), app.stderr()
        # both old workers were told to drain: for 0.3s, watch whether they close the
        # connections they hold (readable: EOF or a reset)
        closed: dict[int, float] = {}
        end = time.monotonic() + 0.3
        while len(closed) < len(silent) and time.monotonic() < end:
            ready, _, _ = select.select(
                [c.sock for i, c in enumerate(silent) if i not in closed],
                [],
                [],
                max(0.0, end - time.monotonic()),
            )
            for sock in ready:
                closed[[c.sock for c in silent].index(sock)] = time.monotonic() - hup_at
        for i, c in enumerate(silent):  # then their first request
            try:
                replies.append(c.request(b"echo first%d" % i))
            except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
                replies.append(repr(exc))
    finally:
        for c in silent:
            c.close()
    print(
        f"connections accepted before SIGHUP, not asked yet: closed by the drain "
        f"{sorted((i, round(t, 3)) for i, t in closed.items())} (index, s after SIGHUP); "
        f"first requests: {replies}"
    )
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)
    assert not closed, closed
    assert replies == [b"first%d" % i for i in range(len(silent))], replies


@pytest.mark.xfail(
    CONNECTING_CLOSED_AT_DRAIN,
    strict=True,
    reason=(
        "bug: a connection whose connect task (on_connect) runs when its worker begins "
        "draining is skipped by Connection._drain as busy, then closed by the server's "
        "on_idle the moment on_connect returns, without FIRST_REQUEST_GRACE: its first "
        "request gets EOF or a reset. The same happens to a connection accepted as the "
        "drain begins, which is what drops requests in a reload under load"
    ),
)
@pytest.mark.timeout(60)
def test_sighup_reload_answers_connections_still_in_on_connect(apps: list[AppProcess]) -> None:
    """A connection an old worker is still setting up (a slow on_connect) when the reload
    starts gets the same grace for its first request as one accepted and silent."""
    delay = 3.0
    app = start(apps, 2, connect_delay=delay)
    app.wait_serving()
    # wait_serving's own probe went through on_connect: its line may still be in transit
    assert app.wait_log("CONNECTED pid=", 10.0, 1), app.stderr()
    connecting = app.count("CONNECTING pid=")
    connected = app.count("CONNECTED pid=")
    conns = [app.connect() for _ in range(2)]
    replies: list[bytes | str] = []
    closed: dict[int, float] = {}
    try:
        assert app.wait_log("CONNECTING pid=", 10.0, connecting + len(conns)), app.stderr()
        app.signal(signal.SIGHUP)
        assert app.wait_log("replaced by", 30.0, 2), app.stderr()
        # the scenario: both old workers were told to drain while on_connect still ran
        assert app.count("CONNECTED pid=") == connected, "on_connect ended before the drain"
        assert app.wait_log("CONNECTED pid=", delay + 10.0, connected + len(conns))
        ended = time.monotonic()
        # on_connect returned: for 0.3s, watch whether the old workers close them
        end = ended + 0.3
        while len(closed) < len(conns) and time.monotonic() < end:
            ready, _, _ = select.select(
                [c.sock for i, c in enumerate(conns) if i not in closed],
                [],
                [],
                max(0.0, end - time.monotonic()),
            )
            for sock in ready:
                closed[[c.sock for c in conns].index(sock)] = time.monotonic() - ended
        for i, c in enumerate(conns):  # then their first request
            try:
                replies.append(c.request(b"echo first%d" % i))
            except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
                replies.append(repr(exc))
    finally:
        for c in conns:
            c.close()
    print(
        f"connections in on_connect when the drain began: closed "
        f"{sorted((i, round(t, 3)) for i, t in closed.items())} (index, s after on_connect "
        f"returned); first requests: {replies}"
    )
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)
    assert not closed, closed
    assert replies == [b"first%d" % i for i in range(len(conns))], replies


@pytest.mark.timeout(60)
def test_app_failing_at_start_gives_up(apps: list[AppProcess]) -> None:
    app = start(apps, 2, mode="fail-at-start")
    t0 = time.monotonic()
    code = app.wait_exit(15.0)
    elapsed = time.monotonic() - t0
    err = app.stderr()
    print(f"fail-at-start: exit {code} after {elapsed:.2f}s")
    assert code != 0
    assert "workers keep failing at start" in err, err
    assert "boom" in err
    assert "RuntimeError" in err
    assert "RUN RETURNED" not in app.stdout()
    finish(app)


@pytest.mark.timeout(90)
def test_workers_crashing_after_start_are_restarted_with_backoff(apps: list[AppProcess]) -> None:
    """A worker that served and then dies is restarted at once; when its successors keep
    dying soon after their start, the restarts of that slot back off (a crash loop forks at
    most once per BACKOFF_MAX seconds) and the supervisor never gives up on them."""
    app = start(apps, 1 + 1, shutdown_timeout=5.0)
    app.wait_serving()
    crashes = 6
    for i in range(crashes):
        c = app.connect()
        try:
            pid = c.ask_pid()
            # a death within EARLY_DEATH (1 s) of the start would count as a start failure
            threading.Event().wait(1.1)  # not synchronisation: the worker must be this old
            c.send(b"crash")
            assert wait_for(lambda p=pid: not alive(p), 10.0), f"worker {pid} did not exit"
        finally:
            c.close()
        assert app.wait_log("SERVING pid=", 30.0, count=2 + i + 1), app.stderr()
    err = app.stderr()
    delays = [float(m) for m in re.findall(r"restarting it in ([0-9.]+)s", err)]
    immediate = len(re.findall(r"exited with code 3; restarting it\n", err))
    print(f"{crashes} crashes: restarted at once {immediate}x, after delays {delays}")
    # 6 crashes over 2 slots: one slot had at least 3 in a row, so delays 0.1 and 0.2 s
    assert immediate + len(delays) == crashes, err
    assert 1 <= immediate <= 2, err
    assert 0.1 in delays and 0.2 in delays, err
    assert "workers keep failing" not in err
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)


@pytest.mark.timeout(60)
def test_single_process_sigint(apps: list[AppProcess]) -> None:
    timeout = 20.0
    app = start(apps, 1, shutdown_timeout=timeout, mode="instance")  # an EventLoop itself
    app.wait_serving()
    assert app.workers_now() == set()  # serves in the process itself
    conn = app.connect(timeout=5.0)
    try:
        conn.send(b"sleep 1")
        assert app.wait_log("SLEEPING pid=", 15.0), app.stderr()
        t0 = time.monotonic()
        app.signal(signal.SIGINT)
        assert conn.read_line() == b"done"
        answered = time.monotonic() - t0
        # then the drained connection is closed, long before shutdown_timeout
        expect_eof(app, conn, 5.0, f"SIGINT, answered after {answered:.2f}s")
        closed = time.monotonic() - t0
    finally:
        conn.close()
    code = app.wait_exit(15.0)
    exited = time.monotonic() - t0
    err = app.stderr()
    print(
        f"workers=1, SIGINT with `sleep 1` in flight: answered after {answered:.2f}s, "
        f"closed after {closed:.2f}s, exit {code} after {exited:.2f}s"
    )
    assert_exit(app, code)
    assert "RUN RETURNED" in app.stdout()
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    finish(app)


_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)


def signal_thread(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to thread ``tid`` of process ``pid`` (tgkill): a process-directed
    signal the kernel happened to hand to that thread, made certain."""
    assert _SYS_TGKILL is not None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_TGKILL, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


@pytest.mark.xfail(
    SIGNAL_LOST_OFF_MAIN,
    strict=True,
    reason=(
        "bug: a stop signal the kernel delivers to a thread other than the main one is "
        "never acted on: ServeUntilSignalled's handler is a Python one, run by the main "
        "thread only, which waits in EventLoop.serve on an untimed threading.Event.wait "
        "that only a signal delivered to that very thread interrupts. Seen by chance on a "
        "loaded machine: workers=1 not stopping on SIGINT, a worker not draining on the "
        "supervisor's SIGTERM (killed at the deadline: RuntimeError), a worker not "
        "answering SIGUSR1 (stats of 1 worker)"
    ),
)
@pytest.mark.skipif(_SYS_TGKILL is None, reason="tgkill number unknown on this machine")
@pytest.mark.timeout(60)
def test_stop_signal_delivered_to_another_thread(apps: list[AppProcess]) -> None:
    """POSIX lets the kernel hand a process-directed signal to any thread that does not
    block it; a serving process stops gracefully whichever thread receives SIGTERM."""
    app = start(apps, 1)
    app.wait_serving()
    others = sorted(int(t) for t in os.listdir(f"/proc/{app.pid}/task") if int(t) != app.pid)
    assert others, "a serving process has poller threads"
    signal_thread(app.pid, others[0], signal.SIGTERM)
    try:
        code: int | None = app.proc.wait(5.0)
    except subprocess.TimeoutExpired:
        code = None
        dump = app.dump_stacks()
        os.kill(app.pid, signal.SIGTERM)  # process-directed this time: the main thread
        print(f"still serving 5s after SIGTERM to thread {others[0]}:\n{dump}")
    assert code == 0, f"exit {code}:\n{app.stderr()}"
    assert "RUN RETURNED" in app.stdout()
    finish(app)


@pytest.mark.timeout(60)
def test_sigusr1_logs_summed_stats(apps: list[AppProcess]) -> None:
    app = start(apps, 2)
    app.wait_serving()
    conns = [app.connect() for _ in range(3)]
    try:
        for c in conns:
            c.ask_pid()  # accepted and served: open on one of the workers
        pids = {c.pid for c in conns}
        sent_at = time.monotonic()
        app.signal(signal.SIGUSR1)
        assert app.wait_log("stats of", 10.0), app.stderr()
        took = time.monotonic() - sent_at
        line = next(ln for ln in app.stderr().splitlines() if "stats of" in ln)
        print(f"{line} ({took:.3f}s after SIGUSR1; connections on {sorted(pids)})")
        what = f"{line}\n{took:.3f}s after SIGUSR1; stderr:\n{app.stderr()}"
        if "stats of 2 worker(s)" not in line and took >= 0.9 and SIGNAL_LOST_OFF_MAIN:
            # a ready, idle worker that did not answer in the supervisor's STATS_WAIT
            # (3 s): its SIGUSR1 handler never ran
            for c in conns:
                c.close()
            finish(app)
            pytest.xfail(f"known bug (test_stop_signal_delivered_to_another_thread): {what}")
        assert "stats of 2 worker(s)" in line, what
        assert "connections_open=3," in line, what
    finally:
        for c in conns:
            c.close()
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)


@pytest.mark.timeout(60)
def test_unix_socket_shared_by_workers(apps: list[AppProcess], tmp_path: Path) -> None:
    path = str(tmp_path / "run.sock")
    app = start(apps, 2, network="unix", address=path)
    app.wait_serving()
    pids: set[int] = set()
    for i in range(20):
        c = app.connect()
        try:
            assert c.request(b"echo u%d" % i) == b"u%d" % i
            pids.add(c.ask_pid())
        finally:
            c.close()
    assert pids <= app.workers_now(), pids
    app.signal(signal.SIGTERM)
    assert_exit(app, app.wait_exit(20.0))
    finish(app)


def _no_fork() -> int:
    raise AssertionError("netpoll.run forked")


def test_argument_errors_raise_before_forking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fork", _no_fork)

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        pass

    def factory() -> netpoll.EventLoop:
        return netpoll.EventLoop(handler)

    with pytest.raises(TypeError, match="callable returning an EventLoop"):
        netpoll.run(netpoll.EventLoop(handler), "tcp", "127.0.0.1:0", workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        netpoll.run(factory, "tcp", "127.0.0.1:0", workers=0)
    with pytest.raises(TypeError, match=r"workers must be (an )?int"):
        netpoll.run(factory, "tcp", "127.0.0.1:0", workers=True)
    with pytest.raises(TypeError, match="ssl must be an ssl"):
        netpoll.run(factory, "tcp", "127.0.0.1:0", workers=2, ssl=object())
    with pytest.raises(TypeError, match="ssl must be an ssl"):
        netpoll.run(factory, "tcp", "127.0.0.1:0", ssl=object())
