"""The controller: keys, confirmations, the self-re-arming refresh alarm, control replies, alerts."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import urwid
import zmq

from perpbot import bus
from perpbot.events import EventType
from perpbot.monitor.attach import AttachedRun
from perpbot.monitor.model import MonitorModel
from perpbot.monitor.view import PALETTE, MonitorView


@dataclass(frozen=True)
class _Confirm:
    command: str
    prompt: str


_CONFIRM = {"k": _Confirm("kill", "KILL: halt all trading now? y/n"),
            "f": _Confirm("flatten", "FLATTEN: close every position? y/n")}
_DIRECT = {"p": "pause", "r": "resume"}


def describe_reply(command: str, reply: dict[str, Any]) -> str:
    """One status-line sentence for a control reply."""
    if not reply.get("ok"):
        return f"{command}: refused: {reply.get('error', 'no reason given')}"
    if command == "kill" and "command_to_halt_us" in reply:
        return f"kill: trading HALTED ({float(reply['command_to_halt_us']):.1f} us after the launcher got it)"
    return f"{command}: ok, {reply.get('state', 'done')}"


class MonitorController:
    """Keys and the refresh alarm. Control commands run on a worker thread so the screen never freezes."""

    def __init__(self, run: AttachedRun, view: MonitorView, refresh_s: float = 0.2,
                 request: Callable[[bus.Endpoints, str], dict[str, Any]] | None = None) -> None:
        self.run = run
        self.view = view
        self.refresh_s = refresh_s
        self.model: MonitorModel | None = None
        self.confirm: _Confirm | None = None
        self.busy: str | None = None
        self.ended = False
        self._replies: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._request = request or (lambda ep, cmd: bus.control_request(ep, cmd, timeout_ms=3000))
        self.loop: urwid.MainLoop | None = None
        self._zctx: zmq.Context[Any] | None = None
        self._alerts: zmq.Socket[Any] | None = None

    def subscribe_alerts(self, bell: Callable[[], None]) -> None:
        """Ring `bell` and show the alert for every ALERT event the launcher publishes (bell sinks)."""
        self._zctx = zmq.Context()
        self._alerts = bus.event_subscriber(self._zctx, self.run.endpoints, (EventType.ALERT.value,))
        self._bell = bell

    def close(self) -> None:
        if self._alerts is not None:
            self._alerts.close()
        if self._zctx is not None:
            self._zctx.term()

    def _poll_alerts(self) -> None:
        sock = self._alerts
        while sock is not None:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                _, alert = bus.decode_event(frames)
            except (ValueError, orjson.JSONDecodeError):
                continue
            self._bell()
            self.view.set_status(f"ALERT {alert.get('kind')}: {alert.get('message')}")

    def refresh(self) -> None:
        """Take a snapshot, pick up control replies and alerts, redraw."""
        self._poll_alerts()
        while True:
            try:
                msg = self._replies.get_nowait()
            except queue.Empty:
                break
            self.busy = None
            self.view.set_status(msg)
        note = ""
        if not self.ended and not self.run.alive():
            self.ended = True
            self.view.set_status("the run has ended (launcher gone); q quits")
        if self.ended:
            note = "RUN ENDED"
        else:
            self.model = self.run.snapshot(self.model)
        self.view.update(self.model, note)

    def on_tick(self, loop: urwid.MainLoop, _data: object = None) -> None:
        """The alarm callback: redraw, then arm the next alarm."""
        self.refresh()
        loop.set_alarm_in(self.refresh_s, self.on_tick)  # re-arm: one alarm alive at any time

    def on_key(self, key: str | tuple[str, int, int, int]) -> bool:
        """urwid's unhandled_input: a pending y/n first, then q, k, f, p, r. True when handled."""
        if not isinstance(key, str):
            return False
        if self.confirm is not None:
            c, self.confirm = self.confirm, None
            if key in ("y", "Y"):
                self._send(c.command)
            else:
                self.view.set_status(f"{c.command} cancelled")
            return True
        if key in ("q", "Q"):
            raise urwid.ExitMainLoop()
        if key in _CONFIRM:
            if self._check_idle():
                self.confirm = _CONFIRM[key]
                self.view.set_status(self.confirm.prompt)
            return True
        if key in _DIRECT:
            if self._check_idle():
                self._send(_DIRECT[key])
            return True
        return False

    def _check_idle(self) -> bool:
        if self.ended:
            self.view.set_status("the run has ended; nothing to control")
            return False
        if self.busy is not None:
            self.view.set_status(f"still waiting for the reply to {self.busy}")
            return False
        return True

    def _send(self, command: str) -> None:
        self.busy = command
        self.view.set_status(f"{command}: sent, waiting for the reply...")

        def work() -> None:
            try:
                msg = describe_reply(command, self._request(self.run.endpoints, command))
            except (TimeoutError, OSError, ValueError) as e:
                msg = f"{command}: failed: {e}"
            self._replies.put(msg)

        threading.Thread(target=work, name=f"monitor-{command}", daemon=True).start()

    def run_loop(self, screen: urwid.display.BaseScreen | None = None) -> None:
        """Run urwid's main loop until `q` (ExitMainLoop)."""
        kw: dict[str, Any] = {"screen": screen} if screen is not None else {}
        self.loop = urwid.MainLoop(self.view.frame, PALETTE, unhandled_input=self.on_key, handle_mouse=False, **kw)
        self.loop.set_alarm_in(0, self.on_tick)
        self.loop.run()


