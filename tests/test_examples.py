"""The examples run end to end over loopback."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import echo_client
import echo_server
import http_hello
import proxy
import rpc

pytestmark = pytest.mark.timeout(30)


def _serve(loop: netpoll.EventLoop) -> tuple[Any, threading.Thread]:
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    thread = threading.Thread(target=loop.serve, args=(listener,), daemon=True)
    thread.start()
    return listener.addr, thread


@pytest.fixture
def echo_addr() -> Iterator[Any]:
    loop = netpoll.EventLoop(echo_server.on_request)
    addr, thread = _serve(loop)
    yield addr
    loop.shutdown(5)
    thread.join(5)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_echo_client_against_echo_server(
    echo_addr: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    echo_client.main(echo_addr[1], "ping from the test")
    assert "reply: ping from the test" in capsys.readouterr().out


def test_http_hello_keepalive_pipelined_and_split() -> None:
    loop = netpoll.EventLoop(http_hello.on_request)
    addr, thread = _serve(loop)
    try:
        with socket.create_connection(addr, timeout=5) as s:
            request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            s.sendall(request * 3)  # pipelined
            assert _recv_exactly(s, len(http_hello.RESPONSE) * 3) == http_hello.RESPONSE * 3
            s.sendall(request[:10])  # a head split across reads
            s.sendall(request[10:])
            assert _recv_exactly(s, len(http_hello.RESPONSE)) == http_hello.RESPONSE
            s.sendall(b"\x00garbage\r\n\r\n")  # not HTTP: the server hangs up
            assert s.recv(100) == b""
    finally:
        loop.shutdown(5)
        thread.join(5)


def test_rpc_pipelined_client(capsys: pytest.CaptureFixture[str]) -> None:
    rpc.main(500)
    assert "500 pipelined requests answered in order" in capsys.readouterr().out


def test_proxy_relays_both_ways_and_closes_together(echo_addr: Any) -> None:
    loop = proxy.make_proxy(f"127.0.0.1:{echo_addr[1]}")
    addr, thread = _serve(loop)
    try:
        data = bytes(range(256)) * 2000
        with socket.create_connection(addr, timeout=5) as s:
            sender = threading.Thread(target=s.sendall, args=(data,))
            sender.start()
            assert _recv_exactly(s, len(data)) == data
            sender.join(5)
        done = threading.Event()
        for _ in range(100):  # bounded: the proxy closes its upstream after the client left
            if loop.stats().connections_open == 0:
                done.set()
                break
            done.wait(0.05)
        assert done.is_set()
    finally:
        loop.shutdown(5)
        thread.join(5)


def test_proxy_forwards_a_half_close_and_relays_the_reply(echo_addr: Any) -> None:
    """The client sends, then ends its stream: the proxy forwards the end of stream after
    the last byte, the echo server answers everything and closes, and the client reads
    the whole echo and then the end of stream."""
    loop = proxy.make_proxy(f"127.0.0.1:{echo_addr[1]}")
    addr, thread = _serve(loop)
    try:
        data = bytes(range(256)) * 400
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            assert _recv_exactly(s, len(data)) == data
            assert s.recv(1) == b""  # the upstream closed after its reply: so does the proxy
    finally:
        loop.shutdown(5)
        thread.join(5)


@pytest.mark.timeout(60)
def test_http_hello_with_two_workers_stops_on_ctrl_c() -> None:
    """The example as a user starts it: two workers through netpoll.run, answering
    requests, then one Ctrl-C to the process group: it exits 0 with no traceback."""
    import os
    import signal
    import subprocess

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    script = Path(__file__).resolve().parent.parent / "examples" / "http_hello.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = threading.Event()
        for _ in range(500):  # bounded: 10 s of connection attempts
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                deadline.wait(0.02)
        else:
            raise AssertionError("the example never accepted a connection")
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _recv_exactly(s, len(http_hello.RESPONSE)) == http_hello.RESPONSE
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
