"""A benchmark server (``python -m bench.server``) run as the benchmark runs it, for the
tests of the benchmark's servers: started on a free loopback port, ready once it prints
``READY <port>``, killed at the end."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class BenchServer:
    """One ``python -m bench.server`` process; ``extra`` goes on its command line."""

    def __init__(self, contender: str, workload: str, *extra: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        args = ["--contender", contender, "--workload", workload, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server", *args, *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,  # stderr is inherited: pytest shows it if a test fails
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=30.0)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != f"READY {self.port}".encode():
            self.stop()
            raise AssertionError(f"{contender} {workload} server did not start: {line!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
