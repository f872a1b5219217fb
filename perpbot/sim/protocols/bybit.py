"""Bybit v5 public linear websocket as the demo market speaks it: `orderbook.1.<SYMBOL>`.

Wire behaviour (bybit-exchange.github.io/docs/v5/ws/connect and .../public/orderbook):

- Requests: `{"op":"subscribe"|"unsubscribe","args":["orderbook.1.BTCUSDT",...],"req_id":"1"}`.
  Acks: `{"success":true,"ret_msg":"","conn_id":"..","req_id":"1","op":"subscribe"}`
  (linear answers an empty `ret_msg`, as the recorded frames show; `req_id`
  is echoed as a string and left out when the client sent none).
- A topic the venue does not list: `{"success":false,"ret_msg":"error:handler
  not found,topic:orderbook.1.XYZ",...}`; the listed topics of the same request
  are still subscribed. More than `MAX_ARGS` args, a request that is not JSON or
  an unknown op get `"success":false` with the sim's own wording (Bybit's exact
  texts for those are not documented).
- Application ping `{"op":"ping"}` -> `{"success":true,"ret_msg":"pong","conn_id":"..","op":"ping"}`.
- Data: a snapshot on subscription, then one delta per quote change with `u`
  one higher, carrying only the side(s) that changed: a size change is the
  level with its new size, a price change the old level's deletion (size "0")
  followed by the new level, as Bybit's level-1 book does.

The instance remembers the last quote it encoded per symbol (snapshot or
delta) to know what changed. Sizes go out in contracts (`size / contract_size`,
exact decimals); for Bybit linear that is base units.
"""

from __future__ import annotations

from typing import Any

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol, contracts_text

#: args accepted in one request (Bybit's documented spot limit; the feed batches by it)
MAX_ARGS = 10
_SEQ_BASE = 760_000_000_000  # cross sequence numbers look like the venue's (12 digits)


def _level(px: float, size: float, inst: Instrument) -> str:
    return f'["{px:.{inst.price_dp}f}","{contracts_text(size, inst.size_dp, inst.contract_size)}"]'


def _side(old_px: float, old_size: float, px: float, size: float, inst: Instrument) -> str:
    """A delta side: nothing if unchanged, the level if only its size moved, else delete + insert."""
    if px == old_px:
        return "" if size == old_size else _level(px, size, inst)
    return f'["{old_px:.{inst.price_dp}f}","0"],{_level(px, size, inst)}'


class BybitProtocol(SimProtocol):
    """Bybit's public linear stream: JSON ops with success/ret_msg replies, level-1 snapshot + deltas."""

    name = "bybit"

    def __init__(self, demo_path: str) -> None:
        super().__init__(demo_path)
        self._connections = 0
        #: venue symbol -> the quote subscribers hold after the last frame sent
        self._last: dict[str, SimQuote] = {}

    def topic(self, symbol: str) -> str:
        """`BTCUSDT` -> `orderbook.1.BTCUSDT`."""
        return f"orderbook.1.{symbol}"

    def _conn_id(self, session: Session) -> str:
        conn_id = session.state.get("conn_id")
        if not isinstance(conn_id, str):
            self._connections += 1
            # shaped like Bybit's "d9avsh3fo0jvsls9d82g-5m9jh", distinct per connection
            conn_id = session.state["conn_id"] = f"sim{(self._connections * 2654435761) & 0xFFFFFFFF:08x}-bybit"
        return conn_id

    def _reply(self, session: Session, op: str, req_id: object, success: bool, ret_msg: str) -> Frame:
        msg: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": self._conn_id(session)}
        if req_id is not None:
            msg["req_id"] = str(req_id)
        msg["op"] = op
        return Frame(orjson.dumps(msg))

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        """Answer subscribe, unsubscribe and ping; anything else gets a `"success":false` reply."""
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [self._reply(session, "", None, False, "error:request not json")]
        if type(msg) is not dict:
            return [self._reply(session, "", None, False, "error:request not json object")]
        op = msg.get("op")
        req_id = msg.get("req_id")
        if op == "ping":
            return [self._reply(session, "ping", req_id, True, "pong")]
        if op not in ("subscribe", "unsubscribe"):
            return [self._reply(session, str(op or ""), req_id, False, "error:invalid op")]
        args = msg.get("args")
        if type(args) is not list or not args or not all(type(a) is str for a in args):
            return [self._reply(session, op, req_id, False, "error:args must be a list of topics")]
        if len(args) > MAX_ARGS:
            return [self._reply(session, op, req_id, False, f"error:args size {len(args)} over the limit {MAX_ARGS}")]
        unknown = [a for a in args if not session.known(a)]
        known = [a for a in args if session.known(a)]
        if op == "subscribe":
            session.topics.update(known)
        else:
            session.topics.difference_update(known)
        if unknown:
            return [self._reply(session, op, req_id, False, f"error:handler not found,topic:{unknown[0]}")]
        return [self._reply(session, op, req_id, True, "")]

    def _frame(self, inst: Instrument, kind: str, bids: str, asks: str, update_id: int, ts_ms: int) -> Frame:
        return Frame((
            f'{{"topic":"{inst.topic}","type":"{kind}","ts":{ts_ms},"data":{{"s":"{inst.symbol}",'
            f'"b":[{bids}],"a":[{asks}],"u":{update_id},"seq":{_SEQ_BASE + update_id}}},"cts":{ts_ms}}}'
        ).encode())

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        """The full level-1 book, e.g.

        {"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1786541241006,"data":{"s":"BTCUSDT",
         "b":[["60000.1","0.812"]],"a":[["60000.2","1.090"]],"u":17,"seq":760000000017},"cts":1786541241006}
        """
        self._last[inst.symbol] = q
        return self._frame(inst, "snapshot", _level(q.bid, q.bid_size, inst), _level(q.ask, q.ask_size, inst),
                           update_id, ts_ms)

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """One delta with the changed side(s), e.g. a new best bid:

        {"topic":"orderbook.1.BTCUSDT","type":"delta","ts":1786541241016,"data":{"s":"BTCUSDT",
         "b":[["60000.1","0"],["60000.3","0.400"]],"a":[],"u":18,"seq":760000000018},"cts":1786541241016}
        """
        last = self._last.get(inst.symbol)
        if last is None:  # nobody holds a book yet: start one
            frame = self.snapshot(inst, q, update_id, ts_ms)
            assert frame is not None
            return frame
        self._last[inst.symbol] = q
        return self._frame(inst, "delta", _side(last.bid, last.bid_size, q.bid, q.bid_size, inst),
                           _side(last.ask, last.ask_size, q.ask, q.ask_size, inst), update_id, ts_ms)


PROTOCOL = BybitProtocol
