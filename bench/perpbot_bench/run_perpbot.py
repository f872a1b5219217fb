"""PerpBot itself under a workload: the real launcher, processes, segments and sockets.

`perpbot-launch --duration D` runs the demo market, the feeds, the scanner and
exec with paper venues exactly as a user starts them. While it runs, the CPU
time of every child is sampled (psutil); when it ends, the run's
`summary.json` gives the hop histograms the processes stamped (the status
segment's, DESIGN.md latency accounting) with their raw buckets, and the
counters. The first `WARMUP_S` after every process is running are left out,
as the other designs leave out theirs: the status segment's histograms are
read then (attached read-only, as the monitor does) and subtracted at the
end. Nothing here touches the measured path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from perpbot.config import Config
from perpbot.errors import LayoutError
from perpbot.shm import StatusBoard
from perpbot.shm.layout import N_BUCKETS, Hop, segment_names
from perpbot_bench.stats import HOP_NAMES, summarize
from perpbot_bench.workload import Workload, write_config

#: seconds the launcher may take to start and to stop, beyond the duration
START_STOP_SLACK_S = 60.0
#: seconds after start-up that are not measured (first connections, caches, the first dislocations)
WARMUP_S = 1.0


def run(w: Workload, duration_s: float, *, keep: Path | None = None) -> dict[str, Any]:
    """Run PerpBot on the workload for `duration_s`; the design result (stats.py format)."""
    # ipc:// paths must stay short (~107 bytes): the run root is a fresh short temp dir
    run_root = Path(tempfile.mkdtemp(prefix="pbb"))
    work = keep or Path(tempfile.mkdtemp(prefix="pbbdata"))
    try:
        cfg_path = work / "bench.yaml"
        cfg = write_config(w, cfg_path, run_root=run_root, data_dir=work / "data")
        log = work / "launch.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "perpbot.launch", "--config", str(cfg_path),
                 "--duration", str(duration_s)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            cpu, wall, warm = _sample_cpu(proc, duration_s + START_STOP_SLACK_S, log, cfg)
        if proc.returncode != 0:
            raise RuntimeError(f"perpbot-launch exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        (summary_path,) = (work / "data").glob("*/summary.json")
        summary = json.loads(summary_path.read_text())
        return _result(summary, cpu, wall, duration_s, warm)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _sample_cpu(proc: subprocess.Popen[bytes], timeout_s: float, log: Path,
                cfg: Config) -> tuple[dict[int, float], float, dict[str, list[int]]]:
    """CPU seconds per child pid (last sample before it exited), the launcher's wall time, and the
    hop histograms as they stood at the end of the warm-up (empty if it was never reached)."""
    cpu: dict[int, float] = {}
    warm: dict[str, list[int]] = {}
    running_at: float | None = None
    root = psutil.Process(proc.pid)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while proc.poll() is None:
        if not warm:
            text = log.read_text(errors="replace")
            if running_at is None and "all processes running" in text:
                running_at = time.monotonic()
            if running_at is not None and time.monotonic() - running_at >= WARMUP_S:
                warm = _histograms(text, cfg)
        if time.monotonic() > deadline:
            proc.terminate()
            proc.wait(30)
            raise RuntimeError("perpbot-launch did not stop in time")
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.25)
    return cpu, time.monotonic() - t0, warm


def _histograms(launch_log: str, cfg: Config) -> dict[str, list[int]]:
    """Every hop's bucket counts from the run's status segment, now."""
    m = re.search(r"^run (\S+):", launch_log, re.MULTILINE)
    if m is None:
        return {}
    try:
        status = StatusBoard.attach(segment_names(m.group(1))[1], cfg.venue_names, cfg.symbol_names)
    except (OSError, LayoutError):
        return {}
    try:
        return {hop.name.lower(): status.histogram(hop) for hop in Hop}
    finally:
        status.close()


def _result(summary: dict[str, Any], cpu: dict[int, float], wall_s: float,
            duration_s: float, warm: dict[str, list[int]]) -> dict[str, Any]:
    hops = {}
    for name in HOP_NAMES:
        lat = summary["latency"].get(name)
        if lat and lat.get("count"):
            counts = [0] * N_BUCKETS
            for k, c in lat["buckets"].items():
                counts[int(k)] = c
            before = warm.get(name, [0] * N_BUCKETS)
            counts = [max(0, c - b) for c, b in zip(counts, before)]
            if sum(counts):
                hops[name] = summarize(counts)
    names = {p["pid"]: n for n, p in summary["processes"].items()}
    cpu_pct = {names.get(pid, f"pid {pid}"): round(100 * s / duration_s, 1)
               for pid, s in sorted(cpu.items()) if pid in names}
    frames = sum(f.get("frames", 0) for f in summary["feeds"].values())
    return {
        "hops": hops,
        "frames": frames,
        "frames_per_s": round(frames / duration_s, 1),
        "opportunities": summary["scanner"]["opportunities"],
        "orders": summary["exec"]["orders_sent"],
        "trades": summary["exec"]["trades_closed"],
        "cpu_pct": cpu_pct,
        "wall_s": round(wall_s, 1),
        "warmup_excluded_s": WARMUP_S if warm else 0.0,
    }
