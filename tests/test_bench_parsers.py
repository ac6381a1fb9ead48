"""The benchmark's request parsers and tool-output parsers (bench/protocols.py, bench/tools.py).

Each workload's parser is fed its input whole, byte by byte, and with trailing data, the
way the servers receive it. Pure functions only: no sockets, no sleeps.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import netpoll

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.protocols import (
    HTTP_RESPONSE,
    MAX_HTTP_HEAD,
    ProtocolError,
    RespStore,
    Session,
    frame_header,
    frame_length,
    make_processor,
    parse_resp_command,
    split_frames,
    split_http_requests,
)
from bench.tools import (
    ToolError,
    parse_loadgen_output,
    parse_redis_csv,
    parse_stat_cpu_ticks,
    parse_status_rss_kb,
    parse_wrk_output,
)


def feed_all(workload: str, pieces: Iterable[bytes]) -> tuple[bytes, int]:
    """Feed ``pieces`` through a Session; (all replies joined, bytes left buffered)."""
    session = Session(make_processor(workload))
    out = b"".join(session.feed(p) for p in pieces)
    return out, session.buffered()


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# --- frames -------------------------------------------------------------------------------


def test_frame_header_roundtrip() -> None:
    assert frame_header(0) == b"\0\0\0\0"
    assert frame_header(65536) == b"\x00\x01\x00\x00"
    assert frame_length(frame_header(123456)) == 123456
    with pytest.raises(ValueError):
        frame_length(b"\0\0\0")


def test_split_frames_whole_and_pipelined() -> None:
    data = frame(b"abc") + frame(b"") + frame(b"x" * 300)
    payloads, consumed = split_frames(data)
    assert payloads == [b"abc", b"", b"x" * 300]
    assert consumed == len(data)


def test_split_frames_keeps_trailing_partial_frame() -> None:
    data = frame(b"hello") + frame(b"world")[:6]
    payloads, consumed = split_frames(data)
    assert payloads == [b"hello"]
    assert consumed == 9
    assert split_frames(b"\0\0") == ([], 0)


def test_split_frames_rejects_huge_length() -> None:
    with pytest.raises(ProtocolError):
        split_frames(b"\xff\xff\xff\xff")


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_frames_session_replies_with_same_payloads(split: str) -> None:
    data = frame(b"one") + frame(b"two two") + frame(bytes(range(256)))
    pieces = [data] if split == "whole" else byte_by_byte(data)
    out, left = feed_all("frames", pieces)
    assert out == data  # a reply frame carries the same payload, so the bytes match
    assert left == 0


def test_frames_session_with_trailing_data() -> None:
    data = frame(b"done") + frame(b"pending")[:7]
    out, left = feed_all("frames", [data])
    assert out == frame(b"done")
    assert left == 7


# --- HTTP ---------------------------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"


def test_http_single_and_pipelined_requests() -> None:
    assert split_http_requests(GET) == (1, len(GET))
    assert split_http_requests(GET * 3) == (3, 3 * len(GET))
    assert split_http_requests(b"") == (0, 0)


def test_http_trailing_partial_request() -> None:
    data = GET * 2 + GET[:10]
    assert split_http_requests(data) == (2, 2 * len(GET))


def test_http_terminator_split_across_reads() -> None:
    head = GET[:-2]
    assert split_http_requests(head) == (0, 0)
    assert split_http_requests(head + b"\r\n") == (1, len(GET))


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_http_session_answers_every_request(split: str) -> None:
    data = GET * 4
    pieces = [data] if split == "whole" else byte_by_byte(data)
    out, left = feed_all("http", pieces)
    assert out == HTTP_RESPONSE * 4
    assert left == 0


def test_http_session_with_trailing_data() -> None:
    out, left = feed_all("http", [GET + GET[:5], GET[5:]])
    assert out == HTTP_RESPONSE * 2
    assert left == 0


def test_http_response_is_well_formed() -> None:
    head, body = HTTP_RESPONSE.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(body)}".encode() in head


def test_http_head_too_long() -> None:
    with pytest.raises(ProtocolError):
        split_http_requests(b"GET /" + b"a" * (MAX_HTTP_HEAD + 10))


# --- RESP ---------------------------------------------------------------------------------


def resp(*args: bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def test_parse_multibulk_command() -> None:
    data = resp(b"SET", b"key", b"va\r\nlue")
    assert parse_resp_command(data) == ([b"SET", b"key", b"va\r\nlue"], len(data))


def test_parse_inline_commands() -> None:
    assert parse_resp_command(b"PING\r\n") == ([b"PING"], 6)
    assert parse_resp_command(b"get  key\n") == ([b"get", b"key"], 9)
    assert parse_resp_command(b"\r\n") == ([], 2)
    assert parse_resp_command(b"PING") is None


def test_parse_incomplete_at_every_cut() -> None:
    data = resp(b"GET", b"key:__rand_int__")
    for cut in range(len(data)):
        assert parse_resp_command(data[:cut]) is None, cut
    assert parse_resp_command(data) == ([b"GET", b"key:__rand_int__"], len(data))


def test_parse_with_trailing_data_and_offset() -> None:
    first, second = resp(b"PING"), resp(b"GET", b"k")
    data = first + second + b"*2\r\n$3"
    parsed = parse_resp_command(data)
    assert parsed == ([b"PING"], len(first))
    assert parse_resp_command(data, len(first)) == ([b"GET", b"k"], len(first + second))
    assert parse_resp_command(data, len(first + second)) is None


@pytest.mark.parametrize(
    "bad", [b"*x\r\n", b"*1\r\n:3\r\n", b"*1\r\n$3\r\nGETxx", b"*1\r\n$-5\r\n", b"*" + b"9" * 40]
)
def test_parse_malformed(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_resp_command(bad)


def test_resp_store_commands() -> None:
    store = RespStore()
    assert store.execute([b"PING"]) == b"+PONG\r\n"
    assert store.execute([b"ping", b"hi"]) == b"$2\r\nhi\r\n"
    assert store.execute([b"GET", b"k"]) == b"$-1\r\n"
    assert store.execute([b"SET", b"k", b"xxx"]) == b"+OK\r\n"
    assert store.execute([b"get", b"k"]) == b"$3\r\nxxx\r\n"
    assert store.execute([b"GET"]).startswith(b"-ERR wrong number")
    assert store.execute([b"CONFIG", b"GET", b"save"]) == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert store.execute([b"FLUSHALL"]) == b"-ERR unknown command 'FLUSHALL'\r\n"


SCRIPT = (
    b"PING\r\n"
    + resp(b"PING")
    + resp(b"SET", b"key:__rand_int__", b"xxx")
    + resp(b"GET", b"key:__rand_int__")
    + b"GET nokey\r\n"
)
SCRIPT_REPLY = b"+PONG\r\n+PONG\r\n+OK\r\n$3\r\nxxx\r\n$-1\r\n"


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_resp_session_pipeline(split: str) -> None:
    pieces = [SCRIPT] if split == "whole" else byte_by_byte(SCRIPT)
    out, left = feed_all("resp", pieces)
    assert out == SCRIPT_REPLY
    assert left == 0


def test_resp_session_with_trailing_data() -> None:
    out, left = feed_all("resp", [SCRIPT + b"*1\r\n$4\r\nPI"])
    assert out == SCRIPT_REPLY
    assert left == len(b"*1\r\n$4\r\nPI")


def test_echo_session() -> None:
    out, left = feed_all("echo", [b"abc", b"", b"def"])
    assert out == b"abcdef"
    assert left == 0


def test_unknown_workload() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        make_processor("gopher")


# --- tool output --------------------------------------------------------------------------

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:40000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   260.44us  186.88us   4.52ms   95.86%
    Req/Sec   195.20k     7.72k  207.42k    60.00%
  Latency Distribution
     50%  234.00us
     75%  255.00us
     90%  295.00us
     99%    1.54ms
  193643 requests in 1.00s, 16.81MB read
Requests/sec: 193334.44
Transfer/sec:     16.78MB
"""


