"""A ``netpoll.run`` application driven by ``tests/test_run.py`` as a real process.

Usage::

    python tests/run_app.py --workers N --network tcp --address 127.0.0.1:PORT \
        --shutdown-timeout S [--mode normal|fail-at-start|instance] [--trace] \
        [--connect-delay S]

It logs to stderr at INFO (every line carries the pid) and serves a line protocol:

- ``pid``       -> the serving process's pid
- ``sleep X``   -> sleeps X seconds (blocking the library cannot see), then ``done``
- ``echo TEXT`` -> ``TEXT``
- ``crash``     -> the serving process exits at once with status 3 (logs ``CRASH pid=N``)

Each process that builds the app logs ``APP pid=N`` when the factory runs and
``SERVING pid=N`` once its loop accepts connections (``wait_serving``); a handler about
to sleep logs ``SLEEPING pid=N``. The test reads those lines to synchronise.

``--mode fail-at-start``: the factory raises ``ValueError("boom")``.
``--mode instance``: an ``EventLoop`` instance instead of a factory (``workers=1`` only).

``--trace``: every connection is logged when its loop starts it (``CONNECT pid=N
peer=(host, port)``), to tell what became of a connection a client lost.

``--connect-delay S``: ``on_connect`` logs ``CONNECTING pid=N peer=...``, sleeps S
seconds (a slow handshake), then logs ``CONNECTED pid=N peer=...``.

SIGUSR2 makes any of its processes write its threads' stacks to stderr (faulthandler).

After ``netpoll.run`` returns it prints ``RUN RETURNED`` to stdout and exits 0; an
exception from it propagates (a traceback and a non-zero exit).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import threading
import time
from typing import Any

import netpoll

log = logging.getLogger("run_app")


def on_request(ctx: Any, conn: netpoll.Connection) -> None:
    line = conn.read_line().tobytes()
    conn.release()
    cmd, _, arg = line.partition(b" ")
    if cmd == b"pid":
        reply = f"{os.getpid()}\n".encode()
    elif cmd == b"sleep":
        log.info("SLEEPING pid=%d for %ss", os.getpid(), arg.decode())
        time.sleep(float(arg))
        reply = b"done\n"
    elif cmd == b"echo":
        reply = arg + b"\n"
    elif cmd == b"crash":
        log.info("CRASH pid=%d", os.getpid())
        logging.shutdown()
        os._exit(3)
    else:
        reply = b"unknown\n"
    conn.write_binary(reply)
    conn.flush()


def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
    if TRACE:
        log.info("CONNECT pid=%d peer=%s", os.getpid(), conn.remote_addr)
    if CONNECT_DELAY:
        log.info("CONNECTING pid=%d peer=%s", os.getpid(), conn.remote_addr)
        time.sleep(CONNECT_DELAY)
        log.info("CONNECTED pid=%d peer=%s", os.getpid(), conn.remote_addr)
    return ctx


def _announce(loop: netpoll.EventLoop) -> None:
    if loop.wait_serving(60.0):
        log.info("SERVING pid=%d", os.getpid())


TRACE = False  # --trace: log every connection the app's loop starts (CONNECT ... peer=)
CONNECT_DELAY = 0.0  # --connect-delay: seconds on_connect sleeps (a slow handshake)


def make_app() -> netpoll.EventLoop:
    log.info("APP pid=%d", os.getpid())
    hook = on_connect if TRACE or CONNECT_DELAY else None
    loop = netpoll.EventLoop(on_request, on_connect=hook)
    threading.Thread(target=_announce, args=(loop,), daemon=True).start()
    return loop


def fail_at_start() -> netpoll.EventLoop:
    log.info("APP pid=%d", os.getpid())
    raise ValueError("boom")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--network", default="tcp")
    parser.add_argument("--address", required=True)
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--mode", choices=("normal", "fail-at-start", "instance"), default="normal")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--connect-delay", type=float, default=0.0)
    args = parser.parse_args()
    global TRACE, CONNECT_DELAY
    TRACE = args.trace
    CONNECT_DELAY = args.connect_delay
    # the test asks a process that does not exit in time for its threads' stacks;
    # inherited by the forked workers (the supervisor resets other signals only)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s pid=%(process)d %(levelname)s %(name)s: %(message)s",
    )
    app: netpoll.EventLoop | Any
    if args.mode == "fail-at-start":
        app = fail_at_start
    elif args.mode == "instance":
        app = make_app()
    else:
        app = make_app
    log.info("SUPERVISOR pid=%d workers=%d", os.getpid(), args.workers)
    netpoll.run(
        app,
        args.network,
        args.address,
        workers=args.workers,
        shutdown_timeout=args.shutdown_timeout,
    )
    print("RUN RETURNED", flush=True)


if __name__ == "__main__":
    main()
