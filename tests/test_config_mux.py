"""Global configuration (pollers, load balancing, runner, logging) and mux.ShardQueue."""

from __future__ import annotations

import io
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    ServeFactory,
    echo_handler,
    recv_exact,
    recv_until_eof,
    wait_until,
)

# --------------------------------------------------------------------------- pollers


def _serve_recording_pollers(serve: ServeFactory) -> tuple[Any, list[Any], threading.Lock]:
    lock = threading.Lock()
    pollers: list[Any] = []

    def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
        with lock:
            pollers.append(conn.poller)

    return serve(echo_handler, on_connect=on_connect), pollers, lock


def _round_trips(srv: Any, count: int, tag: bytes) -> list[socket.socket]:
    clients = [srv.connect() for _ in range(count)]
    for i, c in enumerate(clients):
        msg = tag + b"-%d" % i
        c.sendall(msg)
        assert recv_exact(c, len(msg)) == msg
    return clients


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", ["configure", "setters"])
@pytest.mark.parametrize("lb", list(netpoll.LoadBalance))
def test_load_balance_members(serve: ServeFactory, lb: netpoll.LoadBalance, via: str) -> None:
    if via == "configure":
        netpoll.configure(poller_num=3, load_balance=lb)
    else:
        netpoll.set_num_loops(3)
        netpoll.set_load_balance(lb)
    srv, pollers, lock = _serve_recording_pollers(serve)
    _round_trips(srv, 12, b"lb")
    with lock:
        assert len(pollers) == 12
        distinct = {id(p) for p in pollers}
    assert all(p is not None for p in pollers)
    if lb is netpoll.LoadBalance.SOURCE_ADDR_HASH:
        assert len(distinct) == 1  # every connection comes from 127.0.0.1
    elif lb is netpoll.LoadBalance.ROUND_ROBIN:
        assert len(distinct) == 3
    else:  # RANDOM: all on one of three pollers has probability 3 / 3**12
        assert len(distinct) >= 2


@pytest.mark.timeout(20)
def test_poller_num_changes_while_serving(serve: ServeFactory) -> None:
    netpoll.configure(poller_num=1, load_balance=netpoll.LoadBalance.ROUND_ROBIN)
    srv, pollers, lock = _serve_recording_pollers(serve)
    first = _round_trips(srv, 2, b"one")
    with lock:
        assert len({id(p) for p in pollers}) == 1
        del pollers[:]
    netpoll.set_num_loops(4)
    grown = _round_trips(srv, 8, b"four")
    with lock:
        assert len({id(p) for p in pollers}) == 4
        four = {id(p) for p in pollers}
        del pollers[:]
    netpoll.configure(poller_num=2)
    shrunk = _round_trips(srv, 4, b"two")
    with lock:
        two = {id(p) for p in pollers}
    assert len(two) == 2 and two <= four
    for i, c in enumerate(first + grown + shrunk):  # the earlier connections are still served
        msg = b"again-%d" % i
        c.sendall(msg)
        assert recv_exact(c, len(msg)) == msg


# --------------------------------------------------------------------------- bad arguments


_BAD_CALLS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("configure-poller_num-0", lambda: netpoll.configure(poller_num=0), ValueError, "poller_num"),
    (
        "configure-poller_num-str",
        lambda: netpoll.configure(poller_num="2"),
        TypeError,
        "poller_num",
    ),
    ("configure-buffer_size", lambda: netpoll.configure(buffer_size=-1), ValueError, "buffer_size"),
    ("configure-runner", lambda: netpoll.configure(runner=5), TypeError, "runner"),
    ("configure-logger", lambda: netpoll.configure(logger="x"), TypeError, "logger"),
    (
        "configure-load_balance",
        lambda: netpoll.configure(load_balance="random"),
        TypeError,
        "load_balance",
    ),
    ("set_num_loops-0", lambda: netpoll.set_num_loops(0), ValueError, r"\bn\b"),
    ("set_num_loops-float", lambda: netpoll.set_num_loops(1.5), TypeError, r"\bn\b"),
    ("set_load_balance", lambda: netpoll.set_load_balance("x"), TypeError, r"\blb\b"),
    ("set_runner", lambda: netpoll.set_runner(5), TypeError, r"\bfn\b"),
    ("set_logger_output", lambda: netpoll.set_logger_output(5), TypeError, r"\bf\b"),
    ("EventLoop-on_request", lambda: netpoll.EventLoop("x"), TypeError, "on_request"),
    (
        "EventLoop-on_connect",
        lambda: netpoll.EventLoop(echo_handler, on_connect=3),
        TypeError,
        "on_connect",
    ),
    (
        "EventLoop-read_timeout",
        lambda: netpoll.EventLoop(echo_handler, read_timeout=-1),
        ValueError,
        "read_timeout",
    ),
    (
        "EventLoop-idle_timeout",
        lambda: netpoll.EventLoop(echo_handler, idle_timeout="soon"),
        TypeError,
        "idle_timeout",
    ),
    (
        "EventLoop-read_buffer_limit",
        lambda: netpoll.EventLoop(echo_handler, read_buffer_limit=-5),
        ValueError,
        "read_buffer_limit",
    ),
    ("ShardQueue-size-0", lambda: netpoll.mux.ShardQueue(0, None), ValueError, "size"),
    ("ShardQueue-size-float", lambda: netpoll.mux.ShardQueue(1.5, None), TypeError, "size"),
]


