"""`perpbot-doctor`: is this host, this config and this network ready to run PerpBot?

    perpbot-doctor --config config.yaml [--timeout-s 3] [--json]

One line per check, `PASS` / `WARN` / `FAIL` / `SKIP` and a short reason, then
a score (passed / applicable, SKIPs are not applicable). The exit status is 1
when any check FAILs, else 0.

What is checked, in order:

- the config loads and validates (when it does not, every other check is SKIP);
- shared memory: a small test segment `perpbot-doctor-<pid>` is created, written,
  read back and unlinked (always, also on failure); stale PerpBot segments;
- the run root (sockets) can be created with mode 0700 and is the user's alone,
  and the longest ipc socket path in it fits the kernel's limit;
- CPU pinning of `scanner.core` in a short-lived thread, and whether the machine
  has the cores for `scanner.poll: spin`;
- per venue, concurrently and each within `--timeout-s`: the websocket endpoint
  the feed would use, the REST API ccxt would use, the clock offset from the
  venue's server time, and, when keys are in the environment, whether they can
  trade or only read.

Offline is not a failure of the venue: when names do not resolve or the
network is unreachable and no non-local endpoint answered at all, those lines
are `SKIP offline: <reason>`. When some venue answered, the same error on
another venue is that venue's `FAIL`. Reaching loopback or a private address
(a `url:` override pointing at the demo market) proves nothing about the
internet. A name lookup that hangs past the timeout counts as offline; a
connection or handshake that hangs past it is the venue's `FAIL`.

In demo and replay modes the feeds read the loopback market and nothing talks
to a venue: websocket lines say "served locally by the demo market" (unless a
`url:` override is set, which is then probed) and REST, clock and key-rights
lines are SKIP.

Secrets: key values are never printed; every detail is also scrubbed of the
values of the configured key variables before it is written, in case a venue
echoes one back in an error.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import enum
import errno
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from perpbot.config import Config, load_config
from perpbot.errors import ConfigError

#: a clock offset above this is worth a warning (quotes' exchange stamps drift apart)
CLOCK_WARN_MS = 500.0
#: above this, signed requests start being refused (Binance recvWindow defaults to 5 s)
CLOCK_FAIL_MS = 5000.0
#: Linux `sun_path` holds 108 bytes including the terminating NUL
MAX_IPC_PATH = 107
#: `perpbot-launch` names runs like `20260101-120000-<pid>`; pids go up to 7 digits
_RUN_ID_EXAMPLE = "20260101-120000-4194304"
#: the longest socket name `perpbot.bus.endpoints` uses
_LONGEST_SOCKET = "opportunities.ipc"
#: a spinning scanner owns one core; feeds, exec and the OS need the others
MIN_CORES_FOR_SPIN = 3
_SHM_TEST_SIZE = 4096
#: modes that serve market data from the built-in loopback market
_LOOPBACK_MODES = ("demo", "replay")
#: modes that cannot run without keys
_KEYED_MODES = ("readonly", "live")
#: key values shorter than this are not scrubbed from text (it would garble every line);
#: they are still never printed, because no check ever formats a key's value
_MIN_REDACT_LEN = 6


class Status(enum.StrEnum):
    """Outcome of one check."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str


# -- scoring and output (pure) ----------------------------------------------------------------


def score(checks: Sequence[Check]) -> tuple[int, int]:
    """(passed, applicable): SKIPped checks do not count either way."""
    applicable = [c for c in checks if c.status is not Status.SKIP]
    return sum(c.status is Status.PASS for c in applicable), len(applicable)


def exit_status(checks: Sequence[Check]) -> int:
    """1 when any check failed, else 0 (warnings and skips do not fail the run)."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by `***` (longest first, so no fragment survives)."""
    for s in sorted({s for s in secrets if len(s) >= _MIN_REDACT_LEN}, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def format_text(checks: Sequence[Check], secrets: Iterable[str] = ()) -> str:
    """The human report: one aligned line per check, then the score line."""
    secrets = tuple(secrets)
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"{c.status.value:<4}  {c.name:<{width}}  {redact(c.detail, secrets)}" for c in checks]
    passed, applicable = score(checks)
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    lines.append(f"score: {passed}/{applicable} passed ({counts[Status.WARN]} warnings, "
                 f"{counts[Status.FAIL]} failures, {counts[Status.SKIP]} skipped)")
    return "\n".join(lines) + "\n"


