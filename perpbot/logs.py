"""Structured logs: JSON lines to a size-rotating file per process, human lines on stderr.

    log = setup_logging("exec", ctx.data_dir, secrets=secret_values(ctx.cfg))

Each process writes `<log_dir>/<name>.jsonl` (rotated at `max_bytes`, default
20 MiB, keeping `backup_count` old files, default 5: `<name>.jsonl.1` ... `.5`)
with one JSON object per record:

    {"ts": "2024-05-01T12:00:00.123456789Z", "ts_ns": 1714564800123456789,
     "mono_ns": 81234567890, "level": "WARNING", "process": "feed-okx", "pid": 4242,
     "logger": "perpbot.feeds", "msg": "okx: reconnecting", "exc": "Traceback ..."}

`ts_ns` is epoch time; `mono_ns` is CLOCK_MONOTONIC (`perpbot.clock.now_ns`), the
clock of every latency stamp and event `ts`, so a log line can be lined up with
events. `exc` (the formatted exception) and `stack` appear only when present.

Secrets are redacted before any handler sees a record: a log-record factory
replaces every registered secret (API keys and secrets named in the config or
read from the key file, webhook tokens) by `***` in the message, its args and
the exception text, and every formatter redacts its finished line again (so
`extra=` fields and anything a third-party formatter adds are covered too).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    from perpbot.config import Config

#: a process's JSON log is rotated when it reaches this size
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
#: rotated files kept per process (`<name>.jsonl.1` is the newest)
DEFAULT_BACKUP_COUNT = 5
#: shorter values would redact ordinary words and numbers all over the log
MIN_SECRET_LEN = 4
REDACTED = "***"
LOG_SUFFIX = ".jsonl"

# attributes every LogRecord has; anything else on a record came from `extra=`
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "ts_ns",
                                                                                  "mono_ns"}


class _Redactor:
    """The process-wide set of secrets, swapped atomically so logging threads never see half an update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.secrets: tuple[str, ...] = ()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            new = set(self.secrets)
            for v in values:
                if isinstance(v, str) and len(v) >= MIN_SECRET_LEN:
                    new.add(v)
                    # the same secret as it appears inside a JSON string or a repr()
                    for form in (orjson.dumps(v).decode()[1:-1], repr(v)[1:-1]):
                        if len(form) >= MIN_SECRET_LEN:
                            new.add(form)
            # longest first, so a secret that contains another is replaced whole
            self.secrets = tuple(sorted(new, key=len, reverse=True))
            self.pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def clear(self) -> None:
        with self._lock:
            self.secrets = ()
            self.pattern = None

    def redact(self, text: str) -> str:
        pattern = self.pattern
        return text if pattern is None else pattern.sub(REDACTED, text)


_REDACTOR = _Redactor()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    return _REDACTOR.redact(text)


def add_secrets(values: Iterable[str]) -> None:
    """Register more secret values to redact from every log record of this process.

    Values shorter than `MIN_SECRET_LEN` characters are ignored. Works before
    `setup_logging` too: whatever handlers exist get redacted records.
    """
    _install_record_factory()
    _REDACTOR.add(values)


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    _REDACTOR.clear()


def secret_env_names(cfg: Config) -> list[str]:
    """Names of the environment variables that hold secrets according to the config.

    Venue API keys, secrets and passphrases (OKX, Bitget: the key's name with
    _KEY replaced by _PASSPHRASE, as ccxt_venue.passphrase_env_name), the key
    file's passphrase when `run.keys_file` is set, and the alert sinks' token
    variables once `$.alerts` is part of the config.
    """
    names: list[str] = []
    for v in cfg.venues.values():
        names.extend(n for n in (v.api_key_env, v.api_secret_env) if n)
        if v.api_key_env:
            stem = v.api_key_env[:-len("_KEY")] if v.api_key_env.endswith("_KEY") else v.api_key_env
            names.append(stem + "_PASSPHRASE")
    if getattr(cfg.run, "keys_file", None) is not None:
        from perpbot.keys import PASSPHRASE_ENV

        names.append(PASSPHRASE_ENV)
    alerts = getattr(cfg, "alerts", None)
    for sink in getattr(alerts, "sinks", ()) or ():
        env = getattr(sink, "token_env", None)
        if env:
            names.append(env)
    return names


