"""The exec process: a thin async shell around `Engine`.

    python -m perpbot.exec.process --run-dir DIR --slot N

Started by the launcher, which owns the shared-memory segments and binds the
event forwarder; this process attaches the board and status segments, opens
the journal, binds the opportunity PULL socket, recovers (below) and only
then reports RUNNING in its status record (the ready handshake: a RUNNING
exec is reachable and holds every trade a previous exec of this run held).

Recovery, on every start (a no-op on a fresh journal): rebuild open trades,
positions and pending order intents from the journal (`recovery.recover`),
the paper venues reload their own account record (`paper/<venue>.jsonl` in
the data directory, written before each of their answers, as a real venue
keeps its own), ask the venues about orders whose intent was journaled without a
result (never resend them), hand the result to `Engine.restore`, then
compare the journal's positions with what each venue reports: a mismatch is
fatal (exit 1, so the launcher's crash-loop limit halts trading) because
trading resumes only when both agree. Risk limits reloaded earlier in the
run (`risk.json`) apply again. While this runs the launcher keeps trading
PAUSED and waits for RUNNING.

Loops, all on one uvloop event loop:

- receive: wait for one opportunity, then drain whatever else is queued
  (up to the socket's high-water mark) and keep only the newest per
  (symbol, buy venue, sell venue), so a flood is worked off in one pass and
  never traded signal by signal; malformed messages are counted and dropped.
- check: every `exec.check_interval_ms`, `Engine.check_open_trades()`.
- periodic: capital snapshot (`capital.snapshot_interval_ms`), position
  reconciliation (`exec.reconcile_interval_ms`; a mismatch pauses the
  symbol), funding rates and payments (`exec.funding_refresh_s`) and the
  clock offset to every venue (`exec.clock_sync_interval_s`).
- housekeeping: every 200 ms heartbeat + counters + latency histograms into
  the status segment and a journal flush; once a second a HEARTBEAT event and
  a journal checkpoint in a worker thread (kept off the order path, see
  `journal`).

Engine calls are shielded from cancellation: stopping cancels the loops, never
an order in flight. SIGTERM/SIGINT: stop taking opportunities, wait for
in-flight orders, close the journal, state STOPPED, drop numpy views and close
(never unlink) the segments, exit 0. A loop that dies marks the process
FAULTED and exits 1.

ZeroMQ: one `zmq.Context` (one I/O thread, DESIGN.md pitfalls), shadowed by
a `zmq.asyncio.Context` for the PULL socket; the event publisher stays on the
plain context because its non-blocking sends must raise `zmq.Again`
synchronously (an asyncio socket would turn that into an unretrieved future).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Coroutine
from typing import Any

import msgspec
import orjson
import uvloop
import zmq
import zmq.asyncio

from perpbot import bus
from perpbot.clock import now_ns
from perpbot.config import RiskConfig
from perpbot.exec.clock_offset import ClockSync
from perpbot.exec.engine import Engine
from perpbot.exec.journal import Journal
from perpbot.exec.ratelimit import budgets_from_config
from perpbot.exec.recovery import (
    RecoveredState,
    RecoveryError,
    reconcile,
    record_resolutions,
    recover,
    resolve_intents,
)
from perpbot.exec.risk import Limits
from perpbot.exec.venues.base import Venue
from perpbot.exec.venues.registry import make_venues
from perpbot.messages import Opportunity, decode_opportunity
from perpbot.runctx import RISK_FILE, RunContext, child_args, die_with_parent, load_run, setup_logging
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import ProcError, ProcState, Role

HOUSEKEEPING_S = 0.2
HEARTBEAT_EVENT_NS = 1_000_000_000
#: how long shutdown waits for orders in flight before giving up on them
DRAIN_TIMEOUT_S = 10.0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the child arguments, join the run, run until stopped."""
    args = child_args("exec", argv)
    die_with_parent()
    ctx = load_run(args.run_dir, args.slot)
    log = setup_logging("exec", ctx)
    return uvloop.run(ExecProcess(ctx, log).run())


#: errors of a disk that cannot take the journal's writes
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EFBIG})


def failure_code(exc: BaseException, default: ProcError) -> ProcError:
    """Why exec stopped, for the launcher's alert: the journal (the only SQLite and file writer
    here) failing is told apart, since nothing may be traded that cannot be journaled."""
    if isinstance(exc, sqlite3.Error) or (isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS):
        return ProcError.JOURNAL_FAILED
    return default


