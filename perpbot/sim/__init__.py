"""The built-in loopback market: simulated venues on loopback, each speaking its own feed protocol.

- `market`: the seeded price model (pure; time passed in as integer ns)
- `protocol`: the `SimProtocol` interface every simulated venue protocol implements
- `protocols`: one module per feed protocol, found by themselves (`get_protocol(name)`)
- `server`: the loopback websocket servers, and `DemoMarket` that feeds them from the model
- `replay`: `ReplayMarket`, the same servers fed from a recording (`perpbot-record`'s files)
- `process`: the market as a child process of the launcher (demo or replay mode)

Run it in-process with `market = await serve_market(cfg)`; `market.urls`
names each venue's URL and `await market.close()` stops it.
"""

from perpbot.shm.layout import MarketCounter
from perpbot.sim.market import Dislocation, DislocationKind, MarketModel, SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol
from perpbot.sim.protocols import get_protocol
from perpbot.sim.server import DemoMarket, LoopbackMarket, MarketStatistics, serve_market

__all__ = [
    "DemoMarket",
    "Dislocation",
    "DislocationKind",
    "Frame",
    "Instrument",
    "LoopbackMarket",
    "MarketCounter",
    "MarketModel",
    "MarketStatistics",
    "Session",
    "SimProtocol",
    "SimQuote",
    "get_protocol",
    "serve_market",
]
