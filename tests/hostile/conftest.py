"""Fixtures of the hostile-client suite (helpers live in _harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._harness import LogCapture


@pytest.fixture
def netpoll_log() -> Iterator[LogCapture]:
    """Records of the "netpoll" logger (INFO and up) during the test."""
    with LogCapture() as cap:
        yield cap
