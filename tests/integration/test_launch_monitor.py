"""`perpbot-launch --monitor` in a real terminal (tmux): the monitor opens, `q` closes only it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kit import example_raw

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real terminal")]


def test_launch_opens_the_monitor_and_q_leaves_the_run_going(tmp_path: Path) -> None:
    run_root = Path(tempfile.mkdtemp(prefix="pbm"))
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    sock = f"pb{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit_code"
    cmd = f"{sys.executable} -m perpbot.launch --config {cfg} --duration 15 --monitor; echo $? > {done}; sleep 60"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, check=False).stdout

    def until(what: str, cond: object, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < end, f"timed out waiting for {what}:\n{tmux('capture-pane', '-p')}"
            time.sleep(0.2)

    tmux("new-session", "-d", "-x", "120", "-y", "40", cmd)
    try:
        until("the monitor's board", lambda: "BOARD" in tmux("capture-pane", "-p")
              and "binanceusdm" in tmux("capture-pane", "-p"))
        screen = tmux("capture-pane", "-p")
        assert "FEEDS" in screen and "CONNECTED" in screen
        tmux("send-keys", "q")
        # the monitor is gone, the run is not: the launcher's own summary lines come back
        until("the launcher's lines again", lambda: "[RUNNING] quotes" in tmux("capture-pane", "-p"))
        until("the run's end", lambda: done.exists(), 90)
        assert done.read_text().strip() == "0"
        assert "summary" in tmux("capture-pane", "-p", "-S", "-200")
    finally:
        tmux("kill-server")
        shutil.rmtree(run_root, ignore_errors=True)