def test_parse_wrk_text_output() -> None:
    r = parse_wrk_output(WRK_OUTPUT)
    assert r["rps"] == pytest.approx(193334.44)
    assert r["requests"] == 193643
    assert r["duration_s"] == pytest.approx(1.0)
    assert r["p50_us"] == pytest.approx(234.0)
    assert r["p99_us"] == pytest.approx(1540.0)
    assert r["errors"] == 0
    assert "p999_us" not in r


def test_parse_wrk_with_report_script_and_errors() -> None:
    text = (
        WRK_OUTPUT
        + "  Socket errors: connect 0, read 2, write 0, timeout 1\n"
        + "  Non-2xx or 3xx responses: 4\n"
        + 'WRK_JSON {"requests": 193643, "p50_us": 233, "p99_us": 1539, "p999_us": 3482}\n'
    )
    r = parse_wrk_output(text)
    assert r["errors"] == 7
    assert r["p50_us"] == 233
    assert r["p999_us"] == 3482


def test_parse_wrk_garbage() -> None:
    with pytest.raises(ToolError):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_parse_redis_csv_v7() -> None:
    text = (
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
        '"p99_latency_ms","max_latency_ms"\n'
        '"PING_INLINE","162601.62","0.177","0.056","0.167","0.247","0.351","0.543"\n'
        '"SET","112359.55","0.435","0.064","0.439","0.535","0.671","0.951"\n'
    )
    r = parse_redis_csv(text)
    assert r["PING_INLINE"]["rps"] == pytest.approx(162601.62)
    assert r["PING_INLINE"]["p50_us"] == pytest.approx(167.0)
    assert r["SET"]["p99_us"] == pytest.approx(671.0)


