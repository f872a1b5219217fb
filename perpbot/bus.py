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


@dataclass(frozen=True)
class CurveClient:
    """What a client needs for a CURVE-secured tcp:// control endpoint (keys in Z85)."""

    server_public_key: bytes
    secret_key: bytes

    @property
    def public_key(self) -> bytes:
        return zmq.curve_public(self.secret_key)


def control_request(ep: Endpoints | str, command: str, args: dict[str, Any] | None = None,
                    timeout_ms: int = 5000, curve: CurveClient | None = None) -> dict[str, Any]:
    """Send one control command (to the run's ipc endpoint or a tcp:// one) and wait for the reply.

    Raises TimeoutError; over tcp:// a client whose key the launcher does not allow gets no reply.
    """
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(CONTROL_COMMANDS)}")
    address = ep if isinstance(ep, str) else ep.control
    ctx: zmq.Context[Any] = zmq.Context.instance()
    s = socket(ctx, zmq.REQ)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.setsockopt(zmq.SNDTIMEO, timeout_ms)
    if curve is not None:
        s.curve_serverkey = curve.server_public_key
        s.curve_secretkey = curve.secret_key
        s.curve_publickey = curve.public_key
    try:
        s.connect(address)
        s.send(orjson.dumps({"cmd": command, "args": args or {}, "ts": now_ns()}))
        try:
            return orjson.loads(s.recv())
        except zmq.Again:
            raise TimeoutError(f"no reply to {command!r} within {timeout_ms} ms from {address}") from None
    finally:
        s.close()


def curve_control_socket(ctx: zmq.Context[Any], endpoint: str, server_secret: bytes,
                         allowed_clients: list[bytes]) -> tuple[zmq.Socket[Any], Any]:
    """A CURVE-secured ROUTER on `endpoint` that only the listed client public keys (Z85) may use.

    Returns (socket, authenticator); stop the authenticator after closing the socket.
    """
    from zmq.auth.thread import ThreadAuthenticator

    allowed = set(allowed_clients)

    class _Keys:
        def callback(self, domain: str, key: bytes) -> bool:
            return key in allowed  # pyzmq hands over the client's key in Z85

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Keys())
    s = socket(ctx, zmq.ROUTER)
    s.curve_server = True
    s.curve_secretkey = server_secret
    s.curve_publickey = zmq.curve_public(server_secret)
    s.bind(endpoint)
    return s, auth
