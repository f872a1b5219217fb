"""perpbot-monitor for real: a live demo run, the monitor in a real terminal (tmux), real keys.

The launcher runs the demo market; the monitor runs inside a private tmux
server (its own socket name, killed at the end) so it gets a real pty, real
resizes and real key presses; the screen is read back with capture-pane.
Waits are deadline-bounded polls on what the screen or `perpbot-ctl` shows.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kit import ROOT, example_raw

from perpbot.shm.segment import SHM_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

START_DEADLINE_S = 60
SCREEN_DEADLINE_S = 60
TMUX = shutil.which("tmux")


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    # ipc:// paths are limited to ~107 bytes: keep the run root short
    run_root = Path(tempfile.mkdtemp(prefix="pb"))
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"))
    raw["demo"].update(dislocations_per_s=6.0, dislocation_bps=40)
    raw["exec"].update(max_hold_ms=400)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    yield {"config": cfg_path, "run_root": run_root, "data": tmp_path / "data"}
    shutil.rmtree(run_root, ignore_errors=True)


def _ctl_status(cfg: Path) -> dict[str, Any] | None:
    r = subprocess.run([sys.executable, "-m", "perpbot.ctl", "--config", str(cfg), "--json", "status"],
                       capture_output=True, text=True, timeout=30)
    return orjson.loads(r.stdout) if r.returncode == 0 else None


def _wait_for(what: str, cond: Callable[[], Any], deadline_s: float, proc: subprocess.Popen[bytes],
              explain: Callable[[], str]) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        if proc.poll() is not None:
            pytest.fail(f"launcher exited ({proc.returncode}) while waiting for {what}:\n{explain()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{explain()}")


class Tmux:
    """A private tmux server running one command in a detached session."""

    def __init__(self, command: str, width: int, height: int) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", f"pbmon{uuid.uuid4().hex[:8]}", "-f", os.devnull]
        env = {**os.environ, "TERM": "xterm-256color"}
        subprocess.run([*self.base, "new-session", "-d", "-s", "mon", "-x", str(width), "-y", str(height),
                        "-c", str(ROOT), command], check=True, env=env, timeout=30)

    def screen(self) -> str:
        r = subprocess.run([*self.base, "capture-pane", "-p", "-t", "mon"], capture_output=True, text=True,
                           timeout=30)
        return r.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "mon", *keys], check=True, timeout=30)

    def resize(self, width: int, height: int) -> None:
        subprocess.run([*self.base, "resize-window", "-t", "mon", "-x", str(width), "-y", str(height)],
                       check=True, timeout=30)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


_PNL_IN_HEADER = re.compile(r"PnL [+-]\d+\.\d\d USD")
_CLOSED_TRADE = re.compile(r"\bclosed\s+\S+\s+[+-]\d+\.\d{4}")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_monitor_shows_the_live_run_and_k_halts_it(run_env: dict[str, Any], tmp_path: Path) -> None:
    cfg = run_env["config"]
    log = tmp_path / "launch.log"
    rc_file = tmp_path / "monitor.rc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "perpbot.launch", "--config", str(cfg), "--duration", "120"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    tmux: Tmux | None = None
    try:
        _wait_for("all processes running", lambda: b"all processes running" in log.read_bytes(),
                  START_DEADLINE_S, proc, log.read_text)

        def all_quoting() -> bool:
            st = _ctl_status(cfg)
            return st is not None and all(f["state"] == "CONNECTED" and f["quotes"] > 0
                                          for f in st["feeds"].values())

        _wait_for("every venue connected and quoting", all_quoting, START_DEADLINE_S, proc, log.read_text)
        st = _ctl_status(cfg)
        assert st is not None
        run_id, venues = st["run_id"], list(st["feeds"])

        # without a terminal: one summary line per interval
        lines = subprocess.run(
            [sys.executable, "-m", "perpbot.monitor", "--config", str(cfg), "--interval", "0.5", "--count", "2"],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert lines.returncode == 0, lines.stderr
        out = lines.stdout.strip().splitlines()
        assert len(out) == 2, lines.stdout
        assert all(f"run {run_id} [RUNNING]" in ln and f"feeds {len(venues)}/{len(venues)} up" in ln
                   and "PnL" in ln for ln in out), out

        monitor = (f"{sys.executable} -m perpbot.monitor --config {cfg} --refresh-ms 100; "
                   f"echo $? > {rc_file}")
        tmux = Tmux(monitor, 170, 50)
        term = tmux

        def explain() -> str:
            return f"screen:\n{term.screen()}\nlauncher log:\n{log.read_text()}"

        def board_shown() -> bool:
            s = term.screen()
            return ("BOARD" in s and all(v in s for v in venues) and _PNL_IN_HEADER.search(s) is not None
                    # a BTC price near the demo's 60000 with the tick's one decimal, as bid/ask
                    and re.search(r"\b\d{5}\.\d/\d{5}\.\d\b", s) is not None)

        _wait_for("venues, board prices and the PnL header on screen", board_shown, SCREEN_DEADLINE_S, proc,
                  explain)
        _wait_for("a completed trade with its PnL on screen", lambda: _CLOSED_TRADE.search(term.screen()),
                  SCREEN_DEADLINE_S, proc, explain)
        screen = term.screen()
        assert run_id in screen and "RUNNING" in screen.splitlines()[0]
        assert "CONNECTED" in screen and "net " in screen

        # the smallest supported terminal: everything still fits, the header and board stay on top
        term.resize(80, 24)

        def small_ok() -> bool:
            lines = term.screen().rstrip("\n").splitlines()
            return (len(lines) <= 24 and all(len(ln) <= 80 for ln in lines) and bool(lines)
                    and _PNL_IN_HEADER.search(lines[0]) is not None and "BOARD" in "\n".join(lines)
                    and "k kill" in lines[-1])

        _wait_for("a clean 80x24 redraw after the resize", small_ok, SCREEN_DEADLINE_S, proc, explain)
        term.resize(120, 40)

        # kill asks first; y sends it; the screen and perpbot-ctl both see HALTED
        term.keys("k")
        _wait_for("the kill confirmation", lambda: "y/n" in term.screen(), SCREEN_DEADLINE_S, proc, explain)
        st = _ctl_status(cfg)
        assert st is not None and st["trading_state"] == "RUNNING"  # nothing sent before y
        term.keys("y")
        _wait_for("the kill reply on the status line", lambda: "trading HALTED" in term.screen(),
                  SCREEN_DEADLINE_S, proc, explain)

        def halted() -> bool:
            st = _ctl_status(cfg)
            return st is not None and st["trading_state"] == "HALTED" and st["halted"]

        _wait_for("trading_state HALTED from perpbot-ctl", halted, SCREEN_DEADLINE_S, proc, explain)
        _wait_for("HALTED in the monitor's header", lambda: "HALTED" in term.screen().splitlines()[0],
                  SCREEN_DEADLINE_S, proc, explain)

        # flatten is answered by the run (this build refuses it); the reply is shown
        term.keys("f")
        _wait_for("the flatten confirmation", lambda: "FLATTEN" in term.screen(), SCREEN_DEADLINE_S, proc, explain)
        term.keys("y")
        _wait_for("the flatten reply", lambda: "flatten: refused" in term.screen(), SCREEN_DEADLINE_S, proc,
                  explain)

        # q leaves the monitor only: exit code 0, the run carries on
        term.keys("q")
        _wait_for("the monitor to exit", lambda: rc_file.exists() and rc_file.read_text().strip() != "",
                  SCREEN_DEADLINE_S, proc, explain)
        assert rc_file.read_text().strip() == "0", explain()
        assert proc.poll() is None, "q must not stop the run"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if tmux is not None:
            tmux.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KILL received" in log.read_text()
    assert not list(SHM_DIR.glob(f"perpbot-{run_id}-*"))
    assert not (run_env["run_root"] / run_id).exists()
