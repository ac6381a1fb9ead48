"""A netpoll server in its own process, for cases that need their own descriptor limit or core.

Run by ``_harness.ServerProcess``: ``python _serverproc.py '<json options>'``. It prints one
JSON line ``{"addr": ..., "pid": ..., "nofile": [soft, hard]}`` once listening, then answers
commands read from stdin, one JSON line each:

- ``stats``: ``loop.stats()`` as a dict, plus ``fds``, ``pool_bytes``, ``py_blocks`` (live
  Python heap blocks after a collection) and ``live_connections`` (Connection objects);
- ``shutdown``: ``loop.shutdown(5)`` and exit.

Options: ``handler`` ("frame": echo length-prefixed frames; "echo": echo what is buffered;
"http" / "rpc": the handlers of examples/http_hello.py and examples/rpc.py), ``unix`` (listen
on this path instead of 127.0.0.1),
``nofile`` (soft RLIMIT_NOFILE), ``raise_nofile`` (soft limit up to the hard one),
``loop`` (EventLoop keyword arguments). Log records of the "netpoll" logger (INFO and up)
go to stderr, one line each.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import resource
import sys
import threading
from typing import Any


def frame_echo(ctx: Any, conn: Any) -> None:
    hdr = conn.next(4)
    body = conn.next(int.from_bytes(hdr, "big"))
    conn.write_binary(hdr)
    conn.write_binary(body)
    conn.flush()
    conn.release()


def raw_echo(ctx: Any, conn: Any) -> None:
    n = len(conn)
    if n:
        conn.write_binary(conn.next(n))
        conn.flush()
    conn.release()


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if options.get("nofile"):
        soft = int(options["nofile"])
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    elif options.get("raise_nofile"):
        soft = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("netpoll").setLevel(logging.INFO)

    try:
        import ctypes

        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        malloc_trim = None

    import netpoll
    from netpoll._linkbuffer import POOL

    handlers = {"frame": frame_echo, "echo": raw_echo}
    name = options.get("handler", "frame")
    if name == "http":
        from examples.http_hello import on_request as handler
    elif name == "rpc":
        from examples.rpc import server_on_request as handler
    else:
        handler = handlers[name]
    loop = netpoll.EventLoop(handler, **options.get("loop", {}))
    if options.get("unix"):
        listener = netpoll.create_listener("unix", options["unix"])
    else:
        listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    addr = listener.addr
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            loop.serve(listener)
        except BaseException as exc:  # reported on the next command
            failure.append(exc)

    threading.Thread(target=serve, name="serve", daemon=True).start()
    out = sys.stdout
    out.write(json.dumps({"addr": addr, "pid": os.getpid(), "nofile": [soft, hard]}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            reply = dataclasses.asdict(loop.stats())
            try:
                reply["fds"] = len(os.listdir("/proc/self/fd"))
            except OSError:  # out of descriptors: the parent reads /proc/PID/fd instead
                reply["fds"] = -1
            reply["pool_bytes"] = POOL.pooled_bytes()
            gc.collect()
            reply["py_blocks"] = sys.getallocatedblocks()
            reply["live_connections"] = sum(
                1 for o in gc.get_objects() if type(o) is netpoll.Connection
            )
            if malloc_trim is not None:
                malloc_trim(0)  # RSS then shows live memory, not the allocator's cache
            reply["serve_error"] = repr(failure[0]) if failure else None
        elif cmd == "ping":
            reply = {"ok": True}
        elif cmd == "shutdown":
            try:
                loop.shutdown(5)
                reply = {"ok": True}
            except Exception as exc:
                reply = {"ok": False, "error": repr(exc)}
            out.write(json.dumps(reply) + "\n")
            out.flush()
            return
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