@pytest.mark.parametrize(
    ("call", "exc_type", "word"),
    [
        pytest.param(
            call,
            exc_type,
            word,
            id=name,
        )
        for name, call, exc_type, word in _BAD_CALLS
    ],
)
def test_bad_arguments_name_the_argument(
    call: Callable[[], Any], exc_type: type[Exception], word: str
) -> None:
    with pytest.raises(exc_type, match=word):
        call()


# --------------------------------------------------------------------------- runners


@pytest.mark.timeout(20)
def test_custom_runner_runs_handler_tasks(serve: ServeFactory) -> None:
    lock = threading.Lock()
    runner_calls: list[Any] = []
    handler_threads: list[str] = []

    def runner(ctx: Any, task: Callable[[], None]) -> None:
        with lock:
            runner_calls.append(ctx)
        threading.Thread(target=task, name="test-runner-task", daemon=True).start()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> str:
        return "connected-ctx"

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        with lock:
            handler_threads.append(threading.current_thread().name)
        echo_handler(ctx, conn)

    netpoll.configure(runner=runner)
    srv = serve(handler, on_connect=on_connect)
    c = srv.connect()
    for i in range(5):
        c.sendall(b"run%d" % i)
        assert recv_exact(c, 4) == b"run%d" % i
    with lock:
        assert handler_threads and all(n == "test-runner-task" for n in handler_threads)
        assert len(runner_calls) >= 1
    # Restoring the default runner: handler tasks no longer go through ours.
    netpoll.set_runner(None)
    with lock:
        before = len(runner_calls)
        handler_threads.clear()
    c2 = srv.connect()
    for i in range(3):
        c2.sendall(b"def%d" % i)
        assert recv_exact(c2, 4) == b"def%d" % i
    with lock:
        assert len(runner_calls) == before
        assert handler_threads and "test-runner-task" not in handler_threads


@pytest.mark.timeout(20)
def test_disable_runner_pool_runs_tasks_on_new_threads(serve: ServeFactory) -> None:
    netpoll.disable_runner_pool()
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        with lock:
            threads.append(threading.current_thread())
        echo_handler(ctx, conn)

    srv = serve(handler)
    for i in range(3):
        existing = set(threading.enumerate())
        c = srv.connect()
        c.sendall(b"t%d" % i)
        assert recv_exact(c, 2) == b"t%d" % i
        with lock:
            assert threads[-1] not in existing, "the task ran on a thread that existed before"
    with lock:
        assert len(threads) == 3
        assert len({id(t) for t in threads}) == 3  # kept alive by the list: ids are unique


# --------------------------------------------------------------------------- logging


def _raising_handler(ctx: Any, conn: netpoll.Connection) -> None:
    conn.next(len(conn))
    raise RuntimeError("deliberate failure plugh")


@pytest.mark.timeout(20)
def test_set_logger_output(serve: ServeFactory) -> None:
    out = io.StringIO()
    netpoll.set_logger_output(out)
    srv = serve(_raising_handler)
    c = srv.connect()
    c.sendall(b"x")
    assert recv_until_eof(c) == b""
    text = out.getvalue()
    assert "plugh" in text
    assert "Traceback" in text
    # A second call replaces the first stream.
    out2 = io.StringIO()
    netpoll.set_logger_output(out2)
    c2 = srv.connect()
    c2.sendall(b"y")
    assert recv_until_eof(c2) == b""
    assert out.getvalue() == text
    assert "plugh" in out2.getvalue()


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def custom_logger() -> Iterator[tuple[logging.Logger, _ListHandler]]:
    log = logging.getLogger("netpoll_tests.custom")
    handler = _ListHandler()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield log, handler
    finally:
        log.removeHandler(handler)