def test_parse_redis_csv_old_format_and_errors() -> None:
    r = parse_redis_csv('"PING_INLINE","80000.00"\n"GET","75000.50"\n')
    assert r == {"PING_INLINE": {"rps": 80000.0}, "GET": {"rps": 75000.5}}
    with pytest.raises(ToolError):
        parse_redis_csv("Could not connect to Redis at 127.0.0.1:1: Connection refused\n")


def test_parse_loadgen_output() -> None:
    ok = '{"ok": true, "mode": "echo", "rps": 1000.5, "p50_us": 40.1}\n'
    assert parse_loadgen_output("noise\n" + ok)["rps"] == 1000.5
    with pytest.raises(ToolError, match="stalled"):
        parse_loadgen_output('{"ok": false, "error": "no reply for 5 s (server stalled)"}')
    with pytest.raises(ToolError):
        parse_loadgen_output("")


def test_parse_proc_files() -> None:
    status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n"
    assert parse_status_rss_kb(status) == 12345
    stat = "4242 (python3 -m (x)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0"
    assert parse_stat_cpu_ticks(stat) == 175


# --------------------------------------------------------------------------- microbenchmarks


@pytest.mark.parametrize("size", [1, 100, 4096, 8188, 65536, 70_000])
def test_linkbuffer_frames_parsers_agree(size: int) -> None:
    """Every parser of the LinkBuffer benchmark finds every frame and touches its last byte."""
    from bench.reference import linkbuffer_frames as lf

    frames = 40
    stream = lf.make_stream(size, frames)
    assert lf.parse_linkbuffer(stream) == frames
    assert lf.parse_bytearray(stream) == frames
    assert lf.parse_bytearray_free_input(lf.chunked(stream)) == frames
    assert lf.parse_floor(stream) == frames
    assert lf.parse_revoking_floor(stream) == frames
    # A stream cut short by one byte holds one frame less.
    assert lf.parse_linkbuffer(stream[:-1]) == frames - 1
    assert lf.parse_bytearray(stream[:-1]) == frames - 1


def test_revoking_floor_revokes() -> None:
    """The benchmark's revoking floor really pays for revocation: released views are dead."""
    from bench.reference import linkbuffer_frames as lf

    floor = lf._RevokingFloor(lf.make_stream(100, 3))
    header = floor.next(4)
    payload = floor.next(100)
    floor.release()
    for view in (header, payload):
        with pytest.raises(ValueError):
            bytes(view)


def test_request_cost_drives_a_connection() -> None:
    """The request-cost harness round-trips real requests through a connection."""
    from bench import request_cost as rc

    assert rc.netpoll_cost(rc.netpoll_handler(rc.netpoll, "echo"), rc.MESSAGE, 50) > 0
    counts = rc.opcode_counts(rc.netpoll_handler(rc.netpoll, "frames"), rc.FRAME)
    # Which frames opcode tracing reaches differs between CPython versions; the handler's
    # reads always show, unless they are compiled (no Python frames to trace).
    if not netpoll.compiled:
        assert any(name.startswith("next ") for name in counts), counts
    safe = rc.opcode_counts(rc.netpoll_handler(rc.netpoll, "echo"), rc.MESSAGE, rc.SafeFloorConn)
    if sys.version_info < (3, 12):  # newer versions trace only part of the frames
        assert any(name.startswith("release (floors.py)") for name in safe), safe
    assert rc.main(["--requests", "20", "--cases", "raw,floor-frames,safe-echo"]) == 0


