"""The fault-injection harness: a real `perpbot-launch` on the demo market, driven like an operator would.

`bot` gives a factory of `Bot`s: each writes a demo config (three venues, a
short run root for the ipc:// paths, frequent dislocations so trades come in a
few seconds, a short `exec.max_hold_ms`), starts the launcher in its own process
group, waits until it trades, and lets the test inject a fault. Whatever
happens, teardown stops the run (SIGTERM, then SIGKILL of the process group) and
checks that nothing of it is left (`invariants.check_clean`).

`record` keeps one line per fault for the README's table (`tools/fault_table.py`
sets PERPBOT_FAULT_REPORT to the file they go to): the fault, what the system
did, the time to recover measured from observable state, the invariants.

Waits are deadline-bounded polls of observable state (the launcher's control
socket, the journal, the venues' ledgers, the logs), never fixed sleeps, except
where a test lets the market trade on for a moment.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from invariants import check_clean, check_run, jsonl, read_ledgers
from kit import example_raw

from perpbot import bus
from perpbot.clock import now_ns
from perpbot.config import parse_config
from perpbot.shm import StatusBoard
from perpbot.shm.layout import segment_names
from perpbot.shm.segment import remove_segment

#: three of the example's venues: every fault has partners to trade against, and start-up stays quick
VENUES = ("binanceusdm", "okx", "bybit")
START_DEADLINE_S = 45.0
TRADE_DEADLINE_S = 45.0
#: a run the test forgets is stopped by the launcher itself after this long
SAFETY_DURATION_S = 150
#: a finding of this suite: alerts derived from events (legging, position_mismatch, feed_down) are raised
#: only while something subscribes to the run's event socket; the launcher's forwarder does not
#: subscribe by itself, so without a monitor or other subscriber the publishers drop those events
NO_EVENT_ALERTS = ("FINDING: event-derived alerts never fire without a subscriber on the event socket "
                   "(the launcher's forwarder subscribes to nothing by itself)")


def base_raw(run_root: Path, data_dir: Path) -> dict[str, Any]:
    """The demo config every fault test starts from (mutate it before `Bot.start`)."""
    raw = example_raw()
    raw["venues"] = {k: raw["venues"][k] for k in VENUES}
    raw["demo"]["venues"] = {k: raw["demo"]["venues"][k] for k in VENUES}
    raw["run"].update(run_root=str(run_root), data_dir=str(data_dir), start_timeout_s=30)
    raw["demo"].update(dislocations_per_s=6.0, dislocation_bps=40)
    raw["exec"].update(max_hold_ms=400, reconcile_interval_ms=1000)
    # two shared cores: the scanner sleeps between passes instead of spinning
    raw["scanner"].update(poll="sleep", sleep_us=500)
    raw["paper"] = {"latency_ms": 1.0, "seed": 11}
    raw["alerts"] = {"feed_down_after_ms": 1500}
    return raw


def query(db: Path | None, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from a live journal, read-only; [] while it does not exist yet."""
    if db is None or not db.exists():
        return []
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # being created
    finally:
        con.close()


