"""perpbot-bench's baseline (seed-style event bus) and fused designs, for real, against the demo market.

The market runs in its own process (`BenchMarket`), each design in a fresh one
(`run_in_subprocess`). Only the shape of the results is checked, and that the
run did real work and left nothing behind: speed is for the benchmark, never
for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from kit import example_raw
from perpbot_bench import baseline, fused
from perpbot_bench.market import BenchMarket
from perpbot_bench.stats import HOP_NAMES

from perpbot.config import parse_config

pytestmark = pytest.mark.slow

DURATION_S = 3.0
VENUES = ("binanceusdm", "okx", "bybit")
SYMBOLS = ("BTC-PERP", "ETH-PERP")
SHM = Path("/dev/shm")
#: a quantile is its bucket's midpoint, the max is exact: p99 may pass the max by half a bucket
HALF_BUCKET = 1 + 1 / 16


def small_config(path: Path) -> Path:
    """3 venues x 2 symbols; dislocations frequent and wide enough for opportunities within seconds."""
    raw = example_raw()
    raw["symbols"] = {s: raw["symbols"][s] for s in SYMBOLS}
    venues = {}
    for v in VENUES:
        vc = raw["venues"][v]
        vc["symbols"] = {s: vc["symbols"][s] for s in SYMBOLS}
        if "contract_sizes" in vc:
            vc["contract_sizes"] = {s: vc["contract_sizes"][s] for s in SYMBOLS}
        venues[v] = vc
    raw["venues"] = venues
    raw["demo"]["venues"] = {v: raw["demo"]["venues"][v] for v in VENUES}
    raw["demo"]["prices"] = {s: raw["demo"]["prices"][s] for s in SYMBOLS}
    raw["demo"].update(dislocations_per_s=6.0, dislocation_bps=40)
    raw["exec"].update(max_hold_ms=400)  # trades close within the run, so the risk limits keep admitting
    parse_config(raw)  # a bad edit fails here, named
    path.write_text(yaml.safe_dump(raw))
    return path


def _bench_segments() -> set[str]:
    return {p.name for p in SHM.glob("perpbot-bench*")} if SHM.is_dir() else set()


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def check_result(design: str, r: dict[str, Any], required_hops: tuple[str, ...]) -> None:
    assert set(r) >= {"hops", "frames", "frames_per_s", "opportunities", "orders", "cpu_pct"}, r.keys()
    assert isinstance(r["frames"], int) and r["frames"] > 0
    assert isinstance(r["frames_per_s"], float) and r["frames_per_s"] > 0
    assert isinstance(r["opportunities"], int) and r["opportunities"] > 0, r
    assert isinstance(r["orders"], int) and r["orders"] > 0, r
    assert set(r["cpu_pct"]) == {design} and isinstance(r["cpu_pct"][design], float)
    hops = r["hops"]
    assert set(hops) <= set(HOP_NAMES), hops.keys()
    assert list(hops) == [h for h in HOP_NAMES if h in hops], "hops in path order"
    assert set(required_hops) <= set(hops), f"{design}: missing {set(required_hops) - set(hops)}"
    for name, s in hops.items():
        assert s["count"] > 0, name
        assert sum(s["buckets"].values()) == s["count"], name
        assert 0 <= s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["p999_us"], (name, s)
        assert s["p99_us"] <= s["max_us"] * HALF_BUCKET, (name, s)
    # every order counted was handed over with its tick->order stamp
    assert hops["tick_to_order"]["count"] * 2 == r["orders"]


def test_baseline_and_fused_on_the_demo_market(tmp_path: Path) -> None:
    cfg_path = small_config(tmp_path / "config.yaml")
    children_before = _children()
    segments_before = _bench_segments()
    cpu = (os.cpu_count() or 1) - 1
    with BenchMarket(cfg_path) as market:
        market_pid = market.pid
        assert set(market.urls) == set(VENUES)
        assert all(u.startswith("ws://") for u in market.urls.values())
        base = baseline.run_in_subprocess(cfg_path, market.urls, DURATION_S, cpu=cpu)
        floor = fused.run_in_subprocess(cfg_path, market.urls, DURATION_S)
    check_result("baseline", base, HOP_NAMES)
    check_result("fused", floor, ("tick_to_signal", "exec_to_decide", "decide_to_dispatch", "tick_to_order"))
    assert not {"feed_recv_to_write", "board_write_to_detect", "detect_to_exec"} & set(floor["hops"])
    assert market_pid is not None and not psutil.pid_exists(market_pid)
    assert _children() - children_before == set(), "a child process outlived the run"
    assert _bench_segments() - segments_before == set(), "a private board segment was left in /dev/shm"
