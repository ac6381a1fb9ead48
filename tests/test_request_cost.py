"""bench/request_cost.py traces opcodes with sys.settrace; it must hand back the tracer that
was there before (coverage.py's, a debugger's), not switch tracing off for the process."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest


@pytest.mark.timeout(30)
def test_opcode_counts_restores_the_previous_tracer() -> None:
    from bench import request_cost as rc

    def outer(frame: FrameType, event: str, arg: object) -> Any:
        return None  # traces no frame's lines: only its identity matters

    before = sys.gettrace()
    sys.settrace(outer)
    try:
        counts = rc.opcode_counts(rc.netpoll_handler(rc.netpoll, "echo"), rc.MESSAGE)
        after = sys.gettrace()
    finally:
        sys.settrace(before)
    if sys.version_info < (3, 13):
        # 3.13 traces no frame called from one that was running when settrace was set;
        # the handler's frame can then be such a one (request_cost's own note).
        assert counts, "the opcode tracer saw nothing"
    assert after is outer, f"opcode_counts left sys.gettrace() = {after!r}"
