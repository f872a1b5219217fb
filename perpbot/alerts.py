"""Alerts: tell a person when something needs them, without ever slowing or stopping the bot.

    alerter = Alerter(cfg.alerts, source=f"run {run_id}")
    alerter.alert("feed_down", "okx feed down for 12.0 s", key="okx", venue="okx")
    ...
    alerter.close()

Kinds (`AlertKind`): kill, halt, legging (a failed leg was hedged or unwound),
position_mismatch, feed_down, process_crash, daily_loss_limit.

Sinks (`$.alerts.sinks`):

- `log`: a WARNING/CRITICAL line on the `perpbot.alerts` logger;
- `webhook`: a JSON POST from a worker thread (the caller only enqueues), in one
  of three formats: `generic` (the whole alert as JSON), `telegram` (Bot API
  `sendMessage`, `{"chat_id", "text"}` to `<url>/bot<token>/sendMessage`, the token
  read from the environment variable named by `token_env`), `lark` (Lark/Feishu
  custom bot, `{"msg_type": "text", "content": {"text"}}`);
- `bell`: a callable the monitor registers (`Alerter.add_sink(CallbackSink(...))`
  or `build_sinks(..., bell=...)`), e.g. ringing the terminal bell.

Flood control: at most `max_per_kind` alerts of one kind per `rate_window_s`, and
one alert per kind and key per `dedup_window_s`; what was held back is counted
and reported in the next alert that goes out (`repeats`, `dropped`).

A sink that fails (connection refused, timeout, HTTP error, an error reply) is
logged once per outage with the error, and again when it recovers; nothing a
sink does raises into the caller.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Protocol

import msgspec
import orjson

from perpbot import logs
from perpbot.clock import Clock, now_ns, wall_ns
from perpbot.errors import ConfigError

log = logging.getLogger("perpbot.alerts")

AlertKind = Literal["kill", "halt", "legging", "position_mismatch", "feed_down", "process_crash",
                    "daily_loss_limit"]
ALERT_KINDS: tuple[str, ...] = ("kill", "halt", "legging", "position_mismatch", "feed_down", "process_crash",
                                "daily_loss_limit")
SinkKind = Literal["log", "webhook", "bell"]
WebhookFormat = Literal["generic", "telegram", "lark"]

#: kinds that mean money is at risk or trading stopped; the rest are warnings
CRITICAL_KINDS = frozenset({"kill", "halt", "position_mismatch", "process_crash", "daily_loss_limit"})
TELEGRAM_API = "https://api.telegram.org"
#: Telegram refuses texts over 4096 characters; keep every format under it
MAX_TEXT_CHARS = 4000
#: alerts waiting for a webhook's worker; beyond this they are dropped and counted
WEBHOOK_QUEUE_SIZE = 256
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")

PosInt = Annotated[int, msgspec.Meta(ge=1)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


# -- configuration -------------------------------------------------------------------


class AlertSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One place alerts go."""

    kind: SinkKind
    #: webhook: the URL to POST to (http:// or https://); for `format: telegram` the API
    #: base, default https://api.telegram.org (the token is appended from `token_env`)
    url: str | None = None
    #: webhook only: the payload's shape
    format: WebhookFormat = "generic"
    #: telegram only: the chat (user, group or channel id) to post into
    chat_id: str | None = None
    #: telegram only: NAME of the environment variable holding the bot token
    token_env: str | None = None
    #: webhook only: give up on one POST after this long
    timeout_ms: PosInt = 5000
    #: only these kinds go to this sink; empty means all
    kinds: tuple[AlertKind, ...] = ()


class AlertsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`$.alerts`: where alerts go and how floods are held back."""

    sinks: tuple[AlertSinkConfig, ...] = (AlertSinkConfig(kind="log"),)
    #: at most this many alerts of one kind per `rate_window_s`
    max_per_kind: PosInt = 10
    rate_window_s: PosFloat = 60.0
    #: the same kind and key is sent once per window; repeats are counted into the next one
    dedup_window_s: NonNegFloat = 300.0
    #: a feed reporting down (or silent) this long raises `feed_down`
    feed_down_after_ms: PosInt = 10000


def validate_alerts(cfg: AlertsConfig, base: str = "$.alerts") -> None:
    """Cross-field checks msgspec cannot express; raises ConfigError naming the key path."""
    for i, s in enumerate(cfg.sinks):
        p = f"{base}.sinks[{i}]"
        if s.kind != "webhook":
            for key in ("url", "chat_id", "token_env"):
                if getattr(s, key) is not None:
                    raise ConfigError(f"{p}.{key}", f"only for a webhook sink, not {s.kind!r}")
            continue
        if s.url is None and s.format != "telegram":
            raise ConfigError(f"{p}.url", f"a {s.format} webhook needs the URL to POST to")
        if s.url is not None and not re.match(r"^https?://[^/\s]+", s.url):
            raise ConfigError(f"{p}.url", "must start with http:// or https:// and name a host")
        if s.format == "telegram":
            if not s.chat_id:
                raise ConfigError(f"{p}.chat_id", "a telegram webhook needs the chat to post into")
            if not s.token_env:
                raise ConfigError(f"{p}.token_env", "a telegram webhook needs the NAME of the variable "
                                                    "holding the bot token")
        else:
            for key in ("chat_id", "token_env"):
                if getattr(s, key) is not None:
                    raise ConfigError(f"{p}.{key}", "only for format telegram")
        if s.token_env is not None and not _ENV_NAME.match(s.token_env):
            raise ConfigError(f"{p}.token_env",
                              "must be the NAME of an environment variable (A-Z, 0-9, _), never the token itself")


def parse_alerts_config(raw: Any, base: str = "$.alerts") -> AlertsConfig:
    """Turn parsed YAML (the `alerts:` mapping, or None for the defaults) into a validated AlertsConfig."""
    try:
        cfg = msgspec.convert({} if raw is None else raw, AlertsConfig, strict=False)
    except msgspec.ValidationError as e:
        msg = str(e)
        m = re.search(r" - at `\$([^`]*)`$", msg)
        path = base + (m.group(1) if m else "")
        problem = msg[: m.start()] if m else msg
        unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
        if unknown:
            path, problem = f"{path}.{unknown.group(1)}", "unknown key"
        raise ConfigError(path, problem) from None
    validate_alerts(cfg, base)
    return cfg


# -- alerts and sinks ----------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One alert as the sinks see it."""

    kind: str
    message: str
    key: str
    severity: Literal["warning", "critical"]
    context: Mapping[str, Any]
    #: epoch ns (for people and webhooks); windows use the Alerter's monotonic clock
    ts_ns: int
    source: str = ""
    #: repeats of this kind and key held back by dedup since the last one sent
    repeats: int = 0
    #: alerts of this kind dropped by the rate limit since the last one sent
    dropped: int = 0

    def text(self) -> str:
        """The human line(s): what chat-style sinks show."""
        head = f"[{self.severity.upper()}] {self.kind}: {self.message}"
        if self.source:
            head = f"PerpBot {self.source} {head}"
        lines = [head]
        if self.context:
            lines.append(" ".join(f"{k}={v}" for k, v in self.context.items()))
        held = []
        if self.repeats:
            held.append(f"{self.repeats} repeat{'s' if self.repeats != 1 else ''}")
        if self.dropped:
            held.append(f"{self.dropped} more {self.kind} alert{'s' if self.dropped != 1 else ''} (rate limit)")
        if held:
            lines.append(f"(held back since the last one: {', '.join(held)})")
        return "\n".join(lines)[:MAX_TEXT_CHARS]

    def to_dict(self) -> dict[str, Any]:
        """The generic JSON payload (also suitable for publishing as an event)."""
        return {"kind": self.kind, "severity": self.severity, "message": self.message, "key": self.key,
                "context": dict(self.context), "ts_ns": self.ts_ns, "source": self.source,
                "repeats": self.repeats, "dropped": self.dropped, "text": self.text()}


class Sink(Protocol):
    """Where alerts go. `send` must not block for long; it may raise (the Alerter contains it)."""

    name: str
    kinds: frozenset[str]

    def send(self, alert: Alert) -> None: ...

    def close(self, timeout_s: float) -> None: ...