def format_json(checks: Sequence[Check], secrets: Iterable[str] = ()) -> str:
    """The report as a JSON list of `{"name", "status", "detail"}` objects."""
    secrets = tuple(secrets)
    return orjson.dumps([{**asdict(c), "status": c.status.value, "detail": redact(c.detail, secrets)}
                         for c in checks]).decode() + "\n"


# -- network errors: offline or a venue's own failure (pure) ---------------------------------


class ResolveTimeout(OSError):
    """Name resolution did not finish within the timeout: the resolver is unreachable, i.e. offline."""


_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """The exception and everything it was raised from, once each (chains can loop)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # aiohttp keeps the socket error in `os_error` as well as in the chain
        todo.extend([e.__cause__, e.__context__, getattr(e, "os_error", None)])


def offline_reason(exc: BaseException) -> str | None:
    """Why `exc` looks like "this host is offline" (no DNS, no route), or None for any other failure.

    Refused connections, TLS errors, HTTP errors and handshake timeouts mean the
    network works and the far end (or its address) is wrong: those are None.
    """
    for e in _chain(exc):
        if isinstance(e, ResolveTimeout):
            return str(e) or "name resolution timed out"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host names ({e.strerror or e})"
        if isinstance(e, OSError) and e.errno in _UNREACHABLE_ERRNOS:
            return f"network unreachable ({e.strerror or os.strerror(e.errno or 0)})"
    return None


def describe_error(exc: BaseException) -> str:
    """A short one-line description of a network error, its innermost OS error when there is one."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror:
            return f"{type(e).__name__}: {e.strerror}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def is_local_host(host: str) -> bool:
    """True for loopback and private addresses: reaching them says nothing about the internet."""
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


@dataclass(frozen=True, slots=True)
class Probe:
    """The raw outcome of one network probe, before online/offline is judged across all probes."""

    name: str
    #: the probe reached a host on loopback or a private network
    local: bool
    ok: bool
    #: what was seen (ok) or what went wrong
    detail: str
    #: for a failure: the offline reason (`offline_reason`), None when the network worked
    offline: str | None = None
    #: the status of a successful probe (a reachable venue may still deserve a WARN)
    status_if_ok: Status = Status.PASS
    #: a probe that was not run at all (mode, missing prerequisites): reported as is
    skipped: bool = False


def judge(probes: Sequence[Probe]) -> list[Check]:
    """Turn probes into checks: offline-looking failures are SKIP only if no non-local probe got through.

    If any venue answered over the internet, this host is online, so another
    venue's DNS failure or unreachable network is that venue's problem: FAIL.
    """
    online = any(p.ok and not p.local for p in probes)
    out: list[Check] = []
    for p in probes:
        if p.skipped:
            out.append(Check(p.name, Status.SKIP, p.detail))
        elif p.ok:
            out.append(Check(p.name, p.status_if_ok, p.detail))
        elif p.offline is not None and not p.local and not online:
            out.append(Check(p.name, Status.SKIP, f"offline: {p.offline}"))
        else:
            out.append(Check(p.name, Status.FAIL, p.detail))
    return out


# -- clock and key permissions (pure) ---------------------------------------------------------


def clock_status(offset_ms: float) -> Status:
    """PASS within 500 ms, WARN up to 5 s, FAIL beyond."""
    a = abs(offset_ms)
    if a > CLOCK_FAIL_MS:
        return Status.FAIL
    if a > CLOCK_WARN_MS:
        return Status.WARN
    return Status.PASS


@dataclass(frozen=True, slots=True)
class KeyRights:
    """What a venue says an API key may do; None where it does not say."""

    can_trade: bool | None
    can_withdraw: bool | None
    source: str


def binance_rights(resp: Mapping[str, Any]) -> KeyRights:
    """From Binance `GET /sapi/v1/account/apiRestrictions`.

    Sample (Binance docs)::

        {"ipRestrict": false, "createTime": 1698645219000, "enableReading": true,
         "enableWithdrawals": false, "enableInternalTransfer": false, "enableMargin": false,
         "enableFutures": true, "permitsUniversalTransfer": false,
         "enableVanillaOptions": false, "enableSpotAndMarginTrading": false}

    USDⓈ-M futures orders need `enableFutures`.
    """
    futures = resp.get("enableFutures")
    withdrawals = resp.get("enableWithdrawals")
    return KeyRights(None if futures is None else bool(futures),
                     None if withdrawals is None else bool(withdrawals),
                     "apiRestrictions")


