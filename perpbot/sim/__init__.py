"""The built-in demo market: simulated venues on loopback, each speaking its own feed protocol.

- `market`: the seeded price model (pure; time passed in as integer ns)
- `encoders`: one pure frame encoder per feed protocol, registered by feed name
- `server`: the loopback websocket servers and the task that moves prices
- `process`: the market as a child process of the launcher

Run it in-process with `market = await serve_market(cfg)`; `market.urls`
names each venue's URL and `await market.close()` stops it.
"""

from perpbot.shm.layout import MarketCounter
from perpbot.sim.market import Dislocation, DislocationKind, MarketModel, SimQuote
from perpbot.sim.server import DemoMarket, MarketStatistics, serve_market

__all__ = [
    "DemoMarket",
    "Dislocation",
    "DislocationKind",
    "MarketCounter",
    "MarketModel",
    "MarketStatistics",
    "SimQuote",
    "serve_market",
]