def secret_values(cfg: Config) -> list[str]:
    """Values of the config's secret environment variables that are set, non-empty and >= 4 characters."""
    out: list[str] = []
    for name in secret_env_names(cfg):
        value = os.environ.get(name, "")
        if len(value) >= MIN_SECRET_LEN and value not in out:
            out.append(value)
    return out


def _redact_record(record: logging.LogRecord) -> None:
    """Rewrite a record in place so no registered secret survives in it (no-op without secrets)."""
    if _REDACTOR.pattern is None:
        return
    try:
        message = record.getMessage()
    except Exception:  # bad format args: logging's error report would print msg and args raw
        message = f"{record.msg!s} [unformattable args: {record.args!r}]"
    clean = redact(message)
    if clean != message or not isinstance(record.msg, str):
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # formatters reuse exc_text when it is set, so the raw exception is never rendered again
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_factory_installed = False
_factory_lock = threading.Lock()


def _install_record_factory() -> None:
    """Redact at record creation: the only point every handler of every logger comes after."""
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            record.ts_ns = time.time_ns()
            record.mono_ns = time.monotonic_ns()
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def _iso(ts_ns: int) -> str:
    sec, frac = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        ts_ns = getattr(record, "ts_ns", None) or int(record.created * 1e9)
        out: dict[str, Any] = {
            "ts": _iso(ts_ns),
            "ts_ns": ts_ns,
            "mono_ns": getattr(record, "mono_ns", None),
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        extra = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}
        if extra:
            out["extra"] = extra
        line = orjson.dumps(out, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        return redact(line)


class ConsoleFormatter(logging.Formatter):
    """`2024-05-01 12:00:00.123 exec WARNING perpbot.exec: message` plus any traceback."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s.%(msecs)03d {process} %(levelname)s %(name)s: %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_HANDLER_MARK = "_perpbot_logs"


def setup_logging(
    name: str,
    log_dir: Path | None,
    level: int | str | None = None,
    *,
    secrets: Iterable[str] = (),
    console: TextIO | None = None,
    console_level: int | str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backup_count: int = DEFAULT_BACKUP_COUNT,
) -> logging.Logger:
    """Configure this process's logging and return the `perpbot.<name>` logger.

    - `name`: the process name written in every line (`exec`, `feed-okx`, `launcher`).
    - `log_dir`: where `<name>.jsonl` goes (created if missing); None logs to the console only.
    - `level`: root level; None means `$PERPBOT_LOG_LEVEL` or INFO.
    - `secrets`: values to redact (`secret_values(cfg)`); `add_secrets` adds more later.
    - `console`: the stream for human lines (default `sys.stderr`); `console_level`
      raises its threshold above `level` (e.g. WARNING for children whose stderr the
      launcher keeps in an unrotated file).
    - `max_bytes`, `backup_count`: rotation of the JSON file; `max_bytes=0` never rotates.

    Calling it again replaces the handlers a previous call installed and keeps
    any other handler on the root logger.
    """
    if max_bytes < 0 or backup_count < 0:
        raise ValueError("max_bytes and backup_count must be >= 0")
    add_secrets(secrets)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
            h.close()
    lvl = level if level is not None else os.environ.get("PERPBOT_LOG_LEVEL", "INFO")
    root.setLevel(lvl.upper() if isinstance(lvl, str) else lvl)

    con = logging.StreamHandler(console if console is not None else sys.stderr)
    con.setFormatter(ConsoleFormatter(name))
    if console_level is not None:
        con.setLevel(console_level.upper() if isinstance(console_level, str) else console_level)
    handlers: list[logging.Handler] = [con]
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            Path(log_dir) / f"{name}{LOG_SUFFIX}", maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        fh.setFormatter(JsonFormatter(name))
        handlers.append(fh)
    for h in handlers:
        setattr(h, _HANDLER_MARK, True)
        root.addHandler(h)
    return logging.getLogger(f"perpbot.{name}")
