"""The exec process: risk -> execution -> positions -> journal (DESIGN.md, step 3).

Modules, each with one job:

- `sizing`     pure: lot/tick rounding and one size valid for both legs
- `edge`       pure: net edge of an entry and round-trip PnL of an exit
- `risk`       pure: the gate every order passes, reason codes not exceptions
- `positions`  pure: apply a fill to a position (Decimal, realized PnL with fees)
- `journal`    SQLite record of intents, orders, fills, trades and skips
- `venues`     the trading-venue interface and the paper venue behind it
- `engine`     the trade lifecycle (no ZeroMQ; injectable clock)
- `process`    the thin async shell: sockets, loops, signals, status segment
"""
