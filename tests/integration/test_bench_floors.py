"""perpbot-bench's floors, feed comparison, throughput harness and scanner cost, on tiny settings.

Only the shape of the results is checked (counts, quantile order, rates above
zero) and that nothing is left behind: no child process, no shared-memory
segment, no ipc socket file. Nothing about timing is asserted.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from perpbot_bench import floors
from perpbot_bench.ccxt_compare import compare_feeds
from perpbot_bench.floors import cpu_pair, parse_floor, seqlock_floor, zmq_ipc_floor
from perpbot_bench.scanner_cost import scanner_cost

from perpbot.metrics import bucket_bounds, bucket_of

CORES = sorted(os.sched_getaffinity(0))
A, B = CORES[0], CORES[-1]


def _children() -> set[int]:
    """Our child processes, except multiprocessing's resource tracker (one per interpreter, kept)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if any("resource_tracker" in part for part in p.cmdline()):
                continue
        except psutil.Error:
            continue
        out.add(p.pid)
    return out


def _our_segments() -> set[str]:
    pid = str(os.getpid())
    return {n for n in os.listdir("/dev/shm") if pid in n}


def _our_tmp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "pbf*")))


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    procs, segs, dirs = _children(), _our_segments(), _our_tmp_dirs()
    yield
    end = time.monotonic() + 5
    while _children() - procs and time.monotonic() < end:
        time.sleep(0.05)
    assert not _children() - procs, "a process was left running"
    assert not _our_segments() - segs, "a shared-memory segment was left in /dev/shm"
    assert not _our_tmp_dirs() - dirs, "a temporary directory was left"


def well_formed(s: dict[str, Any]) -> None:
    assert s["count"] > 0
    assert sum(s["buckets"].values()) == s["count"]
    assert s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["p999_us"]
    # quantiles are bucket midpoints and max_us the exact maximum: they agree to the max's bucket
    top_us = bucket_bounds(bucket_of(round(s["max_us"] * 1000)))[1] / 1000
    assert s["p99_us"] <= top_us + 0.001


def test_seqlock_floor() -> None:
    s = seqlock_floor(0.2, writer_cpu=A, reader_cpu=B)
    well_formed(s)
    assert s["count"] <= s["params"]["writes"]
    assert (s["params"]["writer_cpu"], s["params"]["reader_cpu"]) == ((A, B) if len(CORES) > 1 else (A, A))


@pytest.mark.parametrize("blocked", [True, False])
def test_zmq_ipc_floor_removes_its_socket_file(blocked: bool, tmp_path: Path) -> None:
    s = zmq_ipc_floor(30, blocked=blocked, interval_us=500, run_dir=tmp_path)
    well_formed(s)
    assert s["count"] + s["params"]["dropped"] == 30
    assert not list(tmp_path.iterdir()), "the ipc socket file was left"


def test_zmq_ipc_floor_in_its_own_directory() -> None:
    well_formed(zmq_ipc_floor(5, interval_us=500))


@pytest.mark.parametrize("how", ["orjson", "perpbot"])
def test_parse_floor(how: str) -> None:
    s = parse_floor(2000, how=how)
    well_formed(s)
    assert s["count"] == 2000
    assert s["params"]["source"] != "sample" and s["params"]["frames"] > 100  # real recorded frames


def test_one_core_machine_pins_both_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floors.os, "sched_getaffinity", lambda _pid: {0})
    w, r, note = cpu_pair(0, 1)
    assert (w, r) == (0, 0) and note and "one core" in note
    assert cpu_pair(None, 1)[:2] == (None, 0)


def test_scanner_cost_small_and_large_board() -> None:
    rows = scanner_cost(((2, 10), (8, 500)), n=300)
    assert [(r["venues"], r["symbols"]) for r in rows] == [(2, 10), (8, 500)]
    for r in rows:
        well_formed(r["one_change"])
        well_formed(r["idle"])
        assert r["one_change"]["count"] == r["idle"]["count"] == 300
        assert r["changes_seen"] == 300  # every pass found its one change
        assert r["opportunities"] == 0  # and evaluated it without an edge


@pytest.mark.slow
def test_ccxt_pro_and_perpbot_feed_on_one_firehose() -> None:
    r = compare_feeds(0.6, server_cpu=A, feed_cpu=B)
    c, f = r["ccxt"], r["perpbot"]
    assert c["frames_per_s"] > 0 and c["server_frames_per_s"] > 0
    assert c["wakeups_per_s"] > 0 and c["updates_per_s"] >= c["wakeups_per_s"]
    well_formed(c["latency"])
    assert f["frames_per_s"] > 0 and f["quotes_per_s"] > 0 and f["errors"] == 0
    assert f["stamped"] is True
    assert r["ratio"] > 0
