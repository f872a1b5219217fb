"""Create, attach, check, close and unlink one shared-memory segment.

Only the launcher creates and unlinks. Children attach and must not own the
lifetime: on Python 3.11 `SharedMemory` registers every attach with the resource
tracker, which would unlink the segment when the child exits, so attachers
unregister at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

from perpbot.errors import LayoutError
from perpbot.shm.layout import BOARD_MAGIC, HEADER_DTYPE, NAME_DTYPE, NAME_LEN, STATUS_MAGIC

SHM_DIR = Path("/dev/shm")


class Segment:
    """A named POSIX shared-memory segment with a PerpBot header."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name

    @property
    def buf(self) -> memoryview:
        buf = self._shm.buf
        assert buf is not None, "segment is closed"
        return buf

    @classmethod
    def create(
        cls,
        name: str,
        size: int,
        magic: bytes,
        layout_version: int,
        venues: Sequence[str],
        symbols: Sequence[str],
        venue_table: int,
        symbol_table: int,
        ring_capacity: int = 0,
    ) -> Segment:
        """Create and initialise a zeroed segment; fails if the name exists."""
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        seg = cls(shm, owner=True)
        try:
            _write_names(seg.buf, venue_table, venues)
            _write_names(seg.buf, symbol_table, symbols)
            hdr = np.ndarray((), HEADER_DTYPE, buffer=seg.buf, offset=0)
            hdr["layout_version"] = layout_version
            hdr["n_venues"] = len(venues)
            hdr["n_symbols"] = len(symbols)
            hdr["ring_capacity"] = ring_capacity
            hdr["owner_pid"] = os.getpid()
            hdr["created_ns"] = time.time_ns()
            hdr["total_size"] = size
            # magic last: a reader never sees a valid magic over a half-written header
            hdr["magic"] = magic
            del hdr
        except BaseException:
            seg.close()
            seg.unlink()
            raise
        return seg

    @classmethod
    def attach(
        cls,
        name: str,
        magic: bytes,
        layout_version: int,
        venues: Sequence[str],
        symbols: Sequence[str],
        venue_table: int,
        symbol_table: int,
        size: int,
    ) -> Segment:
        """Attach to an existing segment and check its header against what we expect."""
        try:
            shm = shared_memory.SharedMemory(name=name, create=False)
        except FileNotFoundError:
            raise LayoutError(f"shared-memory segment {name!r} does not exist (is the launcher running?)") from None
        seg = cls(shm, owner=False)
        try:
            check_header(seg, magic, layout_version, venues, symbols, venue_table, symbol_table, size)
        except BaseException:
            _untrack(shm)
            seg.close()
            raise
        # the tracker keeps one entry per name: when this process created the segment too
        # (tests, benchmarks), that entry is the creator's and must stay
        if read_header(seg.buf)["owner_pid"] != os.getpid():
            _untrack(shm)
        return seg

    def close(self) -> None:
        """Release the mapping. Callers must drop their numpy views first."""
        self._shm.close()

    def unlink(self) -> None:
        if not self.owner:
            raise RuntimeError("only the creating process unlinks a segment")
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


def _untrack(shm: shared_memory.SharedMemory) -> None:
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:
        pass


def _write_names(buf: memoryview, offset: int, names: Sequence[str]) -> None:
    arr = np.ndarray((len(names),), NAME_DTYPE, buffer=buf, offset=offset)
    for i, n in enumerate(names):
        b = n.encode()
        if len(b) > NAME_LEN:
            raise ValueError(f"name {n!r} longer than {NAME_LEN} bytes")
        arr[i] = b
    del arr


def read_names(buf: memoryview, offset: int, n: int) -> list[str]:
    arr = np.ndarray((n,), NAME_DTYPE, buffer=buf, offset=offset)
    out = [bytes(x).decode() for x in arr]
    del arr
    return out


def read_header(buf: memoryview) -> dict[str, object]:
    hdr = np.ndarray((), HEADER_DTYPE, buffer=buf, offset=0)
    out = {k: hdr[k].item() for k in ("magic", "layout_version", "n_venues", "n_symbols",
                                      "ring_capacity", "owner_pid", "created_ns", "total_size")}
    del hdr
    return out


def check_header(
    seg: Segment,
    magic: bytes,
    layout_version: int,
    venues: Sequence[str],
    symbols: Sequence[str],
    venue_table: int,
    symbol_table: int,
    size: int,
) -> None:
    if len(seg.buf) < HEADER_DTYPE.itemsize:
        raise LayoutError(f"segment {seg.name}: too small for a header")
    h = read_header(seg.buf)
    if h["magic"] != magic:
        raise LayoutError(f"segment {seg.name}: bad magic {h['magic']!r}, expected {magic!r}")
    if h["layout_version"] != layout_version:
        raise LayoutError(
            f"segment {seg.name}: layout version {h['layout_version']}, this build reads {layout_version}"
        )
    if h["n_venues"] != len(venues) or h["n_symbols"] != len(symbols):
        raise LayoutError(
            f"segment {seg.name}: {h['n_venues']} venues x {h['n_symbols']} symbols, "
            f"config has {len(venues)} x {len(symbols)}"
        )
    if h["total_size"] != size or len(seg.buf) < size:
        raise LayoutError(f"segment {seg.name}: size {h['total_size']}, expected {size}")
    got_v = read_names(seg.buf, venue_table, len(venues))
    got_s = read_names(seg.buf, symbol_table, len(symbols))
    if got_v != list(venues):
        raise LayoutError(f"segment {seg.name}: venue table {got_v} differs from config {list(venues)}")
    if got_s != list(symbols):
        raise LayoutError(f"segment {seg.name}: symbol table {got_s} differs from config {list(symbols)}")


def find_stale_segments(min_age_s: float = 10.0) -> list[str]:
    """Names of PerpBot segments whose creating launcher is no longer alive."""
    stale: list[str] = []
    if not SHM_DIR.is_dir():
        return stale
    for p in SHM_DIR.iterdir():
        if not p.name.startswith("perpbot-"):
            continue
        try:
            with open(p, "rb") as f:
                raw = f.read(HEADER_DTYPE.itemsize)
            age = time.time() - p.stat().st_mtime
        except OSError:
            continue
        if len(raw) < HEADER_DTYPE.itemsize:
            if age > min_age_s:
                stale.append(p.name)
            continue
        hdr = np.frombuffer(raw, HEADER_DTYPE, count=1)[0]
        if hdr["magic"] not in (BOARD_MAGIC, STATUS_MAGIC):
            if age > min_age_s:
                stale.append(p.name)
            continue
        if not _pid_alive(int(hdr["owner_pid"])):
            stale.append(p.name)
    return stale


def remove_segment(name: str) -> None:
    try:
        (SHM_DIR / name).unlink()
    except FileNotFoundError:
        pass


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
