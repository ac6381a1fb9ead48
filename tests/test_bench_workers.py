"""``python -m bench.workers``: its CPU accounting over a process tree and its docs section.

The measurement itself (servers under load) is a benchmark and is not run here; what is
checked is what its figures rest on: that the CPU of a supervisor's children is counted,
and that the section it writes into docs/benchmarks.md replaces the previous one and
survives ``python -m bench`` regenerating the page.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import workers  # noqa: E402

BURN = (
    "import sys, time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.3: pass\n"
    "print('burned', flush=True)\n"
    "sys.stdin.read()\n"
)


def fake_results() -> dict[str, Any]:
    run = {"rps": 50000.0, "cpu_us_per_request": 19.5, "server_cores_busy": 0.98}
    return {
        "started": "2026-12-08T00:00:00",
        "revision": "abc1234",
        "command": "python -m bench.workers --rounds 1",
        "rounds": 1,
        "runs": {f"{k}-{w}": [run] for k in ("http", "echo") for w in (1, 2)},
    }


def test_tree_cpu_counts_the_children() -> None:
    """A parent that only waits is charged with what its child burned (0.3 s of CPU)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdin is not None
        assert parent.stdout.readline().strip() == "burned"  # the child is still alive
        assert workers.tree_cpu_seconds(parent.pid) >= 0.25
        parent.stdin.close()
        assert parent.wait(10) == 0
    finally:
        parent.kill()
        parent.wait(10)


def test_section_lists_every_configuration() -> None:
    section = workers.format_section(fake_results())
    assert section.startswith(workers.BEGIN) and section.endswith(workers.END)
    rows = [ln for ln in section.splitlines() if ln.startswith("| HTTP") or ln.startswith("| echo")]
    assert len(rows) == 4
    assert "| 50.0k (50.0k) | 19.5 µs | 0.98 |" in rows[0]
    assert "python -m bench.workers --rounds 1" in section
    assert "1 round," in section


def test_section_replaces_the_previous_one_and_survives_regeneration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "benchmarks.md"
    results_path = tmp_path / "workers.json"
    monkeypatch.setattr(workers, "DOCS_PATH", docs)
    monkeypatch.setattr(workers, "RESULTS_PATH", results_path)
    docs.write_text("# Benchmarks\n\nbody\n")
    first = workers.format_section(fake_results())
    workers.write_docs_section(first)
    later = fake_results()
    later["revision"] = "def5678"
    workers.write_docs_section(workers.format_section(later))
    text = docs.read_text()
    assert text.count(workers.BEGIN) == 1 and "def5678" in text and "abc1234" not in text
    assert text.startswith("# Benchmarks\n\nbody\n")
    # python -m bench rewrites the page from its own results and appends the saved section
    results_path.write_text(json.dumps(later))
    assert workers.load_section() == workers.format_section(later)
    results_path.unlink()
    assert workers.load_section() is None
