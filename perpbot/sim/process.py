"""The loopback market as a PerpBot child process: the demo market, or a replay in replay mode.

    python -m perpbot.sim.process --run-dir DIR --slot N

Binds every venue's server on `demo.host` (port 0), writes
`<run_dir>/market.json` (`{"urls": {venue: ws-url}}`) atomically and only then
sets its status record to RUNNING: that is the ready handshake the launcher
waits on. Heartbeats with `MarketCounter` counters every `feed.heartbeat_ms`,
stops on SIGTERM/SIGINT (STOPPED, exit 0), or FAULTED (exit 1) if the market
dies. It attaches the status segment and never unlinks it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import orjson
import uvloop

from perpbot.config import Config
from perpbot.runctx import RunContext, child_args, die_with_parent, load_run, setup_logging
from perpbot.shm.layout import ProcState, Role
from perpbot.shm.status import StatusBoard
from perpbot.sim.replay import serve_replay
from perpbot.sim.server import LoopbackMarket, serve_market

MARKET_FILE = "market.json"


def write_market_file(run_dir: Path, urls: dict[str, str]) -> None:
    """Write `market.json` so that a reader sees either nothing or the whole file."""
    tmp = run_dir / (MARKET_FILE + ".tmp")
    tmp.write_bytes(orjson.dumps({"urls": urls}))
    os.replace(tmp, run_dir / MARKET_FILE)


def read_market_file(run_dir: Path) -> dict[str, str] | None:
    """Venue -> URL from `market.json`, or None while the market is not ready."""
    try:
        data = orjson.loads((run_dir / MARKET_FILE).read_bytes())
    except FileNotFoundError:
        return None
    urls: dict[str, str] = data["urls"]
    return urls


async def start_market(cfg: Config) -> LoopbackMarket:
    """The market the config's mode asks for, started: a replay in replay mode, else the demo market."""
    if cfg.mode == "replay":
        return await serve_replay(cfg)
    return await serve_market(cfg)


async def run_market(ctx: RunContext, log: logging.Logger) -> int:
    """Serve the market until SIGTERM/SIGINT; return the process exit code."""
    cfg = ctx.cfg
    slot = ctx.slot
    status = StatusBoard.attach(ctx.status_name, cfg.venue_names, cfg.symbol_names)
    try:
        status.register_proc(slot, "market", Role.MARKET, os.getpid())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            market = await start_market(cfg)
        except Exception:
            log.exception("cannot start the %s market", cfg.mode)
            status.set_proc_state(slot, ProcState.FAULTED)
            return 1
        code = 0
        try:
            write_market_file(ctx.run_dir, market.urls)
            status.set_proc_state(slot, ProcState.RUNNING)
            log.info("%s market up: %s", market.kind, " ".join(f"{v}={u}" for v, u in market.urls.items()))
            beat_s = cfg.feed.heartbeat_ms / 1000
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), beat_s)
                except TimeoutError:
                    pass
                status.heartbeat(slot, market.counters())
                if market.error() is not None:
                    code = 1
                    break
        finally:
            status.set_proc_state(slot, ProcState.STOPPING)
            await market.close()
            status.heartbeat(slot, market.counters())
        status.set_proc_state(slot, ProcState.FAULTED if code else ProcState.STOPPED)
        log.info("%s market stopped: %s", market.kind, market.statistics())
        return code
    finally:
        status.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m perpbot.sim.process`."""
    args = child_args("market", argv)
    die_with_parent()
    ctx = load_run(args.run_dir, args.slot)
    log = setup_logging("market", ctx)
    return uvloop.run(run_market(ctx, log))


if __name__ == "__main__":
    sys.exit(main())
