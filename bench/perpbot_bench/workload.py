"""The benchmark's demo-market workload: N venues x M symbols at a given quote rate, as a config.

Built from `config.yaml.example` so the processes, fees and limits are the
ones users run. Venues are the example's first N; symbols are its three,
then synthetic `X<i>-PERP` symbols named on each venue the way its BTC
symbol is (`BTCUSDT` -> `X4USDT`, `BTC-USDT-SWAP` -> `X4-USDT-SWAP`), so every
venue's own protocol and parser carry them. The offered load is about
venues x symbols x `rate_hz` frames per second, in bursts (each venue's
updates arrive together per tick of the market) plus the market's
dislocations, which are what produce opportunities.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perpbot.config import Config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.yaml.example"
#: the example's symbols, used first
REAL_SYMBOLS = ("BTC-PERP", "ETH-PERP", "SOL-PERP")


@dataclass(frozen=True)
class Workload:
    venues: int = 4
    symbols: int = 10
    rate_hz: float = 50.0  # quote updates per second per venue and symbol
    dislocations_per_s: float = 4.0
    poll: str = "hybrid"
    scanner_core: int | None = None  # None: not pinned
    seed: int = 7
    #: venue name -> rate, overriding `rate_hz` (the head-of-line burst)
    rate_overrides: dict[str, float] = field(default_factory=dict)
    #: venue name -> the only board symbols it quotes (the head-of-line burst venue)
    symbol_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def offered_frames_per_s(self) -> float:
        names = venue_names(self.venues)
        syms = symbol_names(self.symbols)
        return sum(self.rate_overrides.get(v, self.rate_hz) * len(self.symbol_overrides.get(v, syms))
                   for v in names)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["offered_frames_per_s"] = self.offered_frames_per_s
        return d


def example_raw() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))


def venue_names(n: int) -> list[str]:
    names = list(example_raw()["venues"])
    if not 2 <= n <= len(names):
        raise ValueError(f"venues must be 2..{len(names)}, got {n}")
    return names[:n]


def symbol_names(n: int) -> list[str]:
    if n < 1:
        raise ValueError(f"symbols must be >= 1, got {n}")
    return [*REAL_SYMBOLS[:n], *(f"X{i}-PERP" for i in range(len(REAL_SYMBOLS), n))]


def raw_config(w: Workload, *, run_root: Path, data_dir: Path) -> dict[str, Any]:
    """The config (as data) for one benchmark run of workload `w`."""
    raw = example_raw()
    names = venue_names(w.venues)
    syms = symbol_names(w.symbols)
    raw["run"].update(run_root=str(run_root), data_dir=str(data_dir))
    raw["symbols"] = {s: raw["symbols"].get(s, {"lot_size": "0.01", "tick_size": "0.01",
                                                 "min_notional_usd": 5}) for s in syms}
    venues = {}
    for v in names:
        vc = raw["venues"][v]
        btc = vc["symbols"]["BTC-PERP"]
        wanted = w.symbol_overrides.get(v, tuple(syms))
        vc["symbols"] = {s: vc["symbols"].get(s, btc.replace("BTC", s.removesuffix("-PERP"))) for s in wanted}
        if "contract_sizes" in vc:
            vc["contract_sizes"] = {s: vc["contract_sizes"].get(s, 1) for s in wanted}
        venues[v] = vc
    raw["venues"] = venues
    prices = raw["demo"]["prices"]
    raw["demo"]["prices"] = {s: prices.get(s, 100.0 + i) for i, s in enumerate(syms)}
    raw["demo"]["seed"] = w.seed
    raw["demo"]["dislocations_per_s"] = w.dislocations_per_s
    raw["demo"]["venues"] = {v: {**raw["demo"]["venues"][v], "update_hz": w.rate_overrides.get(v, w.rate_hz)}
                             for v in names}
    raw["scanner"].update(poll=w.poll, core=w.scanner_core)
    return raw


def write_config(w: Workload, path: Path, *, run_root: Path, data_dir: Path) -> Config:
    """Write the run's config file and return it parsed (a bad workload fails here, named)."""
    raw = raw_config(w, run_root=run_root, data_dir=data_dir)
    cfg = parse_config(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg
