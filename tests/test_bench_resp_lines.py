"""The blocking-style RESP servers of the ``resp-lines-c50`` workload answer correctly.

Each contender's server (netpoll's ``read_line``/``read_binary`` handler, the asyncio and
uvloop Streams ``readline``/``readexactly`` one) runs as the benchmark runs it, a
``python -m bench.server`` process on loopback, and is checked against the replies of
``RespStore``, the command logic every RESP server of the benchmark shares: single
commands, pipelined batches, commands split across two sends at every kind of place,
and clients that leave or misbehave. Every wait is bounded by a socket timeout; progress
is observed through replies, never through sleeps.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.protocols import MAX_BULK, ProtocolError, RespStore, resp_length  # noqa: E402
from bench.runner import Workload, standard_workloads  # noqa: E402
from bench.server import CONTENDERS, serves  # noqa: E402

from _bench_server import BenchServer  # noqa: E402

TIMEOUT = 5.0  # seconds any single wait for the server may take

STREAMS = ["asyncio-streams"]
if importlib.util.find_spec("uvloop") is not None:
    STREAMS.append("uvloop-streams")
SERVED_BY = ["netpoll", *STREAMS]


def resp(*args: bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"server closed after {len(out)} of {n} bytes: {bytes(out)!r}"
        out += chunk
    return bytes(out)


def read_line_reply(sock: socket.socket) -> bytes:
    """One simple-string or error reply (``+OK\\r\\n``, ``-ERR ...\\r\\n``)."""
    out = bytearray()
    while not out.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"server closed mid-reply: {bytes(out)!r}"
        out += chunk
    return bytes(out)


class Server(BenchServer):
    """One ``python -m bench.server`` process serving ``resp-lines`` on loopback."""

    def __init__(self, contender: str) -> None:
        super().__init__(contender, "resp-lines")

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        # Each sendall goes out as it is made: a split command arrives in two pieces.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture(params=SERVED_BY)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(request.param)
    try:
        yield srv
    finally:
        srv.stop()


def test_single_commands(server: Server) -> None:
    with server.connect() as c:
        for command, reply in [
            (resp(b"PING"), b"+PONG\r\n"),
            (b"PING\r\n", b"+PONG\r\n"),  # inline
            (resp(b"GET", b"k"), b"$-1\r\n"),
            (resp(b"SET", b"k", b"hello"), b"+OK\r\n"),
            (resp(b"GET", b"k"), b"$5\r\nhello\r\n"),
            (resp(b"SET", b"k", b""), b"+OK\r\n"),  # an empty bulk string
            (resp(b"GET", b"k"), b"$0\r\n\r\n"),
            (resp(b"ECHO", b"a\r\nb"), b"$4\r\na\r\nb\r\n"),  # CRLF inside a bulk
            (resp(b"CONFIG", b"GET", b"save"), b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (resp(b"COMMAND"), b"*0\r\n"),
        ]:
            c.sendall(command)
            assert recv_exactly(c, len(reply)) == reply, command
        c.sendall(resp(b"FLUSHALL"))
        assert read_line_reply(c).startswith(b"-ERR unknown command")


def test_pipelined_commands(server: Server) -> None:
    """Many commands in one send (and, for the long batch, over many receives) are all
    answered, in order, exactly as RespStore answers them."""
    store = RespStore()
    script = [
        [b"PING"],
        [b"SET", b"key:1", b"xxx"],
        [b"GET", b"key:1"],
        [b"GET", b"nokey"],
        [b"ECHO", b"e" * 300],
        [b"PING", b"hi"],
    ]
    batch = b"".join(resp(*cmd) for cmd in script) + b"PING\r\n\r\n"  # inline, then empty
    want = b"".join(store.execute(cmd) for cmd in script) + b"+PONG\r\n"
    long = [[b"SET", b"key:%d" % i, b"v" * (i % 50)] for i in range(400)]
    long += [[b"GET", b"key:%d" % i] for i in range(400)]
    long_batch = b"".join(resp(*cmd) for cmd in long)
    long_want = b"".join(store.execute(cmd) for cmd in long)
    with server.connect() as c:
        c.sendall(batch)
        assert recv_exactly(c, len(want)) == want
        c.sendall(long_batch)
        assert recv_exactly(c, len(long_want)) == long_want


# Where to cut "*3\r\n$3\r\nSET\r\n$5\r\nsplit\r\n$N\r\n<value>\r\n" into two sends
# (an offset from the end when negative).
CUTS = {
    "in *N": 1,
    "before the CRLF of *N": 2,
    "between CR and LF": 3,
    "in $len": 5,
    "in a bulk string": 10,
    "before a bulk's CRLF": 11,
    "in a bulk's CRLF": 12,
    "between fields": 13,
    "in the last bulk": -4,
    "before the last LF": -1,
}


def test_command_split_across_two_sends(server: Server) -> None:
    """The server waits for the rest of a command that came in two pieces. A complete
    PING goes with the first piece and is answered first: its reply proves the server
    got the piece (with this client waiting for it before sending the rest, a server that
    held replies back until the split command is in would never answer)."""
    with server.connect() as c:
        for where, cut in CUTS.items():
            value = where.encode()
            command = resp(b"SET", b"split", value)
            cut %= len(command)
            c.sendall(resp(b"PING") + command[:cut])
            assert recv_exactly(c, 7) == b"+PONG\r\n", where
            c.sendall(command[cut:])
            assert recv_exactly(c, 5) == b"+OK\r\n", where
            c.sendall(resp(b"GET", b"split"))
            want = b"$%d\r\n%s\r\n" % (len(value), value)
            assert recv_exactly(c, len(want)) == want, where


def test_key_space_is_shared_between_connections(server: Server) -> None:
    with server.connect() as a, server.connect() as b:
        a.sendall(resp(b"SET", b"shared", b"from-a"))
        assert recv_exactly(a, 5) == b"+OK\r\n"
        b.sendall(resp(b"GET", b"shared"))
        assert recv_exactly(b, 12) == b"$6\r\nfrom-a\r\n"


def test_bad_clients_leave_the_server_serving(server: Server) -> None:
    """A malformed command closes that connection; a client leaving mid-command is
    forgotten; others are served throughout."""
    with server.connect() as bad:
        bad.sendall(b"*1\r\n:3\r\n")  # ':' where '$' must be
        assert bad.recv(64) == b""  # closed by the server, nothing answered
    with server.connect() as gone:
        gone.sendall(resp(b"SET", b"half", b"never")[:12])
    with server.connect() as c:
        c.sendall(resp(b"PING"))
        assert recv_exactly(c, 7) == b"+PONG\r\n"
        c.sendall(resp(b"GET", b"half"))
        assert recv_exactly(c, 5) == b"$-1\r\n"
    assert server.alive()


# --- the workload's definition and report ---------------------------------------------------


def test_resp_length() -> None:
    assert resp_length(b"*3", 0x2A, 10) == 3
    assert resp_length(b"$5\r\n", 0x24, MAX_BULK) == 5  # with its CRLF, as Streams read it
    assert resp_length(memoryview(b"$0"), 0x24, MAX_BULK) == 0  # a view, as netpoll reads it
    for bad in (b"", b"$3", b"*x", b"*-1", b"*11"):
        with pytest.raises(ProtocolError):
            resp_length(bad, 0x2A, 10)


def test_workload_definition() -> None:
    (w,) = [w for w in standard_workloads(100) if w.name == "resp-lines-c50"]
    assert (w.server, w.tool, w.conns, w.pipeline) == ("resp-lines", "redis", 50, 1)
    assert w.redis_commands() == "set,get"
    assert w.cases() == [
        ("resp-lines-c50:SET", "RESP SET, blocking-style parser, 50 conns"),
        ("resp-lines-c50:GET", "RESP GET, blocking-style parser, 50 conns"),
    ]
    assert (w.baseline, w.target) == ("asyncio-streams", 1.5)
    served = [c for c in CONTENDERS if w.serves(c)]
    assert served == ["netpoll", "netpoll-pure", "asyncio-streams", "uvloop-streams"]
    (resp_w,) = [w for w in standard_workloads(100) if w.name == "resp-c50"]
    assert resp_w.redis_commands() == "ping,set,get"
    assert all(resp_w.serves(c) for c in CONTENDERS)


def test_server_refuses_a_contender_without_a_blocking_style_server() -> None:
    assert not serves("asyncio-protocol", "resp-lines")
    args = ["--contender", "epoll", "--workload", "resp-lines", "--port", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "served by netpoll" in proc.stderr


def _results(medians: dict[str, float]) -> dict[str, Any]:
    """A report of the blocking-style workload plus resp-c50, with made-up figures."""
    workloads: list[Workload] = [
        w for w in standard_workloads(100) if w.name in ("resp-c50", "resp-lines-c50")
    ]
    contenders = ["netpoll", "asyncio-protocol", "asyncio-streams", "uvloop-protocol"]
    measurements: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for w in workloads:
        for case, _title in w.cases():
            for c in contenders:
                if w.serves(c):
                    measurements[(case, c)] = [{"rps": medians[c], "run": 1}]
    return report.build_results(
        mode="custom",
        command="python -m bench",
        contenders=contenders,
        workloads=workloads,
        settings={
            "warmup": 0,
            "duration": 1,
            "redis_test_seconds": 0.5,
            "runs": 1,
            "server_cpu": 0,
            "load_cpu": 1,
            "idle_conns": 100,
            "env": {},
        },
        measurements=measurements,
        errors={},
        skipped={},
        started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        elapsed_s=1.0,
        interrupted=False,
        tool_versions={},
        revision=None,
    )


def test_report_shows_netpoll_over_asyncio_streams() -> None:
    medians = {
        "netpoll": 90_000.0,
        "asyncio-protocol": 70_000.0,
        "asyncio-streams": 60_000.0,
        "uvloop-protocol": 100_000.0,
    }
    results = _results(medians)
    lines_case = next(c for c in results["cases"] if c["case"] == "resp-lines-c50:SET")
    # Only the contenders with a server for it have a row, and its ratios are to Streams.
    assert [e["contender"] for e in lines_case["contenders"]] == ["netpoll", "asyncio-streams"]
    rows = {(r[0] or "", r[1]): r for r in report.table_rows(results)}
    assert rows[("RESP SET, blocking-style parser, 50 conns", "netpoll")][6] == "1.50x*"
    assert rows[("RESP SET, 50 conns", "netpoll")][6] == "0.90x"  # vs uvloop Protocol
    note = "\n".join(report.own_baseline_note(results))
    assert "RESP GET, blocking-style parser, 50 conns: netpoll / asyncio-streams 1.50x" in note
    assert "target >= 1.5x" in note
    # The headline's geometric mean covers only the rows relative to uvloop Protocol.
    assert report.geomean_ratios(results)["netpoll"] == (pytest.approx(0.9), 4)
    assert "netpoll / asyncio-streams 1.50x" in report.format_docs(results, None)
