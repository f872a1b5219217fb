"""Attaching to a live run: its config copy and read-only views of both segments."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from perpbot import bus
from perpbot.clock import now_ns
from perpbot.config import Config, load_config
from perpbot.errors import LayoutError
from perpbot.monitor.model import MonitorModel, snapshot
from perpbot.runctx import CONFIG_COPY, RUN_FILE
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import (
    BOARD_LAYOUT_VERSION,
    BOARD_MAGIC,
    STATUS_LAYOUT_VERSION,
    STATUS_MAGIC,
    board_layout,
    segment_names,
    status_layout,
)
from perpbot.shm.segment import SHM_DIR, Segment, check_header


class ReadOnlySegment(Segment):
    """A segment mapped PROT_READ: any write through it faults instead of corrupting the run.

    Not registered with the resource tracker (no `SharedMemory` object), so the
    monitor can never unlink or "clean up" a segment it does not own.
    """

    def __init__(self, name: str) -> None:  # deliberately not Segment.__init__: no SharedMemory here
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self._mm: mmap.mmap | None = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._view: memoryview | None = memoryview(self._mm)
        self.owner = False
        self.name = name

    @property
    def buf(self) -> memoryview:
        assert self._view is not None, "segment is closed"
        return self._view

    def close(self) -> None:
        """Unmap. The boards built on this segment must have dropped their views first."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def unlink(self) -> None:
        raise RuntimeError("the monitor never unlinks a run's segments")


def attach_readonly(run_id: str, cfg: Config) -> tuple[StatusBoard, QuoteBoard]:
    """Read-only status and board views of a live run, headers checked like every process does."""
    bname, sname = segment_names(run_id)
    venues, symbols = cfg.venue_names, cfg.symbol_names
    slay = status_layout(len(venues), len(symbols))
    blay = board_layout(len(venues), len(symbols))
    segs: list[ReadOnlySegment] = []
    try:
        for name, magic, version, lay in ((sname, STATUS_MAGIC, STATUS_LAYOUT_VERSION, slay),
                                          (bname, BOARD_MAGIC, BOARD_LAYOUT_VERSION, blay)):
            try:
                seg = ReadOnlySegment(name)
            except FileNotFoundError:
                raise LayoutError(f"shared-memory segment {name!r} does not exist (has the run ended?)") from None
            segs.append(seg)
            check_header(seg, magic, version, venues, symbols, lay.venue_table, lay.symbol_table, lay.size)
    except BaseException:
        for s in segs:
            s.close()
        raise
    return StatusBoard(segs[0], slay, venues, symbols), QuoteBoard(segs[1], blay, venues, symbols)


@dataclass
class AttachedRun:
    """Everything the monitor holds on a run: its config copy, read-only segments, control endpoints."""

    run_id: str
    run_dir: Path
    cfg: Config
    status: StatusBoard
    board: QuoteBoard

    @classmethod
    def open(cls, run_dir: Path) -> AttachedRun:
        """Attach to the run in `run_dir` (a directory `perpbot.ctl.find_run` returned)."""
        info: dict[str, Any] = orjson.loads((run_dir / RUN_FILE).read_bytes())
        # the run's frozen copy, not the file the user passed: fees and tables must match the segments
        cfg = load_config(run_dir / CONFIG_COPY)
        status, board = attach_readonly(str(info["run_id"]), cfg)
        return cls(str(info["run_id"]), run_dir, cfg, status, board)

    @property
    def endpoints(self) -> bus.Endpoints:
        """The run's ZeroMQ endpoints (control requests go to `endpoints.control`)."""
        return bus.endpoints(self.run_dir)

    def alive(self) -> bool:
        """True while the launcher that owns the run is alive."""
        pid = int(self.status.glob["launcher_pid"])
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def snapshot(self, prev: MonitorModel | None) -> MonitorModel:
        """`snapshot` of this run now."""
        return snapshot(self.status, self.board, self.cfg, prev, now_ns(), run_id=self.run_id)

    def close(self) -> None:
        """Drop the views and unmap both segments (never unlinks them)."""
        self.status.close()
        self.board.close()


