"""LinkBuffer: a chain of pooled memory nodes that reads and writes without copying.

Pure data structure: no sockets, no locks. The connection layer wraps it with its own
lock; here every method assumes a single caller at a time.

Layout: ``_nodes`` holds the chain in stream order. Each node's bytes ``[r, w)`` are data,
``[w, cap)`` is free space only the tail may write into. The first ``_rlen`` bytes of the
chain (from the head) are readable; the ``_wlen`` bytes after them were written but not
flushed yet. Flushing only moves the boundary, so it copies nothing.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Final

from ._errors import InsufficientDataError

__all__ = ["DEFAULT_NODE_SIZE", "LinkBuffer"]

# mypyc looks up a builtin it has no type of its own for (memoryview) by name at each use,
# a method by name on each call, and a module's function in the module's dict: 100 to 270
# instructions every time. Final aliases are loaded from C statics instead.
MemoryView: Final = memoryview
_release_view: Final = memoryview.release
_getrefcount: Final = sys.getrefcount
DEFAULT_NODE_SIZE: Final = 8192
_MIN_CLASS_SHIFT: Final = 6  # smallest pooled block: 64 bytes
_MAX_POOLED: Final = 1 << 23  # blocks above 8 MiB are left to the allocator
_POOL_BYTES_PER_CLASS: Final = 16 << 20
# write_binary copies payloads below this size; larger ones are referenced in place.
NOCOPY_WRITE_THRESHOLD: Final = 4096
# The largest block malloc allocates (1 TiB): beyond it a size is a bug, not a request.
MAX_MALLOC: Final = 1 << 40


# Shared int objects for the classes, so buffers that store one cost no extra memory.
_CLASSES: Final = tuple(1 << max(i, _MIN_CLASS_SHIFT) for i in range(64))


def _size_class(n: int) -> int:
    """Round ``n`` up to the block size class that holds it."""
    if n <= 1 << _MIN_CLASS_SHIFT:
        return _CLASSES[0]
    return _CLASSES[(n - 1).bit_length()]


class _Node:
    """One contiguous piece of the chain: a pooled block, or a borrowed read-only view."""

    __slots__ = ("buf", "cap", "ev", "mv", "pooled", "r", "w")

    def __init__(
        self, buf: bytearray | None, mv: memoryview, r: int, w: int, cap: int, pooled: bool
    ) -> None:
        self.buf = buf  # owned block, or None for a borrowed view
        self.mv = mv
        # The view that reads hand out slices of, made per use of a pooled block. Views a
        # reader derives from those (v[a:b], memoryview(v), ctypes) keep its memory
        # manager alive, and with it a reference to the block: that is how recycling
        # tells that someone still looks at the block (see _recycle).
        self.ev: memoryview | None = None
        self.r = r
        self.w = w
        self.cap = cap  # writes may go up to here; equals w for borrowed or shared memory
        self.pooled = pooled  # False once the memory is shared with a slice or a split


class _BlockPool:
    """Free lists of nodes with power-of-two blocks, so steady traffic never allocates.

    ``list.append``/``list.pop`` are atomic on both GIL and free-threaded CPython, so the
    pool needs no lock of its own; the per-class cap is advisory. A node in a free list
    belongs to no buffer: buffers drop their reference before recycling it.
    """

    __slots__ = ("_free",)

    def __init__(self) -> None:
        self._free: dict[int, list[_Node]] = {}

    def free_list(self, cls: int) -> list[_Node]:
        """The free list of one size class (callers cache it for a fast ``take``)."""
        free = self._free.get(cls)
        if free is None:
            free = self._free.setdefault(cls, [])
        return free

    def take(self, cls: int) -> _Node:
        """A clean node whose block holds exactly ``cls`` bytes."""
        free = self._free.get(cls)
        if free:
            try:
                node = free.pop()
            except IndexError:  # another thread took the last one
                pass
            else:
                node.pooled = True
                return node
        buf = bytearray(cls)
        return _Node(buf, MemoryView(buf), 0, 0, cls, True)

    def put(self, node: _Node) -> None:
        """Return a node's block for reuse (only nodes that own an unshared block)."""
        cls = node.cap = len(node.mv)
        node.r = node.w = 0
        free = self._free.get(cls)
        if free is None:
            if cls > _MAX_POOLED:
                return
            free = self.free_list(cls)
        if len(free) * cls < _POOL_BYTES_PER_CLASS:
            free.append(node)

    def pooled_bytes(self) -> int:
        """Bytes currently parked in the pool (for tests and stats)."""
        return sum(cls * len(lst) for cls, lst in self._free.items())


