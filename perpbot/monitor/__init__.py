"""perpbot-monitor: a terminal view of a live run, from the status segment and the board only.

    perpbot-monitor [--run RUN_ID] [--config FILE] [--refresh-ms MS] [--interval S] [--count N]

Finds the run like `perpbot-ctl` does, maps both segments READ-ONLY (the kernel
refuses any write, so the monitor can never disturb the hot path) and redraws
several times a second. Keys: `k` kill (asks y/n), `p` pause, `r` resume, `f`
flatten (asks y/n), `q` quits the monitor only; arrows and page keys scroll.
When stdout is not a terminal it prints a one-line summary every `--interval`
seconds instead.

Built like urwid's `examples/graph.py`: a pure model (`snapshot`, plain data,
testable without a terminal), a view that turns a model into widgets
(`MonitorView`), and a controller with the keys and a self-re-arming alarm
(`MonitorController`).

The package: `attach` (read-only views of a live run), `model` (one plain-data
snapshot), `view` (urwid widgets from a snapshot), `controller` (keys, alarm,
control replies, alerts); this module is the console entry point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from perpbot.config import load_config
from perpbot.ctl import find_run
from perpbot.errors import ConfigError, LayoutError
from perpbot.monitor._common import DEGRADED_AFTER_MS
from perpbot.monitor.attach import AttachedRun, attach_readonly
from perpbot.monitor.controller import MonitorController, describe_reply
from perpbot.monitor.model import MonitorModel, snapshot, summary_line
from perpbot.monitor.view import MonitorView, board_markup, sparkline
from perpbot.runctx import default_run_root, run_root

__all__ = [
    "DEGRADED_AFTER_MS", "AttachedRun", "MonitorController", "MonitorModel", "MonitorView", "attach_readonly",
    "board_markup", "describe_reply", "main", "snapshot", "sparkline", "summary_line",
]



def _ring_bell() -> None:
    sys.stdout.write("\a")  # BEL: the terminal's own alert, through urwid's screen untouched
    sys.stdout.flush()


def summary_loop(run: AttachedRun, interval_s: float, count: int, out: Any = sys.stdout) -> int:
    """Print `summary_line` every interval until the run ends (or `count` lines, when non-zero)."""
    prev = run.snapshot(None)
    n = 0
    while True:
        # rates need two snapshots: the first line comes one interval after attaching
        deadline = time.monotonic() + interval_s
        while time.monotonic() < deadline:
            if not run.alive():
                print(f"run {run.run_id} has ended", file=out, flush=True)
                return 0
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        prev = run.snapshot(prev)
        print(summary_line(prev), file=out, flush=True)
        n += 1
        if count and n >= count:
            return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of perpbot-monitor."""
    p = argparse.ArgumentParser(prog="perpbot-monitor", description="Watch and control a running PerpBot.")
    p.add_argument("--run", help="run id (default: the only live run)")
    p.add_argument("--config", type=Path, help="config file, to find a non-default run_root")
    p.add_argument("--refresh-ms", type=int, default=200, help="screen redraw period, ms")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between summary lines when stdout is not a terminal")
    p.add_argument("--count", type=int, default=0, help="summary lines to print before exiting; 0: until the run ends")
    args = p.parse_args(argv)
    if args.refresh_ms < 20 or args.interval <= 0 or args.count < 0:
        print("perpbot-monitor: --refresh-ms >= 20, --interval > 0 and --count >= 0 please", file=sys.stderr)
        return 2
    try:
        root = run_root(load_config(args.config)) if args.config else default_run_root()
        run = AttachedRun.open(find_run(root, args.run))
    except ConfigError as e:
        print(f"perpbot-monitor: {e}", file=sys.stderr)
        return 2
    except (LookupError, LayoutError, OSError) as e:
        print(f"perpbot-monitor: {e}", file=sys.stderr)
        return 3
    try:
        if not (sys.stdout.isatty() and sys.stdin.isatty()):
            return summary_loop(run, args.interval, args.count)
        controller = MonitorController(run, MonitorView(), args.refresh_ms / 1000)
        controller.subscribe_alerts(_ring_bell)
        try:
            controller.run_loop()
        finally:
            controller.close()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        run.close()

