"""The external load tools: finding them, building the C load generator, reading their output.

The parsers are pure functions of the tools' text output, tested in
``tests/test_bench_parsers.py``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / "build"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BUILD_DIR / "loadgen"
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"
TLS_DIR = BUILD_DIR / "tls"

INSTALL_HINTS = {
    "gcc": "install a C compiler (apt-get install gcc) to build the load generator",
    "wrk": "install wrk (apt-get install wrk)",
    "redis-benchmark": "install redis-benchmark (apt-get install redis-tools)",
    "taskset": "install taskset (apt-get install util-linux) to pin processes to cores",
    "libssl": "install OpenSSL's headers (apt-get install libssl-dev) for the TLS load",
    "openssl": "install openssl (apt-get install openssl) or trustme (pip install trustme) "
    "to make the TLS workloads' certificate",
}


class ToolError(RuntimeError):
    """A tool is missing, failed, or printed something unexpected."""


@dataclass
class Toolbox:
    """Paths of the tools found on this machine (None: missing)."""

    gcc: str | None
    wrk: str | None
    redis_benchmark: str | None
    taskset: str | None
    loadgen: Path | None = None
    loadgen_error: str | None = None
    loadgen_tls_error: str | None = None  # why the load generator cannot speak TLS
    tls_files: tuple[Path, Path] | None = None
    tls_files_error: str | None = None

    @classmethod
    def discover(cls) -> Toolbox:
        return cls(
            gcc=shutil.which("gcc") or shutil.which("cc"),
            wrk=shutil.which("wrk"),
            redis_benchmark=shutil.which("redis-benchmark"),
            taskset=shutil.which("taskset"),
        )

    def build_loadgen(self) -> Path | None:
        """Compile bench/loadgen.c into bench/build/ unless it is up to date."""
        if self.loadgen is not None or self.loadgen_error is not None:
            return self.loadgen
        try:
            up_to_date = (
                LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime
            )
            gcc = self.gcc
            if not up_to_date and gcc is None:
                self.loadgen_error = f"no C compiler found: {INSTALL_HINTS['gcc']}"
                return None
            if not up_to_date and gcc is not None:
                BUILD_DIR.mkdir(parents=True, exist_ok=True)
                # With TLS when OpenSSL's headers are here; without it otherwise.
                base = [gcc, "-O2", "-Wall", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC)]
                tls_cmd = [*base[:3], "-DLOADGEN_TLS", *base[3:], "-lssl", "-lcrypto"]
                proc = subprocess.run(tls_cmd, capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    proc = subprocess.run(base, capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
                    self.loadgen_error = f"building the load generator failed: {first}"
                    return None
            features = subprocess.run(
                [str(LOADGEN_BIN), "--features"], capture_output=True, text=True, timeout=10
            ).stdout.split()
            if "tls" not in features:
                self.loadgen_tls_error = (
                    f"the load generator was built without TLS: {INSTALL_HINTS['libssl']}, "
                    f"then delete {LOADGEN_BIN}"
                )
        except (OSError, subprocess.SubprocessError) as exc:
            self.loadgen_error = f"building the load generator failed: {exc}"
            return None
        self.loadgen = LOADGEN_BIN
        return self.loadgen

    def ensure_tls_files(self) -> tuple[Path, Path] | None:
        """A self-signed certificate for 127.0.0.1 and its key in bench/build/tls/, made once
        (with ``openssl req``, or trustme when openssl is missing); None if neither works."""
        if self.tls_files is not None or self.tls_files_error is not None:
            return self.tls_files
        cert, key = TLS_DIR / "cert.pem", TLS_DIR / "key.pem"
        if not (cert.exists() and key.exists()):
            TLS_DIR.mkdir(parents=True, exist_ok=True)
            made = False
            openssl = shutil.which("openssl")
            if openssl is not None:
                cmd = [
                    openssl, "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "365",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert),
                ]  # fmt: skip
                try:
                    made = subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    made = False
            if not made:
                script = (
                    "import sys, trustme\n"
                    "c = trustme.CA().issue_cert('127.0.0.1')\n"
                    "c.private_key_pem.write_to_path(sys.argv[2])\n"
                    "c.cert_chain_pems[0].write_to_path(sys.argv[1])\n"
                )
                try:
                    cmd = [sys.executable, "-c", script, str(cert), str(key)]
                    made = subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    made = False
            if not made:
                self.tls_files_error = f"cannot make a certificate: {INSTALL_HINTS['openssl']}"
                return None
        self.tls_files = (cert, key)
        return self.tls_files

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, path, args in (
            ("gcc", self.gcc, ["--version"]),
            ("wrk", self.wrk, ["-v"]),
            ("redis-benchmark", self.redis_benchmark, ["--version"]),
        ):
            if path is None:
                continue
            try:
                proc = subprocess.run(
                    [path, *args], capture_output=True, text=True, timeout=10, check=False
                )
            except (OSError, subprocess.SubprocessError):
                continue
            text = (proc.stdout or proc.stderr).strip().splitlines()
            if text:
                first = text[0].split(" Copyright")[0].split(" [")[0].strip()
                out[name] = first if first.startswith(name) else f"{name} {first}"
        return out


# --- loadgen ------------------------------------------------------------------------------


def parse_loadgen_output(text: str) -> dict[str, Any]:
    """The result JSON line of bench/loadgen (the last line that is a JSON object)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ToolError(f"loadgen printed malformed JSON: {line[:200]!r}") from exc
            if not isinstance(data, dict):
                break
            if not data.get("ok"):
                raise ToolError(f"loadgen: {data.get('error', 'failed')}")
            return data
    raise ToolError(f"loadgen printed no result: {text.strip()[-200:]!r}")


