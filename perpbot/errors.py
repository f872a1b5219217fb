"""One exception hierarchy for PerpBot.

    PerpBotError
    ├── ConfigError          bad configuration; names the key path and what is allowed
    ├── LayoutError          a shared-memory segment whose header does not match ours
    ├── RetryableError       transient I/O trouble: reconnect or retry later
    ├── RejectedError        a venue or the risk layer refused an order (not retried)
    └── FatalError           the process cannot continue safely

Hot paths return integer codes instead of raising; these are for everything else.
"""


class PerpBotError(Exception):
    """Base of every error PerpBot raises on purpose."""


class ConfigError(PerpBotError):
    """Configuration is invalid. The message starts with the key path, e.g. `$.scanner.poll`."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"config error at {path}: {problem}")


class LayoutError(PerpBotError):
    """A shared-memory segment is not the layout this build expects."""


class RetryableError(PerpBotError):
    """Transient failure; the caller may retry."""


class RejectedError(PerpBotError):
    """An order was refused; the reason is in the message."""


class FatalError(PerpBotError):
    """Unrecoverable; the process should stop."""
