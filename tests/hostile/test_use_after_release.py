"""Use after release: views kept past release() raise, and never show other connections' bytes."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

import pytest

import netpoll

from ._harness import (
    Case,
    LiveServer,
    LogCapture,
    Proto,
    connect,
    frame,
    pattern,
    recv_exact,
    run_threads,
)

CLIENTS = 20
FRAMES = 150  # per client
SEED = 99
RSS_SLACK = 16 << 20  # the kept slices hold their blocks until the test drops them
MODES = ("next", "peek+skip", "until", "read_line", "slice")


@dataclass
class Kept:
    view: memoryview
    expected: bytes
    exportable: bool  # the checker thread may hold a buffer export of it (hashlib)
    sliced: bool = False  # a view of a slice() reader: it lives as long as that reader
    # The handler got past release(): a client has its reply before that, so the final
    # check must skip views whose handler may not have released them yet.
    released: bool = False


class Book:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: list[Kept] = []
        self.slices: list[tuple[netpoll.LinkBuffer, bytes]] = []
        self.raised = 0  # reads after release() that raised ValueError
        self.still_readable = 0  # exportable views that were exported during release()
        self.wrong: list[str] = []  # any read showing bytes other than the view's own
        self.mismatch_at_receipt: list[str] = []


class LineFrames(Proto):
    """Canary frames whose payload ends with b"\n", like the clients' (for until/read_line)."""

    name = "line-frames"

    def request(self, cid: int, seq: int) -> bytes:
        size = self.sizes[seq % len(self.sizes)]
        return frame(pattern(cid, seq, size - 1) + b"\n")


def expected_payload(body: bytes) -> bytes:
    """The payload a client sent, rebuilt from the b"<c{cid}.s{seq}>" it starts with."""
    end = body.index(b">") + 1
    cid, seq = (int(x[1:]) for x in body[1 : end - 1].split(b"."))
    size = len(body) - 1  # the trailing b"\n" is not part of the pattern
    return pattern(cid, seq, size).replace(b"\n", b"_") + b"\n"


def make_handler(book: Book) -> Any:
    def handler(ctx: dict[str, int], conn: netpoll.Connection) -> None:
        hdr = conn.next(4)
        header = bytes(hdr)
        n = int.from_bytes(header, "big")
        seq = ctx["seq"] = ctx.get("seq", -1) + 1
        mode = MODES[seq % len(MODES)]
        if mode == "next":
            body = conn.next(n)
        elif mode == "peek+skip":
            body = conn.peek(n)
            conn.skip(n)
        elif mode == "until":
            body = conn.until(b"\n")
        elif mode == "read_line":
            body = conn.read_line()
        else:
            sliced = conn.slice(n)  # releases what was read before it: the header view
            body = sliced.peek(n)
            try:
                bytes(hdr)
            except ValueError:
                book.raised += 1
            else:
                book.wrong.append("the header view is readable after slice() released it")
        got = bytes(body)
        if mode == "read_line":
            got += b"\n"
        if got[:2] == b"<c" and got != expected_payload(got):
            book.mismatch_at_receipt.append(f"{mode}: {got[:20]!r}")
        kept = Kept(
            body, bytes(body), exportable=(mode == "next" and seq % 2 == 0), sliced=mode == "slice"
        )
        with book.lock:
            book.kept.append(kept)
            if mode == "slice":
                book.slices.append((sliced, got))
        conn.write_binary(header + got)
        conn.flush()
        conn.release()
        if not kept.exportable and not kept.sliced:
            try:
                view = bytes(kept.view)
            except ValueError:
                book.raised += 1
            else:
                book.wrong.append(f"{mode}: readable after release(): {view[:20]!r}")
        kept.released = True

    return handler


def checker(book: Book, stop: threading.Event) -> None:
    """Hash kept exportable views, concurrently with the handlers releasing them.

    hashlib holds a buffer export of the view and releases the GIL while hashing; a
    release() meanwhile cannot revoke the view, so its block must never be reused.
    """
    k = 0
    while not stop.is_set():
        with book.lock:
            recent = [kp for kp in book.kept[-64:] if kp.exportable]
        for kp in recent:
            try:
                digest = hashlib.sha256(kp.view).digest()
            except ValueError:
                continue  # revoked: the expected outcome once released
            if digest != hashlib.sha256(kp.expected).digest():
                book.wrong.append(f"exported view shows other bytes (check {k})")
            k += 1
        stop.wait(0.0005)


@pytest.mark.timeout(60)
def test_released_views_raise_and_never_show_other_bytes(netpoll_log: LogCapture) -> None:
    book = Book()
    stop = threading.Event()
    check_thread = threading.Thread(target=checker, args=(book, stop), daemon=True)

    def client(i: int) -> None:
        rng = random.Random(SEED + i % CLIENTS)
        with connect(srv.addr, timeout=10) as s:
            for seq in range(FRAMES):
                size = rng.choice([1, 100, 3000, 9000, 20_000, 70_000])
                payload = pattern(1000 + i, seq, size).replace(b"\n", b"_") + b"\n"
                msg = frame(payload)
                s.sendall(msg)
                assert recv_exact(s, len(msg)) == msg, f"client {i} frame {seq}"

    def warm_up() -> None:  # the same traffic, so that first-use caches predate the baseline
        assert not run_threads(client, CLIENTS, timeout=30)
        book.kept.clear()
        book.slices.clear()
        book.raised = 0

    with (
        LiveServer(make_handler(book), on_connect=lambda ctx, conn: {}) as srv,
        Case("use-after-release", srv, LineFrames(), warm_up=warm_up) as case,
    ):
        check_thread.start()
        try:
            errors = run_threads(client, CLIENTS, timeout=45)
        finally:
            stop.set()
            check_thread.join(5)
        still_readable = 0
        for kp in book.kept:
            if not kp.released:
                continue
            try:
                bytes(kp.view)
            except ValueError:
                continue
            still_readable += not kp.sliced
            if bytes(kp.view) != kp.expected:
                book.wrong.append("a kept view shows other bytes after the traffic")
            if not kp.exportable and not kp.sliced:
                book.wrong.append("a view nobody exported is readable after release()")
        slices_intact = sum(r.read_binary(len(want)) == want for r, want in book.slices)
        slices = len(book.slices)
        kept = len(book.kept)
        book.kept.clear()
        book.slices.clear()
        del kp
        case.finish()
    case.record(
        clients=CLIENTS,
        frames=CLIENTS * FRAMES,
        views_kept=kept,
        raised_after_release=book.raised,
        exported_during_release_still_readable=still_readable,
        slices_kept=slices,
        slices_intact=slices_intact,
        wrong=len(book.wrong),
    )

    assert not errors, errors[:3]
    assert not book.mismatch_at_receipt, book.mismatch_at_receipt[:3]
    assert not book.wrong, book.wrong[:5]
    # next (odd seq), peek, until, read_line views after release(); headers after slice()
    assert book.raised >= CLIENTS * FRAMES * 4 // 5 - CLIENTS
    assert slices_intact == slices >= CLIENTS * FRAMES // len(MODES)
    assert not netpoll_log.at_least(logging.WARNING), netpoll_log.describe()
    case.check(RSS_SLACK)
