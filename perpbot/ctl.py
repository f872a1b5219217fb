"""perpbot-ctl: talk to a running PerpBot over its control socket.

    perpbot-ctl [--run RUN_ID] [--config FILE] [--json] status
    perpbot-ctl kill [--flatten] | pause | resume | flatten | reload-risk

Finds the run in the per-user run root (the config's `run.run_root`, or the
default); with one live run `--run` is optional. Exits non-zero when the run
cannot be reached or the command is refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from perpbot import bus
from perpbot.errors import ConfigError
from perpbot.runctx import RUN_FILE, default_run_root

PID_FILE = "launcher.pid"


def _run_root_of(config: Path) -> Path:
    """The run root a config names, read without validating the rest: `reload-risk` must reach the
    launcher even while the file is being edited, so the launcher can say what is wrong with it."""
    try:
        raw = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("$", f"cannot read {config}: {e}") from None
    run = raw.get("run") if isinstance(raw, dict) else None
    root = run.get("run_root") if isinstance(run, dict) else None
    return Path(root) if isinstance(root, str) and root else default_run_root()


def _curve_client(args: argparse.Namespace) -> bus.CurveClient:
    if not args.server_key or not args.client_secret_env:
        raise LookupError("--endpoint needs --server-key and --client-secret-env (the control port is CURVE-secured)")
    secret = os.environ.get(args.client_secret_env, "")
    if len(secret) != 40:
        raise LookupError(f"environment variable {args.client_secret_env} must hold a 40-character Z85 secret key")
    return bus.CurveClient(args.server_key.encode(), secret.encode())


def live_runs(root: Path) -> list[Path]:
    out: list[Path] = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        try:
            pid = int((d / PID_FILE).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        if (d / RUN_FILE).exists():
            out.append(d)
    return out


def find_run(root: Path, run_id: str | None) -> Path:
    runs = live_runs(root)
    if run_id is not None:
        for d in runs:
            if d.name == run_id:
                return d
        raise LookupError(f"no live run {run_id!r} in {root}")
    if not runs:
        raise LookupError(f"no live PerpBot run in {root}")
    if len(runs) > 1:
        raise LookupError("several live runs; pick one with --run: " + ", ".join(d.name for d in runs))
    return runs[0]


def format_status(r: dict[str, Any]) -> str:
    lines = [f"run {r['run_id']}  trading: {r['trading_state']}", "",
             "process          state      pid      heartbeat age  restarts"]
    for name, p in r["processes"].items():
        lines.append(f"  {name:<15}{p['state']:<11}{p['pid']:<9}{p['heartbeat_age_ms']:>8.1f} ms"
                     f"{p['restarts']:>10}")
    lines += ["", "venue          feed        quotes   errors  reconnects  stale  last quote"]
    for v, f in r["feeds"].items():
        age = "-" if f["last_quote_age_ms"] is None else f"{f['last_quote_age_ms']:.0f} ms ago"
        kind = "" if f["kind"] == "native" else f"  [{f['kind']}]"
        lines.append(f"  {v:<13}{f['state']:<11}{f['quotes']:>8}{f['parse_errors']:>9}{f['reconnects']:>12}"
                     f"{f['stale_symbols']:>7}  {age}{kind}")
    sc, ex = r["scanner"], r["exec"]
    lines += [
        "",
        f"scanner: passes {sc.get('passes', 0)}, opportunities {sc.get('opportunities', 0)}, "
        f"stale skips {sc.get('stale_skips', 0)}, repeats suppressed {sc.get('repeats_suppressed', 0)}",
        f"exec: opportunities {ex.get('opps_received', 0)} (too old {ex.get('opps_too_old', 0)}), "
        f"orders approved by risk {ex.get('orders_approved', 0)} / sent {ex.get('orders_sent', 0)}, "
        f"fills {ex.get('fills', 0)}, trades opened {ex.get('trades_opened', 0)} closed {ex.get('trades_closed', 0)}",
    ]
    if r["positions"]:
        lines.append(f"positions: {r['positions']}")
    lines.append("")
    lines.append("latency (us)            count      p50      p99")
    for hop, h in r["latency"].items():
        if h["count"]:
            lines.append(f"  {hop:<20}{h['count']:>8}{h['p50_us']:>9}{h['p99_us']:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perpbot-ctl", description="Control a running PerpBot.")
    p.add_argument("--run", help="run id (default: the only live run)")
    p.add_argument("--config", type=Path, help="config file, to find a non-default run_root")
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    p.add_argument("--endpoint", help="a tcp:// control endpoint (another host); needs the two CURVE options")
    p.add_argument("--server-key", help="the launcher's CURVE public key (Z85), for --endpoint")
    p.add_argument("--client-secret-env", help="NAME of the variable holding this client's CURVE secret key")
    p.add_argument("--timeout-ms", type=int, default=5000, help="how long to wait for a reply, ms")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="processes, feeds, counters, positions, latency")
    kill = sub.add_parser("kill", help="halt trading now: no new order of any kind, open orders cancelled")
    kill.add_argument("--flatten", action="store_true", help="close every position first, then halt")
    sub.add_parser("pause", help="stop opening new positions")
    sub.add_parser("resume", help="resume after pause (not after kill)")
    sub.add_parser("flatten", help="close every open position now; trading state unchanged")
    sub.add_parser("reload-risk", help="re-read the risk limits from the config file (validated first)")
    args = p.parse_args(argv)
    cmd_args = {"flatten": True} if getattr(args, "flatten", False) else {}
    try:
        if args.endpoint:
            reply = bus.control_request(args.endpoint, args.command, cmd_args, timeout_ms=args.timeout_ms,
                                        curve=_curve_client(args))
        else:
            root = _run_root_of(args.config) if args.config else default_run_root()
            run_dir = find_run(root, args.run)
            reply = bus.control_request(bus.endpoints(run_dir), args.command, cmd_args, timeout_ms=args.timeout_ms)
    except ConfigError as e:
        print(f"perpbot-ctl: {e}", file=sys.stderr)
        return 2
    except (LookupError, TimeoutError) as e:
        print(f"perpbot-ctl: {e}", file=sys.stderr)
        return 3
    if not reply.get("ok"):
        print(f"perpbot-ctl: {args.command} failed: {reply.get('error')}", file=sys.stderr)
        if args.json:
            print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
        return 1
    if args.json:
        print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    elif args.command == "status":
        print(format_status(reply))
    elif args.command == "kill":
        if "flatten_ms" in reply:
            print(f"flattened in {reply['flatten_ms']:.0f} ms" if reply.get("flattened")
                  else f"NOT flat after {reply['flatten_ms']:.0f} ms: positions remain, see exec's log")
        print(f"halted: last possible new order {reply['command_to_halt_us']:.1f} us after the launcher received "
              f"the command; all open orders cancelled after {reply['command_to_cancelled_us']:.0f} us")
    elif args.command == "flatten":
        print(f"flat: every open trade closed in {reply['flatten_ms']:.0f} ms")
    elif args.command == "reload-risk":
        print(f"risk limits now: {reply['risk']}")
        if reply["ignored_changes"]:
            print(f"changes outside `risk` take effect at the next start: {', '.join(reply['ignored_changes'])}")
    else:
        print(reply.get("state", "ok"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
