"""OKX v5 public websocket as the demo market speaks it: `bbo-tbt` for SWAP instIds.

Requests are `{"op":"subscribe"|"unsubscribe","args":[{"channel":..,"instId":..},..]}`;
each arg is answered on its own, an ack `{"event":"subscribe","arg":{..},"connId":".."}`
or, for an instrument the venue does not list, error 60018. A request that is not
JSON or not a subscribe/unsubscribe gets error 60012. The bare text `ping` gets
the bare text `pong`. A new subscriber gets the current top of book at once
(OKX pushes the current state on subscription: the recorded tickers frames
right after the acks are stamped before the subscribe was sent), then one
frame per change. Sizes go out in contracts (`size / contract_size`).
"""

from __future__ import annotations

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol, contracts_text, decimal_text

CHANNEL = "bbo-tbt"
_PING = b"ping"
_PONG = Frame(b"pong")


def price_text(price: float, dp: int) -> str:
    """A price as the venue prints it: the tick's decimals, trailing zeros dropped (`63921`, `63921.5`)."""
    return decimal_text(price, dp, trim=True)


def unknown_message(channel: str, inst_id: str) -> str:
    """OKX's text for error 60018 (no such channel or instrument)."""
    return (
        f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. "
        "Please use the correct URL, channel and parameters referring to API document."
    )


class OkxProtocol(SimProtocol):
    """OKX's public websocket: per-arg acks, text ping/pong, bbo-tbt pushes in contracts."""

    name = "okx"

    def __init__(self, demo_path: str) -> None:
        super().__init__(demo_path)
        self._connections = 0

    def topic(self, symbol: str) -> str:
        return f"{CHANNEL}:{symbol}"

    def _conn_id(self, session: Session) -> str:
        conn_id = session.state.get("connId")
        if not isinstance(conn_id, str):
            self._connections += 1
            # eight hex digits like OKX's, distinct per connection
            conn_id = session.state["connId"] = f"{(self._connections * 2654435761) & 0xFFFFFFFF:08x}"
        return conn_id

    def _error(self, session: Session, code: str, msg: str) -> Frame:
        return Frame(orjson.dumps({"event": "error", "code": code, "msg": msg, "connId": self._conn_id(session)}))

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        if not binary and payload == _PING:
            return [_PONG]
        text = payload.decode(errors="replace")
        if binary:
            return [self._error(session, "60012", f"Illegal request: {text[:200]}")]
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [self._error(session, "60012", f"Illegal request: {text[:200]}")]
        op = msg.get("op") if type(msg) is dict else None
        args = msg.get("args") if type(msg) is dict else None
        if op not in ("subscribe", "unsubscribe") or type(args) is not list or not args:
            return [self._error(session, "60012", f"Illegal request: {text[:200]}")]
        return [self._one_arg(op, arg, session, text) for arg in args]

    def _one_arg(self, op: str, arg: object, session: Session, text: str) -> Frame:
        channel = arg.get("channel") if type(arg) is dict else None
        inst_id = arg.get("instId") if type(arg) is dict else None
        if type(channel) is not str or type(inst_id) is not str:
            return self._error(session, "60012", f"Illegal request: {text[:200]}")
        topic = f"{channel}:{inst_id}"
        if not session.known(topic):
            return self._error(session, "60018", unknown_message(channel, inst_id))
        if op == "subscribe":
            session.topics.add(topic)
        else:
            session.topics.discard(topic)
        ack = {"event": op, "arg": {"channel": channel, "instId": inst_id}, "connId": self._conn_id(session)}
        return Frame(orjson.dumps(ack))

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        return self.quote(inst, q, update_id, ts_ms)

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """One bbo-tbt push, e.g.

        {"arg":{"channel":"bbo-tbt","instId":"BTC-USDT-SWAP"},"data":[{"asks":[["60000.2","109","0","1"]],
         "bids":[["60000.1","81.2","0","1"]],"ts":"1786541241006","seqId":17}]}
        """
        p, s, c = inst.price_dp, inst.size_dp, inst.contract_size
        return Frame(
            (
                f'{{"arg":{{"channel":"{CHANNEL}","instId":"{inst.symbol}"}},"data":[{{'
                f'"asks":[["{price_text(q.ask, p)}","{contracts_text(q.ask_size, s, c, trim=True)}","0","1"]],'
                f'"bids":[["{price_text(q.bid, p)}","{contracts_text(q.bid_size, s, c, trim=True)}","0","1"]],'
                f'"ts":"{ts_ms}","seqId":{update_id}}}]}}'
            ).encode()
        )


PROTOCOL = OkxProtocol
