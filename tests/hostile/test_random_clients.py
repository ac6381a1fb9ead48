"""Randomized clients (hypothesis): random sizes, splits, pauses and endings against the
echo and RPC servers, checking every byte that comes back."""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from examples.rpc import server_on_request
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ._harness import (
    Case,
    LiveServer,
    LogCapture,
    Proto,
    RpcUpper,
    connect,
    frame,
    frame_echo,
    recv_until_closed,
)

EXAMPLES = 30
RSS_SLACK = 16 << 20
PAUSES = (0.0, 0.0, 0.0, 0.001, 0.005, 0.02)
MAX_PIECES = 300  # a stream goes out in at most this many pieces (1-byte pieces would make
# a 400 KB stream a slowloris that the server's read timeout rightly closes)
MAX_PAUSED = 0.3  # seconds of pauses per example at most


@dataclass
class Plan:
    payloads: list[bytes]
    chunks: list[int]  # the byte stream goes out in pieces of these sizes, cycled
    pauses: list[float]  # waits between pieces, cycled
    ending: str  # "close": read every reply, then close; "half-close": SHUT_WR, read to EOF;
    # "abort": reset after ``cut`` of the stream bytes
    cut: float


@st.composite
def plans(draw: Callable[..., Any]) -> Plan:
    sizes = draw(
        st.lists(
            st.one_of(st.integers(0, 64), st.integers(65, 70_000), st.integers(70_001, 400_000)),
            min_size=1,
            max_size=8,
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    payloads = [rng.randbytes(n) for n in sizes]
    chunks = draw(st.lists(st.integers(1, 200_000), min_size=1, max_size=12))
    pauses = draw(st.lists(st.sampled_from(PAUSES), min_size=1, max_size=12))
    ending = draw(st.sampled_from(["close", "half-close", "abort"]))
    cut = draw(st.floats(0.0, 1.0))
    return Plan(payloads, chunks, pauses, ending, cut)


def run_plan(addr: Any, plan: Plan, reply: Callable[[bytes], bytes]) -> None:
    stream = b"".join(frame(p) for p in plan.payloads)
    expected = b"".join(reply(p) for p in plan.payloads)
    if plan.ending == "abort":
        stream = stream[: int(len(stream) * plan.cut)]
    s = connect(addr, timeout=10)
    got: list[tuple[bytes, str]] = []

    def read() -> None:
        if plan.ending == "close":
            buf = bytearray()
            while len(buf) < len(expected):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
            got.append((bytes(buf), "complete"))
        else:
            got.append(recv_until_closed(s, limit=len(expected) + 1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pace = threading.Event()
    pos = k = 0
    smallest = -(-len(stream) // MAX_PIECES)
    paused = 0.0
    try:
        while pos < len(stream):
            n = max(plan.chunks[k % len(plan.chunks)], smallest)
            s.sendall(stream[pos : pos + n])
            pos += n
            pause = plan.pauses[k % len(plan.pauses)]
            if pause and paused < MAX_PAUSED:
                paused += pause
                pace.wait(pause)
            k += 1
        if plan.ending == "abort":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RD)  # wakes the reader; nothing goes on the wire
            reader.join(10)
            s.close()  # with a zero linger: a reset
            return
        if plan.ending == "half-close":
            s.shutdown(socket.SHUT_WR)
        reader.join(15)
        assert got, "the reader did not finish"
        data, end = got[0]
        assert len(data) == len(expected), f"{len(data)} of {len(expected)} reply bytes ({end})"
        assert data == expected, "reply bytes differ"
        if plan.ending == "half-close":
            assert end == "eof", end
    finally:
        s.close()


SERVERS: dict[str, tuple[Callable[..., Any], Callable[[bytes], bytes], Proto]] = {
    "echo": (frame_echo, frame, Proto()),
    "rpc": (server_on_request, lambda p: frame(p.upper()), RpcUpper()),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_randomized_clients(netpoll_log: LogCapture, server: str) -> None:
    handler, reply, proto = SERVERS[server]
    ran: list[str] = []

    with (
        LiveServer(handler, read_timeout=5) as srv,
        # hypothesis keeps its own bookkeeping of the examples it ran: more heap blocks
        Case(f"random-{server}", srv, proto, block_slack=30_000) as case,
    ):

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            print_blob=True,
            # no shrinking: a failure is reported as found, within the test's time bound
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        )
        @given(plan=plans())
        def check(plan: Plan) -> None:
            ran.append(plan.ending)
            run_plan(srv.addr, plan, reply)

        check()
        case.finish()
        exceptions = case.delta("handler_exceptions")
    case.record(
        examples=len(ran),
        endings={e: ran.count(e) for e in ("close", "half-close", "abort")},
        handler_exceptions=exceptions,
    )

    assert exceptions == 0
    assert not netpoll_log.at_least(40), netpoll_log.describe(40)
    case.check(RSS_SLACK)
