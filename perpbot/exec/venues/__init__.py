"""Trading venues behind one interface (`base.Venue`): the paper venue now, ccxt later.

- `base`      the interface and the value types crossing it
- `paper`     fills against the live quote board
- `registry`  `make_venues(cfg, board)`: the venue objects for the configured mode

Kept import-free on purpose: `base` is imported by the pure modules, which the
implementations import in turn.
"""
