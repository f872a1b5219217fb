"""perpbot-launch: create a run's segments and sockets, start every process, stop them all.

    perpbot-launch --config config.yaml [--duration SECONDS] [--confirm-live]

Start order: loopback market (demo and replay modes), exec (binds the opportunity socket),
feeds, scanner; each must report RUNNING in the status segment before the next
starts (the ready handshake). Feeds and the scanner are restarted with backoff
when they die; so is exec, but trading is PAUSED from its death until the new
exec reports RUNNING, which it does only after recovering its state from the
journal and the venues; then the trading state in force before the crash is
restored (unless someone paused, resumed or killed meanwhile). A crash loop
halts trading and ends the run. Ctrl-C, SIGTERM, `--duration` or the death of
the market stop everything in reverse order; the segments and the run directory are
removed at exit whatever happened. A summary is printed at the end. What a launcher
killed outright (SIGKILL) could not remove, the next start does: segments and run
directories of runs whose launcher is gone, named in its log and a process_crash alert.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
import numpy as np
import orjson
import psutil
import zmq

from perpbot import bus
from perpbot.alerts import WATCHED_TOPICS, Alert, Alerter, CallbackSink, EventAlertState, alerts_from_events
from perpbot.clock import now_ns
from perpbot.config import Config, load_config
from perpbot.errors import ConfigError, LayoutError, PerpBotError
from perpbot.events import EventType
from perpbot.logs import secret_values, setup_logging
from perpbot.runctx import CONFIG_COPY, RISK_FILE, RUN_FILE, run_root, write_run_file
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import (
    BOARD_MAGIC,
    HEADER_DTYPE,
    STATUS_MAGIC,
    ProcError,
    ProcState,
    Role,
    TradingState,
    segment_names,
)
from perpbot.shm.segment import SHM_DIR, find_stale_segments, remove_segment
from perpbot.sim.process import read_market_file
from perpbot.summary import format_summary, run_summary, status_report

log = logging.getLogger("perpbot.launch")

LAUNCHER_SLOT = 0
#: how long control commands wait for exec to confirm what it was asked
KILL_CANCEL_TIMEOUT_S = 5.0
FLATTEN_TIMEOUT_S = 15.0
RELOAD_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 8.0
PID_FILE = "launcher.pid"


@dataclass
class Child:
    name: str
    module: str
    slot: int
    args: list[str] = field(default_factory=list)
    #: feeds and the scanner hold no state a restart loses; exec recovers its open trades from
    #: the journal (see `recovers`); the market's ports cannot be recovered: its death ends the run
    restartable: bool = False
    #: holds trades: trading is paused from its death until the restarted process reports
    #: RUNNING (which it does only once it has recovered), then the previous state is restored
    recovers: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    log_file: TextIO | None = None
    #: monotonic times of recent crashes, for the crash-loop limit
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None


#: restart backoff: RESTART_BASE_S doubled per recent crash, at most RESTART_MAX_S
RESTART_BASE_S = 0.5
RESTART_MAX_S = 10.0
#: this many crashes of one process within CRASH_WINDOW_S halt trading and stop restarting it
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0


@dataclass
class Recovery:
    """A recovering child (exec) and what to restore once it is back."""

    child: Child
    #: the trading state the launcher paused, or None when it did not pause (not RUNNING then)
    resume_to: TradingState | None
    #: `state_changed_ns` of the launcher's own pause: any other change since wins over resuming
    paused_ns: int
    #: monotonic deadline for the restarted process to report RUNNING (set when it is spawned)
    deadline: float | None = None


class Launcher:
    def __init__(self, cfg: Config, config_path: Path, out: TextIO = sys.stdout) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.out = out
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.run_dir = run_root(cfg) / self.run_id
        self.data_dir = Path(cfg.run.data_dir) / self.run_id
        self.children: list[Child] = []
        self.board: QuoteBoard | None = None
        self.status: StatusBoard | None = None
        self.zctx: zmq.Context[Any] | None = None
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        self.stop_reason: str | None = None
        self.failed: str | None = None
        self.urls: dict[str, str] = {}
        self.authenticator: Any = None
        self.monitor: subprocess.Popen[bytes] | None = None
        self.alerter = Alerter(cfg.alerts, source=f"run {self.run_id}")
        self.alert_state = EventAlertState()
        #: (topic, payload) of the events alerts are derived from, collected by the forwarder
        self.watched: list[tuple[str, dict[str, Any]]] = []
        #: set while a crashed exec is down or recovering
        self.recovery: Recovery | None = None
        #: what launchers that died without cleaning up left behind, removed by `prepare`
        self.stale_runs: list[StaleRun] = []

    # -- set-up -------------------------------------------------------------------

    def prepare(self) -> None:
        self.stale_runs = _remove_stale_runs(self.run_dir.parent)
        self.run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir.parent, 0o700)
        self.run_dir.mkdir(mode=0o700)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / PID_FILE).write_text(str(os.getpid()))
        shutil.copyfile(self.config_path, self.run_dir / CONFIG_COPY)
        write_run_file(self.run_dir, self.run_id, self.data_dir.resolve(), {})
        bname, sname = segment_names(self.run_id)
        cfg = self.cfg
        self.board = QuoteBoard.create(bname, cfg.venue_names, cfg.symbol_names)
        self.status = StatusBoard.create(sname, cfg.venue_names, cfg.symbol_names)
        self.status.glob["launcher_pid"] = os.getpid()
        self.status.register_proc(LAUNCHER_SLOT, "launcher", Role.LAUNCHER, os.getpid())
        self.status.set_trading_state(TradingState.RUNNING)
        ep = bus.endpoints(self.run_dir)
        self.zctx = zmq.Context()
        ctl = bus.socket(self.zctx, zmq.ROUTER)
        ctl.bind(ep.control)
        xsub = bus.socket(self.zctx, zmq.XSUB, bus.EVENT_HWM)
        xsub.bind(ep.events_in)
        xpub = bus.socket(self.zctx, zmq.XPUB, bus.EVENT_HWM)
        xpub.bind(ep.events)
        # publishers send only what someone subscribed to: the launcher subscribes to the events it
        # raises alerts from itself, so they flow whether or not any reader is attached
        for topic in WATCHED_TOPICS:
            xsub.send(b"\x01" + topic)
        self.sockets = {"control": ctl, "xsub": xsub, "xpub": xpub}
        for sink in cfg.alerts.sinks:
            if sink.kind == "bell":
                # the bell rings in whoever watches: the monitor subscribes to ALERT events
                self.alerter.add_sink(CallbackSink("bell", self._publish_alert, kinds=sink.kinds))
        if cfg.run.control_tcp is not None:
            assert cfg.run.curve_server_secret_env is not None  # config validation guarantees it
            secret = os.environ.get(cfg.run.curve_server_secret_env, "")
            if len(secret) != 40:
                raise ConfigError("$.run.curve_server_secret_env",
                                  f"environment variable {cfg.run.curve_server_secret_env} must hold a 40-character "
                                  "Z85 CURVE secret key")
            tcp, self.authenticator = bus.curve_control_socket(
                self.zctx, cfg.run.control_tcp, secret.encode(),
                [k.encode() for k in cfg.run.curve_client_public_keys])
            self.sockets["control_tcp"] = tcp

    def report_stale_runs(self) -> None:
        """Log (and alert) what `prepare` removed of runs whose launcher died without cleaning up."""
        for run in self.stale_runs:
            log.warning("%s", run.describe())
            if run.segments:  # only a launcher that died while running leaves segments
                self.alerter.alert("process_crash", run.describe(), key=f"launcher {run.run_id}",
                                   process="launcher", run=run.run_id)

    def _publish_alert(self, alert: Alert) -> None:
        xpub = self.sockets.get("xpub")
        if xpub is not None:
            xpub.send_multipart([EventType.ALERT.topic, orjson.dumps(alert.to_dict())], zmq.NOBLOCK)

    def start_children(self) -> None:
        cfg = self.cfg
        slot = LAUNCHER_SLOT + 1
        if cfg.mode in ("demo", "replay"):  # the market process serves a replay in replay mode
            market = Child("market", "perpbot.sim.process", slot)
            slot += 1
            self._spawn(market)
            self._wait_ready([market])
            urls = read_market_file(self.run_dir)
            if urls is None:
                raise ChildFailed(market, "reported ready without writing its URLs")
            self.urls = urls
            write_run_file(self.run_dir, self.run_id, self.data_dir.resolve(), self.urls)
        exec_ = Child("exec", "perpbot.exec.process", slot, restartable=True, recovers=True)
        slot += 1
        self._spawn(exec_)
        self._wait_ready([exec_])
        feeds = []
        for venue in cfg.venue_names:
            feeds.append(Child(f"feed-{venue}", "perpbot.feeds.process", slot, ["--venue", venue], restartable=True))
            slot += 1
        for f in feeds:
            self._spawn(f)
        self._wait_ready(feeds)
        scanner = Child("scanner", "perpbot.scanner.process", slot, restartable=True)
        self._spawn(scanner)
        self._wait_ready([scanner])
        assert self.status is not None
        self.status.set_proc_state(LAUNCHER_SLOT, ProcState.RUNNING)

    def _spawn(self, c: Child) -> None:
        c.log_path = self.data_dir / f"{c.name}.log"
        if c.log_file is None:
            c.log_file = open(c.log_path, "a")
        cmd = [sys.executable, "-m", c.module, "--run-dir", str(self.run_dir), "--slot", str(c.slot), *c.args]
        c.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=c.log_file, stderr=subprocess.STDOUT)
        if c not in self.children:
            self.children.append(c)

    def _child_exited(self, c: Child, now: float) -> None:
        """Restart a restartable child with backoff; a crash loop halts trading; anything else ends the run."""
        assert c.proc is not None and self.status is not None
        code = c.proc.returncode
        why = int(self.status.procs[c.slot]["last_error"])
        if why == ProcError.POSITION_MISMATCH:
            self.alerter.alert("position_mismatch", f"{c.name}: venue positions disagree with the journal; "
                               "it will not trade until they agree (see its log and the journal's incidents)",
                               key=c.name, process=c.name)
        elif why == ProcError.JOURNAL_FAILED:
            self.alerter.alert("process_crash", f"{c.name} exited with code {code}: its journal could not be "
                               "written (disk full or read-only?); nothing was sent that was not journaled",
                               key=c.name, process=c.name, returncode=code)
        else:
            self.alerter.alert("process_crash", f"{c.name} exited with code {code}", key=c.name,
                               process=c.name, returncode=code)
        if not c.restartable:
            raise ChildFailed(c, f"exited unexpectedly with code {code}")
        if c.recovers:
            self._pause_for_recovery(c)
        c.crashes = [t for t in c.crashes if now - t < CRASH_WINDOW_S] + [now]
        rec = self.status.procs[c.slot]
        rec["restarts"] = int(rec["restarts"]) + 1
        if len(c.crashes) >= CRASH_LIMIT:
            self.status.set_halt()
            self.alerter.alert("halt", f"{c.name} crashed {len(c.crashes)} times: trading halted", key="crash-loop")
            raise ChildFailed(c, f"crashed {len(c.crashes)} times in {CRASH_WINDOW_S:g} s (last exit code "
                              f"{code}); trading halted")
        delay = min(RESTART_BASE_S * 2 ** (len(c.crashes) - 1), RESTART_MAX_S)
        c.restart_at = now + delay
        c.proc = None
        reason = (": its journal could not be written (disk full or read-only?)"
                  if why == ProcError.JOURNAL_FAILED else "")
        self.out.write(f"{c.name} exited with code {code}{reason}; restarting in {delay:.1f} s "
                       f"(crash {len(c.crashes)} of {CRASH_LIMIT} allowed in {CRASH_WINDOW_S:g} s)"
                       + ("; trading PAUSED until it has recovered" if c.recovers else "") + "\n")
        self.out.flush()

    def _pause_for_recovery(self, c: Child) -> None:
        """No new positions while a process holding trades is down (closing needs it up anyway)."""
        st = self.status
        assert st is not None
        if self.recovery is not None and self.recovery.child is c:
            return  # died again while recovering: keep what the first crash saved
        resume_to: TradingState | None = None
        if st.trading_state() == TradingState.RUNNING and not st.halted():
            # only RUNNING needs pausing: PAUSED, REDUCE_ONLY and HALTED open nothing already
            st.set_trading_state(TradingState.PAUSED)
            resume_to = TradingState.RUNNING
        self.recovery = Recovery(c, resume_to, int(st.glob["state_changed_ns"]))

    def _restarted(self, c: Child, now: float) -> None:
        if self.recovery is not None and self.recovery.child is c:
            self.recovery.deadline = now + self.cfg.run.start_timeout_s
            assert c.proc is not None
            self.out.write(f"{c.name} restarted (pid {c.proc.pid}); waiting for it to recover\n")
            self.out.flush()

    def _check_recovery(self, now: float) -> None:
        """Once the restarted process reports RUNNING (recovered), restore the trading state."""
        r, st = self.recovery, self.status
        assert st is not None
        if r is None or r.deadline is None or r.child.proc is None or r.child.proc.poll() is not None:
            return  # not restarted yet, or died again (the serve loop counts that crash)
        rec = st.procs[r.child.slot]
        # the dead process's record still says RUNNING: only the new pid's RUNNING counts
        if int(rec["pid"]) == r.child.proc.pid and int(rec["state"]) == ProcState.RUNNING:
            self.recovery = None
            untouched = (not st.halted() and st.trading_state() == TradingState.PAUSED
                         and int(st.glob["state_changed_ns"]) == r.paused_ns)
            if r.resume_to is not None and untouched:
                st.set_trading_state(r.resume_to)
                what = f"trading {r.resume_to.name} again"
            else:
                what = f"trading stays {st.trading_state().name}"
            self.out.write(f"{r.child.name} recovered (pid {r.child.proc.pid}); {what}\n")
            self.out.flush()
            log.warning("%s recovered; %s", r.child.name, what)
        elif now > r.deadline:
            self.out.write(f"{r.child.name} did not recover within {self.cfg.run.start_timeout_s:g} s; "
                           "killing it (counts as a crash)\n")
            self.out.flush()
            r.child.proc.kill()
            r.child.proc.wait()

    def _wait_ready(self, children: list[Child]) -> None:
        assert self.status is not None
        deadline = time.monotonic() + self.cfg.run.start_timeout_s
        pending = list(children)
        while pending:
            if self.stop_reason:
                raise Interrupted(self.stop_reason)
            for c in list(pending):
                assert c.proc is not None
                if c.proc.poll() is not None:
                    raise ChildFailed(c, f"exited with code {c.proc.returncode} while starting")
                if self.status.procs[c.slot]["state"] == ProcState.RUNNING:
                    pending.remove(c)
            if time.monotonic() > deadline:
                raise ChildFailed(pending[0], f"not ready within {self.cfg.run.start_timeout_s:g} s")
            self._pump(20)

    # -- running ------------------------------------------------------------------

    def serve(self, duration_s: float | None) -> None:
        deadline = time.monotonic() + duration_s if duration_s else None
        next_line = time.monotonic() + 5.0
        while not self.stop_reason:
            self._pump(100)
            if self.stop_reason:
                break  # Ctrl-C reaches the whole process group: children exiting now is expected
            now = time.monotonic()
            for c in self.children:
                if c.proc is None:
                    if c.restart_at is not None and now >= c.restart_at:
                        c.restart_at = None
                        self._spawn(c)
                        self._restarted(c, now)
                elif c.proc.poll() is not None:
                    self._child_exited(c, now)
            self._check_recovery(now)
            if not self.stop_reason:
                if any(topic == "DAILY_LOSS_LIMIT" for topic, _ in self.watched):
                    self._daily_loss_limit()
                self.alert_state, requests = alerts_from_events(
                    self.alert_state, self.watched, now_ns(), feed_down_after_ms=self.cfg.alerts.feed_down_after_ms)
                self.watched.clear()
                self.alerter.submit(requests)
            if deadline is not None and now >= deadline:
                self.stop_reason = f"duration of {duration_s:g} s reached"
            if now >= next_line:
                next_line = now + 5.0
                if not self._monitor_open():
                    self._progress_line()
            assert self.status is not None
            self.status.heartbeat(LAUNCHER_SLOT)

    def open_monitor(self, config_path: Path) -> None:
        """Run perpbot-monitor on this terminal; the launcher's own lines pause while it is open."""
        if not sys.stdout.isatty():
            self.out.write("no terminal for the monitor: printing a summary line every 5 s instead\n")
            self.out.flush()
            return
        self.monitor = subprocess.Popen([sys.executable, "-m", "perpbot.monitor", "--run", self.run_id,
                                         "--config", str(config_path)])

    def _monitor_open(self) -> bool:
        if self.monitor is None:
            return False
        if self.monitor.poll() is None:
            return True
        self.monitor = None  # `q` closed it: the run goes on, with summary lines again
        return False

    def _pump(self, timeout_ms: int) -> None:
        """Wait on the control socket and the event forwarder for up to timeout_ms."""
        s = self.sockets
        poller = zmq.Poller()
        for sock in s.values():
            poller.register(sock, zmq.POLLIN)
        for sock, _ in poller.poll(timeout_ms):
            if sock is s["xsub"]:
                while True:
                    try:
                        frames = s["xsub"].recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    s["xpub"].send_multipart(frames)
                    if frames[0] in WATCHED_TOPICS and not self.stop_reason:
                        try:
                            self.watched.append(bus.decode_event(frames))
                        except (ValueError, orjson.JSONDecodeError):
                            pass  # a malformed event alerts nobody; its publisher logs its own faults
            elif sock is s["xpub"]:
                while True:  # subscriptions travel upstream to the publishers
                    try:
                        msg = s["xpub"].recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if msg[0][:1] == b"\x00" and msg[0][1:] in WATCHED_TOPICS:
                        continue  # a reader leaving must not cancel the launcher's own subscription
                    s["xsub"].send_multipart(msg)
            else:  # the ipc control socket, or the CURVE-secured tcp one
                self._control(sock)

    def _control(self, sock: zmq.Socket[Any]) -> None:
        frames = sock.recv_multipart()
        ident, body = frames[0], frames[-1]
        t_recv = now_ns()
        try:
            req = orjson.loads(body)
            reply = self.handle_command(str(req.get("cmd")), req.get("args") or {}, t_recv)
        except orjson.JSONDecodeError:
            reply = {"ok": False, "error": "request is not JSON"}
        sock.send_multipart([ident, b"", orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)])

    def handle_command(self, cmd: str, args: dict[str, Any], t_recv: int) -> dict[str, Any]:
        st = self.status
        assert st is not None
        if cmd == "status":
            return {"ok": True, **status_report(st, self.run_id, [(c.name, c.slot) for c in self.children])}
        if cmd == "kill":
            return self._kill(bool(args.get("flatten")), t_recv)
        if cmd == "flatten":
            if st.halted():
                return {"ok": False, "error": "trading is halted: no order of any kind may be sent"}
            ok, waited_ms = self._flatten()
            if not ok:
                return {"ok": False, "error": f"open trades remain after {waited_ms:.0f} ms; see exec's log"}
            return {"ok": True, "state": st.trading_state().name, "flatten_ms": waited_ms}
        if cmd == "reload-risk":
            return self._reload_risk()
        if cmd == "pause":
            if st.halted():
                return {"ok": False, "error": "trading is halted; restart the run to trade again"}
            st.set_trading_state(TradingState.PAUSED)
            return {"ok": True, "state": "PAUSED"}
        if cmd == "resume":
            if st.halted():
                return {"ok": False, "error": "trading is halted by kill; restart the run to trade again"}
            st.set_trading_state(TradingState.RUNNING)
            return {"ok": True, "state": "RUNNING"}
        return {"ok": False, "error": f"unknown command {cmd!r}; allowed: {', '.join(bus.CONTROL_COMMANDS)}"}

    def _kill(self, flatten: bool, t_recv: int) -> dict[str, Any]:
        """Halt trading now; with `flatten`, close every position first (closing orders only)."""
        st = self.status
        assert st is not None
        reply: dict[str, Any] = {"ok": True, "state": "HALTED"}
        if flatten and not st.halted():
            # no new position from this instant; closing orders still pass the gate until the halt
            st.set_trading_state(TradingState.REDUCE_ONLY)
            ok, waited_ms = self._flatten()
            reply["flatten_ms"] = waited_ms
            reply["flattened"] = ok
        halt_ns = st.set_halt()
        self.alerter.alert("kill", "kill from perpbot-ctl: trading halted", key="kill",
                           command_to_halt_us=(halt_ns - t_recv) / 1000, flatten=flatten)
        # exec checks the flag before every order: the last order that can still go out is one
        # whose check preceded this stamp, so command->halt is the time to the last possible order
        reply["halt_ns"] = halt_ns
        reply["command_to_halt_us"] = (halt_ns - t_recv) / 1000
        exec_ = next((c for c in self.children if c.name == "exec"), None)
        exec_down = exec_ is None or exec_.proc is None or exec_.proc.poll() is not None
        done = self._await(lambda: int(st.glob["cancel_done_ns"]) >= halt_ns, KILL_CANCEL_TIMEOUT_S)
        reply["command_to_cancelled_us"] = (int(st.glob["cancel_done_ns"]) - t_recv) / 1000 if done else None
        if done:
            said = f", open orders cancelled after {reply['command_to_cancelled_us']:.0f} us"
        elif exec_down:
            # the halt flag outlives exec: the restarted exec sees it and cancels before anything else
            said = "; exec is down: it cancels open orders when it is back, and sends nothing"
        else:
            said = "; exec did not confirm cancellation"
        self.out.write(f"KILL received: trading halted {reply['command_to_halt_us']:.1f} us after the command"
                       + said + "\n")
        self.out.flush()
        if not done:
            reply["ok"] = False
            reply["error"] = ("halted; exec is down and cancels open orders when it is back" if exec_down
                              else "halted, but exec did not confirm cancelling open orders within "
                                   f"{KILL_CANCEL_TIMEOUT_S:g} s")
        return reply

    def _daily_loss_limit(self) -> None:
        """Exec reached the day's loss limit: nothing new opens (exec refuses anyway), closing goes on."""
        st = self.status
        assert st is not None
        if st.trading_state() in (TradingState.RUNNING, TradingState.PAUSED):
            st.set_trading_state(TradingState.REDUCE_ONLY)
            self.out.write("daily loss limit reached: trading is REDUCE_ONLY until the next run\n")
            self.out.flush()

    def _flatten(self) -> tuple[bool, float]:
        """Ask exec to close every open trade and wait for it; (all closed, ms waited)."""
        st = self.status
        assert st is not None
        t0 = time.monotonic()
        request = int(st.glob["flatten_request"]) + 1
        st.glob["flatten_request"] = request
        ok = self._await(lambda: int(st.glob["flatten_done"]) == request, FLATTEN_TIMEOUT_S)
        return ok, (time.monotonic() - t0) * 1000

    def _reload_risk(self) -> dict[str, Any]:
        """Re-read the risk limits from the config file, validated in full first, and hand them to exec."""
        st = self.status
        assert st is not None
        try:
            fresh = load_config(self.config_path)
        except ConfigError as e:
            return {"ok": False, "error": f"not reloaded, the file is invalid: {e}"}
        risk = msgspec.to_builtins(fresh.risk)
        tmp = self.run_dir / (RISK_FILE + ".tmp")
        tmp.write_bytes(orjson.dumps(risk))
        os.replace(tmp, self.run_dir / RISK_FILE)
        generation = int(st.glob["risk_generation"]) + 1
        st.glob["risk_generation"] = generation
        if not self._await(lambda: int(st.glob["risk_loaded"]) == generation, RELOAD_TIMEOUT_S):
            return {"ok": False, "error": f"exec did not confirm the new limits within {RELOAD_TIMEOUT_S:g} s"}
        ignored = [k for k in ("venues", "symbols", "scanner", "exec", "feed", "mode")
                   if getattr(fresh, k) != getattr(self.cfg, k)]
        return {"ok": True, "risk": risk, "ignored_changes": ignored}

    def _await(self, done: Any, timeout_s: float) -> bool:
        """Poll `done()` until true or timeout, giving up early if exec is gone."""
        end = time.monotonic() + timeout_s
        exec_ = next((c for c in self.children if c.name == "exec"), None)
        while not done():
            if time.monotonic() > end or exec_ is None or exec_.proc is None or exec_.proc.poll() is not None:
                return False
            time.sleep(0.001)
        return True

    def _progress_line(self) -> None:
        assert self.status is not None
        r = status_report(self.status, self.run_id, [(c.name, c.slot) for c in self.children])
        quotes = sum(v["quotes"] for v in r["feeds"].values())
        ex = r["exec"]
        self.out.write(
            f"[{r['trading_state']}] quotes {quotes}  opportunities {r['scanner'].get('opportunities', 0)}  "
            f"orders {ex.get('orders_sent', 0)}  trades open/closed "
            f"{ex.get('trades_opened', 0) - ex.get('trades_closed', 0)}/{ex.get('trades_closed', 0)}\n"
        )
        self.out.flush()

    # -- tear-down ----------------------------------------------------------------

    def stop_children(self) -> None:
        """SIGTERM in reverse start order (scanner first, market last), then SIGKILL stragglers."""
        if self.monitor is not None and self.monitor.poll() is None:
            self.monitor.terminate()
            try:
                self.monitor.wait(5)
            except subprocess.TimeoutExpired:
                self.monitor.kill()
                self.monitor.wait()
        # exec before the feeds: stopping, it unwinds any naked leg, which needs live quotes
        order = sorted(reversed(self.children), key=lambda c: 0 if c.name in ("scanner", "exec") else 1)
        for c in order:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                try:
                    c.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.out.write(f"{c.name} did not stop within {STOP_TIMEOUT_S:g} s; killing it\n")
                    c.proc.kill()
                    c.proc.wait()
            if c.log_file is not None:
                c.log_file.close()

    def close(self) -> None:
        for s in self.sockets.values():
            s.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        if self.zctx is not None:
            self.zctx.term()
        for seg in (self.board, self.status):
            if seg is not None:
                seg.close()
                seg.segment.unlink()
        self.board = self.status = None
        shutil.rmtree(self.run_dir, ignore_errors=True)


