"""Turning a perpbot-bench run (stats.py JSON) into the human report, ratios and projections.

Pure functions over the run's JSON: what is printed can always be recomputed
from the file `--out` wrote (`perpbot-bench --report FILE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perpbot_bench.machine import one_line
from perpbot_bench.stats import HOP_NAMES, text_histogram

#: the seed's service levels (DESIGN.md), beside the hop that answers each
SEED_SLOS: tuple[tuple[str, str, float], ...] = (
    ("quote (frame -> board)", "feed_recv_to_write", 100_000.0),
    ("scan (board -> detected)", "board_write_to_detect", 30_000.0),
    ("decision (received -> decided)", "exec_to_decide", 50_000.0),
    ("order (frame -> order dispatched)", "tick_to_order", 100_000.0),
)
#: each hop's floor: what this machine allows for the same step, measured in the same run
FLOOR_OF: dict[str, str] = {
    "feed_recv_to_write": "parse",
    "board_write_to_detect": "seqlock",
    "detect_to_exec": "zmq_ipc",
    "tick_to_order": "fused",
}
#: targets (the issue's, for the benchmark only): ratio to floor, and tick->order bounds
FLOOR_RATIO_TARGET = 1.5
TICK_TO_ORDER_P50_TARGET_US = 100.0
TICK_TO_ORDER_P99_TARGET_US = 1000.0


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.1f} ms"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.1f} us"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.2f}x"


def hop_table(design: str, result: Mapping[str, Any], floors: Mapping[str, Any]) -> list[str]:
    lines = [f"{design}: {result.get('frames_per_s', 0):,.0f} frames/s, "
             f"{result.get('opportunities', 0)} opportunities, {result.get('orders', 0)} orders",
             f"  {'hop':<22}{'count':>8}{'p50':>11}{'p90':>11}{'p99':>11}{'p99.9':>11}{'max':>11}"
             f"   p50 vs floor"]
    for name in HOP_NAMES:
        h = result.get("hops", {}).get(name)
        if not h:
            continue
        floor = floors.get(FLOOR_OF.get(name, ""), {})
        vs = ""
        if floor:
            vs = f"   {ratio(h['p50_us'], floor.get('p50_us'))} of {FLOOR_OF[name]}"
        lines.append(f"  {name:<22}{h['count']:>8}{fmt_us(h['p50_us']):>11}{fmt_us(h['p90_us']):>11}"
                     f"{fmt_us(h['p99_us']):>11}{fmt_us(h['p999_us']):>11}{fmt_us(h['max_us']):>11}{vs}")
        spread = h.get("spread")
        if spread:  # repeat runs: each percentile's min / median / max over the runs
            lines.append("  " + " " * 22 + "   runs: " + "; ".join(
                f"{k.removesuffix('_us')} {fmt_us(v['min'])} / {fmt_us(v['median'])} / {fmt_us(v['max'])}"
                for k, v in spread.items() if k in ("p50_us", "p99_us")))
    cpu = result.get("cpu_pct")
    if cpu:
        lines.append("  CPU %: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    return lines


def floors_table(floors: Mapping[str, Any]) -> list[str]:
    lines = ["floors (this machine, same run):",
             f"  {'floor':<22}{'count':>8}{'p50':>11}{'p99':>11}{'max':>11}"]
    for name, h in floors.items():
        if isinstance(h, Mapping) and "p50_us" in h:
            lines.append(f"  {name:<22}{h['count']:>8}{fmt_us(h['p50_us']):>11}{fmt_us(h['p99_us']):>11}"
                         f"{fmt_us(h['max_us']):>11}")
    return lines


def baseline_ratios(results: Mapping[str, Any]) -> list[str]:
    ours, base = results.get("perpbot"), results.get("baseline")
    if not ours or not base:
        return []
    lines = ["perpbot vs the seed-style baseline (same workload, same run; < 1 is faster):"]
    for name in HOP_NAMES:
        a, b = ours["hops"].get(name), base["hops"].get(name)
        if a and b:
            lines.append(f"  {name:<22} p50 {ratio(a['p50_us'], b['p50_us']):>8}   "
                         f"p99 {ratio(a['p99_us'], b['p99_us']):>8}")
    return lines


def slo_lines(result: Mapping[str, Any]) -> list[str]:
    lines = ["the seed's SLOs beside perpbot's p99:"]
    for label, hop, limit_us in SEED_SLOS:
        h = result.get("hops", {}).get(hop)
        got = h["p99_us"] if h else None
        verdict = "-" if got is None else ("met" if got < limit_us else "MISSED")
        lines.append(f"  {label:<36} < {fmt_us(limit_us):>9}: p99 {fmt_us(got):>10}  {verdict}")
    return lines


def target_lines(run: Mapping[str, Any]) -> list[str]:
    """The issue's targets, each said as met or missed with the numbers."""
    results, floors = run.get("results", {}), run.get("floors", {})
    ours = results.get("perpbot")
    lines = ["targets:"]
    if ours:
        t2o = ours["hops"].get("tick_to_order")
        if t2o:
            ok50 = t2o["p50_us"] is not None and t2o["p50_us"] <= TICK_TO_ORDER_P50_TARGET_US
            ok99 = t2o["p99_us"] is not None and t2o["p99_us"] <= TICK_TO_ORDER_P99_TARGET_US
            lines.append(f"  tick->order p50 <= {TICK_TO_ORDER_P50_TARGET_US:.0f} us: "
                         f"{fmt_us(t2o['p50_us'])} {'met' if ok50 else 'MISSED'}; "
                         f"p99 <= 1 ms: {fmt_us(t2o['p99_us'])} {'met' if ok99 else 'MISSED'}")
        for hop, floor_name in FLOOR_OF.items():
            h, f = ours["hops"].get(hop), floors.get(floor_name)
            if h and f and f.get("p50_us"):
                r = h["p50_us"] / f["p50_us"]
                lines.append(f"  {hop} within {FLOOR_RATIO_TARGET}x of {floor_name}: {r:.2f}x "
                             f"{'met' if r <= FLOOR_RATIO_TARGET else 'MISSED'}")
    hol = run.get("head_of_line") or {}
    ours_b, base_b = (hol.get("burst") or {}).get("perpbot"), (hol.get("burst") or {}).get("baseline")
    if ours_b and base_b and ours_b.get("p99_us") and base_b.get("p99_us"):
        better = ours_b["p99_us"] < base_b["p99_us"]
        lines.append(f"  head-of-line p99 better than the baseline: {fmt_us(ours_b['p99_us'])} vs "
                     f"{fmt_us(base_b['p99_us'])} {'met' if better else 'MISSED'}")
    steps = run.get("sweep") or []
    if steps and any("baseline" in st for st in steps):
        def held(d: str) -> float:
            return max((st["offered_frames_per_s"] for st in steps if st.get(d, {}).get("p99_us") is not None
                        and st[d]["p99_us"] < TICK_TO_ORDER_P99_TARGET_US), default=0.0)
        a, b = held("perpbot"), held("baseline")
        lines.append(f"  higher sustainable load than the baseline (p99 < 1 ms): {a:,.0f} vs {b:,.0f} frames/s "
                     f"{'met' if a > b else 'MISSED'}")
    rows = {(r.get("venues"), r.get("symbols")): r for r in run.get("scanner_cost") or []}
    small, big = rows.get((8, 10)), rows.get((8, 500))
    if small and big and small.get("one_change") and big.get("one_change"):
        r = big["one_change"]["p50_us"] / small["one_change"]["p50_us"]
        lines.append(f"  scanner cost per changed symbol flat from 10 to 500 symbols (8 venues): "
                     f"{r:.2f}x {'met' if r <= 1.25 else 'MISSED'} (flat: within 25%)")
    tp = run.get("throughput", {})
    if tp.get("perpbot_frames_per_s") and tp.get("ccxt_frames_per_s"):
        r = tp["perpbot_frames_per_s"] / tp["ccxt_frames_per_s"]
        lines.append(f"  one feed >= 300k frames/s and >= 10x ccxt.pro: {tp['perpbot_frames_per_s']:,.0f}/s, "
                     f"{r:.1f}x ccxt.pro "
                     f"{'met' if tp['perpbot_frames_per_s'] >= 300_000 and r >= 10 else 'MISSED'}")
    return lines


