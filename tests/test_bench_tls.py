"""The benchmark's TLS workloads: each TLS server answers correctly, and the C load
generator's TLS mode drives it and checks every reply.

The servers run as the benchmark runs them (``python -m bench.server ... --tls-cert
--tls-key``, one certificate for all, made by trustme); the load generator is compiled
here from ``bench/loadgen.c`` with OpenSSL. Each load run is bounded by a request count
and by time; progress is observed through replies and the tools' JSON, never sleeps.
"""

from __future__ import annotations

import importlib.util
import json
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.runner import standard_workloads  # noqa: E402
from bench.server import CONTENDERS, TLS_CONTENDERS  # noqa: E402

from _bench_server import BenchServer  # noqa: E402

trustme = pytest.importorskip("trustme")

TIMEOUT = 10.0  # seconds any single wait for a server or tool may take

SERVERS = ["netpoll", "asyncio-protocol"]
if importlib.util.find_spec("uvloop") is not None:
    SERVERS.append("uvloop-protocol")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    issued.cert_chain_pems[0].write_to_path(d / "cert.pem")
    issued.private_key_pem.write_to_path(d / "key.pem")
    return d / "cert.pem", d / "key.pem", ca


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/loadgen.c built with TLS; skipped (with the reason) where that cannot be."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build bench/loadgen.c")
    out = tmp_path_factory.mktemp("loadgen") / "loadgen"
    cmd = [gcc, "-O2", "-DLOADGEN_TLS", "-o", str(out), str(ROOT / "bench" / "loadgen.c")]
    proc = subprocess.run([*cmd, "-lssl", "-lcrypto"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the TLS load generator (libssl-dev?): {proc.stderr[:200]}")
    return out


class TLSServer(BenchServer):
    """One ``python -m bench.server`` process serving ``workload`` over TLS."""

    def __init__(self, contender: str, workload: str, cert: Path, key: Path) -> None:
        super().__init__(contender, workload, "--tls-cert", str(cert), "--tls-key", str(key))


@pytest.fixture(params=SERVERS)
def contender(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def echo_server(contender: str, cert_files: tuple[Path, Path, Any]) -> Iterator[TLSServer]:
    srv = TLSServer(contender, "echo", cert_files[0], cert_files[1])
    try:
        yield srv
    finally:
        srv.stop()


def client(port: int, ca: Any) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"server closed after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def run_loadgen(loadgen: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(loadgen), *args], capture_output=True, text=True, timeout=TIMEOUT * 3
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"loadgen printed no result (status {proc.returncode}): {proc.stderr[-300:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_tls_echo_server_answers_a_python_ssl_client(
    echo_server: TLSServer, cert_files: tuple[Path, Path, Any]
) -> None:
    """The certificate verifies for 127.0.0.1, and 128 B and 64 KiB messages come back."""
    with client(echo_server.port, cert_files[2]) as s:
        for size in (128, 65536):
            payload = bytes(i % 251 for i in range(size))
            s.sendall(payload)
            assert recv_exactly(s, size) == payload


@pytest.mark.parametrize("size,conns", [(128, 5), (65536, 3)])
def test_loadgen_tls_echo_checks_every_reply(
    echo_server: TLSServer, loadgen: Path, size: int, conns: int
) -> None:
    """A bounded TLS echo run completes its requests with every reply byte compared."""
    result = run_loadgen(
        loadgen, "--mode", "echo", "--tls", "1", "--port", str(echo_server.port),
        "--conns", str(conns), "--size", str(size), "--warmup", "0", "--duration", "20",
        "--max-requests", "300",
    )  # fmt: skip
    assert result["ok"] is True, result
    # Every request finished within the measured phase: the count stops the run, and the
    # requests other connections had in flight then complete too (at most one each).
    assert 300 <= result["requests"] < 300 + conns, result
    assert echo_server.alive()


def test_loadgen_tls_idle_completes_every_handshake(echo_server: TLSServer, loadgen: Path) -> None:
    """Idle mode with --tls reports only after every connection's handshake is done."""
    proc = subprocess.Popen(
        [str(loadgen), "--mode", "idle", "--tls", "1", "--port", str(echo_server.port),
         "--conns", "20", "--hold", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=TIMEOUT), "idle TLS opener did not report"
        line = json.loads(proc.stdout.readline())
        assert line["ok"] is True and line["conns"] == 20, line
        proc.stdin.close()  # ends the hold
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def test_loadgen_tls_against_a_plain_server_fails_clearly(
    loadgen: Path, cert_files: tuple[Path, Path, Any]
) -> None:
    """A TLS client against a plaintext echo server gets a JSON error naming the handshake,
    not a hang."""
    srv = BenchServer("asyncio-protocol", "echo")
    port = srv.port
    try:
        result = run_loadgen(
            loadgen, "--mode", "echo", "--tls", "1", "--port", str(port), "--conns", "1",
            "--connect-timeout", "2", "--max-requests", "10",
        )  # fmt: skip
        assert result["ok"] is False
        assert "TLS handshake" in result["error"], result
    finally:
        srv.stop()


def test_https_server_answers_a_python_ssl_client(cert_files: tuple[Path, Path, Any]) -> None:
    srv = TLSServer("netpoll", "http", cert_files[0], cert_files[1])
    try:
        with client(srv.port, cert_files[2]) as s:
            for _ in range(3):  # keep-alive: several requests on one connection
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = bytearray()
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(4096)
                    assert chunk, "server closed mid-response"
                    head += chunk
                assert head.startswith(b"HTTP/1.1 200"), bytes(head[:100])
                length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                body = head.split(b"\r\n\r\n", 1)[1]
                body += recv_exactly(s, length - len(body))
                assert len(body) == length
    finally:
        srv.stop()


def test_tls_workloads_are_served_by_the_tls_contenders_only() -> None:
    tls = [w for w in standard_workloads(1000) if w.tls]
    assert {w.name for w in tls} == {
        "https-c50",
        "tls-echo-128-c50",
        "tls-echo-64k-c10",
        "tls-idle",
    }
    for w in tls:
        assert [c for c in CONTENDERS if w.serves(c)] == list(TLS_CONTENDERS)


def test_server_refuses_tls_for_a_contender_without_it(cert_files: tuple[Path, Path, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.server", "--contender", "epoll", "--port", "9",
         "--tls-cert", str(cert_files[0]), "--tls-key", str(cert_files[1])],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "over TLS only" in proc.stderr


def test_report_gives_server_cpu_per_request_on_tls_rows() -> None:
    """Where wrk's own TLS limits the rate, the report compares servers by CPU per request
    (share of the core / rate), and keeps TLS rows out of the plaintext geometric mean."""
    from bench import report

    def entry(contender: str, rps: float, cpu: float) -> dict[str, Any]:
        summary = {"metric": "rps", "median": rps, "server_cpu": cpu, "runs": 1}
        return {"contender": contender, "summary": summary, "runs": [], "errors": []}

    def case(name: str, tls: bool, netpoll_rps: float) -> dict[str, Any]:
        rows = [entry("netpoll", netpoll_rps, 1.0), entry("uvloop-protocol", 50_000, 0.5)]
        return {
            "case": name, "title": name, "tool": "wrk", "conns": 50, "tls": tls,
            "baseline": None, "target": None, "contenders": rows,
        }  # fmt: skip

    results = {
        "contenders": ["netpoll", "uvloop-protocol"],
        "cases": [case("https", True, 40_000), case("http", False, 100_000)],
    }
    note = "\n".join(report.tls_cpu_note(results))
    assert "- https: netpoll 25.0 µs, uvloop-protocol 10.0 µs" in note, note
    assert "http:" not in note.replace("https:", "")
    plain = report.geomean_ratios(results)
    tls = report.geomean_ratios(results, tls=True)
    assert plain["netpoll"] == (2.0, 1) and tls["netpoll"] == (0.8, 1)
