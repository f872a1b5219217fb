"""Everything ZeroMQ: endpoints, socket options, the event publisher, control requests.

Endpoints are `ipc://` files in the run directory (mode 0700). Every socket
gets LINGER=0 so no process hangs at exit on unsent messages, and a deliberate
high-water mark: the opportunity channel is short because an old opportunity is
worthless, the event channel is longer because subscribers want history.

Events go through a forwarder in the launcher (XSUB <- publishers, XPUB ->
subscribers) so any process can publish and any reader can subscribe to one
address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zmq

from perpbot.clock import now_ns
from perpbot.events import EventType

OPPORTUNITY_HWM = 256
EVENT_HWM = 10000
CONTROL_COMMANDS = ("status", "kill", "pause", "resume", "flatten", "reload-risk")


@dataclass(frozen=True)
class Endpoints:
    opportunities: str  # scanner PUSH -> exec PULL (exec binds)
    events_in: str  # publishers PUB connect -> launcher XSUB binds
    events: str  # launcher XPUB binds -> subscribers SUB connect
    control: str  # perpbot-ctl REQ -> launcher ROUTER binds


def endpoints(run_dir: str | Path) -> Endpoints:
    d = Path(run_dir)
    return Endpoints(
        opportunities=f"ipc://{d / 'opportunities.ipc'}",
        events_in=f"ipc://{d / 'events-in.ipc'}",
        events=f"ipc://{d / 'events.ipc'}",
        control=f"ipc://{d / 'control.ipc'}",
    )


def socket(ctx: zmq.Context[Any], kind: int, hwm: int = 1000) -> zmq.Socket[Any]:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    return s


def opportunity_push(ctx: zmq.Context[Any], ep: Endpoints) -> zmq.Socket[Any]:
    s = socket(ctx, zmq.PUSH, OPPORTUNITY_HWM)
    # never block the scanner on a slow exec: a full queue drops (counted by the caller)
    s.setsockopt(zmq.IMMEDIATE, 1)
    s.connect(ep.opportunities)
    return s


def opportunity_pull(ctx: zmq.Context[Any], ep: Endpoints) -> zmq.Socket[Any]:
    s = socket(ctx, zmq.PULL, OPPORTUNITY_HWM)
    s.bind(ep.opportunities)
    return s


class EventPublisher:
    """PUB socket connected to the launcher's forwarder; never blocks the caller."""

    def __init__(self, ctx: zmq.Context[Any], ep: Endpoints, component: str) -> None:
        self._sock = socket(ctx, zmq.PUB, EVENT_HWM)
        self._sock.connect(ep.events_in)
        self.component = component
        self.dropped = 0

    def publish(self, kind: EventType, payload: dict[str, Any]) -> None:
        try:
            self._sock.send_multipart([kind.topic, orjson.dumps(payload)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def heartbeat(self, status: str) -> None:
        self.publish(EventType.HEARTBEAT, {"component_name": self.component, "status": status,
                                           "ts": now_ns()})

    def close(self) -> None:
        self._sock.close()


def event_subscriber(ctx: zmq.Context[Any], ep: Endpoints, topics: tuple[str, ...] = ("",)) -> zmq.Socket[Any]:
    s = socket(ctx, zmq.SUB, EVENT_HWM)
    for t in topics:
        s.setsockopt(zmq.SUBSCRIBE, t.encode())
    s.connect(ep.events)
    return s


def decode_event(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    topic, payload = frames
    return topic.decode(), orjson.loads(payload)


def control_request(ep: Endpoints, command: str, args: dict[str, Any] | None = None,
                    timeout_ms: int = 5000) -> dict[str, Any]:
    """Send one control command and wait for its reply. Raises TimeoutError."""
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(CONTROL_COMMANDS)}")
    ctx: zmq.Context[Any] = zmq.Context.instance()
    s = socket(ctx, zmq.REQ)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.setsockopt(zmq.SNDTIMEO, timeout_ms)
    try:
        s.connect(ep.control)
        s.send(orjson.dumps({"cmd": command, "args": args or {}, "ts": now_ns()}))
        try:
            return orjson.loads(s.recv())
        except zmq.Again:
            raise TimeoutError(f"no reply to {command!r} within {timeout_ms} ms from {ep.control}") from None
    finally:
        s.close()