def newest_per_pair(
    batch: list[tuple[bytes, int]],
) -> tuple[list[tuple[Opportunity, int]], list[tuple[Opportunity, int]], list[ValueError]]:
    """Decode a drained batch of (message, receive stamp).

    Returns the newest opportunity per (symbol, buy venue, sell venue) in
    arrival order of their first appearance, the older ones it superseded,
    and the decode errors of malformed messages.
    """
    newest: dict[tuple[int, int, int], tuple[Opportunity, int]] = {}
    superseded: list[tuple[Opportunity, int]] = []
    errors: list[ValueError] = []
    for raw, ts in batch:
        try:
            opp = decode_opportunity(raw)
        except ValueError as e:
            errors.append(e)
            continue
        key = (opp.symbol, opp.buy_venue, opp.sell_venue)
        if key in newest:
            superseded.append(newest[key])
        newest[key] = (opp, ts)
    return list(newest.values()), superseded, errors


async def recover_engine(engine: Engine, journal: Journal, venues: list[Venue],
                         log: logging.Logger) -> RecoveredState:
    """Bring a fresh engine and its venues to what the journal says; raise if the venues disagree."""
    state = recover(journal.path)
    if state.pending:
        resolutions = await resolve_intents(state.pending, {v.name: v for v in venues})
        record_resolutions(journal, resolutions)
        for r in resolutions:
            log.warning("recovery: order %s was journaled but had no result: %s",
                        r.order.client_order_id,
                        "never received by the venue" if r.result is None
                        else f"{r.result.status.value} {r.result.filled_qty}")
        state = recover(journal.path)  # the journal, now settled, is the one source of truth
    engine.restore(state)
    reported = {v.name: {s: p.qty for s, p in (await v.positions()).items()} for v in venues}
    mismatches = reconcile(state.positions, reported)
    if mismatches:
        for m in mismatches:
            journal.record_incident(None, "position_mismatch",
                                    f"{m.venue} {m.symbol}: journal {m.journal_qty}, venue {m.venue_qty}")
        raise RecoveryError("venue positions disagree with the journal: " + "; ".join(
            f"{m.venue} {m.symbol} journal {m.journal_qty} venue {m.venue_qty}" for m in mismatches))
    if state.fills:
        log.warning("recovered from the journal: %d open trades, %d fills, %d pending orders "
                    "resolved", len(engine.trades), len(state.fills), len(state.pending))
    return state


def _load_risk(ctx: RunContext, engine: Engine, log: logging.Logger) -> None:
    raw = orjson.loads((ctx.run_dir / RISK_FILE).read_bytes())
    risk = msgspec.convert(raw, RiskConfig, strict=False)
    cfg = msgspec.structs.replace(ctx.cfg, risk=risk)
    engine.gate.limits = Limits.from_config(cfg)
    engine.set_daily_loss_limit(risk.max_daily_loss_usd)
    log.warning("risk limits reloaded: %s", raw)