def bybit_rights(resp: Mapping[str, Any]) -> KeyRights:
    """From Bybit `GET /v5/user/query-api` (`result`: readOnly 0/1 and a permissions map).

    Sample (Bybit docs, trimmed)::

        {"retCode": 0, "result": {"readOnly": 0, "permissions": {
            "ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"],
            "Wallet": ["AccountTransfer", "SubMemberTransfer"], "Derivatives": ["DerivativesTrade"]}}}
    """
    result = resp.get("result", resp)
    if not isinstance(result, Mapping):
        return KeyRights(None, None, "query-api")
    perms = result.get("permissions") or {}
    read_only = result.get("readOnly")
    trade: bool | None
    if read_only is None:
        trade = None
    else:
        trade = str(read_only) == "0" and bool(perms.get("ContractTrade") or perms.get("Derivatives"))
    wallet = perms.get("Wallet")
    withdraw = None if wallet is None else "Withdraw" in wallet
    return KeyRights(trade, withdraw, "query-api")


def rights_check(name: str, mode: str, rights: KeyRights) -> Check:
    """Judge a key's rights against the mode: live needs trading, readonly should not have it."""
    if rights.can_trade is None:
        return Check(name, Status.WARN, f"unknown: the venue's {rights.source} answer does not say")
    what = "can trade" if rights.can_trade else "read only"
    if rights.can_withdraw:
        return Check(name, Status.WARN, f"{what}, and WITHDRAWALS ARE ENABLED: disable them on this key")
    if mode == "live" and not rights.can_trade:
        return Check(name, Status.FAIL, f"{what}: mode live needs a key that can trade futures")
    if mode == "readonly" and rights.can_trade:
        return Check(name, Status.WARN, f"{what}: mode readonly is safer with a read-only key")
    return Check(name, Status.PASS, f"{what} ({rights.source})")


def key_presence_checks(cfg: Config, env: Mapping[str, str], mode: str | None = None) -> list[Check]:
    """Per venue: are the configured key variables set? Never looks at, let alone prints, the values' text.

    `mode` defaults to the config's; readonly and live FAIL on a missing key,
    paper WARNs, demo and replay never use keys (SKIP).
    """
    mode = mode or cfg.mode
    out: list[Check] = []
    for venue, v in cfg.venues.items():
        name = f"api keys {venue}"
        names = [n for n in (v.api_key_env, v.api_secret_env) if n]
        if not names:
            if mode in _KEYED_MODES:
                out.append(Check(name, Status.FAIL,
                                 f"no api_key_env/api_secret_env configured; mode {mode} needs keys"))
            else:
                out.append(Check(name, Status.SKIP, f"none configured (mode {mode} needs none)"))
            continue
        missing = [n for n in names if not env.get(n)]
        if not missing:
            out.append(Check(name, Status.PASS, f"{' and '.join(names)} set in the environment"))
        elif mode in _KEYED_MODES:
            out.append(Check(name, Status.FAIL, f"{', '.join(missing)} not set; mode {mode} needs it"))
        elif mode == "paper":
            out.append(Check(name, Status.WARN, f"{', '.join(missing)} not set (not needed in mode paper)"))
        else:
            out.append(Check(name, Status.SKIP, f"{', '.join(missing)} not set (mode {mode} uses no keys)"))
    return out