class LogSink:
    """Alerts as log lines: CRITICAL for critical kinds, WARNING otherwise."""

    def __init__(self, logger: logging.Logger | None = None, kinds: Iterable[str] = ()) -> None:
        self.name = "log"
        self.kinds = frozenset(kinds)
        self._log = logger or log

    def send(self, alert: Alert) -> None:
        level = logging.CRITICAL if alert.severity == "critical" else logging.WARNING
        self._log.log(level, "ALERT %s", alert.text().replace("\n", " | "))

    def close(self, timeout_s: float) -> None:
        pass


class CallbackSink:
    """Calls `fn(alert)` inline: the monitor's terminal bell, or publishing alerts as events."""

    def __init__(self, name: str, fn: Callable[[Alert], None], kinds: Iterable[str] = ()) -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self._fn = fn

    def send(self, alert: Alert) -> None:
        self._fn(alert)

    def close(self, timeout_s: float) -> None:
        pass


def terminal_bell(write: Callable[[str], object]) -> Callable[[Alert], None]:
    """A bell callback for `CallbackSink`: writes BEL through `write` (e.g. the monitor's tty)."""
    def ring(alert: Alert) -> None:
        write("\a")

    return ring


class SinkHealth(enum.Enum):
    OK = "ok"
    FAILING = "failing"


def payload_for(fmt: str, alert: Alert, chat_id: str | None = None) -> dict[str, Any]:
    """The JSON body a webhook of format `fmt` receives for `alert`."""
    if fmt == "telegram":
        return {"chat_id": chat_id, "text": alert.text(), "disable_web_page_preview": True}
    if fmt == "lark":
        return {"msg_type": "text", "content": {"text": alert.text()}}
    return alert.to_dict()


def _reply_error(fmt: str, body: bytes) -> str | None:
    """Some bots answer HTTP 200 with an error inside (Lark: `code` != 0; Telegram: `ok` false)."""
    try:
        reply = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(reply, dict):
        return None
    if fmt == "lark":
        code = reply.get("code", reply.get("StatusCode", 0))
        if code not in (0, None):
            return f"lark replied code {code}: {reply.get('msg') or reply.get('StatusMessage') or ''}".rstrip(": ")
    if fmt == "telegram" and reply.get("ok") is False:
        return f"telegram replied not ok: {reply.get('description', '')}"
    return None


class WebhookSink:
    """POSTs alerts as JSON from its own worker thread; `send` only enqueues and never blocks."""

    def __init__(self, url: str, fmt: str = "generic", *, chat_id: str | None = None, token: str | None = None,
                 timeout_ms: int = 5000, kinds: Iterable[str] = (), name: str | None = None) -> None:
        self.fmt = fmt
        self.kinds = frozenset(kinds)
        self.chat_id = chat_id
        self.timeout_s = timeout_ms / 1000.0
        host = urllib.parse.urlsplit(url).hostname or "?"
        # the name shows in logs: never the token, never a path that may embed one
        self.name = name or f"webhook:{fmt}@{host}"
        if fmt == "telegram":
            if not token:
                raise ValueError("a telegram webhook needs a bot token")
            logs.add_secrets([token])
            url = f"{url.rstrip('/')}/bot{token}/sendMessage"
        self._url = url
        # a loopback relay must not be sent through an HTTP proxy from the environment
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)
        self._queue: queue.Queue[Alert | None] = queue.Queue(WEBHOOK_QUEUE_SIZE)
        self.health = SinkHealth.OK
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._failed_this_outage = 0
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("alert sink %s: queue full, %d alerts dropped", self.name, self.dropped)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued alert has been posted or given up on; False on timeout."""
        q = self._queue
        with q.all_tasks_done:  # the condition Queue.join() itself waits on, but with a timeout
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Post what is queued (within `timeout_s`), then stop the worker."""
        self.wait_idle(timeout_s)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(max(0.0, min(timeout_s, self.timeout_s + 1.0)))

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                self._post(alert)
            except Exception as e:  # a bug here must not kill the worker and silently stop alerts
                self._failure(f"{type(e).__name__}: {e}")
            finally:
                self._queue.task_done()

    def _post(self, alert: Alert) -> None:
        body = orjson.dumps(payload_for(self.fmt, alert, self.chat_id), default=str)
        req = urllib.request.Request(self._url, data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8",
                                              "User-Agent": "perpbot-alerts"})
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                reply = resp.read(65536)
        except urllib.error.HTTPError as e:
            try:
                detail = e.read(300).decode(errors="replace").strip()
            except Exception:  # no body, or the connection died while reading it
                detail = ""
            self._failure(f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else ""))
            return
        except urllib.error.URLError as e:
            self._failure(f"cannot reach it: {e.reason}")
            return
        except (TimeoutError, OSError) as e:
            self._failure(f"{type(e).__name__}: {e}")
            return
        err = _reply_error(self.fmt, reply)
        if err is not None:
            self._failure(err)
            return
        self.sent += 1
        if self.health is SinkHealth.FAILING:
            log.warning("alert sink %s recovered after %d failed alert(s)", self.name, self._failed_this_outage)
            self.health = SinkHealth.OK
            self._failed_this_outage = 0

    def _failure(self, error: str) -> None:
        self.failed += 1
        self._failed_this_outage += 1
        if self.health is SinkHealth.OK:
            # once per outage: a dead webhook must not flood the log it is the backup of
            self.health = SinkHealth.FAILING
            log.error("alert sink %s failing (%s); alerts to it are lost until it recovers, trading continues",
                      self.name, error)
        else:
            log.debug("alert sink %s still failing: %s", self.name, error)


