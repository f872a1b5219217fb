"""Every test must leave /dev/shm as it found it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perpbot.shm.layout import HEADER_DTYPE

SHM = Path("/dev/shm")


def _perpbot_segments() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith("perpbot-")} if SHM.is_dir() else set()


def _ours_or_orphaned(name: str) -> bool:
    """Created by this process, or by a process that is gone (a leak), not by a concurrent live run."""
    try:
        raw = (SHM / name).read_bytes()[: HEADER_DTYPE.itemsize]
    except OSError:
        return False  # removed meanwhile
    if len(raw) < HEADER_DTYPE.itemsize:
        return True
    pid = int(np.frombuffer(raw, HEADER_DTYPE, count=1)[0]["owner_pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture(autouse=True)
def no_leaked_segments() -> object:
    before = _perpbot_segments()
    yield
    leaked = sorted(n for n in _perpbot_segments() - before if _ours_or_orphaned(n))
    assert not leaked, f"test left shared-memory segments behind: {leaked}"