def secret_values(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """The values of every configured key variable that is set: the output is scrubbed of them."""
    names = {n for v in cfg.venues.values() for n in (v.api_key_env, v.api_secret_env) if n}
    return [env[n] for n in names if env.get(n)]


# -- local checks -----------------------------------------------------------------------------


def check_shared_memory(name: str | None = None) -> Check:
    """Create, write, read back and unlink a small segment; the segment never outlives the call."""
    name = name or f"perpbot-doctor-{os.getpid()}"
    pattern = bytes(range(256)) * (_SHM_TEST_SIZE // 256)
    shm: shared_memory.SharedMemory | None = None
    try:
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=_SHM_TEST_SIZE)
        except FileExistsError:
            # only a previous doctor with our pid (long gone) names a segment like this
            old = shared_memory.SharedMemory(name=name, create=False)
            old.close()
            old.unlink()
            shm = shared_memory.SharedMemory(name=name, create=True, size=_SHM_TEST_SIZE)
        buf = shm.buf
        assert buf is not None
        buf[:_SHM_TEST_SIZE] = pattern
        ok = bytes(buf[:_SHM_TEST_SIZE]) == pattern
        del buf  # SharedMemory.close() raises BufferError while a view is alive
        if not ok:
            return Check("shared memory", Status.FAIL, f"{name}: read back differs from what was written")
        return Check("shared memory", Status.PASS, f"created, wrote, read and removed {_SHM_TEST_SIZE} B segment")
    except OSError as e:
        return Check("shared memory", Status.FAIL, f"cannot use POSIX shared memory: {describe_error(e)}")
    finally:
        if shm is not None:
            try:
                shm.close()
            finally:
                try:
                    shm.unlink()
                except FileNotFoundError:
                    pass
        else:
            # creation may have made the name and then failed (mapping it, sizing it): the name
            # carries our pid, so whatever has it now is ours to remove
            from perpbot.shm.segment import remove_segment

            remove_segment(name)


def check_stale_segments(find: Callable[[], list[str]] | None = None) -> Check:
    """WARN naming PerpBot segments whose launcher is gone (the next launch removes them)."""
    if find is None:
        from perpbot.shm.segment import find_stale_segments

        find = find_stale_segments
    try:
        stale = find()
    except OSError as e:
        return Check("stale segments", Status.WARN, f"cannot list shared memory: {describe_error(e)}")
    if not stale:
        return Check("stale segments", Status.PASS, "none")
    return Check("stale segments", Status.WARN,
                 f"{len(stale)} left by dead runs: {', '.join(sorted(stale))} (perpbot-launch removes them)")


def check_run_root(root: Path) -> Check:
    """The run root exists or can be created 0700, is ours, is closed to others, and has room for ipc paths.

    A directory the doctor creates is removed again: checking must not change the host.
    """
    name = "run directory"
    created: list[Path] = []
    try:
        if root.exists():
            st = root.stat()
            if not root.is_dir():
                return Check(name, Status.FAIL, f"{root} exists and is not a directory")
            if st.st_uid != os.getuid():
                return Check(name, Status.FAIL, f"{root} belongs to uid {st.st_uid}, not to this user")
            if st.st_mode & 0o077:
                return Check(name, Status.FAIL, f"{root} has mode {st.st_mode & 0o777:04o}: others can reach the "
                                                f"control sockets; chmod 700 it")
            verb = "exists"
        else:
            p = root
            while not p.exists():
                created.append(p)
                p = p.parent
            root.mkdir(mode=0o700, parents=True)
            os.chmod(root, 0o700)  # mkdir's mode is filtered by the umask
            mode = root.stat().st_mode & 0o777
            if mode != 0o700:
                return Check(name, Status.FAIL, f"created {root} but its mode is {mode:04o}, not 0700")
            verb = "can be created"
        probe = root / f".doctor-{os.getpid()}"
        probe.mkdir(mode=0o700)
        probe.rmdir()
    except OSError as e:
        return Check(name, Status.FAIL, f"{root}: {describe_error(e)}")
    finally:
        for p in created:  # innermost first
            try:
                p.rmdir()
            except OSError:
                pass
    longest = len(f"{root}/{_RUN_ID_EXAMPLE}/{_LONGEST_SOCKET}".encode())
    if longest > MAX_IPC_PATH:
        return Check(name, Status.FAIL, f"{root}: ipc socket paths would be {longest} bytes, the limit is "
                                        f"{MAX_IPC_PATH}; set run.run_root to a shorter path")
    return Check(name, Status.PASS, f"{root} {verb}, mode 0700, owned by this user")


def check_cpu_pinning(core: int | None) -> Check:
    """Pin a short-lived thread to `core` (Linux pins per thread); this process's own affinity is untouched."""
    name = "cpu pinning"
    if core is None:
        return Check(name, Status.SKIP, "scanner.core not set: the scanner is not pinned")
    if not hasattr(os, "sched_setaffinity"):
        return Check(name, Status.FAIL, "this platform has no sched_setaffinity")
    allowed = os.sched_getaffinity(0)
    if core not in allowed:
        return Check(name, Status.FAIL, f"core {core} is not among this process's allowed cores "
                                        f"{sorted(allowed)} (taskset/cgroup cpuset)")
    result: dict[str, Any] = {}

    def pin() -> None:
        before = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {core})
            result["got"] = os.sched_getaffinity(0)
        except OSError as e:
            result["error"] = e
        finally:
            try:
                os.sched_setaffinity(0, before)  # restore, although the thread ends right away
            except OSError:
                pass

    t = threading.Thread(target=pin, name="doctor-pin", daemon=True)
    t.start()
    t.join(5.0)
    if "error" in result:
        return Check(name, Status.FAIL, f"cannot pin to core {core}: {describe_error(result['error'])}")
    if result.get("got") != {core}:
        return Check(name, Status.FAIL, f"pinning to core {core} gave {sorted(result.get('got', ()))}")
    return Check(name, Status.PASS, f"a thread can be pinned to core {core}")


