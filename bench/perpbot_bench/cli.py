"""perpbot-bench: PerpBot's real processes measured hop by hop, beside the seed's design and the floors.

    perpbot-bench                              # PerpBot, 4 venues x 10 symbols, 50 Hz, 20 s
    perpbot-bench --baseline --fused --floors  # ... and the seed-style bus, the fused path, the floors
    perpbot-bench --all --out run.json         # everything below, and the JSON for machines
    perpbot-bench --sweep 25,50,100,200        # offered load steps (Hz per venue and symbol)
    perpbot-bench --head-of-line               # a burst on one venue while another's orders are timed
    perpbot-bench --throughput --ccxt          # one feed at saturation, ccxt.pro beside it
    perpbot-bench --scanner-cost               # scanner pass cost from 2x10 to 8x500
    perpbot-bench --project 8                  # what the path would cost with spare cores (projection)
    perpbot-bench --compare A.json B.json      # B relative to A
    perpbot-bench --report run.json            # print a saved run again

Every design runs the same workload (the built-in demo market, in each venue's
own protocol, on loopback) for the same duration, one after the other, so they
never compete for the two cores. `--repeat N` runs each N times and reports
min / median / max of every percentile: a small shared VM can lose a core for
milliseconds, and a single tail figure would hide that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from perpbot_bench import machine, report, run_perpbot
from perpbot_bench.stats import HOP_NAMES, merge
from perpbot_bench.workload import Workload, write_config

DEFAULT_DURATION_S = 20.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perpbot-bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    w = p.add_argument_group("workload")
    w.add_argument("--venues", type=int, default=4, help="venues (2..8, the example config's first N)")
    w.add_argument("--symbols", type=int, default=10, help="symbols per venue")
    w.add_argument("--rate", type=float, default=50.0, help="quote updates per second per venue and symbol")
    w.add_argument("--dislocations", type=float, default=4.0, help="market dislocations per second")
    w.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per design run")
    w.add_argument("--repeat", type=int, default=1, help="runs per design (percentiles as min/median/max)")
    w.add_argument("--poll", choices=("spin", "hybrid", "sleep"), default="hybrid", help="scanner poll policy")
    w.add_argument("--pin", action="store_true", help="pin the scanner to the last core")
    d = p.add_argument_group("what to run")
    d.add_argument("--no-perpbot", action="store_true", help="skip PerpBot's own run")
    d.add_argument("--baseline", action="store_true", help="the seed-style in-process event bus")
    d.add_argument("--fused", action="store_true", help="the whole path inline in one callback (the floor)")
    d.add_argument("--floors", action="store_true", help="seqlock, ZeroMQ ipc hop, parse floors")
    d.add_argument("--throughput", action="store_true", help="one feed process at saturation")
    d.add_argument("--ccxt", action="store_true", help="ccxt.pro watch_bids_asks at saturation beside it")
    d.add_argument("--scanner-cost", action="store_true", help="scanner pass cost from 2x10 to 8x500")
    d.add_argument("--sweep", type=str, default="", help="comma-separated rates (Hz) to sweep")
    d.add_argument("--head-of-line", action="store_true", help="burst on one venue, time another's orders")
    d.add_argument("--all", action="store_true", help="everything above")
    d.add_argument("--project", type=int, default=0, metavar="CORES",
                   help="print what the path would cost on a host with CORES cores (a projection)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="write the run's JSON here")
    o.add_argument("--no-histograms", action="store_true", help="leave the text histograms out")
    o.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="B relative to A, then exit")
    o.add_argument("--report", type=Path, help="print a saved run's report, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.compare:
        a, b = (json.loads(f.read_text()) for f in args.compare)
        print(report.compare(a, b))
        return 0
    if args.report:
        print(report.human(json.loads(args.report.read_text()), histograms=not args.no_histograms))
        return 0
    if args.all:
        args.baseline = args.fused = args.floors = args.throughput = args.ccxt = True
        args.scanner_cost = args.head_of_line = True
        args.sweep = args.sweep or "25,50,100,200"
        args.project = args.project or 8
    try:
        run = measure(args)
    except (RuntimeError, ValueError) as e:
        print(f"perpbot-bench: {e}", file=sys.stderr)
        return 1
    text = report.human(run, histograms=not args.no_histograms)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(run, indent=1))
        print(f"\nJSON written to {args.out}")
    return 0


def _workload(args: argparse.Namespace, **over: Any) -> Workload:
    import os

    core = (os.cpu_count() or 1) - 1 if args.pin else None
    base = dict(venues=args.venues, symbols=args.symbols, rate_hz=args.rate,
                dislocations_per_s=args.dislocations, poll=args.poll, scanner_core=core)
    base.update(over)
    return Workload(**base)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    w = _workload(args)
    run: dict[str, Any] = {"tool": "perpbot-bench", "version": 1, "machine": machine.describe(),
                           "params": {**w.as_dict(), "duration_s": args.duration, "repeat": args.repeat},
                           "results": {}, "floors": {}}
    say = _progress
    if not args.no_perpbot:
        say(f"perpbot: {w.venues} venues x {w.symbols} symbols at {w.rate_hz:g} Hz "
            f"(~{w.offered_frames_per_s:,.0f} frames/s offered), {args.duration:g} s x {args.repeat}")
        run["results"]["perpbot"] = _repeat(args.repeat, lambda: run_perpbot.run(w, args.duration))
    for flag, design in (("baseline", "baseline"), ("fused", "fused")):
        if getattr(args, flag):
            say(f"{design}: same workload")
            run["results"][design] = _repeat(args.repeat, partial(_run_design, design, w, args.duration))
    if args.floors:
        say("floors")
        run["floors"].update(_floors())
    if "fused" in run["results"] and "tick_to_order" in run["results"]["fused"]["hops"]:
        run["floors"]["fused"] = run["results"]["fused"]["hops"]["tick_to_order"]
    if args.throughput or args.ccxt:
        say("feed throughput" + (" and ccxt.pro" if args.ccxt else ""))
        run["throughput"] = _throughput(args.ccxt)
    if args.scanner_cost or args.project:
        say("scanner pass cost")
        run["scanner_cost"] = _scanner_cost()
        run["scanner_one_change_us"] = _one_change_us(run["scanner_cost"])
    if args.project:
        from perpbot_bench.exec_cost import exec_cost

        say("exec decision cost, in process")
        run["exec_cost"] = exec_cost()
        run["exec_decide_us"] = run["exec_cost"]["decision_p50_us"]
        run["projection_lines"] = report.projection(run, args.project)
    if args.sweep:
        rates = [float(r) for r in args.sweep.split(",") if r.strip()]
        run["sweep"] = _sweep(args, rates, baseline=args.baseline)
        run["sweep_lines"] = report.sweep_lines(run["sweep"])
    if args.head_of_line:
        run["head_of_line"] = _head_of_line(args, baseline=args.baseline)
        run["head_of_line_lines"] = report.hol_lines(run["head_of_line"])
    return run


def _progress(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


def _repeat(n: int, once: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One design's result; with n > 1, hops merged and each percentile's min/median/max kept."""
    runs = [once() for _ in range(max(1, n))]
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[-1])
    out["hops"] = {}
    for name in HOP_NAMES:
        got = [r["hops"][name] for r in runs if name in r["hops"]]
        if not got:
            continue
        merged = merge(got)
        merged["spread"] = {k: {"min": min(g[k] for g in got if g[k] is not None),
                                "median": statistics.median(g[k] for g in got if g[k] is not None),
                                "max": max(g[k] for g in got if g[k] is not None)}
                            for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")
                            if any(g[k] is not None for g in got)}
        out["hops"][name] = merged
    out["runs"] = len(runs)
    return out