def projection(run: Mapping[str, Any], cores: int) -> list[str]:
    """What tick->order would cost with the scanner and exec each spinning on a core of their own.

    Sums, for one quote that becomes an order, the costs this run measured for
    the work itself, leaving out the waits a 2-core host adds (a process woken
    from sleep, a core shared by twelve processes): the feed's parse and board
    write, a cross-core seqlock read, the scanner's check of one changed
    symbol, a ZeroMQ hop to a busy-polling receiver, and exec's decision and
    journal commit as measured in process.
    """
    floors = run.get("floors", {})
    parts: list[tuple[str, float | None, str]] = [
        ("parse + field extraction", _p50(floors, "parse"), "floor: parse"),
        ("cross-core seqlock read of a fresh write", _p50(floors, "seqlock"), "floor: seqlock"),
        ("scanner check of one changed symbol", run.get("scanner_one_change_us"), "scanner_cost"),
        ("ZeroMQ hop, receiver busy-polling", _p50(floors, "zmq_ipc_spin"), "floor: zmq_ipc_spin"),
        ("exec decision (risk, capital, sizing) + journal commit", run.get("exec_decide_us"),
         "in-process decision"),
    ]
    lines = [f"PROJECTION (not a measurement) for a host with {cores} cores: scanner and exec each spin "
             f"on a core of their own, {max(cores - 2, 1)} core(s) for the feeds and the market:"]
    total = 0.0
    for label, v, src in parts:
        lines.append(f"  {label:<56} {fmt_us(v):>10}   ({src})")
        total += v or 0.0
    missing = [label for label, v, _ in parts if v is None]
    lines.append(f"  {'= tick -> order, p50 estimate':<56} {fmt_us(total):>10}"
                 + (f"   (missing: {', '.join(missing)})" if missing else ""))
    if cores < 4:
        lines.append("  with fewer than 4 cores the spinning processes would share cores: "
                     "the measured run above is the better guide")
    return lines