def check_cores(poll: str, usable: int | None = None) -> Check:
    """A spinning scanner needs a core of its own and more for everything else."""
    n = usable if usable is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                           else os.cpu_count() or 1)
    if poll == "spin" and n < MIN_CORES_FOR_SPIN:
        return Check("cpu cores", Status.WARN, f"{n} usable cores: scanner.poll spin wants at least "
                                               f"{MIN_CORES_FOR_SPIN}; use hybrid here")
    return Check("cpu cores", Status.PASS, f"{n} usable cores, scanner.poll {poll}")


# -- network probes -----------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme in ("https", "wss") else 80
    return parts.hostname or "", parts.port or default


async def _resolve(host: str, port: int) -> None:
    """Resolve `host` first, so a DNS failure or hang is told apart from an unreachable venue."""
    if is_local_host(host):
        return
    loop = asyncio.get_running_loop()
    await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def _timed(phase: list[str], timeout_s: float, coro: Awaitable[Any]) -> Any:
    """Await `coro` within `timeout_s`; a timeout while resolving names is an offline-kind error."""
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError:
        if phase and phase[0] == "resolve":
            raise ResolveTimeout(f"name resolution timed out after {timeout_s:g} s") from None
        raise TimeoutError(f"no answer within {timeout_s:g} s") from None


def ws_urls(cfg: Config, venue: str) -> list[str] | str:
    """The distinct websocket URLs the venue's feed would open, or why none is probed (a string)."""
    from perpbot.feeds.ccxt_generic import is_ccxt_feed
    from perpbot.feeds.registry import get_feed

    v = cfg.venues[venue]
    ccxt_id = is_ccxt_feed(v.feed)
    if ccxt_id is not None:
        if v.url:
            return [v.url]
        return f"ccxt.pro picks its websocket URL per subscription (ccxt:{ccxt_id}); see the REST line"
    spec = get_feed(v.feed)
    if v.url:
        base = v.url
    elif cfg.mode in _LOOPBACK_MODES:
        return "served locally by the demo market"
    else:
        base = spec.public_url
    urls = [u for u, _ in spec.connections(base, list(v.symbols.values()))]
    return list(dict.fromkeys(urls))


async def probe_websocket(cfg: Config, venue: str, timeout_s: float) -> Probe:
    """Open (and close) every websocket connection the venue's feed would open."""
    import picows

    name = f"websocket {venue}"
    urls = ws_urls(cfg, venue)
    if isinstance(urls, str):
        return Probe(name, local=True, ok=False, detail=urls, skipped=True)
    from perpbot.feeds.ccxt_generic import is_ccxt_feed
    from perpbot.feeds.registry import get_feed

    feed = cfg.venues[venue].feed
    headers = dict(get_feed(feed).extra_headers) if is_ccxt_feed(feed) is None else {}
    local = all(is_local_host(_host_port(u)[0]) for u in urls)

    async def one(url: str) -> float:
        phase = ["resolve"]

        async def go() -> float:
            host, port = _host_port(url)
            await _resolve(host, port)
            phase[0] = "connect"
            t0 = time.perf_counter()
            transport, _ = await picows.ws_connect(picows.WSListener, url, extra_headers=headers or None,
                                                   websocket_handshake_timeout=timeout_s)
            elapsed = time.perf_counter() - t0
            transport.send_close()
            transport.disconnect()
            try:
                await asyncio.wait_for(transport.wait_disconnected(), 1.0)
            except TimeoutError:
                pass
            return elapsed

        result: float = await _timed(phase, timeout_s, go())
        return result

    results = await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)
    for url, r in zip(urls, results):
        if isinstance(r, BaseException):
            if isinstance(r, asyncio.CancelledError):
                raise r
            return Probe(name, local, ok=False, detail=f"{url}: {describe_error(r)}", offline=offline_reason(r))
    slowest = max(r for r in results if isinstance(r, float))
    where = urls[0] if len(urls) == 1 else f"{len(urls)} connections to {_host_port(urls[0])[0]}"
    return Probe(name, local, ok=True, detail=f"{where} handshake in {slowest * 1000:.0f} ms")