def build_sinks(cfg: AlertsConfig, *, bell: Callable[[Alert], None] | None = None,
                env: Mapping[str, str] | None = None) -> list[Sink]:
    """Sinks for a validated config. A `bell` sink needs the `bell` callable (the monitor's);
    without it the sink is skipped. A telegram sink whose token variable is unset is skipped
    with an error line, so a missing token never stops a run."""
    environ = os.environ if env is None else env
    out: list[Sink] = []
    for s in cfg.sinks:
        if s.kind == "log":
            out.append(LogSink(kinds=s.kinds))
        elif s.kind == "bell":
            if bell is not None:
                out.append(CallbackSink("bell", bell, kinds=s.kinds))
        elif s.format == "telegram":
            token = environ.get(s.token_env or "", "")
            if not token:
                log.error("alert sink telegram: environment variable %s is not set; the sink is off", s.token_env)
                continue
            out.append(WebhookSink(s.url or TELEGRAM_API, "telegram", chat_id=s.chat_id, token=token,
                                   timeout_ms=s.timeout_ms, kinds=s.kinds))
        else:
            assert s.url is not None  # validate_alerts
            out.append(WebhookSink(s.url, s.format, timeout_ms=s.timeout_ms, kinds=s.kinds))
    return out


# -- the alerter ---------------------------------------------------------------------


@dataclass(frozen=True)
class AlerterStats:
    sent: int
    repeats_held: int
    rate_dropped: int
    sink_errors: int