class ExecProcess:
    """Owns every resource of the exec process and the order they are released in."""

    def __init__(self, ctx: RunContext, log: logging.Logger) -> None:
        self.ctx = ctx
        self.log = log
        self._stop = asyncio.Event()
        self._stopping = False
        self._fault: BaseException | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self.superseded = 0

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a failed loop (exit 1)."""
        ctx, cfg, log = self.ctx, self.ctx.cfg, self.log
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        board: QuoteBoard | None = None
        status: StatusBoard | None = None
        journal: Journal | None = None
        zctx = zmq.Context()
        pull: zmq.asyncio.Socket | None = None
        events: bus.EventPublisher | None = None
        venues: list[Venue] = []
        slot = ctx.slot
        code = 0
        try:
            board = QuoteBoard.attach(ctx.board_name, cfg.venue_names, cfg.symbol_names)
            status = StatusBoard.attach(ctx.status_name, cfg.venue_names, cfg.symbol_names)
            status.register_proc(slot, "exec", Role.EXEC, os.getpid())
            journal = Journal(ctx.journal_path, run_id=ctx.run_id)
            actx = zmq.asyncio.Context.shadow(zctx.underlying)
            pull = bus.opportunity_pull(actx, ctx.endpoints)  # type: ignore[assignment]
            events = bus.EventPublisher(zctx, ctx.endpoints, "exec")
            venues = make_venues(cfg, board, ledger_dir=ctx.paper_dir)
            for v in venues:
                await v.connect()
            engine = Engine(cfg, board, status, journal, venues, run_id=ctx.run_id, events=events,
                            log=log, budgets=budgets_from_config(cfg))
            if (ctx.run_dir / RISK_FILE).exists():  # limits reloaded before a crash still hold
                _load_risk(ctx, engine, log)
            await recover_engine(engine, journal, venues, log)
            # a leg the crash left naked is unwound before the slower start-up reads (clock, balances)
            if await engine.level_legs("recovered"):
                log.error("recovered: a trade's legs still differ; the check loop keeps unwinding it")
            clocks = ClockSync(venues, cfg.exec.clock_sync_interval_s, cfg.exec.max_clock_offset_ms,
                               log)
            await clocks.sync_all()
            await engine.start()
            status.set_proc_state(slot, ProcState.RUNNING)
            events.heartbeat(ProcState.RUNNING.name)
            log.info("exec running: run %s, journal %s, %d venues", ctx.run_id, ctx.journal_path,
                     len(venues))
            assert pull is not None
            tasks = [
                self._spawn(self._receive(engine, pull), "receive"),
                self._spawn(self._check(engine, status, venues), "check"),
                self._spawn(self._periodic(engine, clocks), "periodic"),
                self._spawn(self._housekeeping(engine, status, journal, events, venues), "housekeeping"),
            ]
            await self._stop.wait()
            self._stopping = True
            status.set_proc_state(slot, ProcState.STOPPING)
            log.info("stopping: no new opportunities, waiting for orders in flight")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(engine.drain(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.error("orders still in flight after %.0f s; stopping anyway", DRAIN_TIMEOUT_S)
            engine.flush_histograms()
            status.heartbeat(slot, engine.counters())
            st = engine.statistics()
            log.info("stopped: %d opportunities, %d orders sent, %d trades opened, %d closed, "
                     "%d open, realized %s, %d malformed, %d superseded", st.opps_received,
                     st.orders_sent, st.trades_opened, st.trades_closed, st.open_trades,
                     st.realized_pnl, st.malformed, self.superseded)
            if self._fault is not None:
                code = 1
        except RecoveryError as e:
            log.error("not trading: %s", e)
            code = 1
            if status is not None:
                status.procs[slot]["last_error"] = ProcError.POSITION_MISMATCH
        except Exception as e:
            log.exception("exec failed")
            code = 1
            if status is not None:
                status.procs[slot]["last_error"] = failure_code(e, ProcError.START_FAILED)
        finally:
            if self._inflight:  # never close the journal under a running checkpoint
                await asyncio.wait(self._inflight, timeout=DRAIN_TIMEOUT_S)
            if journal is not None:
                try:
                    journal.close()
                except (sqlite3.Error, OSError) as e:  # a full or read-only disk: say so, release the rest
                    log.error("journal %s could not be closed cleanly: %r", journal.path, e)
                    code = 1
                    if self._fault is None:
                        self._fault = e
            for v in venues:
                await v.close()
            if events is not None:
                events.heartbeat((ProcState.FAULTED if code else ProcState.STOPPED).name)
                events.close()
            if pull is not None:
                pull.close()
            zctx.term()
            if status is not None:
                if self._fault is not None:
                    status.procs[slot]["last_error"] = failure_code(self._fault, ProcError.TASK_FAILED)
                status.set_proc_state(slot, ProcState.FAULTED if code else ProcState.STOPPED)
                status.close()
            if board is not None:
                board.close()
        return code

    # -- tasks ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Every loop goes through here: a loop that dies stops the process as FAULTED."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._stopping:
            self.log.error("task %s failed", task.get_name(), exc_info=exc)
            self._fault = exc
            self._stop.set()

    def _shielded(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        # cancelling the loop must never cancel orders in flight: run engine calls as
        # their own tasks, remembered so shutdown can wait for them
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return asyncio.shield(task)

    async def _receive(self, engine: Engine, pull: zmq.asyncio.Socket) -> None:
        while not self._stopping:
            raw = await pull.recv()
            batch = [(raw, now_ns())]
            while len(batch) < bus.OPPORTUNITY_HWM:
                try:
                    raw = await pull.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                batch.append((raw, now_ns()))
            for opp, ts in self._newest(engine, batch):
                if self._stopping:
                    return
                await self._shielded(engine.on_opportunity(opp, ts))

    def _newest(self, engine: Engine,
                batch: list[tuple[bytes, int]]) -> list[tuple[Opportunity, int]]:
        kept, superseded, errors = newest_per_pair(batch)
        for e in errors:
            engine.count_malformed()
            if engine.malformed <= 10 or engine.malformed % 1000 == 0:
                self.log.warning("malformed opportunity (%d so far): %s", engine.malformed, e)
        for opp, ts in superseded:
            self.superseded += 1
            engine.note_superseded(opp, ts)
        return kept

    async def _check(self, engine: Engine, status: StatusBoard, venues: list[Venue]) -> None:
        interval = self.ctx.cfg.exec.check_interval_ms / 1000
        control = ControlRequests(self.ctx, engine, status, venues, self.log)
        while not self._stopping:
            await asyncio.sleep(interval)
            await self._shielded(control.serve())
            await self._shielded(engine.check_open_trades())

    async def _housekeeping(self, engine: Engine, status: StatusBoard, journal: Journal,
                            events: bus.EventPublisher, venues: list[Venue]) -> None:
        slot = self.ctx.slot
        last_event = now_ns()
        while not self._stopping:
            await asyncio.sleep(HOUSEKEEPING_S)
            status.heartbeat(slot, engine.counters())
            engine.flush_histograms()
            journal.flush()
            now = now_ns()
            if now - last_event >= HEARTBEAT_EVENT_NS:
                last_event = now
                events.heartbeat(ProcState.RUNNING.name)
                for i, v in enumerate(venues):  # what rests on each venue: monitor and risk gate
                    n = len(await v.open_orders())
                    status.capital[i]["open_orders"] = n
                    engine.set_open_orders(i, n)
                # shielded and tracked: shutdown waits for it before closing the journal
                await self._shielded(asyncio.to_thread(journal.checkpoint))


    async def _periodic(self, engine: Engine, clocks: ClockSync) -> None:
        cfg = self.ctx.cfg
        reconcile_ns = cfg.exec.reconcile_interval_ms * 1_000_000
        funding_ns = int(cfg.exec.funding_refresh_s * 1e9)
        last_reconcile = last_funding = now_ns()
        while not self._stopping:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = now_ns()
            if engine.capital_due():
                await self._shielded(engine.refresh_capital())
            if now - last_reconcile >= reconcile_ns:
                last_reconcile = now
                await self._shielded(engine.reconcile_positions())
            if now - last_funding >= funding_ns:
                last_funding = now
                await self._shielded(engine.refresh_funding())
            if clocks.due(now):
                await self._shielded(clocks.sync_all())


class ControlRequests:
    """What the launcher asks of exec through the status segment's global record.

    The launcher owns the request fields and exec the answers, so each field
    keeps one writer: after the kill switch, cancel every open order and stamp
    `cancel_done_ns`; a bumped `flatten_request` closes every open trade (the
    gate still refuses everything once halted, so the launcher flattens
    before it halts); a bumped `risk_generation` reloads the risk limits the
    launcher validated and wrote to `risk.json` in the run directory.
    """

    def __init__(self, ctx: RunContext, engine: Engine, status: StatusBoard, venues: list[Venue],
                 log: logging.Logger) -> None:
        self.ctx = ctx
        self.engine = engine
        self.status = status
        self.venues = venues
        self.log = log
        self._cancelled_after = 0  # halt_ns already answered

    async def serve(self) -> None:
        g = self.status.glob
        if self.status.halted() and int(g["halt_ns"]) != self._cancelled_after:
            await self._cancel_all()
            self._cancelled_after = int(g["halt_ns"])
            g["cancel_done_ns"] = now_ns()
        request = int(g["flatten_request"])
        if request != int(g["flatten_done"]):
            await self.engine.flatten()
            if not self.engine.trades:
                g["flatten_done"] = request
                self.log.info("flattened: no open trade left")
        generation = int(g["risk_generation"])
        if generation != int(g["risk_loaded"]):
            self._reload_risk()
            g["risk_loaded"] = generation

    async def _cancel_all(self) -> None:
        cancelled = 0
        for v in self.venues:
            for o in await v.open_orders():
                if await v.cancel_order(o.client_order_id, o.symbol):
                    cancelled += 1
        self.log.warning("kill switch: %d open orders cancelled", cancelled)

    def _reload_risk(self) -> None:
        _load_risk(self.ctx, self.engine, self.log)


if __name__ == "__main__":
    sys.exit(main())
