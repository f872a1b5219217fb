"""What a child process needs to join a run, and the plumbing every child shares.

The launcher writes `run.json` and a frozen copy of the config into the run
directory; a child is started as `python -m perpbot.<role> --run-dir D --slot N`
and finds everything else there. Children ask the kernel to SIGTERM them if the
launcher dies, so no child outlives its run.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from perpbot.bus import Endpoints, endpoints
from perpbot.config import Config, load_config
from perpbot.shm.layout import segment_names

RUN_FILE = "run.json"
CONFIG_COPY = "config.yaml"
#: risk limits re-read by `perpbot-ctl reload-risk`, validated by the launcher, applied by exec
RISK_FILE = "risk.json"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunContext:
    run_id: str
    run_dir: Path
    data_dir: Path
    cfg: Config
    slot: int  # this process's record index in the status segment
    #: demo market websocket URLs per venue (demo mode only)
    urls: dict[str, str]

    @property
    def board_name(self) -> str:
        return segment_names(self.run_id)[0]

    @property
    def status_name(self) -> str:
        return segment_names(self.run_id)[1]

    @property
    def endpoints(self) -> Endpoints:
        return endpoints(self.run_dir)

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite"

    @property
    def paper_dir(self) -> Path:
        """The paper venues' own account records (`<venue>.jsonl`): they outlive exec, as a real
        venue's do."""
        return self.data_dir / "paper"


def default_run_root() -> Path:
    """Per-user directory for run directories (sockets): never shared with other users."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "perpbot"
    return Path(f"/tmp/perpbot-{os.getuid()}")


def run_root(cfg: Config) -> Path:
    return Path(cfg.run.run_root) if cfg.run.run_root else default_run_root()


def write_run_file(run_dir: Path, run_id: str, data_dir: Path, urls: dict[str, str]) -> None:
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_bytes(orjson.dumps({"run_id": run_id, "data_dir": str(data_dir), "urls": urls}))
    os.replace(tmp, run_dir / RUN_FILE)


def load_run(run_dir: Path, slot: int) -> RunContext:
    info: dict[str, Any] = orjson.loads((run_dir / RUN_FILE).read_bytes())
    cfg = load_config(run_dir / CONFIG_COPY)
    return RunContext(info["run_id"], run_dir, Path(info["data_dir"]), cfg, slot, info.get("urls", {}))


def child_args(role: str, argv: list[str] | None = None, venue: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"perpbot-{role}",
                                description=f"PerpBot {role} process (started by perpbot-launch)")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--slot", required=True, type=int)
    if venue:
        p.add_argument("--venue", required=True)
    return p.parse_args(argv)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the launcher exits, however it exits."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    # the parent may have died before prctl took effect
    if os.getppid() == 1:
        sys.exit(1)


def setup_logging(name: str, ctx: RunContext) -> logging.Logger:
    """JSON lines to a rotating `<data_dir>/<name>.jsonl`, warnings to stderr (which the launcher keeps in
    `<name>.log`), and every configured API secret redacted before any handler sees it."""
    from perpbot import logs

    return logs.setup_logging(name, ctx.data_dir, secrets=logs.secret_values(ctx.cfg), console_level="WARNING")


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Call `callback` on SIGTERM or SIGINT (synchronous processes)."""
    def handler(signum: int, frame: object) -> None:
        callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
