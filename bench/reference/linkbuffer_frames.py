"""LinkBuffer vs the bytearray way: parsing length-prefixed frames arriving in 8 KiB chunks.

    python -m bench.reference.linkbuffer_frames [--bytes N] [--repeat R]

Both parsers read the same byte stream (4-byte big-endian length + payload) as a socket
delivers it, 8 KiB per receive, and each pays the one copy its receive call makes:

- LinkBuffer: ``recv_into`` free node space (``recv_target``/``commit_recv``, what a
  connection does), then ``next(4)`` + ``next(n)`` for every complete frame and
  ``release()`` after each receive that completed frames (a receive that only brings more
  of an awaited frame is not parsed, as a waiting reader is only woken when all of it is
  there). ``next`` raising ``InsufficientDataError`` when the bytes are not all there
  ends a round, as a plain LinkBuffer's contract has it; no ``len()`` per frame.
- bytearray: ``recv`` returns a fresh ``bytes`` (a slice of the stream here), then
  ``buf += chunk``, slice out the payload, ``del buf[:4 + n]`` (what
  ``asyncio.StreamReader`` does with what ``data_received`` got).

The "input free" column hands the bytearray parser ready-made chunk objects instead, so
its receive copy is not counted (the comparison of the first version of this benchmark).
The "floor" column runs the same parse loop over a reader that does nothing but check
the length and slice one preloaded block: what two ``next`` calls per frame cost in this
interpreter before any buffer work. The "floor + revoke" column adds what the contract
requires of every reader on top: ``next`` records the view it hands out (a slice of a
per-use view of the block) and a ``release()`` per 8 KiB arrival revokes them all. Still
no receiving and no nodes.
Each parser touches the payload once (its last byte) so neither can skip the work.
Reported: ns per frame (median of the repeats), the ratio, and peak traced memory.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

from netpoll import InsufficientDataError, LinkBuffer

CHUNK = 8192
SIZES = (100, 4096, 65536)


def make_stream(payload: int, frames: int) -> bytes:
    """The wire bytes of ``frames`` frames of ``payload`` bytes each."""
    frame = payload.to_bytes(4, "big") + bytes((i * 7) & 0xFF for i in range(payload))
    return frame * frames


def read_frames(buf: Any, need: int) -> tuple[int, int, int]:
    """Read every complete frame from ``buf`` with ``next(4)`` + ``next(n)``, touching each
    payload's last byte. ``next`` raising ``InsufficientDataError`` (the bytes are not all
    there, as a plain LinkBuffer's contract has it) ends the round; a header already read
    carries over as ``need``. Returns (need, frames read, XOR of the bytes touched)."""
    frames = 0
    check = 0
    try:
        while True:
            if not need:
                need = int.from_bytes(buf.next(4), "big")
            payload = buf.next(need)
            check ^= payload[need - 1]
            need = 0
            frames += 1
    except InsufficientDataError:
        pass
    return need, frames, check


def parse_linkbuffer(stream: bytes) -> int:
    buf = LinkBuffer()
    src = memoryview(stream)
    total = len(stream)
    frames = 0
    check = 0
    need = 0  # payload length of a frame whose header was read, else 0
    pos = 0
    while pos < total:
        end = min(pos + CHUNK, total)  # an 8 KiB arrival, drained as recv_into would
        while pos < end:
            # A connection's rule: the tail's free space, or a fresh node when little is
            # free, unless what is free holds the rest of the awaited frame.
            target = buf.recv_target(min(2048, max(need - len(buf), 1)), 65536)
            k = min(len(target), end - pos)
            target[:k] = src[pos : pos + k]
            buf.commit_recv(k)
            pos += k
        if need and len(buf) < need:
            continue  # a reader waiting for the rest of a frame just waits (reserved)
        need, got, touched = read_frames(buf, need)
        frames += got
        check ^= touched
        if need:
            buf.reserve(need)  # what a connection does when next(n) must wait
        buf.release()  # what the handler read is done with
    return frames + (check & 0)


def parse_bytearray(stream: bytes) -> int:
    # recv(): a new bytes object per 8 KiB arrival, made as it arrives.
    return parse_bytearray_free_input(
        stream[pos : pos + CHUNK] for pos in range(0, len(stream), CHUNK)
    )


def parse_bytearray_free_input(chunks: Iterable[bytes]) -> int:
    """Accumulate, slice out the payload, delete the prefix; given the received chunks
    already made (a list), their receive copy is not counted."""
    buf = bytearray()
    frames = 0
    check = 0
    for chunk in chunks:
        buf += chunk
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + n:
                break
            payload = buf[4 : 4 + n]
            del buf[: 4 + n]
            check ^= payload[n - 1]
            frames += 1
    return frames + (check & 0)


class _Floor:
    """The least any Python-level reader can do per ``next``: check the length and slice
    one block; no view tracking, no receiving (the whole stream is there from the start)."""

    __slots__ = ("_end", "_mv", "_pos")

    def __init__(self, stream: bytes) -> None:
        self._mv = memoryview(stream)
        self._pos = 0
        self._end = len(stream)

    def __len__(self) -> int:
        return self._end - self._pos

    def next(self, n: int) -> memoryview:
        pos = self._pos
        end = pos + n
        if end > self._end:
            raise InsufficientDataError("short")
        self._pos = end
        return self._mv[pos:end]

    def release(self) -> None:
        """Nothing to revoke: this reader hands out plain slices."""


class _RevokingFloor(_Floor):
    """``_Floor`` plus the view bookkeeping the contract's ``release()`` needs: reads are
    slices of a per-use view of the stream (``_mv`` is not used)."""

    __slots__ = ("_block", "_ev", "_views")

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._block = stream  # not copied: the copy would be timed
        self._ev: memoryview | None = None
        self._views: list[memoryview] = []

    def next(self, n: int) -> memoryview:
        pos = self._pos
        end = pos + n
        if end > self._end:
            raise InsufficientDataError("short")
        self._pos = end
        ev = self._ev
        if ev is None:
            ev = self._ev = memoryview(self._block)
        v = ev[pos:end]
        self._views.append(v)
        return v

    def release(self) -> None:
        for v in self._views:
            v.release()
        self._views.clear()
        ev = self._ev
        if ev is not None:
            self._ev = None
            ev.release()


def _parse_preloaded(buf: _Floor) -> int:
    """The parse loop of ``parse_linkbuffer`` over a preloaded reader: ``release()`` after
    each 8 KiB (what one arrival brings), frames read until ``next`` runs short."""
    frames = 0
    check = 0
    need = 0
    total = len(buf)
    for end in range(CHUNK, total + CHUNK, CHUNK):
        buf._end = min(end, total)  # what has arrived so far
        need, got, touched = read_frames(buf, need)
        frames += got
        check ^= touched
        buf.release()
    return frames + (check & 0)


def parse_floor(stream: bytes) -> int:
    """The API's cost floor: two ``next`` calls and a ``len`` per frame, nothing else."""
    return _parse_preloaded(_Floor(stream))


