"""The Reader calls of a live Connection against a bytes model, input split at random.

A peer sends a random stream in random pieces from its own thread while the connection
reads it with a random mix of ``read_line``, ``read_binary``, ``next``, ``peek``,
``skip`` and ``until``: whatever the pieces, each call must return what the same call on
the plain bytes returns (the fast paths inline in ``Connection`` and the general ones in
``LinkBuffer`` must agree, on both builds).
"""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netpoll
from conftest import IO_TIMEOUT

# Lines with \n or \r\n endings, stray \r bytes and other bytes, so lines end anywhere.
_BYTES = st.sampled_from([b"a", b"b", b"\r", b"\n", b"\r\n", b"xyz", b"\x00"])
STREAMS = st.lists(_BYTES, min_size=1, max_size=300).map(b"".join)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["read_line", "read_binary", "next", "peek", "skip", "until"]),
        st.integers(1, 40),
    ),
    min_size=1,
    max_size=60,
)


def _expected(op: str, n: int, rest: bytes) -> tuple[bytes, int] | None:
    """What ``op`` returns on ``rest`` and how many bytes it consumes; None if it would
    wait for more input than the stream has."""
    if op == "read_line":
        end = rest.find(b"\n")
        if end < 0:
            return None
        line = rest[:end]
        return (line[:-1] if line.endswith(b"\r") else line), end + 1
    if op == "until":
        end = rest.find(b"\r")
        return None if end < 0 else (rest[: end + 1], end + 1)
    if n > len(rest):
        return None
    if op == "peek":
        return rest[:n], 0
    if op == "skip":
        return b"", n
    return rest[:n], n


@pytest.mark.timeout(120)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=STREAMS, cuts=st.lists(st.integers(1, 64), min_size=1, max_size=40), ops=OPS)
def test_reader_calls_match_the_bytes_model(stream: bytes, cuts: list[int], ops: list) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lsock:
            lsock.bind(path)
            lsock.listen()
            conn = netpoll.dial_connection("unix", path, timeout=IO_TIMEOUT)
            peer, _ = lsock.accept()
        sent = threading.Event()
        errors: list[BaseException] = []

        def send() -> None:  # the stream in pieces, each its own send
            try:
                pos = i = 0
                while pos < len(stream):
                    k = cuts[i % len(cuts)]
                    peer.sendall(stream[pos : pos + k])
                    pos += k
                    i += 1
            except BaseException as exc:  # asserted on the test's thread
                errors.append(exc)
            finally:
                sent.set()

        conn.set_read_timeout(IO_TIMEOUT)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            rest = stream
            for op, n in ops:
                want = _expected(op, n, rest)
                if want is None:
                    break  # it would wait for bytes that never come
                data, used = want
                if op == "read_line":
                    got = bytes(conn.read_line())
                elif op == "until":
                    got = bytes(conn.until(b"\r"))
                elif op == "read_binary":
                    got = conn.read_binary(n)
                elif op == "next":
                    got = bytes(conn.next(n))
                elif op == "peek":
                    got = bytes(conn.peek(n))
                else:
                    conn.skip(n)
                    got = b""
                assert got == data, (op, n, rest[:60])
                rest = rest[used:]
                if len(rest) % 3 == 0:
                    conn.release()
            assert sent.wait(IO_TIMEOUT)
            assert not errors, errors
        finally:
            conn.close()
            peer.close()
            sender.join(IO_TIMEOUT)