def _run_design(design: str, w: Workload, duration_s: float) -> dict[str, Any]:
    """The baseline or the fused floor on the same workload, in its own process, beside a market."""
    from perpbot_bench import baseline, fused
    from perpbot_bench.market import BenchMarket

    mod = baseline if design == "baseline" else fused
    with tempfile.TemporaryDirectory(prefix="pbb") as tmp:
        cfg_path = Path(tmp) / "bench.yaml"
        cfg = write_config(w, cfg_path, run_root=Path(tmp), data_dir=Path(tmp) / "data")
        with BenchMarket(cfg) as market:
            return mod.run_in_subprocess(cfg_path, market.urls, duration_s)


def _floors() -> dict[str, Any]:
    from perpbot_bench import floors

    return {
        "seqlock": floors.seqlock_floor(3.0, writer_cpu=0, reader_cpu=1),
        "zmq_ipc": floors.zmq_ipc_floor(2000, blocked=True),
        "zmq_ipc_spin": floors.zmq_ipc_floor(2000, blocked=False),
        "parse": floors.parse_floor(20000),
    }


def _throughput(with_ccxt: bool) -> dict[str, Any]:
    from perpbot_bench import throughput

    out: dict[str, Any] = {}
    got = throughput.feed_throughput("binanceusdm", 8.0, feed_cpu=0, server_cpu=1)
    out["perpbot_frames_per_s"] = got["frames_per_s"]
    if with_ccxt:
        from perpbot_bench import ccxt_compare

        c = ccxt_compare.ccxt_pro_feed(8.0)
        out["ccxt"] = c
        out["ccxt_frames_per_s"] = c.get("frames_per_s")
    return out


