"""Extended as the demo market speaks it: `<demo_path>/<market>?depth=1`, one market per connection.

Wire behaviour (what `perpbot.feeds.extended` expects, from the x10 python
SDK's stream client and models and ccxt's `pro/extended.py`):

- The URL subscribes: `/stream.extended.exchange/v1/orderbooks/BTC-USD?depth=1`
  names the market's topic. Nothing is ever sent by the client; a text frame
  from it is ignored (the venue documents no client messages on this stream).
- Only the best-bid-and-ask stream (`depth=1`) is served. A path without a
  market (the venue's all-markets stream) or with another depth is not routed:
  the connection is answered and stays silent.
- A market the venue does not list is routed to its topic and stays silent:
  how the venue answers one is not documented (unsure: a 404 at the handshake
  or an error frame), and the protocol interface has no hook to refuse a URL.
- Data: at depth 1 every frame is a SNAPSHOT of the top level per side, e.g.
  `{"ts":1786541241006,"type":"SNAPSHOT","data":{"m":"BTC-USD","b":[{"p":"60000.1","q":"0.812"}],
  "a":[{"p":"60000.2","q":"1.090"}]},"seq":17}`, one when the connection opens
  and one per quote change; `seq` is the venue's update id, so it counts up by one.

Sizes are base units on Extended; a configured contract size is honoured
anyway (wire size = base size / contract size).
"""

from __future__ import annotations

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol, wire_decimals


def depth_of(query: str) -> str | None:
    """The `depth` parameter of a URL query string, or None."""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "depth":
            return value
    return None


class ExtendedProtocol(SimProtocol):
    """URL-subscribed depth-1 order book SNAPSHOTs."""

    name = "extended"

    def topic(self, symbol: str) -> str:
        """The market name itself (`BTC-USD`): the URL path segment that subscribes to it."""
        return symbol

    def route(self, path: str) -> list[str] | None:
        """`<demo_path>/BTC-USD?depth=1` -> `["BTC-USD"]`; anything else is not this route."""
        route, _, query = path.partition("?")
        prefix = self.demo_path.rstrip("/") + "/"
        if not route.startswith(prefix):
            return None
        market = route[len(prefix):]
        if not market or "/" in market or depth_of(query) != "1":
            return None
        return [self.topic(market)]

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        """The stream takes no requests: client frames are ignored."""
        return []

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        """The SNAPSHOT a connection opens with."""
        return self.quote(inst, q, update_id, ts_ms)

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """A depth-1 SNAPSHOT frame, e.g.

        {"ts":1786541241006,"type":"SNAPSHOT","data":{"m":"BTC-USD",
         "b":[{"p":"60000.1","q":"0.812"}],"a":[{"p":"60000.2","q":"1.090"}]},"seq":17}
        """
        p = inst.price_dp
        cs = inst.contract_size
        s = wire_decimals(inst.size_dp, cs)
        return Frame((
            f'{{"ts":{ts_ms},"type":"SNAPSHOT","data":{{"m":"{inst.symbol}",'
            f'"b":[{{"p":"{q.bid:.{p}f}","q":"{q.bid_size / cs:.{s}f}"}}],'
            f'"a":[{{"p":"{q.ask:.{p}f}","q":"{q.ask_size / cs:.{s}f}"}}]}},"seq":{update_id}}}'
        ).encode())


PROTOCOL = ExtendedProtocol