POOL: Final = _BlockPool()


def _new_node(size: int) -> _Node:
    return POOL.take(_size_class(size))


# References to a pooled block when nobody outside holds a view of it: the node's ``buf``,
# the memory manager behind the node's ``mv``, and getrefcount's own argument.
_FREE_REFS: Final = 3


def _unwatched(node: _Node) -> bool:
    """Retire the node's hand-out view; True if nothing outside still looks at the block.

    ``release()`` revokes the views a buffer handed out, but not views derived from them
    (``v[a:b]``, ``memoryview(v)``) nor those exported further (numpy): all of them keep
    the hand-out view's memory manager alive, and it holds a reference to the block. So
    once the hand-out view is released, any reference to the block beyond the node's own
    means someone still looks at it, and the block must not be reused.
    """
    ev = node.ev
    if ev is None:
        return True
    node.ev = None
    _release_view(ev)  # never exported: reads hand out slices of it, not the view itself
    return _getrefcount(node.buf) <= _FREE_REFS


def _hand_out(node: _Node) -> memoryview:
    """The view to slice reads of ``node`` from (see ``_Node.ev``)."""
    ev = node.ev
    if ev is None:
        buf = node.buf
        if buf is None or not node.pooled:
            return node.mv  # borrowed or shared memory is never reused
        ev = node.ev = MemoryView(buf)
    return ev


def _revoke(views: list[memoryview]) -> None:
    """Release every view in ``views`` and empty the list."""
    for v in views:
        try:
            _release_view(v)
        except BufferError:
            # Exported further (numpy, a C extension holding a buffer): it cannot be
            # revoked, and its block stays out of the pool while it lives, by the same
            # check that guards derived views (_unwatched).
            pass
    views.clear()


def _recycle(node: _Node) -> None:
    if node.pooled and node.buf is not None:
        node.pooled = False  # guard against a second recycle of the same node
        if node.ev is None or _unwatched(node):
            POOL.put(node)


def _check_size(n: object, name: str = "n") -> int:
    if type(n) is not int and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"{name} must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    if n > sys.maxsize:
        raise ValueError(f"{name}={n} is larger than any buffer can be")
    return n


def _immutable(mv: memoryview) -> bool:
    """True if nobody can change ``mv``'s bytes: a read-only view is not enough, since a
    read-only view of a bytearray still changes with it."""
    return mv.readonly and isinstance(mv.obj, bytes)


def _as_bytes_view(b: object, name: str = "b") -> memoryview:
    """A flat byte view of ``b`` that this module owns.

    A view of a caller's memoryview is a new object on the same memory: it outlives the
    caller's ``release()`` of theirs. If that memory is a block another buffer handed out,
    the block's reference check (``_unwatched``) keeps it out of the pool while this view
    lives, so it never shows recycled bytes. Strided views are copied: ``sendmsg`` and
    the slicing reads need contiguous memory.
    """
    try:
        mv = MemoryView(b)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object, not {type(b).__name__}") from None
    if not mv.c_contiguous:
        return MemoryView(mv.tobytes())
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


_PATTERNS: list[re.Pattern[bytes] | None] = [None] * 256


def _delim_pattern(byte: int) -> re.Pattern[bytes]:
    """A compiled search for one byte value (cached: there are only 256)."""
    pat = _PATTERNS[byte]
    if pat is None:
        pat = _PATTERNS[byte] = re.compile(re.escape(bytes([byte])))
    return pat


def trim_line(line: memoryview) -> memoryview:
    """A line from ``until(b"\\n")`` without its ``\\n`` or ``\\r\\n``."""
    end = len(line) - 1
    if end and line[end - 1] == 13:
        end -= 1
    return line[:end]


def _delim_byte(delim: int | bytes) -> int:
    if isinstance(delim, int) and not isinstance(delim, bool):
        if not 0 <= delim <= 255:
            raise ValueError(f"delim must be a byte value 0..255, got {delim}")
        return delim
    if isinstance(delim, (bytes, bytearray)):
        if len(delim) != 1:
            raise ValueError(f"delim must be exactly one byte, got {len(delim)} bytes")
        return delim[0]
    raise TypeError(f"delim must be an int or a bytes of length 1, not {type(delim).__name__}")


