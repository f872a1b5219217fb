"""The launcher's start-up clean-up of what a launcher killed with SIGKILL left behind.

Segments are written here as header-only files in /dev/shm (the clean-up reads
nothing else): one whose owner is dead, one whose owner is a zombie nobody
reaped, one whose owner pid now belongs to a process started after the segment
was made (pid reuse), one whose owner is alive (this process). Only the last
must survive. The whole-run version (a real launcher killed with its process
group, then a new launch) is in test_faults_process.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from perpbot.launch import PID_FILE, _remove_stale_runs
from perpbot.runctx import RUN_FILE
from perpbot.shm.layout import BOARD_MAGIC, HEADER_DTYPE, STATUS_MAGIC

SHM = Path("/dev/shm")


def _segment(run_id: str, kind: str, owner: int, created_ns: int) -> str:
    name = f"perpbot-{run_id}-{kind}"
    hdr = np.zeros((), HEADER_DTYPE)
    hdr["magic"] = BOARD_MAGIC if kind == "board" else STATUS_MAGIC
    hdr["owner_pid"] = owner
    hdr["created_ns"] = created_ns
    (SHM / name).write_bytes(hdr.tobytes())
    return name


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def test_orphans_are_removed_and_named_and_live_runs_kept(tmp_path: Path,
                                                          procs: list[subprocess.Popen[bytes]]) -> None:
    tag = uuid.uuid4().hex[:6]
    now = time.time_ns()
    dead = subprocess.Popen(["true"])
    dead.wait()
    zombie = subprocess.Popen(["true"])
    procs.append(zombie)
    end = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped
        assert time.monotonic() < end
        time.sleep(0.01)
    reused = subprocess.Popen(["sleep", "30"])
    procs.append(reused)
    runs = {"dead": f"t{tag}-dead-{dead.pid}", "zombie": f"t{tag}-zombie-{zombie.pid}",
            "reused": f"t{tag}-reused-{reused.pid}", "live": f"t{tag}-live-{os.getpid()}"}
    made = {
        "dead": [_segment(runs["dead"], k, dead.pid, now) for k in ("board", "status")],
        "zombie": [_segment(runs["zombie"], "board", zombie.pid, now)],
        # the pid's process started now, the segment a minute ago: not its launcher
        "reused": [_segment(runs["reused"], "status", reused.pid, now - 60 * 10**9)],
        "live": [_segment(runs["live"], "board", os.getpid(), now)],
    }
    root = tmp_path / "runs"
    for what, pid in (("dead", dead.pid), ("live", os.getpid())):
        d = root / runs[what]
        d.mkdir(parents=True)
        (d / PID_FILE).write_text(str(pid))
        (d / RUN_FILE).write_text("{}")
    try:
        removed = {r.run_id: r for r in _remove_stale_runs(root)}
        for what in ("dead", "zombie", "reused"):
            r = removed[runs[what]]
            assert sorted(r.segments) == sorted(made[what]), r
            assert not any((SHM / n).exists() for n in made[what])
            assert runs[what] in r.describe() and "is gone; removed shared-memory segments" in r.describe()
        assert removed[runs["dead"]].run_dir and not (root / runs["dead"]).exists()
        assert removed[runs["dead"]].launcher_pid == dead.pid
        assert runs["live"] not in removed
        assert (SHM / made["live"][0]).exists() and (root / runs["live"]).exists()
    finally:
        for names in made.values():
            for n in names:
                (SHM / n).unlink(missing_ok=True)
