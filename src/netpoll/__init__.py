"""netpoll: a Python reactor networking library with zero-copy buffers.

A port of CloudWeGo Netpoll: ``EventLoop`` serves connections with blocking-style
handlers that never stall the server, ``LinkBuffer`` reads and writes without copying.
One source, two builds: compiled to C extensions by mypyc, or plain Python
(``netpoll.compiled`` tells which; ``python -m netpoll`` prints it with the rest of a bug
report's facts).
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES

from . import _connection, mux
from ._config import (
    LoadBalance,
    configure,
    disable_runner_pool,
    set_load_balance,
    set_logger_output,
    set_num_loops,
    set_runner,
)
from ._connection import Connection
from ._dialer import Dialer, dial_connection, dial_tcp, dial_unix
from ._errors import (
    ConnectionClosedError,
    DialTimeoutError,
    InsufficientDataError,
    NetpollError,
    PeerClosedError,
    ReadTimeoutError,
    WriteTimeoutError,
)
from ._linkbuffer import LinkBuffer
from ._listener import Listener, create_listener
from ._nocopy import (
    Reader,
    ReadWriter,
    Writer,
    new_io_reader,
    new_io_writer,
    new_read_writer,
    new_reader,
    new_writer,
)
from ._run import run
from ._server import EventLoop, ServerStats

__version__ = "0.1.0"

#: True when the running modules are the compiled (mypyc) build, False for the pure one.
compiled: bool = (_connection.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))

__all__ = [
    "Connection",
    "ConnectionClosedError",
    "DialTimeoutError",
    "Dialer",
    "EventLoop",
    "InsufficientDataError",
    "LinkBuffer",
    "Listener",
    "LoadBalance",
    "NetpollError",
    "PeerClosedError",
    "ReadTimeoutError",
    "ReadWriter",
    "Reader",
    "ServerStats",
    "WriteTimeoutError",
    "Writer",
    "compiled",
    "configure",
    "create_listener",
    "dial_connection",
    "dial_tcp",
    "dial_unix",
    "disable_runner_pool",
    "mux",
    "new_io_reader",
    "new_io_writer",
    "new_read_writer",
    "new_reader",
    "new_writer",
    "run",
    "set_load_balance",
    "set_logger_output",
    "set_num_loops",
    "set_runner",
]