class LinkBuffer:
    """A zero-copy byte queue: both a Reader and a Writer, usable without a socket.

    Views returned by reads (``next``, ``peek``, ``until``, ``read_line``, ``get_bytes``)
    stay valid until ``release()``; after it they are released memoryviews, which raise on
    any access instead of showing recycled memory. Views made with ``malloc`` are writable
    until the next ``flush``.
    """

    __slots__ = (
        "_closed",
        "_cls",
        "_hi",
        "_keep",
        "_mallocs",
        "_mutable_refs",
        "_nodes",
        "_peeked",
        "_rlen",
        "_side",
        "_views",
        "_wlen",
    )

    def __init__(self, size: int | None = None) -> None:
        if size is None:
            size = DEFAULT_NODE_SIZE
        else:
            _check_size(size, "size")
            if size == 0:
                raise ValueError("size must be > 0")
        self._cls = _size_class(size)  # nodes hold this much (no size is kept: memory)
        self._nodes: list[_Node] = []
        self._hi = 0  # index of the node the next read starts in
        self._rlen = 0  # readable (flushed, unread) bytes
        self._wlen = 0  # written or allocated, not yet flushed
        self._views: list[memoryview] | None = None  # handed out since the last release
        self._closed = False
        self._keep = 0  # block size release() keeps when drained (0: keep nothing)
        self._mutable_refs = 0  # borrowed writable objects flush() must copy
        self._side: list[_Node] | None = None  # blocks holding assembled reads
        self._mallocs: list[memoryview] | None = None  # malloc views, revoked at flush
        # The last cross-node peek: [head node, its read offset, block, bytes in it]. A
        # longer peek from the same place extends the block instead of taking another.
        self._peeked: list[Any] | None = None

    # ------------------------------------------------------------------ reader side

    def __len__(self) -> int:
        return self._rlen

    def len(self) -> int:
        """Readable bytes buffered now (Netpoll's ``Len()``)."""
        return self._rlen

    def is_empty(self) -> bool:
        """True when nothing is readable."""
        return self._rlen == 0

    def _check_read(self, n: int) -> None:
        if self._closed:
            raise InsufficientDataError("LinkBuffer is closed")
        if n > self._rlen:
            raise InsufficientDataError(f"need {n} bytes, only {self._rlen} readable")

    def next(self, n: int) -> memoryview:
        """Return the next ``n`` bytes and advance; zero-copy when they sit in one node."""
        if type(n) is int and 0 < n <= self._rlen:
            # The common case first, in as few steps as possible: the bytes sit in the head
            # node. (A closed buffer has nothing readable, so it never gets here.)
            node = self._nodes[self._hi]
            r = node.r
            e = r + n
            if e <= node.w:
                node.r = e
                self._rlen -= n
                ev = node.ev
                if ev is None:
                    ev = _hand_out(node)
                v = ev[r:e]
                views = self._views
                if views is None:
                    self._views = [v]
                else:
                    views.append(v)
                return v
        return self._next_slow(n)

    def _next_slow(self, n: int) -> memoryview:
        """``next`` when the bytes span nodes, the head is drained, or ``n`` is unusual."""
        _check_size(n)
        self._check_read(n)
        if n == 0:
            return MemoryView(b"")
        nodes = self._nodes
        hi = self._hi
        node = nodes[hi]
        while node.r == node.w:
            hi += 1
            node = nodes[hi]
        self._hi = hi
        r = node.r
        if node.w - r >= n:
            node.r = r + n
            self._rlen -= n
            v = _hand_out(node)[r : r + n]
        else:
            v = self._assemble(n, advance=True)
        self._track(v)
        return v

    def peek(self, n: int) -> memoryview:
        """Return the next ``n`` bytes without advancing."""
        if type(n) is int and 0 < n <= self._rlen:
            node = self._nodes[self._hi]  # the common case first, as in next
            r = node.r
            e = r + n
            if e <= node.w:
                ev = node.ev
                if ev is None:
                    ev = _hand_out(node)
                v = ev[r:e]
                views = self._views
                if views is None:
                    self._views = [v]
                else:
                    views.append(v)
                return v
        return self._peek_slow(n)

    def _peek_slow(self, n: int) -> memoryview:
        """``peek`` when the bytes span nodes, the head is drained, or ``n`` is unusual."""
        if type(n) is not int or n < 0:
            _check_size(n)
        if n > self._rlen or self._closed:
            self._check_read(n)
        if n == 0:
            return MemoryView(b"")
        hi = self._hi
        node = self._nodes[hi]
        while node.r == node.w:
            hi += 1
            node = self._nodes[hi]
        self._hi = hi
        r = node.r
        v = _hand_out(node)[r : r + n] if node.w - r >= n else self._peek_across(node, r, n)
        self._track(v)
        return v

    def _peek_across(self, head: _Node, r: int, n: int) -> memoryview:
        """``n`` bytes spanning nodes, without advancing. Peeking again from the same
        place reuses the block of the last such peek, extended in place while it has room
        (the bytes already in it are the same), so a parser that peeks ever further while
        input trickles in holds about twice the data, not a copy per peek."""
        last = self._peeked
        if last is not None and last[0] is head and last[1] == r:
            block: _Node = last[2]
            have: int = last[3]
            if n <= have:
                return _hand_out(block)[:n]
            if n <= block.cap:
                self._copy_readable(block.mv[have:n], have)
                last[3] = n
                return _hand_out(block)[:n]
        v = self._assemble(n, advance=False)
        assert self._side is not None
        self._peeked = [head, r, self._side[-1], n]
        return v

    def _assemble(self, n: int, advance: bool) -> memoryview:
        """``n`` readable bytes spanning nodes, copied once into a pooled block.

        The block goes back to the pool at ``release()``, with the view: a fresh
        bytearray per read would cost an allocation, zero-filling and page faults.
        """
        node = POOL.take(_size_class(n))
        self._gather_into(node.mv, n, advance)
        side = self._side
        if side is None:
            self._side = [node]
        else:
            side.append(node)
        return _hand_out(node)[:n]

    def _gather(self, n: int, advance: bool) -> bytearray:
        """Copy ``n`` readable bytes spanning several nodes into one new bytearray."""
        out = bytearray(n)
        self._gather_into(MemoryView(out), n, advance)
        return out

    def _copy_readable(self, out: memoryview, start: int) -> None:
        """Fill ``out`` with the readable bytes from offset ``start`` on, not advancing."""
        nodes = self._nodes
        i = self._hi
        r = nodes[i].r
        while start >= nodes[i].w - r:  # find the node holding offset ``start``
            start -= nodes[i].w - r
            i += 1
            r = nodes[i].r
        r += start
        pos = 0
        n = len(out)
        while pos < n:
            node = nodes[i]
            k = min(node.w - r, n - pos)
            out[pos : pos + k] = node.mv[r : r + k]
            pos += k
            i += 1
            if i < len(nodes):
                r = nodes[i].r

    def _gather_into(self, out: memoryview, n: int, advance: bool) -> None:
        pos = 0
        i = self._hi
        nodes = self._nodes
        while pos < n:
            node = nodes[i]
            k = min(node.w - node.r, n - pos)
            if k:
                out[pos : pos + k] = node.mv[node.r : node.r + k]
                pos += k
                if advance:
                    node.r += k
            if pos < n or (advance and node.r == node.w):
                i += 1
        if advance:
            self._rlen -= n
            self._hi = min(i, len(nodes) - 1) if nodes else 0

    def _track(self, v: memoryview) -> None:
        """Remember a handed-out view so ``release()`` can revoke it."""
        views = self._views
        if views is None:
            self._views = [v]
        else:
            views.append(v)

    def skip(self, n: int) -> None:
        """Advance ``n`` bytes without returning them."""
        if type(n) is not int or n < 0:
            _check_size(n)
        if n > self._rlen or self._closed:
            self._check_read(n)
        node = self._nodes[self._hi] if n else None
        if node is not None and node.w - node.r >= n:
            node.r += n
            self._rlen -= n
        else:
            self._advance(n)

    def _advance(self, n: int) -> None:
        nodes = self._nodes
        i = self._hi
        left = n
        while left:
            node = nodes[i]
            k = min(node.w - node.r, left)
            node.r += k
            left -= k
            if left:
                i += 1
        self._hi = i
        self._rlen -= n

    def _find(self, byte: int) -> int:
        """Offset from the read point of the first ``byte`` among readable data, or -1."""
        seen = 0
        rlen = self._rlen
        for i in range(self._hi, len(self._nodes)):
            node = self._nodes[i]
            end = min(node.w, node.r + rlen - seen)
            if node.buf is not None:
                pos = node.buf.find(byte, node.r, end)
                if pos >= 0:
                    return seen + pos - node.r
            elif end > node.r:
                # Borrowed memory: searched in place (a regular expression takes any
                # buffer), where a copy of the rest of the node per call made reading a
                # large written buffer line by line quadratic.
                m = _delim_pattern(byte).search(node.mv, node.r, end)
                if m is not None:
                    return seen + m.start() - node.r
            seen += end - node.r
            if seen >= rlen:
                break
        return -1

    def until(self, delim: int | bytes) -> memoryview:
        """Data up to and including the first ``delim`` byte."""
        byte = _delim_byte(delim)
        if self._closed:
            self._check_read(1)
        pos = self._find(byte)
        if pos < 0:
            raise InsufficientDataError(
                f"delimiter {bytes([byte])!r} not found in {self._rlen} readable bytes"
            )
        return self.next(pos + 1)

    def read_line(self) -> memoryview:
        """One line without its ``\\n`` (or ``\\r\\n``)."""
        out = trim_line(self.until(10))
        self._track(out)
        return out

    def read_binary(self, n: int) -> bytes:
        """The next ``n`` bytes as a ``bytes`` copy that outlives ``release()``."""
        _check_size(n)
        self._check_read(n)
        if n == 0:
            return b""
        node = self._nodes[self._hi]
        while node.r == node.w:
            self._hi += 1
            node = self._nodes[self._hi]
        r = node.r
        if node.w - r >= n:
            node.r = r + n
            self._rlen -= n
            return node.mv[r : r + n].tobytes()
        return bytes(self._gather(n, advance=True))

    def read_string(self, n: int, encoding: str = "utf-8") -> str:
        """The next ``n`` bytes decoded with ``encoding``."""
        _check_size(n)
        self._check_read(n)
        if n == 0:
            return ""
        node = self._nodes[self._hi]
        while node.r == node.w:
            self._hi += 1
            node = self._nodes[self._hi]
        r = node.r
        if node.w - r >= n:
            s = str(node.mv[r : r + n], encoding)
            node.r = r + n
            self._rlen -= n
            return s
        s = str(self._gather(n, advance=False), encoding)  # a failed decode consumes nothing
        self._advance(n)
        return s

    def read_byte(self) -> int:
        """The next byte as an int."""
        self._check_read(1)
        node = self._nodes[self._hi]
        while node.r == node.w:
            self._hi += 1
            node = self._nodes[self._hi]
        b = node.mv[node.r]
        node.r += 1
        self._rlen -= 1
        return b

    def slice(self, n: int) -> LinkBuffer:
        """A new independent buffer over the next ``n`` bytes, sharing their memory.

        Releases what was consumed before, as Netpoll's ``Slice`` does. The shared blocks
        are never returned to the pool, so the slice survives this buffer's reuse.
        """
        _check_size(n)
        self._check_read(n)
        self.release()
        out = LinkBuffer(self._cls)
        if n == 0:
            return out
        nodes = self._nodes
        i = self._hi
        left = n
        while left:
            node = nodes[i]
            k = min(node.w - node.r, left)
            if k:
                node.pooled = False
                out._nodes.append(_Node(node.buf, node.mv, node.r, node.r + k, node.r + k, False))
                node.r += k
                left -= k
            if left:
                i += 1
        self._hi = i
        self._rlen -= n
        out._rlen = n
        return out

    def release(self) -> None:
        """Free everything read so far; views handed out before become unusable."""
        views = self._views
        if views:
            for v in views:  # _revoke inlined: this runs once per request
                try:
                    _release_view(v)
                except BufferError:
                    pass  # see _revoke
            views.clear()
        side = self._side
        if side is not None:
            self._side = None
            self._peeked = None
            for node in side:
                _recycle(node)
        nodes = self._nodes
        if not self._rlen and not self._wlen:
            if len(nodes) == 1:
                node = nodes[0]
                if node.cap == self._keep and node.pooled:
                    # Keep the drained block for the next receive: saves a pool round
                    # trip per request. The owner hands it back when it goes idle.
                    # (_unwatched inlined: this runs once per request.)
                    ev = node.ev
                    if ev is not None:
                        node.ev = None
                        _release_view(ev)
                    if ev is None or _getrefcount(node.buf) <= _FREE_REFS:
                        node.r = node.w = 0
                        self._hi = 0
                        return
                    node.pooled = False  # a derived view still looks at it: let it go
            for node in nodes:
                _recycle(node)
            nodes.clear()
            self._hi = 0
            return
        hi = self._hi
        head = nodes[hi]
        while head.r == head.w and hi + 1 < len(nodes):
            hi += 1
            head = nodes[hi]
        if hi:
            for node in nodes[:hi]:
                _recycle(node)
            del nodes[:hi]
            self._hi = 0

    # ------------------------------------------------------------------ writer side

    def _tail_for(self, n: int) -> _Node:
        """The tail node, or a fresh one, with at least ``n`` contiguous free bytes."""
        nodes = self._nodes
        if nodes:
            tail = nodes[-1]
            if tail.cap - tail.w >= n:
                return tail
        node = POOL.take(self._cls if n <= self._cls else _size_class(n))
        nodes.append(node)
        return node

    def malloc(self, n: int) -> memoryview:
        """A writable view of ``n`` bytes, appended to the stream at the next flush."""
        _check_size(n)
        if n > MAX_MALLOC:
            raise ValueError(f"n={n} is more than malloc allocates at once ({MAX_MALLOC} bytes)")
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        if n == 0:
            return MemoryView(bytearray(0))
        tail = self._tail_for(n)
        w = tail.w
        tail.w = w + n
        self._wlen += n
        # A slice of the per-use view, like a read: flush revokes it, and a view derived
        # from it keeps the block out of the pool (see _unwatched), so a stale malloc view
        # can never write into memory another buffer has since been given.
        v = _hand_out(tail)[w : w + n]
        if self._mallocs is None:
            self._mallocs = []
        self._mallocs.append(v)
        return v

    def malloc_len(self) -> int:
        """Bytes written or allocated since the last flush."""
        return self._wlen

    def malloc_ack(self, n: int) -> None:
        """Keep the first ``n`` unflushed bytes and drop the rest."""
        _check_size(n)
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        if n > self._wlen:
            raise ValueError(f"n={n} exceeds the {self._wlen} bytes allocated since the last flush")
        drop = self._wlen - n
        nodes = self._nodes
        i = len(nodes) - 1
        while drop:
            node = nodes[i]
            k = min(drop, node.w - node.r)
            node.w -= k
            drop -= k
            if node.buf is None or not node.pooled:
                node.cap = node.w  # borrowed or shared memory must never be written
            i -= 1
        self._wlen = n

    def write_binary(self, b: bytes | bytearray | memoryview) -> int:
        """Append a bytes-like object; large ones are referenced, so don't mutate until flush."""
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        t = type(b)
        if t is MemoryView:
            if b.format != "B" or b.ndim != 1 or not b.contiguous:  # type: ignore[union-attr]
                return self._write_view(_as_bytes_view(b))
        elif t is not bytes and t is not bytearray:
            return self._write_view(_as_bytes_view(b))
        n = len(b)
        if n >= NOCOPY_WRITE_THRESHOLD:
            return self._write_view(_as_bytes_view(b))
        if n == 0:
            return 0
        nodes = self._nodes
        if nodes:
            tail = nodes[-1]
            if tail.cap - tail.w < n:
                tail = self._tail_for(n)
        else:
            tail = self._tail_for(n)
        w = tail.w
        tail.w = w + n
        tail.buf[w : w + n] = b  # type: ignore[index]
        self._wlen += n
        return n

    def _write_view(self, mv: memoryview) -> int:
        n = len(mv)
        if n == 0:
            return 0
        if n >= NOCOPY_WRITE_THRESHOLD:
            self._nodes.append(_Node(None, mv, 0, n, n, False))
            if not _immutable(mv):
                self._mutable_refs += 1
        else:
            tail = self._tail_for(n)
            w = tail.w
            tail.mv[w : w + n] = mv
            tail.w = w + n
        self._wlen += n
        return n

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        """Append ``s`` encoded with ``encoding``; returns the number of bytes."""
        if not isinstance(s, str):
            raise TypeError(f"s must be a str, not {type(s).__name__}")
        return self.write_binary(s.encode(encoding))

    def write_byte(self, b: int) -> None:
        """Append one byte given as an int."""
        if type(b) is not int:
            raise TypeError(f"b must be an int, not {type(b).__name__}")
        if not 0 <= b <= 255:
            raise ValueError(f"b must be a byte value 0..255, got {b}")
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        tail = self._tail_for(1)
        tail.mv[tail.w] = b
        tail.w += 1
        self._wlen += 1

    def write_direct(self, p: bytes | bytearray | memoryview, remain_cap: int) -> None:
        """Insert ``p`` into the last malloc region, ``remain_cap`` bytes before its end.

        ``buf = malloc(a + b); write_direct(p, b)`` yields the stream ``buf[:a] + p +
        buf[a:]`` with both parts of ``buf`` still writable (Netpoll's WriteDirect).
        """
        mv = _as_bytes_view(p, "p")
        _check_size(remain_cap, "remain_cap")
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        tail = self._nodes[-1] if self._nodes else None
        if remain_cap and (
            tail is None or tail.buf is None or remain_cap > min(self._wlen, tail.w - tail.r)
        ):
            region = 0 if tail is None or tail.buf is None else min(self._wlen, tail.w - tail.r)
            raise ValueError(
                f"remain_cap={remain_cap} exceeds the current malloc region ({region} bytes)"
            )
        n = len(mv)
        if n == 0:
            return
        if n < NOCOPY_WRITE_THRESHOLD:
            mv = MemoryView(bytes(mv))
        elif not _immutable(mv):
            self._mutable_refs += 1
        middle = _Node(None, mv, 0, n, n, False)
        if remain_cap == 0 or tail is None:
            self._nodes.append(middle)
        else:
            split = tail.w - remain_cap
            # The tail's block now backs two nodes; it must not return to the pool.
            rest = _Node(tail.buf, tail.mv, split, tail.w, tail.cap, False)
            tail.w = split
            tail.cap = split
            tail.pooled = False
            self._nodes.append(middle)
            self._nodes.append(rest)
        self._wlen += n

    def append(self, w: object) -> None:
        """Move all of ``w``'s data to this buffer's tail without copying; ``w`` is empty
        afterwards. What ``w`` held readable moves too, as in Netpoll (its views stay
        valid until ``w.release()``); here all of it is unflushed until ``flush()``."""
        if not isinstance(w, LinkBuffer):
            spill = getattr(w, "_spill", None)
            if spill is not None:
                spill()
            inner = getattr(w, "_wbuf", None)  # adapters and connections keep one
            if not isinstance(inner, LinkBuffer):
                raise TypeError(f"w must be a netpoll Writer, not {type(w).__name__}")
            w = inner
        if w is self:
            raise ValueError("cannot append a LinkBuffer to itself")
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        if w._closed:
            raise ValueError("w is closed")
        n = w._rlen + w._wlen
        if n == 0:
            return
        self._mutable_refs += w._mutable_refs
        w._wlen = n  # its readable bytes go along, as the start of what is unflushed
        w._rlen = 0
        self._nodes.extend(w._take_unflushed())
        self._wlen += n

    def _take_unflushed(self) -> list[_Node]:
        """Detach the unflushed bytes as nodes owned by the caller."""
        n = self._wlen
        nodes = self._nodes
        out: list[_Node] = []
        # Walk back from the tail to the node where unflushed data starts.
        i = len(nodes) - 1
        seen = 0
        while seen < n:
            seen += nodes[i].w - nodes[i].r
            i -= 1
        i += 1
        first = nodes[i]
        start = first.w - (n - (seen - (first.w - first.r)))
        if start > 0:
            # The block also holds readable or consumed bytes (whose views may still be
            # out): hand over a borrowed piece and keep the block out of the pool.
            first.pooled = False
            out.append(_Node(first.buf, first.mv, start, first.w, first.w, False))
            first.w = start
            first.cap = start
            i += 1
        out.extend(nodes[i:])
        del nodes[i:]
        if self._hi >= len(nodes):
            self._hi = max(len(nodes) - 1, 0)
        self._wlen = 0
        self._mutable_refs = 0
        return out

    def flush(self) -> None:
        """Make everything written so far readable.

        Large writable objects given to ``write_binary`` were referenced, not copied; here
        they are copied, so the caller may change them once ``flush`` returns.
        """
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        if self._mutable_refs:
            self._own_borrowed()
        self._publish()

    def _publish(self) -> None:
        """``flush`` for a sender that sends before returning: borrowed data stays borrowed."""
        if self._mallocs:
            _revoke(self._mallocs)
        self._rlen += self._wlen
        self._wlen = 0
        self._mutable_refs = 0

    def _own_borrowed(self) -> None:
        """Replace references to callers' writable memory with private copies."""
        for node in self._nodes:
            if node.buf is None and not _immutable(node.mv):
                node.mv = MemoryView(node.mv[node.r : node.w].tobytes())
                node.w -= node.r
                node.cap = node.w
                node.r = 0
        self._mutable_refs = 0

    # ------------------------------------------------------------------ whole buffer

    def get_bytes(self) -> list[memoryview]:
        """Readable data as a list of views (for ``sendmsg``), valid until ``release()``."""
        if self._closed:
            raise ValueError("LinkBuffer is closed")
        views = self._readable_views(limit=0, hand_out=True)
        for v in views:
            self._track(v)
        return views

    def _readable_views(self, limit: int = 1024, hand_out: bool = False) -> list[memoryview]:
        """Views of the readable data; at most ``limit`` of them (IOV_MAX), 0 for all.

        ``hand_out``: the views go to a reader (and are tracked), not to the kernel.
        """
        if self._rlen and len(self._nodes) == 1:
            node = self._nodes[0]
            mv = _hand_out(node) if hand_out else node.mv
            return [mv[node.r : node.r + self._rlen]]
        out: list[memoryview] = []
        left = self._rlen
        nodes = self._nodes
        i = self._hi
        while left and (not limit or len(out) < limit):
            node = nodes[i]
            k = min(node.w - node.r, left)
            if k:
                mv = _hand_out(node) if hand_out else node.mv
                out.append(mv[node.r : node.r + k])
                left -= k
            i += 1
        return out

    def close(self) -> None:
        """Drop all data and return the memory to the pool; further use raises."""
        if self._closed:
            return
        if self._mallocs:
            _revoke(self._mallocs)
        self._rlen = self._wlen = 0
        self._keep = 0
        self.release()
        self._closed = True

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    # ------------------------------------------------------------------ socket hooks

    def recv_target(self, min_free: int, size: int) -> memoryview:
        """Free tail space to receive into: at least ``min_free`` bytes, else a new node.

        The caller fills a prefix of the view and reports it with ``commit_recv``.
        """
        nodes = self._nodes
        if nodes:
            tail = nodes[-1]
            if tail.cap - tail.w >= min_free and tail.buf is not None:
                if tail.w == 0:
                    return tail.mv
                return tail.mv[tail.w : tail.cap]
        node = _new_node(size)
        nodes.append(node)
        return node.mv

    def commit_recv(self, n: int) -> None:
        """Publish ``n`` bytes received into the view ``recv_target`` gave: readable now."""
        self._nodes[-1].w += n
        self._rlen += n

    def reserve(self, n: int) -> None:
        """Arrange for the next ``n`` readable bytes to end up in one node when received.

        A receiver calls this when a reader waits for ``n`` bytes: if they would straddle
        nodes, the bytes buffered so far move (one small copy) to a fresh node with room
        for all ``n``, so later receives land behind them and ``next(n)`` needs no copy.
        Only for buffers without unflushed data (receive buffers).
        """
        if type(n) is not int or n < 0:
            _check_size(n)
        if self._wlen or n <= self._rlen or n <= 4096:
            return
        nodes = self._nodes
        hi = self._hi
        if self._rlen:
            head = nodes[hi]
            while head.r == head.w:
                hi += 1
                head = nodes[hi]
            if head is nodes[-1] and head.buf is not None and head.cap - head.r >= n:
                return  # already contiguous, with room for the rest
        elif nodes:
            tail = nodes[-1]
            if tail.buf is not None and tail.cap - tail.w >= n:
                return
        node = POOL.take(_size_class(n))
        have = self._rlen
        if have:
            pos = 0
            for i in range(hi, len(nodes)):
                src = nodes[i]
                k = src.w - src.r
                node.mv[pos : pos + k] = src.mv[src.r : src.w]
                src.r = src.w
                pos += k
            node.w = have
        nodes.append(node)
        self._hi = len(nodes) - 1

    def keep_drained_block(self, cls: int) -> None:
        """Let ``release()`` keep one drained block of ``cls`` bytes instead of pooling it."""
        self._keep = cls

    def shed(self) -> bool:
        """Give a kept, empty block back to the pool; True if there was one."""
        nodes = self._nodes
        if self._rlen or self._wlen or self._views or len(nodes) != 1:
            return False
        node = nodes[0]
        if node.r != node.w:
            return False
        nodes.clear()
        self._hi = 0
        _recycle(node)
        return True

    def drop_empty_tail(self) -> None:
        """Return an unused fresh tail node (after a receive that got nothing)."""
        nodes = self._nodes
        if nodes and self._rlen == 0 and self._wlen == 0 and not self._views:
            for node in nodes:
                _recycle(node)
            nodes.clear()
            self._hi = 0

    def send_views(self) -> list[memoryview]:
        """Readable data as views for ``sendmsg``, untracked (the caller drops them)."""
        return self._readable_views()

    def consume_sent(self, n: int) -> None:
        """Discard ``n`` readable bytes that the kernel took, recycling drained nodes."""
        self._advance(n)
        if self._rlen == 0 and self._wlen == 0:
            if not self._views:
                for node in self._nodes:
                    _recycle(node)
                self._nodes.clear()
                self._hi = 0
            else:
                self.release()
