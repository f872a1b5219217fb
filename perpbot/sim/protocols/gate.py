"""Gate USDT futures (WebSocket v4) as the demo market speaks it: `futures.book_ticker`.

Requests are `{"time":<s>,"id":<n>,"channel":"futures.book_ticker","event":"subscribe"|"unsubscribe",
"payload":["BTC_USDT",..]}`. A request is accepted or refused as a whole: one
unknown contract fails it with `"error":{"code":2,"message":"unknown contract X"}`
and `"result":{"status":"fail"}`, as Gate does. Replies echo the request's
`time`, `id` and `payload` and carry a `conn_id` and `trace_id`. The
application ping `{"time":..,"channel":"futures.ping"}` gets `futures.pong`.
Pushes come on change only (no image on subscription). Sizes go out in
contracts as decimal strings, the form the `X-Gate-Size-Decimal: 1` handshake
header (which the feed sends) selects.
"""

from __future__ import annotations

from typing import Any

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol, contracts_text, decimal_text

CHANNEL = "futures.book_ticker"
#: Gate's subscribe error codes: 1 invalid argument struct, 2 invalid argument
_BAD_STRUCT = 1
_BAD_ARGUMENT = 2


def price_text(price: float, dp: int) -> str:
    """A price as the venue prints it: the tick's decimals, trailing zeros dropped (`63921`, `63921.5`)."""
    return decimal_text(price, dp, trim=True)


class GateProtocol(SimProtocol):
    """Gate's futures websocket: whole-request acks or errors, futures.ping/pong, book_ticker pushes."""

    name = "gate"

    def __init__(self, demo_path: str) -> None:
        super().__init__(demo_path)
        self._connections = 0
        self._requests = 0

    def topic(self, symbol: str) -> str:
        return f"{CHANNEL}:{symbol}"

    def _conn_id(self, session: Session) -> str:
        conn_id = session.state.get("conn_id")
        if not isinstance(conn_id, str):
            self._connections += 1
            # sixteen hex digits like Gate's, distinct per connection
            conn_id = session.state["conn_id"] = f"{(self._connections * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}"
        return conn_id

    def _reply(self, req: dict[str, Any], session: Session, trace: bool = True, **fields: Any) -> Frame:
        """A reply in Gate's key order: time, time_ms, id, conn_id, trace_id, channel, event, payload, ..."""
        t = req.get("time")
        t = t if type(t) is int and 0 <= t < 2**40 else 0
        out: dict[str, Any] = {"time": t, "time_ms": t * 1000}
        if type(req.get("id")) is int:
            out["id"] = req["id"]
        out["conn_id"] = self._conn_id(session)
        if trace:
            self._requests += 1
            out["trace_id"] = f"{(self._requests * 0x9E3779B97F4A7C15F39CC0605CEDC835) & (2**128 - 1):032x}"
        out["channel"] = req.get("channel") if type(req.get("channel")) is str else ""
        out["event"] = req.get("event") if type(req.get("event")) is str else ""
        if "payload" in req:
            out["payload"] = req["payload"]
        out.update(fields)
        return Frame(orjson.dumps(out))

    def _fail(self, req: dict[str, Any], session: Session, code: int, message: str) -> Frame:
        return self._reply(req, session, error={"code": code, "message": message}, result={"status": "fail"})

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            msg = None
        if binary or type(msg) is not dict:
            return [self._fail({}, session, _BAD_STRUCT, "invalid argument struct")]
        channel = msg.get("channel")
        if channel == "futures.ping":
            pong = {"time": msg.get("time"), "id": msg.get("id"), "channel": "futures.pong", "event": ""}
            return [self._reply(pong, session, trace=False, result=None)]
        event = msg.get("event")
        if event not in ("subscribe", "unsubscribe"):
            return [self._fail(msg, session, _BAD_ARGUMENT, f"unknown event {event}")]
        if channel != CHANNEL:
            return [self._fail(msg, session, _BAD_ARGUMENT, f"Unknown channel {channel}")]
        contracts = msg.get("payload")
        if type(contracts) is not list or not contracts or not all(type(c) is str for c in contracts):
            return [self._fail(msg, session, _BAD_STRUCT, "invalid argument struct")]
        topics = [self.topic(c) for c in contracts]
        for c, t in zip(contracts, topics, strict=True):
            if not session.known(t):
                return [self._fail(msg, session, _BAD_ARGUMENT, f"unknown contract {c}")]
        if event == "subscribe":
            session.topics.update(topics)
        else:
            session.topics.difference_update(topics)
        return [self._reply(msg, session, result={"status": "success"})]

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """One book_ticker push, e.g.

        {"time":1786541241,"time_ms":1786541241006,"channel":"futures.book_ticker","event":"update",
         "result":{"t":1786541241006,"u":17,"s":"BTC_USDT","b":"60000.1","B":"8120","a":"60000.2","A":"10900"}}
        """
        p, s, c = inst.price_dp, inst.size_dp, inst.contract_size
        return Frame(
            (
                f'{{"time":{ts_ms // 1000},"time_ms":{ts_ms},"channel":"{CHANNEL}","event":"update",'
                f'"result":{{"t":{ts_ms},"u":{update_id},"s":"{inst.symbol}",'
                f'"b":"{price_text(q.bid, p)}","B":"{contracts_text(q.bid_size, s, c, trim=True)}",'
                f'"a":"{price_text(q.ask, p)}","A":"{contracts_text(q.ask_size, s, c, trim=True)}"}}}}'
            ).encode()
        )


PROTOCOL = GateProtocol
