#!/usr/bin/env python3
"""Run the hot-path benchmarks and print median and p99 per operation, with ratios to baselines.

    .venv/bin/python bench/report.py

Runs `pytest bench` with pytest-benchmark collecting every round, then
reports each operation's median and p99 (per round) and, for the board
operations, the ratio to the numpy per-element baseline measured in the same
run. The machine (CPU, cores, Python) is printed first.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: operation -> the baseline it is compared with
BASELINES = {
    "test_seqlock_write": "test_baseline_numpy_slot_write",
    "test_seqlock_read": "test_baseline_numpy_slot_read",
    "test_change_ring_poll_8x500": "test_baseline_full_scan_8x500",
    "test_opportunity_encode_decode": "test_baseline_opportunity_as_json",
    "test_risk_gate_pair": "test_baseline_choose_size",
}


def p99(data: list[float]) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        r = subprocess.run(
            [sys.executable, "-m", "pytest", str(HERE), "-q", "--benchmark-enable", "--benchmark-save-data",
             f"--benchmark-json={out}", "-p", "no:cacheprovider"],
            capture_output=True, text=True, check=False)
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:])
            return r.returncode
        report = json.loads(out.read_text())
    cpu = report["machine_info"].get("cpu", {}).get("brand_raw") or platform.processor() or "unknown CPU"
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    stats = {b["name"]: b["stats"] for b in report["benchmarks"]}
    print(f"{'operation':<34}{'median':>10}{'p99':>10}   vs baseline (median)")
    for name, st in stats.items():
        line = f"{name:<34}{st['median'] * 1e6:>8.2f}us{p99(st['data']) * 1e6:>8.2f}us"
        base = BASELINES.get(name)
        if base in stats:
            line += f"   {st['median'] / stats[base]['median']:.2f}x of {base}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
