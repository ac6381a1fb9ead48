"""One benchmark server: ``python -m bench.server --contender C --workload W --port P``.

Every contender serves the same workloads with the same request logic from
``bench.protocols``; only the networking layer differs. The server listens on 127.0.0.1
only, prints ``READY <port>`` on stdout once it accepts connections, and runs until it is
killed. ``--check`` only reports whether the contender can run here (exit status 0 or 1,
one line on stdout).

Module layout: the asyncio/uvloop servers and the raw epoll loop are here; netpoll's
handlers are in ``bench.handlers``, the socket plumbing in ``bench._net``, and the
reference floors in ``bench.reference.floors``, which this module starts and which
imports nothing from it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import resource
import select
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

from bench._net import (
    BACKLOG,
    HOST,
    accept_ready,
    announce,
    listen_nonblocking,
    server_ssl_context,
)
from bench.handlers import netpoll_handler
from bench.protocols import (
    MAX_BULK,
    MAX_MULTIBULK,
    WORKLOADS,
    ProtocolError,
    RespStore,
    Session,
    make_processor,
    resp_length,
)
from bench.reference.floors import run_floor

__all__ = [
    "CONTENDERS",
    "REFERENCE_CONTENDERS",
    "SERVER_WORKLOADS",
    "TLS_CONTENDERS",
    "main",
    "raise_nofile_limit",
    "serves",
]

CONTENDERS = (
    "netpoll",  # the build installed in the benchmark's interpreter: compiled, normally
    "netpoll-pure",  # the pure-Python build, run by Settings.pure_python (.venv-pure)
    "asyncio-protocol",
    "asyncio-streams",
    "uvloop-protocol",
    "uvloop-streams",
    "epoll",
)
# Not run by default: what any pure-Python library with netpoll's API could reach
# (bench/reference/floors.py). Ask for them with --contenders.
REFERENCE_CONTENDERS = ("floor-api", "floor-api-safe", "floor-api-owned")
# Every server logic a server can run: the processor-based ones of bench.protocols, and
# "resp-lines", where each library reads a RESP command field by field with its own
# blocking-style calls.
SERVER_WORKLOADS = (*WORKLOADS, "resp-lines")
# Server logics only some contenders have: a blocking-style reader needs blocking-style
# calls, which asyncio's and uvloop's Protocols, the raw epoll loop and the floors' bare
# connections do not offer. Any other logic is served by every contender.
ONLY_FOR = {
    "resp-lines": ("netpoll", "netpoll-pure", "asyncio-streams", "uvloop-streams"),
}
# Contenders that serve over TLS (with --tls-cert/--tls-key): netpoll's TLS listener
# against the Protocol servers of asyncio and uvloop, all with one SSLContext.
TLS_CONTENDERS = ("netpoll", "netpoll-pure", "asyncio-protocol", "uvloop-protocol")
READ_SIZE = 256 * 1024  # raw epoll: one preallocated receive buffer of this size
STREAM_READ_SIZE = 64 * 1024  # asyncio Streams: most bytes one read() returns


def serves(contender: str, workload: str, tls: bool = False) -> bool:
    """Whether ``contender`` has a server for the server logic ``workload`` (over TLS)."""
    if tls and contender not in TLS_CONTENDERS:
        return False
    only = ONLY_FOR.get(workload)
    return only is None or contender in only


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check(contender: str) -> str | None:
    """None when ``contender`` can run here, else what is missing, as one line."""
    if contender.startswith("uvloop"):
        try:
            importlib.import_module("uvloop")
        except ImportError:
            return "uvloop is not installed (pip install uvloop, or pip install -e '.[bench]')"
    if contender.startswith("netpoll"):
        try:
            netpoll = importlib.import_module("netpoll")
        except Exception as exc:
            return f"cannot import netpoll ({type(exc).__name__}: {exc})"
        missing = [n for n in ("EventLoop", "create_listener") if not hasattr(netpoll, n)]
        if missing:
            return f"netpoll lacks {', '.join(missing)}"
        if contender == "netpoll-pure" and getattr(netpoll, "compiled", False):
            return (
                f"{sys.executable} runs the compiled build: make a venv with "
                "NETPOLL_PURE_PYTHON=1 pip install . (scripts/demo.sh makes .venv-pure)"
            )
    if not hasattr(select, "epoll") and (contender == "epoll" or contender.startswith("floor")):
        return "select.epoll is not available on this platform"
    return None


# --- asyncio and uvloop -------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class SessionProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, session: Session) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            out = self.session.feed(data)
        except ProtocolError:
            self.transport.close()
            return
        if out:
            self.transport.write(out)


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(STREAM_READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def session_stream(
    workload: str,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    process = make_processor(workload)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(process)
        try:
            while True:
                data = await reader.read(STREAM_READ_SIZE)
                if not data:
                    break
                out = session.feed(data)
                if out:
                    writer.write(out)
                    await writer.drain()
        except (ConnectionError, ProtocolError):
            pass
        finally:
            writer.close()

    return handle


def resp_lines_stream(
    store: RespStore,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    """The asyncio Streams counterpart of ``bench.handlers.resp_lines_handler``.

    The same reading, as a newcomer writes it with Streams: ``readline()`` for ``*N`` and
    every ``$len``, ``readexactly(len + 2)`` for each bulk string with its CRLF (the CRLF
    sliced off). Each reply is written and drained as its command completes, as the
    Streams documentation shows and as the netpoll handler flushes it. Commands are
    executed by ``store``.
    """
    execute = store.execute

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    break  # the client left: b"" between commands, a partial line within
                if line[0] != 0x2A:  # not "*": an inline command
                    args = line.split()
                else:
                    count = resp_length(line, 0x2A, MAX_MULTIBULK)
                    args = []
                    for _ in range(count):
                        size = resp_length(await reader.readline(), 0x24, MAX_BULK)
                        args.append((await reader.readexactly(size + 2))[:-2])
                if args:
                    writer.write(execute(args))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left mid-command
        except ValueError:
            pass  # a ProtocolError, or readline's line-length limit: close the connection
        finally:
            writer.close()

    return handle


async def serve_asyncio(
    style: str, workload: str, port: int, ctx: ssl.SSLContext | None = None
) -> None:
    loop = asyncio.get_running_loop()
    server: asyncio.base_events.Server | asyncio.AbstractServer
    if style == "protocol":
        factory: Callable[[], asyncio.Protocol]
        if workload == "echo":
            factory = EchoProtocol
        else:
            process = make_processor(workload)

            def factory() -> asyncio.Protocol:
                return SessionProtocol(Session(process))

        server = await loop.create_server(factory, HOST, port, backlog=BACKLOG, ssl=ctx)
    else:
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
        if workload == "echo":
            handler = echo_stream
        elif workload == "resp-lines":
            handler = resp_lines_stream(RespStore())
        else:
            handler = session_stream(workload)
        server = await asyncio.start_server(handler, HOST, port, backlog=BACKLOG)
    announce(port)
    async with server:
        await server.serve_forever()


def run_asyncio(
    contender: str, workload: str, port: int, ctx: ssl.SSLContext | None = None
) -> None:
    backend, style = contender.split("-")
    if backend == "uvloop":
        uvloop = importlib.import_module("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve_asyncio(style, workload, port, ctx))
    finally:
        loop.close()


# --- raw select.epoll: the pure-Python floor ----------------------------------------------


def run_epoll(workload: str, port: int) -> None:
    """Single-threaded, level-triggered epoll over non-blocking sockets.

    A connection whose answer does not fit in the kernel buffer keeps the rest and waits for
    EPOLLOUT, and is not read meanwhile (so a client that never reads cannot grow it).
    """
    listener = listen_nonblocking(port)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    sessions: dict[int, Session] = {}
    pending: dict[int, memoryview] = {}
    process = make_processor(workload)
    echo = workload == "echo"
    epollin, epollout = select.EPOLLIN, select.EPOLLOUT
    # Receive into one preallocated buffer and copy out only what arrived: allocating a
    # large buffer per recv() costs page faults on every read.
    rbuf = bytearray(READ_SIZE)
    rview = memoryview(rbuf)

    def close(fd: int) -> None:
        sock = socks.pop(fd, None)
        sessions.pop(fd, None)
        pending.pop(fd, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                ep.unregister(fd)
            sock.close()

    def send(fd: int, sock: socket.socket, data: bytes | memoryview) -> None:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            rest = memoryview(data)[sent:]
            if fd not in pending:
                ep.modify(fd, epollout)
            pending[fd] = rest
        elif fd in pending:
            del pending[fd]
            ep.modify(fd, epollin)

    def accepted(conn: socket.socket) -> None:
        cfd = conn.fileno()
        socks[cfd] = conn
        if not echo:
            sessions[cfd] = Session(process)
        ep.register(cfd, epollin)

    announce(port)
    while True:
        for fd, events in ep.poll():
            if fd == lfd:
                accept_ready(listener, accepted)
                continue
            sock = socks.get(fd)
            if sock is None:
                continue
            try:
                if events & epollout:
                    send(fd, sock, pending[fd])
                elif events & (epollin | select.EPOLLHUP | select.EPOLLERR):
                    nread = sock.recv_into(rbuf)
                    if not nread:
                        close(fd)
                        continue
                    data = rview[:nread].tobytes()
                    if echo:
                        send(fd, sock, data)
                        continue
                    out = sessions[fd].feed(data)
                    if out:
                        send(fd, sock, out)
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ProtocolError):
                close(fd)


# --- netpoll ---------------------------------------------------------------------------


def run_netpoll(workload: str, port: int, ctx: ssl.SSLContext | None = None) -> None:
    netpoll = importlib.import_module("netpoll")
    listener = netpoll.create_listener("tcp", f"{HOST}:{port}", ssl=ctx)
    loop = netpoll.EventLoop(netpoll_handler(netpoll, workload))
    announce(port)
    loop.serve(listener)


# --- entry point --------------------------------------------------------------------------


def serve(contender: str, workload: str, port: int, ctx: ssl.SSLContext | None = None) -> None:
    if not serves(contender, workload, ctx is not None):
        raise ValueError(f"{contender} has no {workload} server{' over TLS' * (ctx is not None)}")
    raise_nofile_limit()
    if contender in ("netpoll", "netpoll-pure"):
        run_netpoll(workload, port, ctx)
    elif contender == "epoll":
        run_epoll(workload, port)
    elif contender in REFERENCE_CONTENDERS:
        run_floor(workload, port, contender)
    elif contender in CONTENDERS:
        run_asyncio(contender, workload, port, ctx)
    else:
        raise ValueError(f"unknown contender {contender!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server",
        description="Run one benchmark server on 127.0.0.1 until killed.",
    )
    parser.add_argument("--contender", required=True, choices=CONTENDERS + REFERENCE_CONTENDERS)
    parser.add_argument("--workload", choices=SERVER_WORKLOADS, default="echo")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1")
    parser.add_argument("--tls-cert", help="serve over TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--check", action="store_true", help="only report whether the contender can run here"
    )
    args = parser.parse_args(argv)
    problem = check(args.contender)
    if args.check:
        print(problem or "ok")
        return 1 if problem else 0
    if problem:
        print(f"bench.server: {args.contender}: {problem}", file=sys.stderr)
        return 1
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = args.tls_cert is not None
    if tls and args.contender not in TLS_CONTENDERS:
        parser.error(f"over TLS only {', '.join(TLS_CONTENDERS)} serve")
    if not serves(args.contender, args.workload):
        only = ", ".join(ONLY_FOR[args.workload])
        parser.error(f"the {args.workload} workload is served by {only} only")
    ctx = server_ssl_context(args.tls_cert, args.tls_key) if tls else None
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.contender, args.workload, args.port, ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