def _scanner_cost() -> list[dict[str, Any]]:
    from perpbot_bench import scanner_cost

    return scanner_cost.scanner_cost()


def _one_change_us(rows: list[dict[str, Any]]) -> float | None:
    """The scanner's cost for one changed symbol on the largest board measured (the projection's)."""
    if not rows:
        return None
    s = rows[-1].get("one_change")
    return s.get("p50_us") if isinstance(s, dict) else None


def _sweep(args: argparse.Namespace, rates: list[float], *, baseline: bool) -> list[dict[str, Any]]:
    """Each offered load for PerpBot (and the baseline): tick->order p50/p99 at that load."""
    steps = []
    for rate in rates:
        w = _workload(args, venues=8, rate_hz=rate)
        _progress(f"sweep: {rate:g} Hz, ~{w.offered_frames_per_s:,.0f} frames/s offered")
        step: dict[str, Any] = {"rate_hz": rate, "offered_frames_per_s": w.offered_frames_per_s}
        step["perpbot"] = _t2o(run_perpbot.run(w, args.duration))
        if baseline:
            step["baseline"] = _t2o(_run_design("baseline", w, args.duration))
        steps.append(step)
    return steps


def _t2o(result: dict[str, Any]) -> dict[str, Any]:
    h = result["hops"].get("tick_to_order", {})
    return {"p50_us": h.get("p50_us"), "p99_us": h.get("p99_us"), "count": h.get("count", 0),
            "frames_per_s": result.get("frames_per_s")}


def _head_of_line(args: argparse.Namespace, *, baseline: bool) -> dict[str, Any]:
    """Orders on BTC between two venues, timed with and without a burst of another symbol on a third.

    The burst venue quotes only a symbol no other venue quotes, so it never makes an
    opportunity: every order timed comes from the quiet venues' quotes, and whatever the
    burst adds to their tick->order is head-of-line blocking.
    """
    from perpbot_bench.workload import venue_names

    names = venue_names(3)
    burst = names[2]
    quiet = _workload(args, venues=3, symbols=2, rate_hz=args.rate,
                      symbol_overrides={names[0]: ("BTC-PERP",), names[1]: ("BTC-PERP",),
                                        burst: ("ETH-PERP",)})
    loud = _workload(args, venues=3, symbols=2, rate_hz=args.rate, rate_overrides={burst: args.rate * 200},
                     symbol_overrides=quiet.symbol_overrides)
    out: dict[str, Any] = {"burst_venue": burst, "burst_frames_per_s": args.rate * 200}
    for label, w in (("quiet", quiet), ("burst", loud)):
        _progress(f"head-of-line: {label}")
        out[label] = {"perpbot": _t2o(run_perpbot.run(w, args.duration))}
        if baseline:
            out[label]["baseline"] = _t2o(_run_design("baseline", w, args.duration))
    return out


if __name__ == "__main__":
    sys.exit(main())
