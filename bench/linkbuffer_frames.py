"""LinkBuffer vs the bytearray way: parsing length-prefixed frames arriving in 8 KiB chunks.

    python -m bench.linkbuffer_frames [--frames N] [--repeat R]

Both parsers see the same byte stream (4-byte big-endian length + payload) delivered in
8 KiB chunks, as a socket would deliver it:

- LinkBuffer: each chunk lands in free node space (``recv_target``/``commit_recv``, what a
  connection's ``recv_into`` does), then ``next(4)`` + ``next(n)`` + ``release()``.
- bytearray: ``buf += chunk``; slice out the payload; ``del buf[:4 + n]`` (what
  ``asyncio.StreamReader`` does).

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
from collections.abc import Callable

from netpoll import LinkBuffer

CHUNK = 8192
SIZES = (100, 4096, 65536)


def make_stream(payload: int, frames: int) -> list[bytes]:
    """The wire bytes for ``frames`` frames of ``payload`` bytes, cut into 8 KiB chunks."""
    frame = payload.to_bytes(4, "big") + bytes((i * 7) & 0xFF for i in range(payload))
    data = frame * frames
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def parse_linkbuffer(chunks: list[bytes]) -> int:
    buf = LinkBuffer()
    frames = 0
    check = 0
    need = 0  # payload length of a frame whose header was read, else 0
    for chunk in chunks:
        # What a connection's receive does: fill the tail's free space, or a fresh node
        # when there is little, unless what is free holds the rest of the awaited frame.
        k = len(chunk)
        target = buf.recv_target(min(2048, max(need - len(buf), 1)), 65536)
        if len(target) >= k:
            target[:k] = chunk
            buf.commit_recv(k)
        else:
            m = len(target)
            target[:m] = chunk[:m]
            buf.commit_recv(m)
            rest = buf.recv_target(k - m, 65536)
            rest[: k - m] = chunk[m:]
            buf.commit_recv(k - m)
        done = frames
        while True:
            if not need:
                if len(buf) < 4:
                    break
                need = int.from_bytes(buf.next(4), "big")
                if len(buf) < need:
                    buf.reserve(need)  # what a connection does when next(n) must wait
                    break
            elif len(buf) < need:
                break
            payload = buf.next(need)
            check ^= payload[need - 1]
            need = 0
            frames += 1
        if frames != done:
            buf.release()
    return frames + (check & 0)


def parse_bytearray(chunks: list[bytes]) -> int:
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


def time_parser(fn: Callable[[list[bytes]], int], chunks: list[bytes], frames: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    got = fn(chunks)
    elapsed = time.perf_counter() - t0
    if got != frames:
        raise SystemExit(f"{fn.__name__} parsed {got} frames, expected {frames}")
    return elapsed / frames * 1e9


def peak_memory(fn: Callable[[list[bytes]], int], chunks: list[bytes]) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn(chunks)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=32 << 20, help="stream size per size")
    parser.add_argument("--repeat", type=int, default=5, help="runs per parser (median)")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; {args.bytes >> 20} MiB per payload size")
    header = (
        f"{'payload':>8}  {'frames':>7}  {'LinkBuffer ns/frame':>20}  "
        f"{'bytearray ns/frame':>19}  {'LinkBuffer/bytearray':>20}  {'peak mem LB / BA':>18}"
    )
    print(header)
    print("-" * len(header))
    for size in SIZES:
        frames = max(args.bytes // (size + 4), 100)
        chunks = make_stream(size, frames)
        lb: list[float] = []
        ba: list[float] = []
        for _ in range(args.repeat):  # interleaved so drift hits both alike
            lb.append(time_parser(parse_linkbuffer, chunks, frames))
            ba.append(time_parser(parse_bytearray, chunks, frames))
        lb_ns, ba_ns = statistics.median(lb), statistics.median(ba)
        small = make_stream(size, min(frames, 2000))
        mem_lb = peak_memory(parse_linkbuffer, small)
        mem_ba = peak_memory(parse_bytearray, small)
        print(
            f"{size:>8}  {frames:>7}  {lb_ns:>20.0f}  {ba_ns:>19.0f}  "
            f"{lb_ns / ba_ns:>19.2f}x  {mem_lb >> 10:>7} / {mem_ba >> 10:>4} KiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
