"""PerpBot: cross-exchange perpetual-futures arbitrage, built for latency.

Processes (see DESIGN.md): feeds write the shared-memory quote board, the scanner
polls it and pushes opportunities over ZeroMQ, the exec process checks risk and
trades both legs, the launcher supervises them all.
"""

__version__ = "0.1.0"