def ccxt_id_for(feed: str) -> str | None:
    """The ccxt exchange whose REST API serves this feed's venue (native feeds share ccxt's ids)."""
    from perpbot.feeds.ccxt_generic import is_ccxt_feed

    ccxt_id = is_ccxt_feed(feed)
    if ccxt_id is not None:
        return ccxt_id
    import ccxt

    return feed if feed in ccxt.exchanges else None


#: urls['api'] keys tried first when naming a venue's REST base (its public futures API)
_API_KEYS_PREFERRED = ("fapiPublic", "public", "rest", "futures", "swap", "mix", "v1")


def rest_base(urls_api: Any, hostname: str | None = None) -> str | None:
    """A readable REST base URL from ccxt's `urls['api']` (a string, or nested dicts of strings)."""
    def flat(node: Any, key: str = "") -> list[tuple[str, str]]:
        if isinstance(node, str):
            return [(key, node)]
        if isinstance(node, Mapping):
            return [kv for k, sub in node.items() for kv in flat(sub, str(k))]
        return []

    found = [(k, u) for k, u in flat(urls_api) if u.startswith("http")]
    if not found:
        return None
    by_key = dict(reversed(found))  # the first URL under each key wins
    url = next((by_key[k] for k in _API_KEYS_PREFERRED if k in by_key), found[0][1])
    return url.replace("{hostname}", hostname) if hostname else url


@dataclass(frozen=True, slots=True)
class RestResult:
    """A REST probe and, when the venue told its time, the clock offset measured with it."""

    probe: Probe
    #: venue time minus local time at the request's midpoint, ms
    offset_ms: float | None = None
    #: half the round trip: the offset is known to within this
    uncertainty_ms: float | None = None
    #: the offset came from a 1 s-resolution HTTP Date header, not a server-time call
    coarse: bool = False


async def probe_rest(cfg: Config, venue: str, timeout_s: float) -> RestResult:
    """One cheap public call (server time where ccxt has it) on the venue's REST API."""
    name = f"rest {venue}"
    if cfg.mode in _LOOPBACK_MODES:
        return RestResult(Probe(name, True, False, f"mode {cfg.mode} uses no venue REST API", skipped=True))
    ccxt_id = ccxt_id_for(cfg.venues[venue].feed)
    if ccxt_id is None:
        return RestResult(Probe(name, True, False, f"ccxt has no exchange {cfg.venues[venue].feed!r}", skipped=True))
    import ccxt.async_support as ccxt_async

    exchange = getattr(ccxt_async, ccxt_id)({"timeout": int(timeout_s * 1000), "enableRateLimit": False})
    base = rest_base(exchange.urls.get("api"), getattr(exchange, "hostname", None)) or ccxt_id
    host, port = _host_port(base)
    phase = ["resolve"]
    try:
        async def go() -> RestResult:
            await _resolve(host, port)
            phase[0] = "call"
            t0 = time.time()
            if exchange.has.get("fetchTime"):
                server_ms = await exchange.fetch_time()
                t1 = time.time()
                rtt_ms = (t1 - t0) * 1000
                offset = float(server_ms) - (t0 + t1) / 2 * 1000
                return RestResult(Probe(name, is_local_host(host), True, f"{base} fetch_time in {rtt_ms:.0f} ms"),
                                  offset, rtt_ms / 2)
            method = "fetch_status" if exchange.has.get("fetchStatus") else "fetch_markets"
            await getattr(exchange, method)()
            t1 = time.time()
            probe = Probe(name, is_local_host(host), True, f"{base} {method} in {(t1 - t0) * 1000:.0f} ms")
            date = (exchange.last_response_headers or {}).get("Date") or \
                (exchange.last_response_headers or {}).get("date")
            if date:
                server = email.utils.parsedate_to_datetime(date).timestamp()
                return RestResult(probe, (server - (t0 + t1) / 2) * 1000, (t1 - t0) / 2 * 1000 + 1000, coarse=True)
            return RestResult(probe)

        result: RestResult = await _timed(phase, timeout_s, go())
        return result
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return RestResult(Probe(name, is_local_host(host), False, f"{base}: {describe_error(e)}",
                                offline=offline_reason(e)))
    finally:
        await _close_quietly(exchange)


