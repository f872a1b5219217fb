"""The config file changed on disk to invalid values, and `perpbot-ctl reload-risk` asked.

A valid reload first (at most one open trade), so the limits in force are
observable: trades never overlap once it applied. Then invalid files of several
kinds: each reload is refused, the command exits non-zero naming the key and
what is wrong, and the limits in force stay (still at most one open trade, and
trading goes on). `perpbot-ctl kill` with the invalid file still on disk.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
import yaml
from conftest import Bot, mono_ns

pytestmark = pytest.mark.slow


def _max_overlap(rows: list[tuple[Any, ...]]) -> int:
    """The most trades open at once, from (open_ns, close_ns) pairs (close None: still open)."""
    edges = sorted([(int(o), 1) for o, _ in rows] + [(int(c), -1) for _, c in rows if c is not None])
    most = cur = 0
    for _, d in edges:
        cur += d
        most = max(most, cur)
    return most


def test_invalid_config_reload_is_refused_and_the_old_limits_hold(bot: Any, record: Any) -> None:
    b: Bot = bot()
    b.start(trades=2)
    good = copy.deepcopy(b.raw)
    good["risk"]["max_open_trades"] = 1
    b.cfg_path.write_text(yaml.safe_dump(good, sort_keys=False))
    r = b.ctl("--json", "reload-risk")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["risk"]["max_open_trades"] == 1
    applied_ns = mono_ns()
    risk_file = (b.run_dir / "risk.json").read_bytes()

    def bad(mutate: Any) -> str:
        raw = copy.deepcopy(good)
        mutate(raw)
        return yaml.safe_dump(raw, sort_keys=False)

    cases = {
        "a value out of range (max_open_trades: 0)": (bad(lambda r: r["risk"].update(max_open_trades=0)),
                                                      "$.risk.max_open_trades"),
        "a wrong type (max_notional_per_trade_usd: lots)": (
            bad(lambda r: r["risk"].update(max_notional_per_trade_usd="lots")), "$.risk.max_notional_per_trade_usd"),
        "an unknown key (risk.max_leverage)": (bad(lambda r: r["risk"].update(max_leverage=3)), "$.risk.max_leverage"),
        "limits that contradict each other (venue < position)": (
            bad(lambda r: r["risk"].update(max_venue_notional_usd=100)), "max_venue_notional_usd"),
        # perpbot-ctl reads the file for the run root first: these two are refused before the launcher
        "a file that is not YAML": ("risk: {max_open_trades: [1\n", "expected ',' or ']'"),
        "a file that is not there": (None, "No such file"),
    }
    refused: dict[str, str] = {}
    codes: dict[str, int] = {}
    for what, (text, must_name) in cases.items():
        if text is None:
            b.cfg_path.unlink()
        else:
            b.cfg_path.write_text(text)
        r = b.ctl("reload-risk")
        refused[what] = r.stderr.strip()
        codes[what] = r.returncode
        assert r.returncode != 0, (what, r.stdout)
        assert must_name in r.stderr, (what, r.stderr)
        if text is None:
            b.cfg_path.write_text(cases["a value out of range (max_open_trades: 0)"][0] or "")
    # nothing reached exec: the limits file it reads is the valid one, and trading goes on under it
    assert (b.run_dir / "risk.json").read_bytes() == risk_file
    b.trade_on(3)
    reloads = [x for x in b.log_lines("exec") if "risk limits reloaded" in str(x.get("msg"))]
    code, reply, err = b.kill_switch()  # the invalid file still on disk
    assert code == 0, err
    assert b.stop() == 0, b.output()[-3000:]

    overlap = _max_overlap(b.query("SELECT open_ns, close_ns FROM trades WHERE open_ns > ?", (applied_ns,)))
    problems, notes = b.check()
    if overlap > 1:
        problems.append(f"{overlap} trades open at once after max_open_trades 1 applied and invalid reloads")
    if len(reloads) != 1:
        problems.append(f"exec reloaded its limits {len(reloads)} times, expected once (the valid file)")
    example = refused["a value out of range (max_open_trades: 0)"]
    record("config changed on disk to invalid values + perpbot-ctl reload-risk",
           f"{len(refused)} kinds of invalid file each refused naming the key or the YAML error (exit codes "
           f"{sorted(set(codes.values()))}: 1 from the launcher's validation, 2 when perpbot-ctl cannot read the "
           f"file itself), e.g. '{example}'; "
           f"the limits in force stayed (at most {overlap} trade open at once, trading went on); "
           "perpbot-ctl kill with the invalid file on disk: halted",
           "n/a (refused at once)", problems, notes=notes)
    assert not problems, problems