# --------------------------------------------------------------------------- server processes


def test_servers_import_the_interpreters_own_build() -> None:
    """A benchmark server imports the netpoll its interpreter has installed (compiled or
    pure), not the sources in src/, which would shadow a non-editable install; an
    interpreter without netpoll gets src/."""
    import subprocess

    from bench.runner import REPO_ROOT, child_env

    proc = subprocess.run(
        [sys.executable, "-c", "import netpoll; print(netpoll.__file__)"],
        env=child_env(sys.executable),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == netpoll.__file__, proc.stderr
    src = str(REPO_ROOT / "src")
    assert child_env("/nonexistent/python")["PYTHONPATH"].split(":")[0] == src


# --------------------------------------------------------------------------- terminal table

TABLE_CONTENDERS = ["netpoll", "asyncio-protocol"]
TABLE_WORKLOADS = ("echo-128-c50", "http-c50", "resp-c50")  # loadgen, wrk, redis-benchmark
REDIS_CSV_HEADER = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
)


class _FakeServer:
    """Stands in for bench.runner.Server: no process; a core 90% busy (cpu_window)."""

    def __init__(self, contender: str, workload: str, *args: object, **kwargs: object) -> None:
        self.port = 1
        self.log_path = Path("/nonexistent/fake-server.log")

    def __enter__(self) -> _FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def alive(self) -> bool:
        return True

    def cpu_seconds(self) -> float:
        import time

        return 0.9 * time.monotonic()


def _fake_tool_output(calls: dict[str, int], cmd: list[str], timeout: float) -> str:
    """What the real load tools print, with a throughput that grows with every call, so
    that repeated runs differ (min < max)."""
    import json

    tool = Path(cmd[0]).name
    calls[tool] = calls.get(tool, 0) + 1
    rps = 100_000.0 + 10_000.0 * calls[tool]
    if tool == "loadgen":
        data = {
            "ok": True,
            "mode": "echo",
            "conns": 50,
            "size": 128,
            "duration_s": 1.0,
            "requests": int(rps),
            "rps": rps,
            "mean_us": 50.0,
            "p50_us": 45.0,
            "p90_us": 60.0,
            "p99_us": 90.0,
            "p999_us": 150.0,
            "max_us": 300.0,
            "cpu_s": 0.6,
            "cpu_frac": 0.6,
        }
        return "loadgen: measuring\n" + json.dumps(data) + "\n"
    if tool == "wrk":
        return WRK_OUTPUT.replace("Requests/sec: 193334.44", f"Requests/sec: {rps:.2f}")
    if tool == "redis-benchmark":
        rows = "".join(
            f'"{t}","{rps:.2f}","0.300","0.050","0.250","0.400","0.600","1.000"\n'
            for t in ("PING_INLINE", "PING_MBULK", "SET", "GET")
        )
        return REDIS_CSV_HEADER + rows
    raise AssertionError(f"unexpected tool {cmd!r}")


