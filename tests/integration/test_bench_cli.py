"""perpbot-bench end to end on a tiny workload: PerpBot's real run and the fused floor, the JSON, the
report and compare read back, nothing left behind. Numbers are not checked (benchmarks, not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perpbot_bench.cli", *args], capture_output=True, text=True,
                          timeout=240)


def test_a_run_writes_json_that_report_and_compare_read_back(tmp_path: Path) -> None:
    shm_before = set(Path("/dev/shm").iterdir())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "run.json"
    r = _bench("--venues", "2", "--symbols", "2", "--rate", "40", "--dislocations", "6", "--duration", "4",
               "--fused", "--project", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["tool"] == "perpbot-bench" and run["machine"]["cores"] >= 1
    assert run["machine"]["libraries"]["picows"]
    ours = run["results"]["perpbot"]
    assert ours["frames"] > 0 and ours["cpu_pct"]["scanner"] >= 0
    for name, h in ours["hops"].items():
        assert h["count"] > 0 and h["p50_us"] <= h["p99_us"] <= h["max_us"], name
        assert sum(h["buckets"].values()) == h["count"]
    assert "tick_to_order" in run["results"]["fused"]["hops"]
    assert "PROJECTION (not a measurement)" in r.stdout and "tick->order" in r.stdout
    assert "the seed's SLOs" in r.stdout
    again = _bench("--report", str(out), "--no-histograms")
    assert again.returncode == 0 and "perpbot:" in again.stdout
    cmp = _bench("--compare", str(out), str(out))
    assert cmp.returncode == 0 and "1.00x" in cmp.stdout
    assert set(Path("/dev/shm").iterdir()) <= shm_before
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before]


def test_a_bad_workload_is_a_clear_error() -> None:
    r = _bench("--venues", "1")
    assert r.returncode == 1 and "venues must be 2..8" in r.stderr
