"""Bitget v2 public websocket as the demo market speaks it: `books1` for USDT-FUTURES instIds.

Wire behaviour (bitget.com/api-doc/common/websocket-intro and the contract depth channel):

- Requests: `{"op":"subscribe"|"unsubscribe","args":[{"instType":"USDT-FUTURES",
  "channel":"books1","instId":"BTCUSDT"},...]}`; each arg is answered on its own,
  `{"event":"subscribe","arg":{...}}`, or for a channel/instrument the venue
  does not serve `{"event":"error","arg":{...},"code":30001,"msg":"instType:..,
  channel:..,instId:.. doesn't exist","op":"subscribe"}`.
- A request that is not JSON or lacks args gets code 30002 (`illegal
  request`), an unknown op 30003 (`invalid op`): ccxt's list of Bitget's codes;
  the message texts are the sim's.
- The bare text `ping` gets the bare text `pong`.
- Data: books1 pushes the whole level-1 book every time, so a new subscriber
  gets the current book at once and every change is the same snapshot frame.

Sizes go out in contracts (`size / contract_size`, exact decimals); for Bitget
USDT-M futures that is base units.
"""

from __future__ import annotations

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol, contracts_text

INST_TYPE = "USDT-FUTURES"
CHANNEL = "books1"
_PING = b"ping"
_PONG = Frame(b"pong")


def _error(code: int, msg: str, arg: dict[str, str] | None = None, op: str | None = None) -> Frame:
    reply: dict[str, object] = {"event": "error"}
    if arg is not None:
        reply["arg"] = arg
    reply["code"] = code
    reply["msg"] = msg
    if op is not None:
        reply["op"] = op
    return Frame(orjson.dumps(reply))


class BitgetProtocol(SimProtocol):
    """Bitget's v2 public stream: per-arg acks, text ping/pong, books1 snapshots."""

    name = "bitget"

    def topic(self, symbol: str) -> str:
        """`BTCUSDT` -> `USDT-FUTURES/books1/BTCUSDT` (instType, channel and instId name a channel)."""
        return f"{INST_TYPE}/{CHANNEL}/{symbol}"

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        """Answer ping and subscribe/unsubscribe requests, one reply per arg."""
        if not binary and payload == _PING:
            return [_PONG]
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [_error(30002, "illegal request")]
        if type(msg) is not dict:
            return [_error(30002, "illegal request")]
        op = msg.get("op")
        if op not in ("subscribe", "unsubscribe"):
            return [_error(30003, "invalid op")]
        args = msg.get("args")
        if type(args) is not list or not args:
            return [_error(30002, "illegal request", op=op)]
        return [self._one_arg(op, arg, session) for arg in args]

    def _one_arg(self, op: str, arg: object, session: Session) -> Frame:
        if type(arg) is not dict:
            return _error(30002, "illegal request", op=op)
        inst_type, channel, inst_id = arg.get("instType"), arg.get("channel"), arg.get("instId")
        if type(inst_type) is not str or type(channel) is not str or type(inst_id) is not str:
            return _error(30002, "illegal request", op=op)
        echo = {"instType": inst_type, "channel": channel, "instId": inst_id}
        topic = f"{inst_type}/{channel}/{inst_id}"
        if not session.known(topic):
            return _error(30001, f"instType:{inst_type},channel:{channel},instId:{inst_id} doesn't exist", echo, op)
        if op == "subscribe":
            session.topics.add(topic)
        else:
            session.topics.discard(topic)
        return Frame(orjson.dumps({"event": op, "arg": echo}))

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        return self.quote(inst, q, update_id, ts_ms)

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """One books1 push, e.g.

        {"action":"snapshot","arg":{"instType":"USDT-FUTURES","channel":"books1","instId":"BTCUSDT"},
         "data":[{"asks":[["60000.2","1.090"]],"bids":[["60000.1","0.812"]],"checksum":0,"seq":17,
         "ts":"1786541241006"}],"ts":1786541241006}
        """
        p, s, c = inst.price_dp, inst.size_dp, inst.contract_size
        return Frame((
            f'{{"action":"snapshot","arg":{{"instType":"{INST_TYPE}","channel":"{CHANNEL}",'
            f'"instId":"{inst.symbol}"}},"data":[{{'
            f'"asks":[["{q.ask:.{p}f}","{contracts_text(q.ask_size, s, c)}"]],'
            f'"bids":[["{q.bid:.{p}f}","{contracts_text(q.bid_size, s, c)}"]],'
            f'"checksum":0,"seq":{update_id},"ts":"{ts_ms}"}}],"ts":{ts_ms}}}'
        ).encode())


PROTOCOL = BitgetProtocol