class ChildFailed(PerpBotError):
    def __init__(self, child: Child, what: str) -> None:
        self.child = child
        super().__init__(f"{child.name} {what}")


class Interrupted(PerpBotError):
    pass


#: a live pid whose process started this much after a segment was made is not its launcher
#: (psutil's start times come from the boot time, which /proc gives in whole seconds)
PID_REUSE_SLACK_S = 2.0


def _segment_owner(path: Path) -> tuple[int, float] | None:
    """(owner pid, creation time in epoch seconds) from a PerpBot segment's header; None if unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_DTYPE.itemsize)
    except OSError:
        return None
    if len(raw) < HEADER_DTYPE.itemsize:
        return None
    hdr = np.frombuffer(raw, HEADER_DTYPE, count=1)[0]
    if hdr["magic"] not in (BOARD_MAGIC, STATUS_MAGIC) or int(hdr["owner_pid"]) <= 0:
        return None  # being created (the magic is written last), or not ours
    return int(hdr["owner_pid"]), int(hdr["created_ns"]) / 1e9


def _not_the_launcher(pid: int, since_s: float) -> bool:
    """True when `pid` is alive but cannot be the launcher that was there at `since_s` (epoch s):
    a zombie (dead, not yet reaped by its parent), or a process started later (the pid was reused)."""
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE or p.create_time() > since_s + PID_REUSE_SLACK_S
    except psutil.Error:
        return False  # gone meanwhile (the dead-owner check catches it next time) or not ours to judge


def _run_of_segment(name: str) -> str:
    base = name.removeprefix("perpbot-")
    for suffix in ("-board", "-status"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


@dataclass
class StaleRun:
    """What a launcher that died without cleaning up left behind, removed at the next start."""

    run_id: str
    launcher_pid: int | None
    segments: list[str] = field(default_factory=list)
    run_dir: bool = False

    def describe(self) -> str:
        who = f" (pid {self.launcher_pid})" if self.launcher_pid else ""
        what = [f"shared-memory segments {', '.join(self.segments)}"] if self.segments else []
        if self.run_dir:
            what.append("its run directory")
        return f"the launcher of run {self.run_id}{who} is gone; removed {' and '.join(what)}"


def _remove_stale_runs(root: Path) -> list[StaleRun]:
    """Segments and run directories left by a launcher that died without cleaning up (kill -9).

    A segment is orphaned when the launcher that created it (the owner pid in its header) is
    dead, a zombie, or when that pid now belongs to a process started after the segment was
    made (the pid was reused). Returns what was removed, per run, for the log and an alert.
    """
    stale: dict[str, StaleRun] = {}
    orphans = set(find_stale_segments())
    if SHM_DIR.is_dir():
        for p in SHM_DIR.glob("perpbot-*"):
            owner = _segment_owner(p)
            if p.name not in orphans and owner is not None and _not_the_launcher(*owner):
                orphans.add(p.name)
    for name in sorted(orphans):
        owner = _segment_owner(SHM_DIR / name)
        remove_segment(name)
        rid = _run_of_segment(name)
        run = stale.setdefault(rid, StaleRun(rid, owner[0] if owner else None))
        run.segments.append(name)
    if root.is_dir():
        for d in root.iterdir():
            pid_file = d / PID_FILE
            if not (d / RUN_FILE).exists() and not pid_file.exists():
                continue
            pid: int | None = None
            try:
                pid = int(pid_file.read_text())
                os.kill(pid, 0)
                if _not_the_launcher(pid, pid_file.stat().st_mtime):
                    raise ProcessLookupError(pid)
            except (OSError, ValueError):
                shutil.rmtree(d, ignore_errors=True)
                run = stale.setdefault(d.name, StaleRun(d.name, pid))
                run.run_dir = True
    return list(stale.values())


def _tail(path: Path | None, n: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()[-n:]
    return "\n".join("    " + ln for ln in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perpbot-launch", description="Start and supervise a PerpBot run.")
    p.add_argument("--config", required=True, type=Path, help="YAML config file (see config.yaml.example)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--monitor", action="store_true",
                   help="open the terminal monitor once everything runs (q closes it, the run goes on); "
                        "without a terminal, summary lines are printed instead")
    p.add_argument("--confirm-live", action="store_true",
                   help="mode live only: confirm that this run trades real money")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"perpbot-launch: {e}", file=sys.stderr)
        return 2
    setup_logging("launcher", None, secrets=secret_values(cfg), console_level="WARNING")
    if args.duration is not None and args.duration <= 0:
        print("perpbot-launch: --duration must be a positive number of seconds", file=sys.stderr)
        return 2
    if cfg.mode == "live":
        # before anything exists: no segment, no directory, no process
        from perpbot.exec.venues.registry import live_start_refusal

        refusal = live_start_refusal(cfg, confirmed=args.confirm_live)
        if refusal is not None:
            print(f"perpbot-launch: {refusal}", file=sys.stderr)
            return 2
    duration = args.duration if args.duration is not None else cfg.run.duration_s
    launcher = Launcher(cfg, args.config)

    def on_signal(signum: int, frame: object) -> None:
        launcher.stop_reason = signal.Signals(signum).name

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rc = 0
    try:
        launcher.prepare()
        setup_logging("launcher", launcher.data_dir, secrets=secret_values(cfg), console_level="WARNING")
        launcher.report_stale_runs()
        print(f"run {launcher.run_id}: {len(cfg.venues)} venues x {len(cfg.symbols)} symbols, mode {cfg.mode}; "
              f"journal and logs in {launcher.data_dir}", flush=True)
        launcher.start_children()
        print(f"all processes running; control with: perpbot-ctl --run {launcher.run_id} status|kill|pause|resume",
              flush=True)
        if args.monitor:
            launcher.open_monitor(args.config)
        launcher.serve(duration)
        print(f"stopping: {launcher.stop_reason}", flush=True)
    except ChildFailed as e:
        rc = 1
        launcher.alerter.alert("process_crash", f"{e}; the run stops", key=e.child.name, process=e.child.name)
        print(f"perpbot-launch: process {e}; shutting down the rest", file=sys.stderr)
        tail = _tail(e.child.log_path)
        if tail:
            print(f"  last lines of {e.child.name}'s log:\n{tail}", file=sys.stderr)
    except Interrupted as e:
        print(f"stopping during start-up: {e}", flush=True)
    except ConfigError as e:
        rc = 2
        print(f"perpbot-launch: {e}", file=sys.stderr)
    except (LayoutError, OSError) as e:
        rc = 1
        print(f"perpbot-launch: {e}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        try:
            launcher.stop_children()
            if launcher.status is not None:
                summary = run_summary(launcher.status, launcher.data_dir, launcher.run_id,
                                      [(c.name, c.slot) for c in launcher.children])
                (launcher.data_dir / "summary.json").write_bytes(
                    orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
                print(format_summary(summary), flush=True)
        finally:
            launcher.alerter.close(3.0)  # let a crash alert reach its webhook before we exit
            launcher.close()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