async def _close_quietly(exchange: Any) -> None:
    try:
        await asyncio.wait_for(exchange.close(), 2.0)
    except Exception:
        pass


def clock_checks(venue: str, rest: RestResult, rest_check: Check) -> Check:
    """The clock line for one venue, from its REST probe and how that probe was judged."""
    name = f"clock {venue}"
    if rest_check.status is Status.SKIP:
        return Check(name, Status.SKIP, rest_check.detail)
    if rest_check.status is Status.FAIL:
        return Check(name, Status.SKIP, "REST endpoint not reachable (see the rest line)")
    if rest.offset_ms is None:
        return Check(name, Status.WARN, "unknown: the venue's REST answer carries no server time")
    off = rest.offset_ms
    unc = rest.uncertainty_ms or 0.0
    text = f"offset {off:+.0f} ms (±{unc:.0f} ms)"
    if rest.coarse:
        if abs(off) - unc > CLOCK_FAIL_MS:
            return Check(name, Status.FAIL, f"{text} from the HTTP Date header: above {CLOCK_FAIL_MS:.0f} ms")
        return Check(name, Status.WARN, f"{text} from the HTTP Date header (1 s resolution; "
                                        f"no server-time call): the {CLOCK_WARN_MS:.0f} ms limit cannot be checked")
    status = clock_status(off)
    if status is Status.PASS:
        return Check(name, status, text)
    limit = CLOCK_FAIL_MS if status is Status.FAIL else CLOCK_WARN_MS
    return Check(name, status, f"{text}: above {limit:.0f} ms; sync the clock (chrony/ntpd)")


#: ccxt id -> (a private read-only call that reports a key's rights, how to read its answer)
_RIGHTS_CALLS: dict[str, tuple[str, Callable[[Mapping[str, Any]], KeyRights]]] = {
    "binanceusdm": ("sapi_get_account_apirestrictions", binance_rights),
    "binance": ("sapi_get_account_apirestrictions", binance_rights),
    "bybit": ("private_get_v5_user_query_api", bybit_rights),
}


#: why a venue's key rights stay unknown, where there is more to say than "no such call"
_NO_RIGHTS_CALL: dict[str, str] = {
    "okx": "OKX reports rights (account config `perm`) only to a signed call that needs the key's passphrase, "
           "which the config has no variable for",
    "bitget": "Bitget's signed calls need the key's passphrase, which the config has no variable for",
}


async def probe_key_rights(cfg: Config, venue: str, env: Mapping[str, str], timeout_s: float) -> Probe | Check | None:
    """Ask the venue what the key may do, where ccxt exposes such a call; say "unknown" otherwise.

    None when the venue has no key to ask about (its `api keys` line says why).
    """
    name = f"api rights {venue}"
    v = cfg.venues[venue]
    key = env.get(v.api_key_env) if v.api_key_env else None
    secret = env.get(v.api_secret_env) if v.api_secret_env else None
    if not key:
        return None
    if not secret:
        return Check(name, Status.SKIP, "no secret in the environment: cannot ask the venue")
    if cfg.mode in _LOOPBACK_MODES:
        return Check(name, Status.SKIP, f"mode {cfg.mode} talks to no venue")
    ccxt_id = ccxt_id_for(v.feed)
    call = _RIGHTS_CALLS.get(ccxt_id or "")
    if ccxt_id is None or call is None:
        why = _NO_RIGHTS_CALL.get(ccxt_id or "", "no call that reports a key's rights is known for this venue")
        return Check(name, Status.WARN, f"unknown: {why}; check the key on the venue's API-management page")
    import ccxt.async_support as ccxt_async

    method, read = call
    exchange = getattr(ccxt_async, ccxt_id)({"apiKey": key, "secret": secret, "timeout": int(timeout_s * 1000)})
    base = rest_base(exchange.urls.get("api"), getattr(exchange, "hostname", None)) or ccxt_id
    host, port = _host_port(base)
    phase = ["resolve"]
    try:
        async def go() -> Any:
            await _resolve(host, port)
            phase[0] = "call"
            return await getattr(exchange, method)()

        resp = await _timed(phase, timeout_s, go())
    except asyncio.CancelledError:
        raise
    except Exception as e:
        import ccxt

        if isinstance(e, ccxt.AuthenticationError | ccxt.PermissionDenied):
            return Probe(name, is_local_host(host), False, f"the venue refused the key ({type(e).__name__})")
        return Probe(name, is_local_host(host), False, describe_error(e), offline=offline_reason(e))
    finally:
        await _close_quietly(exchange)
    c = rights_check(name, cfg.mode, read(resp if isinstance(resp, Mapping) else {}))
    return Probe(name, is_local_host(host), True, c.detail, status_if_ok=c.status)