class Bot:
    """One run of the real launcher, and what a test does to it."""

    def __init__(self, root: Path, name: str, raw: dict[str, Any]) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.raw = raw
        self.cfg_path = self.dir / "config.yaml"
        self.out_path = self.dir / "launch.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_id: str | None = None
        self.halt_ns: int | None = None
        #: how long the last `perpbot-ctl kill` took to answer, s
        self.kill_took_s = 0.0

    # -- where things are -------------------------------------------------------------------------

    @property
    def run_root(self) -> Path:
        return Path(self.raw["run"]["run_root"])

    @property
    def run_dir(self) -> Path:
        assert self.run_id is not None
        return self.run_root / self.run_id

    @property
    def data_dir(self) -> Path:
        """The run's own data folder (journal, ledgers, logs, summary)."""
        assert self.run_id is not None
        return Path(self.raw["run"]["data_dir"]) / self.run_id

    @property
    def journal(self) -> Path:
        return self.data_dir / "journal.sqlite"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        """A process's JSON log lines (`<name>.jsonl`), rotated files included."""
        return jsonl(self.data_dir / f"{name}.jsonl")

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, *, trades: int = 2, extra_args: tuple[str, ...] = (),
              on_run_id: Callable[[Bot], None] | None = None) -> Bot:
        """Launch, wait until every process runs and `trades` trades closed.

        `on_run_id` is called as soon as the run id is known: the run's data folder exists then,
        and exec has not started yet (it starts once the market is up).
        """
        self.cfg_path.write_text(yaml.safe_dump(self.raw, sort_keys=False))
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "perpbot.launch", "--config", str(self.cfg_path),
                 "--duration", str(SAFETY_DURATION_S), *extra_args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.run_id = self.wait("the run id", self._run_id_from_output, START_DEADLINE_S, step=0.005)
        if on_run_id is not None:
            on_run_id(self)
        self.wait("all processes running", lambda: "all processes running" in self.output(), START_DEADLINE_S)
        if trades:
            self.wait(f"{trades} closed trades", lambda: self.closed_trades() >= trades, TRADE_DEADLINE_S)
        return self

    def _run_id_from_output(self) -> str | None:
        for line in self.output().splitlines():
            if line.startswith("run ") and ":" in line:
                return line.split()[1].rstrip(":")
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM to the launcher (the operator's Ctrl-C), and its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def teardown(self) -> list[str]:
        """Stop whatever is left of the run, then what it left behind (`check_clean`)."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.proc.pid, signal.SIGKILL)  # children of a launcher that died first, too
        if self.proc.poll() is None:
            self.proc.wait(10)
        if self.run_id is None:
            return []
        problems = []
        end = time.monotonic() + 10
        while time.monotonic() < end:  # a child SIGTERMed with its launcher takes a moment to go
            problems = check_clean(self.run_id, self.run_root)
            if not problems:
                break
            time.sleep(0.1)
        for seg in Path("/dev/shm").glob(f"perpbot-{self.run_id}-*"):
            remove_segment(seg.name)  # reported above; never leak into the next test
        return problems

    # -- observing --------------------------------------------------------------------------------

    def wait(self, what: str, cond: Callable[[], Any], deadline_s: float = 30.0, *, step: float = 0.02,
             exits: bool = False) -> Any:
        """Poll `cond` until it is truthy; fail with the launcher's output on timeout (or on its exit,
        unless `exits`)."""
        end = time.monotonic() + deadline_s
        while True:
            v = cond()
            if v:
                return v
            if not exits and self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"launcher exited ({self.proc.returncode}) while waiting for {what}:\n"
                            f"{self.output()[-4000:]}")
            if time.monotonic() > end:
                pytest.fail(f"timed out after {deadline_s:g} s waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(step)

    def status(self, timeout_ms: int = 3000) -> dict[str, Any]:
        """`perpbot-ctl status --json`, asked over the control socket from this process (fast)."""
        return bus.control_request(bus.endpoints(self.run_dir), "status", timeout_ms=timeout_ms)

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.status(1000)
        except (TimeoutError, OSError):
            return None

    def state_changed_ns(self) -> int:
        """When the trading state last changed (the status segment's own stamp, read-only here)."""
        cfg = parse_config(self.raw)
        st = StatusBoard.attach(segment_names(str(self.run_id))[1], cfg.venue_names, cfg.symbol_names)
        try:
            return int(st.glob["state_changed_ns"])
        finally:
            st.close()

    def pid(self, name: str) -> int:
        return int(self.status()["processes"][name]["pid"])

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real `perpbot-ctl`, against this run."""
        assert self.run_id is not None
        return subprocess.run([sys.executable, "-m", "perpbot.ctl", "--config", str(self.cfg_path),
                               "--run", self.run_id, *args], capture_output=True, text=True, timeout=60)

    def kill_switch(self) -> tuple[int, dict[str, Any], str]:
        """`perpbot-ctl --json kill`: (exit code, reply, stderr); remembers the halt stamp."""
        t0 = time.monotonic()
        r = self.ctl("--json", "kill")
        self.kill_took_s = time.monotonic() - t0
        reply: dict[str, Any] = {}
        try:
            reply = orjson.loads(r.stdout) if r.stdout.strip() else {}
        except orjson.JSONDecodeError:
            pass
        if reply.get("halt_ns"):
            self.halt_ns = int(reply["halt_ns"])
        return r.returncode, reply, r.stderr

    def sigkill(self, name: str) -> tuple[int, float]:
        """SIGKILL one of the run's processes by name: (its pid, monotonic time of the kill)."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid, time.monotonic()

    def wait_back(self, name: str, old_pid: int, t0: float, deadline_s: float = 40.0) -> float:
        """Seconds from `t0` until `name` runs again under a new pid (its ready handshake)."""
        def back() -> bool:
            st = self.try_status()
            p = st["processes"].get(name) if st else None
            return bool(p and p["pid"] != old_pid and p["state"] == "RUNNING")

        self.wait(f"{name} back", back, deadline_s)
        return time.monotonic() - t0

    def closed_trades(self) -> int:
        rows = query(self.journal if self.run_id else None, "SELECT COUNT(*) FROM trades WHERE state='closed'")
        return int(rows[0][0]) if rows else 0

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return query(self.journal if self.run_id else None, sql, args)

    def trade_on(self, extra: int = 2, deadline_s: float = TRADE_DEADLINE_S) -> float:
        """Wait for `extra` more closed trades; seconds it took."""
        t0 = time.monotonic()
        n = self.closed_trades()
        self.wait(f"{extra} more closed trades", lambda: self.closed_trades() >= n + extra, deadline_s)
        return time.monotonic() - t0

    # -- the invariants ---------------------------------------------------------------------------

    @property
    def legging_deadline_ms(self) -> float:
        return float(self.raw["exec"].get("legging_deadline_ms", 2000))

    @property
    def round_trip_ms(self) -> float:
        paper = self.raw.get("paper", {})
        return float(paper.get("latency_ms", 0.0)) + float(paper.get("latency_jitter_ms", 0.0))

    def check(self, **kw: Any) -> tuple[list[str], list[str]]:
        """`check_run` on this run's files with its configured deadline: (problems, notes)."""
        assert self.run_id is not None
        notes: list[str] = []
        kw.setdefault("halted_after_ns", self.halt_ns)
        kw.setdefault("round_trip_ms", self.round_trip_ms)
        problems = check_run(Path(self.raw["run"]["data_dir"]), self.run_id,
                             legging_deadline_ms=self.legging_deadline_ms, notes=notes, **kw)
        return problems, notes

    def ledgers(self) -> Any:
        return read_ledgers(self.data_dir / "paper")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Callable[..., Bot]]:
    """`bot(name="run", **sections)`: a Bot on the fault suite's demo config, `sections` merged in
    (a dict updates the section, anything else replaces it)."""
    run_root = Path(tempfile.mkdtemp(prefix="pbf"))  # ipc:// paths must stay short
    bots: list[Bot] = []

    def make(name: str = "run", **sections: Any) -> Bot:
        raw = base_raw(run_root, tmp_path / "data")
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key].update(value)
            else:
                raw[key] = value
        b = Bot(tmp_path, name, raw)
        bots.append(b)
        return b

    yield make
    problems = []
    for b in bots:
        problems += [f"{b.run_id}: {p}" for p in b.teardown()]
    shutil.rmtree(run_root, ignore_errors=True)
    if problems:
        pytest.fail("left behind after the run: " + "; ".join(problems))


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """`record(fault, did, recover_s, problems, **extra)`: one row of the fault table."""
    rows: list[dict[str, Any]] = []

    def add(fault: str, did: str, recover_s: float | str | None, problems: list[str], **extra: Any) -> None:
        rows.append({"test": request.node.nodeid, "fault": fault, "did": did,
                     "recover_s": round(recover_s, 3) if isinstance(recover_s, float) else recover_s,
                     "problems": list(problems), **extra})

    yield add
    path = os.environ.get("PERPBOT_FAULT_REPORT")
    if path and rows:
        with open(path, "ab") as f:
            for r in rows:
                f.write(orjson.dumps(r) + b"\n")


def mono_ns() -> int:
    """The clock every process stamps with (CLOCK_MONOTONIC), read here."""
    return now_ns()