def _p50(floors: Mapping[str, Any], name: str) -> float | None:
    h = floors.get(name)
    return h.get("p50_us") if isinstance(h, Mapping) else None


def human(run: Mapping[str, Any], *, histograms: bool = True) -> str:
    out = [f"perpbot-bench on {one_line(run['machine'])}",
           "params: " + ", ".join(f"{k}={v}" for k, v in run.get("params", {}).items()), ""]
    results = run.get("results", {})
    floors = run.get("floors", {})
    for design, res in results.items():
        out += [*hop_table(design, res, floors), ""]
    if floors:
        out += [*floors_table(floors), ""]
    if results.get("baseline"):
        out += [*baseline_ratios(results), ""]
    if run.get("sweep"):
        out += [*sweep_lines(run["sweep"]), ""]
    if run.get("head_of_line"):
        out += [*hol_lines(run["head_of_line"]), ""]
    if run.get("scanner_cost"):
        out += [*scanner_cost_lines(run["scanner_cost"]), ""]
    if run.get("throughput"):
        out += [*throughput_lines(run["throughput"]), ""]
    if "perpbot" in results:
        out += [*slo_lines(results["perpbot"]), ""]
    out += [*target_lines(run), ""]
    if histograms and "perpbot" in results:
        for name in ("tick_to_order", "detect_to_exec", "tick_to_signal"):
            h = results["perpbot"]["hops"].get(name)
            if h:
                out += [f"perpbot {name} histogram:", *("  " + ln for ln in text_histogram(h)), ""]
    if run.get("projection_lines"):
        out += [*run["projection_lines"], ""]
    return "\n".join(out)


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """B relative to A, hop by hop and design by design (< 1: B is faster)."""
    out = [f"A: {one_line(a['machine'])}", f"B: {one_line(b['machine'])}",
           f"{'design/hop':<34}{'A p50':>11}{'B p50':>11}{'B/A':>8}{'A p99':>11}{'B p99':>11}{'B/A':>8}"]
    for design in sorted(set(a.get("results", {})) & set(b.get("results", {}))):
        ha, hb = a["results"][design]["hops"], b["results"][design]["hops"]
        for name in HOP_NAMES:
            if name in ha and name in hb:
                x, y = ha[name], hb[name]
                out.append(f"{design + '/' + name:<34}{fmt_us(x['p50_us']):>11}{fmt_us(y['p50_us']):>11}"
                           f"{ratio(y['p50_us'], x['p50_us']):>8}{fmt_us(x['p99_us']):>11}"
                           f"{fmt_us(y['p99_us']):>11}{ratio(y['p99_us'], x['p99_us']):>8}")
    for name in sorted(set(a.get("floors", {})) & set(b.get("floors", {}))):
        x, y = a["floors"][name], b["floors"][name]
        if isinstance(x, Mapping) and "p50_us" in x:
            out.append(f"{'floor/' + name:<34}{fmt_us(x['p50_us']):>11}{fmt_us(y['p50_us']):>11}"
                       f"{ratio(y['p50_us'], x['p50_us']):>8}{fmt_us(x['p99_us']):>11}"
                       f"{fmt_us(y['p99_us']):>11}{ratio(y['p99_us'], x['p99_us']):>8}")
    return "\n".join(out)


