"""Shared builders for tests: configs, segments, run directories."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from perpbot.config import Config, parse_config
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import segment_names

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_CONFIG = ROOT / "config.yaml.example"


def example_raw() -> dict[str, Any]:
    """The example config as plain data, to mutate in tests."""
    return copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))


def make_config(**sections: dict[str, Any]) -> Config:
    """The example config with some sections' keys overridden, e.g. scanner={"poll": "sleep"}."""
    raw = example_raw()
    for name, values in sections.items():
        if isinstance(raw.get(name), dict) and isinstance(values, dict):
            raw[name].update(values)
        else:
            raw[name] = values
    return parse_config(raw)


def unique_run_id() -> str:
    return f"t{os.getpid()}{uuid.uuid4().hex[:6]}"


@contextmanager
def segments(cfg: Config, run_id: str | None = None) -> Iterator[tuple[QuoteBoard, StatusBoard]]:
    """A board and a status segment for `cfg`, unlinked afterwards whatever happens."""
    rid = run_id or unique_run_id()
    bname, sname = segment_names(rid)
    board = QuoteBoard.create(bname, cfg.venue_names, cfg.symbol_names)
    try:
        status = StatusBoard.create(sname, cfg.venue_names, cfg.symbol_names)
    except BaseException:
        board.close()
        board.segment.unlink()
        raise
    try:
        yield board, status
    finally:
        board.close()
        board.segment.unlink()
        status.close()
        status.segment.unlink()
