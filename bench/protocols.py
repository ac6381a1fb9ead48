"""The pure request logic every benchmark server shares.

No sockets, no event loops: each function takes the bytes a server has buffered and says
how many of them form complete requests and what to answer. Every contender's server calls
these same functions, so the work per request is identical and only the networking layer
differs.

Workloads:

* ``echo``: answer every byte with itself (no parsing; the servers write back what they read).
* ``frames``: RPC frames, a 4-byte big-endian length then that many payload bytes; each is
  answered with a frame holding the same payload.
* ``http``: HTTP/1.1 keep-alive "Hello World". A request ends at the first ``\\r\\n\\r\\n``
  (requests have no body); every complete request gets the same fixed response. Pipelined
  requests in one read and a request split across reads are both handled.
* ``resp``: a minimal Redis server (PING, SET, GET, ECHO, CONFIG GET, COMMAND) speaking RESP
  multi-bulk requests and inline commands, enough for ``redis-benchmark``.
* ``resp-lines``: the same commands and key space (``RespStore.execute``), but the servers
  read each command field by field with their library's blocking-style calls (a line per
  ``*N`` and ``$len``, then the bulk bytes) instead of handing buffered bytes to
  ``parse_resp_command``. Those readers live with the servers (``bench.handlers`` for
  netpoll, ``bench.server`` for asyncio Streams); ``resp_length`` is the one parsing step
  they share, so both validate a length line the same way. It has no ``Processor``.

Parsers accept ``bytes`` or ``bytearray`` (anything with ``find`` and slicing) and never
hold on to the buffer: what they return is copied out of it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "HTTP_RESPONSE",
    "MAX_BULK",
    "MAX_FRAME",
    "MAX_HTTP_HEAD",
    "MAX_INLINE",
    "MAX_MULTIBULK",
    "WORKLOADS",
    "ProtocolError",
    "RespStore",
    "Session",
    "frame_header",
    "frame_length",
    "make_processor",
    "parse_resp_command",
    "process_echo",
    "process_frames",
    "process_http",
    "resp_length",
    "split_frames",
    "split_http_requests",
]

Buffer = bytes | bytearray
# A processor takes the buffered input and returns (bytes consumed, the reply to send).
# The reply is one bytes object (b"" for none): every server sends it with one write call.
# (uvloop's writelines() of a header and a payload sends two segments and answers several
# times slower; one joined write keeps the servers' work identical and fair.)
Processor = Callable[[Buffer], tuple[int, bytes]]

# Server logics with a Processor; bench.server adds "resp-lines", which has none.
WORKLOADS = ("echo", "frames", "http", "resp")

MAX_FRAME = 64 * 1024 * 1024
MAX_HTTP_HEAD = 64 * 1024
MAX_INLINE = 64 * 1024
MAX_BULK = 512 * 1024 * 1024
MAX_MULTIBULK = 1024 * 1024
MAX_BUFFERED = 128 * 1024 * 1024


class ProtocolError(ValueError):
    """The peer sent something no request can start with; the server closes the connection."""


# --- echo ---------------------------------------------------------------------------------


def process_echo(buf: Buffer) -> tuple[int, bytes]:
    """Everything is a complete request and is its own answer."""
    return len(buf), bytes(buf)


# --- frames -------------------------------------------------------------------------------


def frame_length(header: Buffer | memoryview) -> int:
    """The payload length announced by a 4-byte big-endian frame header."""
    if len(header) != 4:
        raise ValueError(f"header must be 4 bytes, got {len(header)}")
    n = int.from_bytes(header, "big")
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return n


def frame_header(n: int) -> bytes:
    """The 4-byte big-endian header of a frame with an ``n``-byte payload."""
    return n.to_bytes(4, "big")


def split_frames(buf: Buffer, pos: int = 0) -> tuple[list[bytes], int]:
    """Complete frames in ``buf[pos:]``: (their payloads, offset just past the last one)."""
    payloads: list[bytes] = []
    end_of_data = len(buf)
    while end_of_data - pos >= 4:
        n = frame_length(buf[pos : pos + 4])
        end = pos + 4 + n
        if end > end_of_data:
            break
        payloads.append(bytes(buf[pos + 4 : end]))
        pos = end
    return payloads, pos


def process_frames(buf: Buffer) -> tuple[int, bytes]:
    payloads, consumed = split_frames(buf)
    if len(payloads) == 1:
        payload = payloads[0]
        return consumed, frame_header(len(payload)) + payload
    return consumed, b"".join(frame_header(len(p)) + p for p in payloads)


# --- HTTP ---------------------------------------------------------------------------------

_HTTP_BODY = b"Hello World"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(_HTTP_BODY)).encode() + b"\r\n"
    b"\r\n" + _HTTP_BODY
)


def split_http_requests(buf: Buffer, pos: int = 0) -> tuple[int, int]:
    """Complete request heads in ``buf[pos:]``: (how many, offset just past the last one).

    A head that is still incomplete after ``MAX_HTTP_HEAD`` bytes is a ``ProtocolError``.
    """
    count = 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        pos = end + 4
        count += 1
    if len(buf) - pos > MAX_HTTP_HEAD:
        raise ProtocolError(f"request head longer than {MAX_HTTP_HEAD} bytes")
    return count, pos


def process_http(buf: Buffer) -> tuple[int, bytes]:
    count, consumed = split_http_requests(buf)
    return consumed, HTTP_RESPONSE * count


# --- RESP ---------------------------------------------------------------------------------


def _parse_int(raw: Buffer | memoryview, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ProtocolError(f"invalid {what}: {bytes(raw)[:32]!r}") from None


def parse_resp_command(buf: Buffer, pos: int = 0) -> tuple[list[bytes], int] | None:
    """The command starting at ``buf[pos]``: (its arguments, offset just past it).

    ``None`` when the buffer does not hold the whole command yet. Multi-bulk requests
    (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``) and inline commands (``PING\\r\\n``) are
    understood; an empty inline line or ``*0`` gives an empty argument list.
    """
    size = len(buf)
    if pos >= size:
        return None
    if buf[pos] != 0x2A:  # not "*": an inline command, arguments split on whitespace
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if size - pos > MAX_INLINE:
                raise ProtocolError(f"inline command longer than {MAX_INLINE} bytes")
            return None
        return bytes(buf[pos:eol]).split(), eol + 1
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        if size - pos > 32:
            raise ProtocolError("multi-bulk length line too long")
        return None
    count = _parse_int(buf[pos + 1 : eol], "multi-bulk length")
    if count > MAX_MULTIBULK:
        raise ProtocolError(f"multi-bulk length {count} too large")
    p = eol + 2
    args: list[bytes] = []
    for _ in range(count):
        if p >= size:
            return None
        if buf[p] != 0x24:  # "$"
            raise ProtocolError(f"expected '$', got {bytes(buf[p : p + 1])!r}")
        eol = buf.find(b"\r\n", p)
        if eol < 0:
            if size - p > 32:
                raise ProtocolError("bulk length line too long")
            return None
        n = _parse_int(buf[p + 1 : eol], "bulk length")
        if n < 0 or n > MAX_BULK:
            raise ProtocolError(f"invalid bulk length {n}")
        start = eol + 2
        end = start + n
        if end + 2 > size:
            return None
        if buf[end : end + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        args.append(bytes(buf[start:end]))
        p = end + 2
    return args, p


def resp_length(line: Buffer | memoryview, marker: int, limit: int) -> int:
    """The length a ``*N`` (``marker`` 0x2A) or ``$N`` (0x24) line announces.

    For the blocking-style servers, which read a command one line at a time: ``line`` is
    that line, with or without its CRLF (``int`` ignores the surrounding whitespace). A line
    that does not start with ``marker``, is not a number, or announces a negative length
    or one over ``limit`` is a ``ProtocolError`` (a request never carries a null, -1).
    """
    if not line or line[0] != marker:
        raise ProtocolError(f"expected {chr(marker)!r}, got {bytes(line[:16])!r}")
    n = _parse_int(line[1:], "multi-bulk length" if marker == 0x2A else "bulk length")
    if n < 0 or n > limit:
        raise ProtocolError(f"invalid length {n}")
    return n


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RespStore:
    """The key space of the RESP server (one per server process, shared by connections)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def execute(self, args: list[bytes]) -> bytes:
        """The encoded reply to one command."""
        name = args[0].upper()
        argc = len(args)
        if name == b"GET":
            if argc != 2:
                return b"-ERR wrong number of arguments for 'get' command\r\n"
            value = self.data.get(args[1])
            return b"$-1\r\n" if value is None else _bulk(value)
        if name == b"SET":
            if argc < 3:
                return b"-ERR wrong number of arguments for 'set' command\r\n"
            self.data[args[1]] = args[2]
            return b"+OK\r\n"
        if name == b"PING":
            if argc == 1:
                return b"+PONG\r\n"
            if argc == 2:
                return _bulk(args[1])
            return b"-ERR wrong number of arguments for 'ping' command\r\n"
        if name == b"ECHO" and argc == 2:
            return _bulk(args[1])
        if name == b"CONFIG" and argc == 3 and args[1].upper() == b"GET":
            # redis-benchmark asks for "save" and "appendonly"; nothing is configured here.
            return b"*2\r\n" + _bulk(args[2]) + b"$0\r\n\r\n"
        if name == b"COMMAND":
            return b"*0\r\n"
        shown = args[0][:64].decode("latin-1").replace("\r", " ").replace("\n", " ")
        return f"-ERR unknown command '{shown}'\r\n".encode("latin-1")

    def process(self, buf: Buffer) -> tuple[int, bytes]:
        replies: list[bytes] = []
        pos = 0
        while True:
            parsed = parse_resp_command(buf, pos)
            if parsed is None:
                break
            args, pos = parsed
            if args:
                replies.append(self.execute(args))
        if len(replies) == 1:
            return pos, replies[0]
        return pos, b"".join(replies)