def sweep_lines(steps: list[Mapping[str, Any]]) -> list[str]:
    """tick->order at each offered load, and the highest load each design held with p99 < 1 ms."""
    designs = [d for d in ("perpbot", "baseline") if any(d in st for st in steps)]
    head = f"  {'offered frames/s':>16}" + "".join(f"{d + ' p50':>16}{d + ' p99':>16}" for d in designs)
    lines = ["load sweep (8 venues, tick->order):", head]
    for st in steps:
        row = f"  {st['offered_frames_per_s']:>16,.0f}"
        for d in designs:
            r = st.get(d, {})
            row += f"{fmt_us(r.get('p50_us')):>16}{fmt_us(r.get('p99_us')):>16}"
        lines.append(row)
    for d in designs:
        held = [st["offered_frames_per_s"] for st in steps
                if st.get(d, {}).get("p99_us") is not None and st[d]["p99_us"] < TICK_TO_ORDER_P99_TARGET_US]
        lines.append(f"  highest load {d} held with p99 < 1 ms: "
                     + (f"{max(held):,.0f} frames/s" if held else "none of the steps"))
    return lines


def hol_lines(hol: Mapping[str, Any]) -> list[str]:
    lines = [f"head-of-line: tick->order of BTC orders between two quiet venues, without and with "
             f"{hol['burst_frames_per_s']:,.0f} quotes/s of another symbol on {hol['burst_venue']}:"]
    for d in ("perpbot", "baseline"):
        q, b = hol.get("quiet", {}).get(d), hol.get("burst", {}).get(d)
        if q and b:
            lines.append(f"  {d:<9} quiet p50 {fmt_us(q['p50_us'])} p99 {fmt_us(q['p99_us'])}   "
                         f"burst p50 {fmt_us(b['p50_us'])} p99 {fmt_us(b['p99_us'])}   "
                         f"p99 x{ratio(b['p99_us'], q['p99_us'])}")
    return lines


def scanner_cost_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    lines = ["scanner pass cost (the real pass over a real board):",
             f"  {'venues x symbols':<18}{'one change p50':>16}{'p99':>12}{'nothing changed p50':>22}"]
    for r in rows:
        one, none = r.get("one_change") or {}, r.get("idle") or {}
        lines.append(f"  {str(r.get('venues')) + ' x ' + str(r.get('symbols')):<18}"
                     f"{fmt_us(one.get('p50_us')):>16}{fmt_us(one.get('p99_us')):>12}"
                     f"{fmt_us(none.get('p50_us')):>22}")
    return lines


def throughput_lines(tp: Mapping[str, Any]) -> list[str]:
    lines = ["one feed process at saturation (Binance bookTicker frames, loopback firehose):",
             f"  perpbot feed (picows + parser + seqlock write): {tp.get('perpbot_frames_per_s', 0):,.0f} frames/s"]
    if tp.get("ccxt_frames_per_s"):
        c = tp.get("ccxt", {})
        lines.append(f"  ccxt.pro watch_bids_asks: {tp['ccxt_frames_per_s']:,.0f} frames/s"
                     + (f", user code woken {c['wakeups_per_s']:,.0f}/s" if c.get("wakeups_per_s") else "")
                     + (f", send->user p50 {fmt_us(c['latency']['p50_us'])}"
                        if isinstance(c.get("latency"), Mapping) else ""))
        lines.append(f"  ratio: {tp['perpbot_frames_per_s'] / tp['ccxt_frames_per_s']:.1f}x")
    return lines
