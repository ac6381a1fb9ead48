"""The netpoll side of every workload: ``on_request`` handlers on netpoll's public API.

``bench.server`` runs them in a netpoll ``EventLoop`` (the ``netpoll`` and ``netpoll-pure``
contenders); ``bench.reference.floors`` runs the same functions on its bare connections,
and ``bench.request_cost`` drives them one request at a time. They live in a module of
their own so that all three can import them without importing one another.

The handlers take the ``netpoll`` module as an argument instead of importing it: the
benchmark's own process imports this module without needing the library, and each server
process imports whichever build its interpreter has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.protocols import (
    MAX_BULK,
    MAX_MULTIBULK,
    ProtocolError,
    RespStore,
    frame_length,
    make_processor,
    resp_length,
)

__all__ = ["netpoll_handler", "resp_lines_handler"]

Handler = Callable[[Any, Any], None]


def netpoll_handler(netpoll: Any, workload: str) -> Handler:
    """The ``on_request`` of ``workload``, written against the public netpoll API."""
    closed = netpoll.ConnectionClosedError

    if workload == "echo":

        def on_echo(ctx: Any, conn: Any) -> None:
            data = conn.next(len(conn))
            conn.write_binary(data)
            conn.flush()
            conn.release()

        return on_echo

    if workload == "frames":

        def on_frames(ctx: Any, conn: Any) -> None:
            # Zero-copy: the reply is the request's own header and payload views, queued
            # by reference and sent with one sendmsg; they are released after the flush.
            # A frame not fully buffered yet is waited for by next(n).
            try:
                while len(conn) >= 4:
                    header = conn.next(4)
                    n = frame_length(header)
                    if len(conn) < n and conn.malloc_len():
                        conn.flush()  # answer what is complete before waiting for more
                    payload = conn.next(n)
                    conn.write_binary(header)
                    conn.write_binary(payload)
                conn.flush()
                conn.release()
            except closed:
                pass  # the client left mid-frame
            except ProtocolError:
                conn.close()

        return on_frames

    if workload == "resp-lines":
        return resp_lines_handler(netpoll, RespStore())

    process = make_processor(workload)

    def on_parsed(ctx: Any, conn: Any) -> None:
        # The parsers search with bytes.find, so the buffered input is copied once (it is a
        # few hundred bytes); an incomplete request is left in the connection's buffer.
        try:
            consumed, out = process(conn.peek(len(conn)).tobytes())
        except ProtocolError:
            conn.close()
            return
        if consumed:
            conn.skip(consumed)
        if out:
            conn.write_binary(out)
            conn.flush()
        conn.release()

    return on_parsed


def resp_lines_handler(netpoll: Any, store: RespStore) -> Handler:
    """A RESP server's ``on_request`` the way a newcomer writes it: field by field.

    Each command is read with one call per field (``read_line`` for ``*N`` and for every
    ``$len``, ``read_binary(len)`` and ``skip(2)`` for each bulk string and its CRLF), the
    blocking-style API netpoll exists to offer, instead of ``resp``'s peek-and-parse. The
    handler reads commands while ``len(conn)`` shows buffered input and returns when it
    has read them all. A command split across receives is no special case: the read that
    needs the missing bytes waits for them. Each reply is flushed as its command
    completes, so one waiting for the rest of the next command is never held back (a
    client may wait for an answer before sending more); with one command per receive, as
    redis-benchmark without ``-P`` sends, that is one send per receive anyway.

    The commands are executed by ``store`` (``RespStore.execute``), as in every other RESP
    server of the benchmark, so only the reading differs.
    """
    closed = netpoll.ConnectionClosedError
    execute = store.execute

    def on_resp_lines(ctx: Any, conn: Any) -> None:
        try:
            while len(conn):
                line = conn.read_line()  # a view, without its CRLF
                if not line or line[0] != 0x2A:  # not "*": an inline command
                    args = bytes(line).split()
                else:
                    count = resp_length(line, 0x2A, MAX_MULTIBULK)
                    args = []
                    for _ in range(count):
                        size = resp_length(conn.read_line(), 0x24, MAX_BULK)
                        args.append(conn.read_binary(size))
                        conn.skip(2)  # the CRLF closing the bulk string
                if args:
                    conn.write_binary(execute(args))
                    conn.flush()
            conn.release()  # the lines' views die here; the arguments are copies
        except closed:
            pass  # the client left mid-command
        except ProtocolError:
            conn.close()

    return on_resp_lines