class Alerter:
    """Rate-limits, deduplicates and fans alerts out to sinks. Thread-safe; never raises from a sink."""

    def __init__(self, cfg: AlertsConfig, *, sinks: Iterable[Sink] | None = None, source: str = "",
                 clock: Clock = now_ns, wall_clock: Clock = wall_ns,
                 bell: Callable[[Alert], None] | None = None) -> None:
        """`sinks` replaces the sinks built from `cfg` (tests); `clock` drives the windows (monotonic ns)."""
        self.cfg = cfg
        self.source = source
        self._clock = clock
        self._wall = wall_clock
        self._sinks: list[Sink] = list(sinks) if sinks is not None else build_sinks(cfg, bell=bell)
        self._lock = threading.Lock()
        self._rate_ns = int(cfg.rate_window_s * 1e9)
        self._dedup_ns = int(cfg.dedup_window_s * 1e9)
        self._sent_at: dict[str, deque[int]] = {}  # kind -> send times within the rate window
        self._last_sent: dict[tuple[str, str], int] = {}  # (kind, key) -> last send time
        self._repeats: dict[tuple[str, str], int] = {}
        self._dropped: dict[str, int] = {}
        self._broken_sinks: set[str] = set()
        self._sent = self._repeats_total = self._dropped_total = self._sink_errors = 0

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(self._sinks)

    def add_sink(self, sink: Sink) -> None:
        """Add a sink at run time (e.g. the monitor's bell)."""
        with self._lock:
            self._sinks.append(sink)

    def alert(self, kind: AlertKind | str, message: str, *, key: str | None = None, **context: Any) -> bool:
        """Raise an alert; returns True if it went to the sinks, False if held back.

        `key` identifies "the same problem" for dedup (a venue, a process name);
        by default it is the message. `context` travels with the alert (JSON-able values).
        """
        if kind not in ALERT_KINDS:
            log.warning("unknown alert kind %r (known: %s); sending it anyway", kind, ", ".join(ALERT_KINDS))
        k = message if key is None else str(key)
        with self._lock:
            now = self._clock()
            dkey = (kind, k)
            last = self._last_sent.get(dkey)
            if last is not None and now - last < self._dedup_ns:
                self._repeats[dkey] = self._repeats.get(dkey, 0) + 1
                self._repeats_total += 1
                return False
            sent = self._sent_at.setdefault(kind, deque())
            while sent and now - sent[0] >= self._rate_ns:
                sent.popleft()
            if len(sent) >= self.cfg.max_per_kind:
                self._dropped[kind] = self._dropped.get(kind, 0) + 1
                self._dropped_total += 1
                log.debug("alert %s held back by the rate limit: %s", kind, message)
                return False
            sent.append(now)
            self._last_sent[dkey] = now
            alert = Alert(kind=kind, message=message, key=k,
                          severity="critical" if kind in CRITICAL_KINDS else "warning",
                          context=dict(context), ts_ns=self._wall(), source=self.source,
                          repeats=self._repeats.pop(dkey, 0), dropped=self._dropped.pop(kind, 0))
            self._sent += 1
            self._forget_old(now)
            sinks = list(self._sinks)
        for sink in sinks:
            if sink.kinds and kind not in sink.kinds:
                continue
            try:
                sink.send(alert)
            except Exception as e:  # a sink's bug or outage must never reach the trading code
                with self._lock:
                    self._sink_errors += 1
                    first = sink.name not in self._broken_sinks
                    self._broken_sinks.add(sink.name)
                if first:  # once per outage, like the webhooks
                    log.error("alert sink %s failed: %s: %s", sink.name, type(e).__name__, e)
            else:
                if sink.name in self._broken_sinks:
                    with self._lock:
                        self._broken_sinks.discard(sink.name)
                    log.warning("alert sink %s works again", sink.name)
        return True

    def submit(self, requests: Iterable[AlertRequest]) -> None:
        """Raise every alert `alerts_from_events` produced."""
        for r in requests:
            self.alert(r.kind, r.message, key=r.key, **r.context)

    def _forget_old(self, now: int) -> None:
        """Drop dedup entries whose window has passed (and no repeats are pending) so memory stays bounded."""
        if len(self._last_sent) < 1024:
            return
        for dkey, t in list(self._last_sent.items()):
            if now - t >= self._dedup_ns and dkey not in self._repeats:
                del self._last_sent[dkey]

    def statistics(self) -> AlerterStats:
        return AlerterStats(self._sent, self._repeats_total, self._dropped_total, self._sink_errors)

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until every webhook has posted what it was given; False on timeout."""
        return all(s.wait_idle(timeout_s) for s in self._sinks if isinstance(s, WebhookSink))

    def close(self, timeout_s: float = 3.0) -> None:
        """Flush the webhooks (bounded by `timeout_s` each) and stop their workers."""
        for s in self._sinks:
            try:
                s.close(timeout_s)
            except Exception as e:
                log.error("alert sink %s did not close cleanly: %s", s.name, e)


# -- events to alerts ----------------------------------------------------------------

#: a launcher-made pseudo-event (never on the bus): `{name, returncode, restarts?}`
PROCESS_EXITED = "PROCESS_EXITED"
#: proposed event types for the exec/launcher to publish; each maps to one alert kind,
#: keyed by the listed payload fields
EVENT_ALERTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "KILL": ("kill", ()),
    "HALT": ("halt", ()),
    "LEGGING": ("legging", ("symbol", "exchange")),
    "POSITION_MISMATCH": ("position_mismatch", ("exchange", "symbol")),
    "DAILY_LOSS_LIMIT": ("daily_loss_limit", ()),
    PROCESS_EXITED: ("process_crash", ("name",)),
}

#: raw topic frames the launcher's event forwarder should decode and pass to `alerts_from_events`
WATCHED_TOPICS: frozenset[bytes] = frozenset({b"HEARTBEAT", *(t.encode() for t in EVENT_ALERTS)})


@dataclass(frozen=True)
class AlertRequest:
    """An alert to raise: `Alerter.submit` takes these."""

    kind: str
    message: str
    key: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedWatch:
    last_seen_ns: int
    down_since_ns: int | None = None
    alerted: bool = False


@dataclass(frozen=True)
class EventAlertState:
    """What `alerts_from_events` remembers between calls (per feed component)."""

    feeds: Mapping[str, FeedWatch] = field(default_factory=dict)


def _event_message(topic: str, p: Mapping[str, Any]) -> str:
    if topic == PROCESS_EXITED:
        return f"process {p.get('name', '?')} exited with code {p.get('returncode', '?')}"
    if topic == "LEGGING":
        action = p.get("action", "hedged or unwound")
        return f"failed leg on {p.get('exchange', '?')} {p.get('symbol', '?')}: {action}"
    if topic == "POSITION_MISMATCH":
        return (f"position mismatch on {p.get('exchange', '?')} {p.get('symbol', '?')}: "
                f"expected {p.get('expected', '?')}, venue reports {p.get('actual', '?')}")
    if topic == "DAILY_LOSS_LIMIT":
        return f"daily loss limit reached: PnL {p.get('realized_pnl', '?')} (limit {p.get('limit', '?')})"
    return str(p.get("reason") or p.get("message") or f"trading {topic.lower()}ed")


def alerts_from_events(
    state: EventAlertState,
    events: Iterable[tuple[str, Mapping[str, Any]]],
    now: int,
    *,
    feed_down_after_ms: int,
) -> tuple[EventAlertState, list[AlertRequest]]:
    """Map (topic, payload) events to alerts; pure: returns the new state and the alerts.

    - `HEARTBEAT` from `feed-<venue>` with status `down` starts (or continues) an
      outage; `connected` ends it. An outage older than `feed_down_after_ms`, or a
      feed heard from before but silent that long, yields one `feed_down` per outage.
    - `PROCESS_EXITED` (the launcher's, for a child that died) yields `process_crash`.
    - The proposed `KILL`, `HALT`, `LEGGING`, `POSITION_MISMATCH`, `DAILY_LOSS_LIMIT`
      events yield their kind (see `EVENT_ALERTS`).

    Call it with `events=()` periodically: outages are found by time passing.
    `now` and heartbeat `ts` are `perpbot.clock.now_ns` values.
    """
    feeds = dict(state.feeds)
    out: list[AlertRequest] = []
    limit_ns = feed_down_after_ms * 1_000_000
    for topic, p in events:
        if topic == "HEARTBEAT":
            comp = str(p.get("component_name", ""))
            if not comp.startswith("feed-"):
                continue
            ts = p.get("ts")
            t = ts if isinstance(ts, int) and 0 < ts <= now else now
            prev = feeds.get(comp)
            if p.get("status") == "down":
                since = prev.down_since_ns if prev is not None and prev.down_since_ns is not None else t
                feeds[comp] = FeedWatch(t, since, prev.alerted if prev is not None else False)
            else:
                feeds[comp] = FeedWatch(t)
        elif topic in EVENT_ALERTS:
            kind, key_fields = EVENT_ALERTS[topic]
            key = "/".join(str(p.get(f, "")) for f in key_fields) or kind
            out.append(AlertRequest(kind, _event_message(topic, p), key, dict(p)))
    for comp, w in sorted(feeds.items()):
        if w.alerted:
            continue
        venue = comp.removeprefix("feed-")
        if w.down_since_ns is not None and now - w.down_since_ns >= limit_ns:
            secs = (now - w.down_since_ns) / 1e9
            out.append(AlertRequest("feed_down", f"{venue} feed down for {secs:.1f} s", venue,
                                    {"venue": venue, "down_ms": int(secs * 1000)}))
            feeds[comp] = replace(w, alerted=True)
        elif now - w.last_seen_ns >= limit_ns:
            secs = (now - w.last_seen_ns) / 1e9
            out.append(AlertRequest("feed_down", f"{venue} feed silent for {secs:.1f} s (no heartbeat)", venue,
                                    {"venue": venue, "silent_ms": int(secs * 1000)}))
            feeds[comp] = replace(w, alerted=True, down_since_ns=w.down_since_ns or w.last_seen_ns)
    return EventAlertState(feeds), out