@pytest.mark.timeout(20)
def test_configured_logger_receives_handler_errors(
    serve: ServeFactory, custom_logger: tuple[logging.Logger, _ListHandler]
) -> None:
    log, records = custom_logger
    netpoll.configure(logger=log)
    srv = serve(_raising_handler)
    c = srv.connect()
    c.sendall(b"x")
    assert recv_until_eof(c) == b""
    assert any("plugh" in str(r.exc_info[1]) for r in records.records if r.exc_info)


# --------------------------------------------------------------------------- mux


class _Sink:
    """A plain socket server end that reads everything into a buffer on its own thread."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self.data = bytearray()
        self.cond = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.gate.wait(IO_TIMEOUT)
        while True:
            try:
                chunk = self.peer.recv(1 << 16)
            except OSError:
                chunk = b""
            with self.cond:
                if not chunk:
                    self.cond.notify_all()
                    return
                self.data += chunk
                self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = IO_TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.data) >= n, timeout)


@pytest.fixture
def mux_pair(network: str, tmp_path: Path) -> Iterator[tuple[netpoll.Connection, _Sink]]:
    if network == "unix":
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(str(tmp_path / "mux.sock"))
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(IO_TIMEOUT)
    conn = netpoll.dial_connection(network, lsock.getsockname())
    peer, _ = lsock.accept()
    peer.settimeout(IO_TIMEOUT)
    try:
        yield conn, _Sink(peer)
    finally:
        conn.close()
        peer.close()
        lsock.close()


def _getter(data: bytes | None) -> Callable[[], tuple[Any, bool]]:
    def get() -> tuple[Any, bool]:
        if data is None:
            return None, True
        buf = netpoll.LinkBuffer()
        buf.write_binary(data)
        return buf, False

    return get


@pytest.mark.timeout(20)
def test_shard_queue_delivers_each_threads_writes_in_order(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(4, conn)
    n_threads, per_thread = 4, 60
    barrier = threading.Barrier(n_threads)
    expected: dict[int, list[int]] = {t: [] for t in range(n_threads)}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait(IO_TIMEOUT)
            i = 0
            while i < per_thread:
                batch = []
                for k in range(i, min(i + 1 + (i % 3), per_thread)):  # 1 to 3 getters per add
                    if k % 10 == 9:
                        batch.append(_getter(None))  # nil: skipped
                    else:
                        expected[t].append(k)
                        batch.append(_getter(b"<%d:%03d>" % (t, k)))
                q.add(*batch)
                i += len(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(IO_TIMEOUT)
    assert not errors
    total = sum(len(v) for v in expected.values()) * len(b"<0:000>")
    assert sink.wait_for(total), f"only {len(sink.data)} of {total} bytes without a flush call"
    tokens = re.findall(rb"<(\d):(\d{3})>", bytes(sink.data))
    assert len(tokens) * len(b"<0:000>") == len(sink.data) == total  # nothing torn or extra
    got: dict[int, list[int]] = {t: [] for t in range(n_threads)}
    for t, k in tokens:
        got[int(t)].append(int(k))
    assert got == expected
    q.close()


@pytest.mark.timeout(20)
def test_shard_queue_close_waits_then_refuses(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(2, conn)
    gate = threading.Event()
    in_getter = threading.Event()

    def slow_getter() -> tuple[Any, bool]:
        in_getter.set()
        gate.wait(IO_TIMEOUT)
        return _getter(b"[slow]")()

    q.add(slow_getter)
    q.add(*[_getter(b"[%02d]" % i) for i in range(10)])
    assert in_getter.wait(IO_TIMEOUT)
    closed = threading.Event()
    errors: list[BaseException] = []

    def do_close() -> None:
        try:
            q.close()
        except BaseException as exc:
            errors.append(exc)
        closed.set()

    t = threading.Thread(target=do_close, daemon=True)
    t.start()
    assert not closed.wait(0.2), "close() returned while queued work was pending"
    gate.set()
    assert closed.wait(IO_TIMEOUT)
    assert not errors
    expected = b"[slow]" + b"".join(b"[%02d]" % i for i in range(10))
    assert sink.wait_for(len(expected))
    assert bytes(sink.data) == expected
    with pytest.raises(netpoll.ConnectionClosedError, match=r"^ShardQueue is closed$"):
        q.add(_getter(b"late"))
    assert not sink.wait_for(len(expected) + 1, 0.1)  # nothing more was sent


@pytest.mark.timeout(30)
def test_shard_queue_large_writers(mux_pair: tuple[netpoll.Connection, _Sink]) -> None:
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(8, conn)
    chunks = [bytes([i]) * (64 << 10) for i in range(160)]  # 10 MiB, beyond kernel buffers
    for c in chunks:
        q.add(_getter(c))
    q.close()
    assert sink.wait_for(len(chunks) * (64 << 10), 20)
    assert bytes(sink.data) == b"".join(chunks)


@pytest.mark.timeout(20)
def test_shard_queue_close_from_a_getter_does_not_wait_for_itself(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    """close() called on the drain thread (inside a getter) refuses further work at once;
    what was queued still goes out."""
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(2, conn)
    closed = threading.Event()

    def closing_getter() -> tuple[Any, bool]:
        q.close()  # would wait forever for the drain it runs in
        closed.set()
        return _getter(b"[closer]")()

    q.add(closing_getter, _getter(b"[after]"))
    assert closed.wait(IO_TIMEOUT)
    assert sink.wait_for(len(b"[closer][after]"))
    assert bytes(sink.data) == b"[closer][after]"
    with pytest.raises(netpoll.ConnectionClosedError):
        q.add(_getter(b"late"))


@pytest.mark.timeout(20)
def test_shard_queue_close_times_out_with_work_queued(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    """close(timeout) raises TimeoutError once ``timeout`` seconds pass with writers still
    queued (close(0) at once); the queue refuses new work from then on, and what was
    queued before still goes out, after which close() returns."""
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(2, conn)
    in_getter = threading.Event()
    gate = threading.Event()

    def stuck_getter() -> tuple[Any, bool]:
        in_getter.set()
        gate.wait(IO_TIMEOUT)
        return _getter(b"[stuck]")()

    q.add(stuck_getter, _getter(b"[queued]"))
    assert in_getter.wait(IO_TIMEOUT)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"ShardQueue\.close timed out"):
            q.close(0.3)
        elapsed = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"ShardQueue\.close timed out"):
            q.close(0)
        at_once = time.monotonic() - start
        with pytest.raises(netpoll.ConnectionClosedError, match=r"^ShardQueue is closed$"):
            q.add(_getter(b"[late]"))
        assert len(sink.data) == 0, "sent while the getter was still running"
    finally:
        gate.set()
    assert 0.25 <= elapsed < IO_TIMEOUT, f"close(0.3) gave up after {elapsed:.3f}s"
    assert at_once < 0.25, f"close(0) waited {at_once:.3f}s"
    expected = b"[stuck][queued]"
    assert sink.wait_for(len(expected))
    q.close(IO_TIMEOUT)  # drained now: returns without raising
    assert bytes(sink.data) == expected
    assert len(q) == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("timeout", "exc"), [(-1, ValueError), (math.nan, ValueError), ("1", TypeError)]
)
def test_shard_queue_close_checks_its_timeout(
    mux_pair: tuple[netpoll.Connection, _Sink], timeout: Any, exc: type[Exception]
) -> None:
    conn, _ = mux_pair
    q = netpoll.mux.ShardQueue(1, conn)
    with pytest.raises(exc, match="timeout"):
        q.close(timeout)
    q.close(math.inf)  # no limit, like None


@pytest.mark.timeout(20)
def test_set_logger_output_follows_a_logger_change(
    serve: ServeFactory, custom_logger: tuple[logging.Logger, _ListHandler]
) -> None:
    """set_logger_output after configure(logger=...) takes its stream off the old logger
    too: records then go to the new stream only."""
    log, _ = custom_logger
    old = logging.getLogger("netpoll")
    out = io.StringIO()
    netpoll.set_logger_output(out)  # on the default logger
    netpoll.configure(logger=log)
    out2 = io.StringIO()
    netpoll.set_logger_output(out2)  # on the new one; the first handler must go
    try:
        old.error("to the old logger")
        assert "to the old logger" not in out.getvalue()
        srv = serve(_raising_handler)
        c = srv.connect()
        c.sendall(b"x")
        assert recv_until_eof(c) == b""
        assert "plugh" in out2.getvalue()
    finally:
        for h in list(log.handlers):
            if isinstance(h, logging.StreamHandler) and h.stream is out2:
                log.removeHandler(h)


@pytest.mark.timeout(20)
def test_shard_queue_size_len_and_argument_checks(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    """size is the shard count; len() counts getters queued and not yet drained; add()
    with nothing is a no-op, and a call with any non-callable raises and queues none."""
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(3, conn)
    assert q.size == 3
    assert len(q) == 0
    q.add()
    assert len(q) == 0
    with pytest.raises(TypeError, match="getters must be callables, not bytes"):
        q.add(_getter(b"[never]"), b"not a getter")  # type: ignore[arg-type]
    assert len(q) == 0
    in_getter = threading.Event()
    gate = threading.Event()

    def stuck_getter() -> tuple[Any, bool]:
        in_getter.set()
        gate.wait(IO_TIMEOUT)
        return _getter(b"[a]")()

    q.add(stuck_getter)
    assert in_getter.wait(IO_TIMEOUT)
    q.add(_getter(b"[b]"), _getter(b"[c]"))  # queued behind the running batch
    assert len(q) == 2
    gate.set()
    assert sink.wait_for(len(b"[a][b][c]"))
    q.close(IO_TIMEOUT)
    assert len(q) == 0
    assert bytes(sink.data) == b"[a][b][c]"  # the rejected call's getter never ran


@pytest.mark.timeout(20)
def test_shard_queue_drains_through_the_configured_runner(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    """With a runner configured, the drain task is handed to it (ctx None), as handler
    tasks are."""
    conn, sink = mux_pair
    calls: list[Any] = []

    def runner(ctx: Any, task: Callable[[], None]) -> None:
        calls.append(ctx)
        threading.Thread(target=task, name="test-mux-runner", daemon=True).start()

    netpoll.set_runner(runner)
    q = netpoll.mux.ShardQueue(2, conn)
    q.add(_getter(b"via runner"))
    assert sink.wait_for(10)
    q.close(IO_TIMEOUT)
    assert calls == [None]
    assert bytes(sink.data) == b"via runner"


@pytest.mark.timeout(20)
def test_shard_queue_on_a_closed_connection_drops_work_and_refuses_more(
    mux_pair: tuple[netpoll.Connection, _Sink],
) -> None:
    """When the connection is closed, the drain's write fails: what was queued is
    dropped, the queue refuses new work, and close() returns at once."""
    conn, sink = mux_pair
    q = netpoll.mux.ShardQueue(2, conn)
    conn.close()
    q.add(_getter(b"[lost]"), _getter(b"[lost too]"))
    assert wait_until(lambda: _adds_refused(q), IO_TIMEOUT), "the queue still takes work"
    assert len(q) == 0
    with pytest.raises(netpoll.ConnectionClosedError, match=r"^ShardQueue is closed$"):
        q.add(_getter(b"[late]"))
    q.close(0)  # nothing is draining: returns without waiting or raising
    sink.thread.join(IO_TIMEOUT)  # the peer saw the close
    assert not sink.thread.is_alive()
    assert bytes(sink.data) == b""


def _adds_refused(q: netpoll.mux.ShardQueue) -> bool:
    """True once ``q`` refuses work (it fails the drain on its own thread)."""
    try:
        q.add(_getter(None))  # a nil writer: nothing is sent if it is accepted
    except netpoll.ConnectionClosedError:
        return True
    return False


@pytest.mark.timeout(20)
def test_shard_queue_getter_error_is_logged_and_closes_the_connection(
    mux_pair: tuple[netpoll.Connection, _Sink],
    custom_logger: tuple[logging.Logger, _ListHandler],
) -> None:
    """A getter that raises: the error is logged with its traceback, the connection is
    closed (the peer reads the end of the stream) and the queue refuses new work."""
    conn, sink = mux_pair
    log, records = custom_logger
    netpoll.configure(logger=log)

    def failing_getter() -> tuple[Any, bool]:
        raise RuntimeError("getter failure xyzzy")

    q = netpoll.mux.ShardQueue(2, conn)
    q.add(failing_getter, _getter(b"[dropped]"))
    assert wait_until(lambda: not conn.is_active(), IO_TIMEOUT)
    sink.thread.join(IO_TIMEOUT)
    assert not sink.thread.is_alive(), "the peer did not see the end of the stream"
    assert bytes(sink.data) == b""
    failures = [r for r in records.records if r.exc_info and "xyzzy" in str(r.exc_info[1])]
    assert len(failures) == 1
    assert "ShardQueue failed to write" in failures[0].getMessage()
    with pytest.raises(netpoll.ConnectionClosedError, match=r"^ShardQueue is closed$"):
        q.add(_getter(b"[late]"))
    q.close(0)