async def network_checks(cfg: Config, *, timeout_s: float, env: Mapping[str, str]) -> list[Check]:
    """Every venue's websocket, REST, clock and key-rights lines, probed concurrently."""
    venues = list(cfg.venues)
    ws = [probe_websocket(cfg, v, timeout_s) for v in venues]
    rest = [probe_rest(cfg, v, timeout_s) for v in venues]
    rights = [probe_key_rights(cfg, v, env, timeout_s) for v in venues]
    # a last guard: every probe has its own timeout, this only catches a probe that ignores it
    async with asyncio.timeout(timeout_s * 2 + 5):
        ws_res, rest_res, rights_res = await asyncio.gather(
            asyncio.gather(*ws), asyncio.gather(*rest), asyncio.gather(*rights))
    probes: list[Probe] = list(ws_res) + [r.probe for r in rest_res] + [r for r in rights_res if isinstance(r, Probe)]
    judged = {c.name: c for c in judge(probes)}
    presence = {c.name: c for c in key_presence_checks(cfg, env)}
    out: list[Check] = []
    for v, rr, kr in zip(venues, rest_res, rights_res):
        out.append(judged[f"websocket {v}"])
        rest_check = judged[f"rest {v}"]
        out.append(rest_check)
        out.append(clock_checks(v, rr, rest_check))
        out.append(presence[f"api keys {v}"])
        line = judged[kr.name] if isinstance(kr, Probe) else kr
        if line is not None:
            out.append(line)
    return out


# -- the runner -----------------------------------------------------------------------------------


_LATER = ("shared memory", "stale segments", "run directory", "cpu pinning", "cpu cores",
          "websocket", "rest", "clock", "api keys")


async def doctor(config_path: str | os.PathLike[str], *, timeout_s: float = 3.0,
                 env: Mapping[str, str] | None = None) -> tuple[list[Check], list[str]]:
    """Run every check; returns the checks and the secret values the output must not contain."""
    env = os.environ if env is None else env
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        return [Check("config", Status.FAIL, str(e))] + [
            Check(n, Status.SKIP, "config did not load") for n in _LATER], []
    from perpbot.runctx import run_root

    checks = [Check("config", Status.PASS, f"{config_path}: mode {cfg.mode}, {len(cfg.venues)} venues, "
                                           f"{len(cfg.symbols)} symbols")]
    checks.append(check_shared_memory())
    checks.append(check_stale_segments())
    checks.append(check_run_root(run_root(cfg)))
    checks.append(check_cpu_pinning(cfg.scanner.core))
    checks.append(check_cores(cfg.scanner.poll))
    checks.extend(await network_checks(cfg, timeout_s=timeout_s, env=env))
    return checks, secret_values(cfg, env)


def run_doctor(config_path: str | os.PathLike[str], *, timeout_s: float = 3.0,
               env: Mapping[str, str] | None = None) -> tuple[list[Check], list[str]]:
    """`doctor` in a fresh event loop that never waits on a stuck name lookup at exit."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(doctor(config_path, timeout_s=timeout_s, env=env))
    finally:
        # not asyncio.run: its shutdown_default_executor() would wait for a getaddrinfo
        # thread the timeout already gave up on; loop.close() lets that thread go
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: `perpbot-doctor --config FILE [--timeout-s 3] [--json]`."""
    p = argparse.ArgumentParser(prog="perpbot-doctor",
                                description="Check that this host, config and network are ready for PerpBot.")
    p.add_argument("--config", required=True, help="the YAML config file perpbot-launch would use")
    p.add_argument("--timeout-s", type=float, default=3.0,
                   help="per network probe, in seconds (default 3); probes run concurrently")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, status, detail}")
    args = p.parse_args(argv)
    if not args.timeout_s > 0:
        p.error("--timeout-s must be > 0")
    checks, secrets = run_doctor(args.config, timeout_s=args.timeout_s)
    out = format_json(checks, secrets) if args.json else format_text(checks, secrets)
    sys.stdout.write(out)
    sys.stdout.flush()
    return exit_status(checks)


if __name__ == "__main__":
    sys.exit(main())