# --- wrk ----------------------------------------------------------------------------------

_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0, "h": 3_600_000_000.0}
_WRK_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$")
_WRK_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$", re.MULTILINE)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h)", re.MULTILINE)
_WRK_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk_output(text: str) -> dict[str, Any]:
    """Throughput, latency percentiles (µs) and errors from ``wrk --latency`` output.

    With ``bench/wrk_report.lua`` loaded, wrk also prints a ``WRK_JSON {...}`` line whose
    exact percentiles (p99.9 included) take precedence over the rounded text ones.
    """
    match = _WRK_RPS.search(text)
    if not match:
        raise ToolError(f"wrk printed no Requests/sec line: {text.strip()[-200:]!r}")
    result: dict[str, Any] = {"rps": float(match.group(1))}
    total = _WRK_TOTAL.search(text)
    if total:
        result["requests"] = int(total.group(1))
        result["duration_s"] = float(total.group(2)) * _UNITS_US[total.group(3)] / 1e6
    in_distribution = False
    for line in text.splitlines():
        if line.strip().startswith("Latency Distribution"):
            in_distribution = True
            continue
        if in_distribution:
            pm = _WRK_PERCENTILE.match(line)
            if not pm:
                in_distribution = False
                continue
            pct = pm.group(1)
            if "." in pct:
                pct = pct.rstrip("0").rstrip(".")
            result[f"p{pct.replace('.', '')}_us"] = float(pm.group(2)) * _UNITS_US[pm.group(3)]
    errors = 0
    em = _WRK_ERRORS.search(text)
    if em:
        errors += sum(int(g) for g in em.groups())
    nm = _WRK_NON2XX.search(text)
    if nm:
        errors += int(nm.group(1))
    result["errors"] = errors
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            try:
                extra = json.loads(line[len("WRK_JSON ") :])
            except json.JSONDecodeError:
                continue
            for key in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"):
                if key in extra:
                    result[key] = float(extra[key])
    return result


# --- redis-benchmark ----------------------------------------------------------------------


def parse_redis_csv(text: str) -> dict[str, dict[str, float]]:
    """Per test (``PING_INLINE``, ``SET``...): rps and latencies (µs) from ``--csv`` output.

    Handles redis-benchmark 7 (a header row, then rps and latency columns in ms) and
    older versions (rows of test name and rps only).
    """
    results: dict[str, dict[str, float]] = {}
    header: list[str] | None = None
    for row in csv.reader(line for line in text.splitlines() if line.strip()):
        if not row:
            continue
        if row[0] == "test":
            header = row
            continue
        if len(row) < 2:
            continue
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            continue  # a warning line, not data
        entry: dict[str, float] = {"rps": values[0]}
        if header is not None:
            for name, value in zip(header[2:], values[1:], strict=False):
                if name.endswith("_latency_ms"):
                    entry[name.removesuffix("_latency_ms") + "_us"] = value * 1000.0
        results[row[0]] = entry
    if not results:
        raise ToolError(f"redis-benchmark printed no results: {text.strip()[-200:]!r}")
    return results


# --- /proc --------------------------------------------------------------------------------


def parse_status_rss_kb(status_text: str) -> int:
    """VmRSS in KiB from the text of /proc/PID/status."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ToolError("no VmRSS line in /proc/PID/status")


def parse_stat_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks, all threads) from the text of /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])
