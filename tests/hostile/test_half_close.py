"""Half-close: a client that shuts down its sending side still gets its whole reply."""

from __future__ import annotations

import socket
import threading
import zlib
from pathlib import Path

import pytest
from examples.http_hello import RESPONSE

from ._harness import (
    Case,
    HttpHello,
    LiveServer,
    MiB,
    ServerProcess,
    connect,
    frame,
    frame_echo,
    pattern,
    recv_until_closed,
    run_threads,
)

# The server runs in its own process (one malloc arena, see ServerProcess), so its RSS is
# not mixed with the clients' buffers and follows live memory.
RSS_SLACK = 4 << 20
# (frames per client, payload size): one big frame, and pipelines of small and large ones
SHAPES = [(1, 8 * MiB), (1, 300_000), (200, 1000), (20, 70_000), (1, 0)]


def half_close_exchange(addr: object, request: bytes) -> tuple[bytes, str]:
    """Send ``request`` then SHUT_WR, reading all the while (the replies of a long pipeline
    would otherwise fill the socket buffers and deadlock both sides); read until closed."""
    s = connect(addr, timeout=10)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except OSError as exc:
            failure.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    try:
        sender.start()
        reply = recv_until_closed(s, limit=len(request) * 2 + 1024)
        sender.join(10)
        assert not sender.is_alive() and not failure, failure
        return reply
    finally:
        s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_half_closed_clients_get_whole_echo(transport: str, tmp_path: Path) -> None:
    results: dict[int, tuple[int, str, bool]] = {}

    def client(i: int) -> None:
        frames, size = SHAPES[i % len(SHAPES)]
        request = b"".join(frame(pattern(i, k, size)) for k in range(frames))
        reply, how = half_close_exchange(srv.addr, request)
        results[i] = (len(request), how, reply == request)

    def warm_up() -> None:
        assert not run_threads(client, 2 * len(SHAPES), timeout=20)

    unix = str(tmp_path / "echo.sock") if transport == "unix" else None
    with (
        ServerProcess(tmp_path / "server.log", handler="frame", unix=unix) as srv,
        Case(f"half-close-{transport}", srv, warm_up=warm_up) as case,
    ):
        results.clear()
        errors = run_threads(client, 2 * len(SHAPES), timeout=40)
        case.finish()
        warnings = srv.log_lines(("WARNING", "ERROR", "CRITICAL"))
    bad = {i: r for i, r in results.items() if r[1] != "eof" or not r[2]}
    case.record(
        clients=len(results),
        bytes_each_way=sum(r[0] for r in results.values()),
        clean_eof=sum(r[1] == "eof" for r in results.values()),
        intact=sum(r[2] for r in results.values()),
    )

    assert not errors, errors[:3]
    assert len(results) == 2 * len(SHAPES)
    assert not bad, f"clients whose reply was cut or wrong (len, end, intact): {bad}"
    case.check(RSS_SLACK)
    assert not warnings, warnings[:3]


@pytest.mark.timeout(30)
def test_half_closed_http_client_gets_every_pipelined_response(tmp_path: Path) -> None:
    requests = 50
    request = b"".join(b"GET /half/%d HTTP/1.1\r\nHost: h\r\n\r\n" % k for k in range(requests))
    with (
        ServerProcess(tmp_path / "server.log", handler="http", loop={"idle_timeout": 5}) as srv,
        Case(
            "half-close-http",
            srv,
            HttpHello(RESPONSE),
            warm_up=lambda: half_close_exchange(srv.addr, request),
        ) as case,
    ):
        replies = [half_close_exchange(srv.addr, request) for _ in range(20)]
        case.finish()
        warnings = srv.log_lines(("WARNING", "ERROR", "CRITICAL"))
    case.record(clients=len(replies), pipelined_requests=requests)

    for reply, how in replies:
        assert how == "eof"
        assert reply == RESPONSE * requests, (len(reply), zlib.crc32(reply))
    case.check(RSS_SLACK)
    assert not warnings, warnings[:3]


@pytest.mark.timeout(60)
def test_pipelined_large_frames_are_never_cut_short(tmp_path: object) -> None:
    """20 pipelined 70,000-byte frames per client, 30 clients in turn, over a unix socket.

    Regression test for the false end of stream on a full tail (fixed in 69e7ca7; this
    suite hit it independently): a handler waiting in
    next(70004) is woken when the frame is in; if the poller received again before it ran
    and the tail node was exactly full, the receive target was empty and recv_into's 0 was
    taken for the peer's end of stream: the server closed mid-stream. About a third of
    these exchanges hit it before the fix.
    """
    request = b"".join(frame(pattern(0, k, 70_000)) for k in range(20))
    outcomes = []
    with LiveServer(frame_echo, path=str(tmp_path) + "/pipeline.sock") as srv:  # type: ignore[operator]
        for _ in range(30):
            try:
                reply, how = half_close_exchange(srv.addr, request)
                outcomes.append("ok" if how == "eof" and reply == request else f"cut:{len(reply)}")
            except AssertionError as exc:  # the sender saw EPIPE: the server closed early
                outcomes.append(f"sender:{exc}")
    assert outcomes == ["ok"] * 30, [o for o in outcomes if o != "ok"][:5]