# --- shared plumbing ----------------------------------------------------------------------


def make_processor(workload: str) -> Processor:
    """The request processor of ``workload``; for ``resp``, with a fresh key space."""
    if workload == "echo":
        return process_echo
    if workload == "frames":
        return process_frames
    if workload == "http":
        return process_http
    if workload == "resp":
        return RespStore().process
    raise ValueError(f"unknown workload {workload!r}; expected one of {', '.join(WORKLOADS)}")


class Session:
    """Per-connection input buffering for servers whose framework hands over ``bytes``.

    ``feed(data)`` returns the reply to every request completed by ``data`` (``b""`` if
    none) and keeps the incomplete rest for the next call. While nothing is left over, ``data`` is
    parsed in place without copying it into the buffer.
    """

    __slots__ = ("_buf", "_process")

    def __init__(self, process: Processor) -> None:
        self._process = process
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        if buf:
            buf += data
            consumed, out = self._process(buf)
            if consumed:
                del buf[:consumed]
        else:
            consumed, out = self._process(data)
            if consumed < len(data):
                buf += data[consumed:]
        if len(buf) > MAX_BUFFERED:
            raise ProtocolError(f"more than {MAX_BUFFERED} bytes buffered without a request")
        return out

    def buffered(self) -> int:
        """Bytes received but not yet part of a complete request."""
        return len(self._buf)
