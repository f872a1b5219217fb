"""Every test must leave /dev/shm as it found it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _perpbot_segments() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir() if p.name.startswith("perpbot-")} if shm.is_dir() else set()


@pytest.fixture(autouse=True)
def no_leaked_segments() -> object:
    before = _perpbot_segments()
    yield
    leaked = _perpbot_segments() - before
    assert not leaked, f"test left shared-memory segments behind: {sorted(leaked)}"