def _table_results(monkeypatch: pytest.MonkeyPatch, runs: int) -> dict[str, Any]:
    """A results dict as ``python -m bench`` makes it: bench.runner.run_all measuring with
    its real measure_* functions and tool-output parsers (only the server process and the
    load tools' processes are faked), then bench.report.build_results."""
    import datetime as dt
    import io

    from bench import report, runner
    from bench.tools import Toolbox

    calls: dict[str, int] = {}
    monkeypatch.setattr(runner, "Server", _FakeServer)
    monkeypatch.setattr(
        runner, "run_tool", lambda cmd, timeout: _fake_tool_output(calls, list(cmd), timeout)
    )
    tools = Toolbox(
        gcc=None,
        wrk="/fake/wrk",
        redis_benchmark="/fake/redis-benchmark",
        taskset=None,
        loadgen=Path("/fake/loadgen"),
    )
    settings = runner.Settings(warmup=0.0, duration=1.0, redis_test_seconds=0.5, runs=runs)
    workloads = [w for w in runner.standard_workloads(100) if w.name in TABLE_WORKLOADS]
    assert sorted(w.tool for w in workloads) == ["loadgen", "redis", "wrk"]
    progress = runner.Progress(total_estimate=1.0, total_items=1, stream=io.StringIO())
    outcome = runner.run_all(TABLE_CONTENDERS, workloads, settings, tools, progress)
    assert not outcome.errors, outcome.errors
    return report.build_results(
        mode="custom",
        command="python -m bench",
        contenders=TABLE_CONTENDERS,
        workloads=workloads,
        settings={
            "warmup": settings.warmup,
            "duration": settings.duration,
            "redis_test_seconds": settings.redis_test_seconds,
            "runs": settings.runs,
            "server_cpu": None,
            "load_cpu": None,
            "idle_conns": 100,
            "env": {},
        },
        measurements=outcome.measurements,
        errors=outcome.errors,
        skipped={},
        started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        elapsed_s=1.0,
        interrupted=outcome.interrupted,
        tool_versions={},
        revision=None,
    )


def _table_cells(table: str) -> dict[tuple[str, str], dict[str, str]]:
    """The terminal table's rows by (workload title, contender), each cell by its column
    name, cut at the column spans the dashed rule under the header marks."""
    lines = table.splitlines()
    header, rule = lines[0], lines[1]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    names = [header[a:b].strip() for a, b in spans]
    assert names[:2] == ["workload", "contender"] and names[-2:] == ["cpu srv", "cpu load"]
    rows: dict[tuple[str, str], dict[str, str]] = {}
    title = ""
    for line in lines[2:]:
        if not line.strip():
            continue
        cells = {n: line[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)}
        cells["_line"] = line
        title = cells["workload"] or title
        rows[(title, cells["contender"])] = cells
    return rows


@pytest.mark.timeout(30)
@pytest.mark.parametrize("runs", [1, 3])
def test_terminal_table_shows_runs_and_cpu_columns(
    monkeypatch: pytest.MonkeyPatch, runs: int
) -> None:
    """The benchmark's terminal table: the min-max column says "(1 run)" after one run and
    "low-high" after three; `cpu srv` and `cpu load` both hold a number on the C load
    generator's rows, and on wrk's and redis-benchmark's rows `cpu srv` holds a number and
    `cpu load` a dash; print_summary prints the CPU legend (without its backticks)."""
    import io

    from bench import report
    from bench.runner import standard_workloads

    results = _table_results(monkeypatch, runs)
    table = report.format_terminal_table(results)
    rows = _table_cells(table)
    tools = {title: w.tool for w in standard_workloads(100) for _c, title in w.cases()}
    summaries = {
        (case["title"], e["contender"]): e["summary"]
        for case in results["cases"]
        for e in case["contenders"]
    }
    assert set(rows) == set(summaries), table
    assert len(rows) == len(TABLE_CONTENDERS) * 6, table  # echo, HTTP, four RESP tests
    number = re.compile(r"\d+\.\d\d")
    for (title, contender), cells in rows.items():
        where = f"{title} / {contender}:\n{table}"
        s = summaries[(title, contender)]
        assert s["runs"] == runs, where
        if runs == 1:
            assert cells["min-max"] == "(1 run)", where
        else:
            assert s["min"] < s["max"], where
            low, high = report.fmt_rate(s["min"]), report.fmt_rate(s["max"])
            assert cells["min-max"] == f"{low}-{high}", where
        assert number.fullmatch(cells["cpu srv"]), where
        if tools[title] == "loadgen":
            assert cells["cpu load"] == "0.60", where  # the load generator's cpu_frac
        else:
            assert tools[title] in ("wrk", "redis"), where
            # one number and a dash, never a lone number
            assert cells["cpu load"] == "-", where
            assert re.search(r"\d\.\d\d +-$", cells["_line"]), where

    out = io.StringIO()
    report.print_summary(results, out)
    printed = out.getvalue()
    legend = report.CPU_LEGEND.replace("`", "")
    assert "`" in report.CPU_LEGEND and "`" not in legend
    assert legend in printed
    assert "cpu srv is the share of its core" in printed
    assert table in printed