def parse_revoking_floor(stream: bytes) -> int:
    """The floor plus recording and revoking the views handed out."""
    return _parse_preloaded(_RevokingFloor(stream))


def chunked(stream: bytes) -> list[bytes]:
    """The stream cut into the 8 KiB pieces that ``recv`` would return."""
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def time_parser(fn: Callable[[Any], int], data: Any, frames: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    got = fn(data)
    elapsed = time.perf_counter() - t0
    if got != frames:
        raise SystemExit(f"{fn.__name__} parsed {got} frames, expected {frames}")
    return elapsed / frames * 1e9


def peak_memory(fn: Callable[[Any], int], data: Any) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn(data)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=32 << 20, help="stream size per size")
    parser.add_argument("--repeat", type=int, default=5, help="runs per parser (median)")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; {args.bytes >> 20} MiB per payload size")
    print("ns per frame, median of the runs; ratio = LinkBuffer time / bytearray time")
    header = (
        f"{'payload':>8}  {'frames':>7}  {'LinkBuffer':>10}  {'bytearray':>9}  {'ratio':>6}  "
        f"{'bytearray, input free':>21}  {'ratio':>6}  {'floor':>6}  {'ratio':>6}  "
        f"{'floor + revoke':>14}  {'ratio':>6}  {'peak mem LB / BA':>16}"
    )
    print(header)
    print("-" * len(header))
    for size in SIZES:
        frames = max(args.bytes // (size + 4), 100)
        stream = make_stream(size, frames)
        chunks = chunked(stream)
        lb: list[float] = []
        ba: list[float] = []
        free: list[float] = []
        floor: list[float] = []
        revoke: list[float] = []
        for _ in range(args.repeat):  # interleaved so drift hits all alike
            lb.append(time_parser(parse_linkbuffer, stream, frames))
            ba.append(time_parser(parse_bytearray, stream, frames))
            free.append(time_parser(parse_bytearray_free_input, chunks, frames))
            floor.append(time_parser(parse_floor, stream, frames))
            revoke.append(time_parser(parse_revoking_floor, stream, frames))
        lb_ns, ba_ns, free_ns, floor_ns, revoke_ns = (
            statistics.median(x) for x in (lb, ba, free, floor, revoke)
        )
        small = make_stream(size, min(frames, 2000))
        mem_lb = peak_memory(parse_linkbuffer, small)
        mem_ba = peak_memory(parse_bytearray, small)
        print(
            f"{size:>8}  {frames:>7}  {lb_ns:>10.0f}  {ba_ns:>9.0f}  {lb_ns / ba_ns:>5.2f}x  "
            f"{free_ns:>21.0f}  {lb_ns / free_ns:>5.2f}x  "
            f"{floor_ns:>6.0f}  {floor_ns / ba_ns:>5.2f}x  "
            f"{revoke_ns:>14.0f}  {revoke_ns / ba_ns:>5.2f}x  "
            f"{mem_lb >> 10:>6} / {mem_ba >> 10:>4} KiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
