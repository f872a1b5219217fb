"""perpbot-doctor's pure parts: scoring, output, offline classification, judging, local checks."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import yaml
from kit import example_raw, make_config

from perpbot import doctor
from perpbot.doctor import (
    Check,
    KeyRights,
    Probe,
    RestResult,
    Status,
    binance_rights,
    bybit_rights,
    check_cores,
    check_cpu_pinning,
    check_run_root,
    check_shared_memory,
    check_stale_segments,
    clock_checks,
    clock_status,
    describe_error,
    exit_status,
    format_json,
    format_text,
    is_local_host,
    judge,
    key_presence_checks,
    offline_reason,
    redact,
    rest_base,
    rights_check,
    run_doctor,
    score,
    ws_urls,
)

P, W, F, S = Status.PASS, Status.WARN, Status.FAIL, Status.SKIP


def _checks(*statuses: Status) -> list[Check]:
    return [Check(f"c{i}", s, f"detail {i}") for i, s in enumerate(statuses)]


# -- scoring and output ----------------------------------------------------------------------


def test_score_counts_passes_over_non_skipped() -> None:
    assert score(_checks(P, P, W, F, S, S)) == (2, 4)
    assert score([]) == (0, 0)
    assert score(_checks(S, S)) == (0, 0)


def test_exit_status_is_one_only_on_a_failure() -> None:
    assert exit_status(_checks(P, W, S)) == 0
    assert exit_status(_checks(P, W, S, F)) == 1
    assert exit_status([]) == 0


def test_text_has_one_line_per_check_and_a_score() -> None:
    text = format_text(_checks(P, W, F, S))
    lines = text.splitlines()
    assert len(lines) == 5
    assert [ln.split()[0] for ln in lines[:4]] == ["PASS", "WARN", "FAIL", "SKIP"]
    assert "c2" in lines[2] and "detail 2" in lines[2]
    assert lines[-1] == "score: 1/3 passed (1 warnings, 1 failures, 1 skipped)"


def test_json_is_a_list_of_objects() -> None:
    out = orjson.loads(format_json(_checks(P, F)))
    assert out == [{"name": "c0", "status": "PASS", "detail": "detail 0"},
                   {"name": "c1", "status": "FAIL", "detail": "detail 1"}]


def test_output_scrubs_secret_values() -> None:
    secret = "sEcReT-KeY-123456"
    checks = [Check("x", F, f"venue said: bad key {secret} (and a prefix sEcReT)")]
    for text in (format_text(checks, [secret]), format_json(checks, [secret])):
        assert secret not in text
        assert "***" in text


def test_redact_ignores_very_short_values_and_prefers_the_longest() -> None:
    assert redact("a b c", ["a"]) == "a b c"
    assert redact("key=abcdefgh12", ["abcdefgh", "abcdefgh12"]) == "key=***"


# -- offline or failing ----------------------------------------------------------------------


def test_dns_failure_is_offline() -> None:
    assert offline_reason(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) is not None


def test_dns_failure_deep_in_a_chain_is_offline() -> None:
    """How ccxt reports it: ExchangeNotAvailable from aiohttp's ClientConnectorDNSError from gaierror."""
    import ccxt

    class ConnectorError(OSError):
        pass

    try:
        try:
            try:
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            except socket.gaierror as g:
                raise ConnectorError("cannot connect") from g
        except ConnectorError as c:
            raise ccxt.ExchangeNotAvailable("binanceusdm GET https://fapi.binance.com/fapi/v1/time") from c
    except ccxt.ExchangeNotAvailable as e:
        reason = offline_reason(e)
    assert reason is not None and "resolve" in reason


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN])
def test_unreachable_network_is_offline(code: int) -> None:
    reason = offline_reason(OSError(code, os.strerror(code)))
    assert reason is not None and "unreachable" in reason


def test_resolver_timeout_is_offline() -> None:
    assert offline_reason(doctor.ResolveTimeout("name resolution timed out after 3 s")) is not None


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    TimeoutError("no answer within 3 s"),
    ValueError("HTTP 403"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
])
def test_other_errors_are_the_venues_failure(exc: BaseException) -> None:
    assert offline_reason(exc) is None


def test_a_looping_exception_chain_terminates() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert offline_reason(a) is None


def test_describe_error_names_the_os_error() -> None:
    e = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert describe_error(e) == "ConnectionRefusedError: Connection refused"
    assert describe_error(TimeoutError()) == "timed out"


@pytest.mark.parametrize(("host", "local"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("10.1.2.3", True), ("192.168.0.5", True),
    ("fstream.binance.com", False), ("8.8.8.8", False),
])
def test_is_local_host(host: str, local: bool) -> None:
    assert is_local_host(host) is local


def _fail(name: str, offline: str | None, local: bool = False) -> Probe:
    return Probe(name, local=local, ok=False, detail=f"{name} broke", offline=offline)


def test_judge_all_offline_is_skip() -> None:
    checks = judge([_fail("a", "cannot resolve host names"), _fail("b", "network unreachable")])
    assert [c.status for c in checks] == [S, S]
    assert checks[0].detail == "offline: cannot resolve host names"


def test_judge_one_venue_failing_while_others_answer_is_fail() -> None:
    checks = judge([Probe("a", local=False, ok=True, detail="ok"), _fail("b", "cannot resolve host names"),
                    _fail("c", None)])
    assert [c.status for c in checks] == [P, F, F]
    assert checks[1].detail == "b broke"


def test_judge_loopback_success_does_not_prove_the_internet() -> None:
    checks = judge([Probe("ws", local=True, ok=True, detail="ok"), _fail("rest", "cannot resolve host names")])
    assert [c.status for c in checks] == [P, S]


def test_judge_local_failure_is_always_fail_and_skipped_and_warn_pass_through() -> None:
    checks = judge([_fail("l", None, local=True), Probe("s", True, False, "not run", skipped=True),
                    Probe("w", False, True, "meh", status_if_ok=W)])
    assert [c.status for c in checks] == [F, S, W]


# -- clock and key rights ---------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "status"), [
    (0, P), (499, P), (-500, P), (501, W), (-4999, W), (5001, F), (-60000, F)])
def test_clock_thresholds(offset: float, status: Status) -> None:
    assert clock_status(offset) is status


def test_clock_line_follows_the_rest_line() -> None:
    ok = Check("rest v", P, "ok")
    r = RestResult(Probe("rest v", False, True, "ok"), offset_ms=800.0, uncertainty_ms=20.0)
    assert clock_checks("v", r, ok).status is W
    assert clock_checks("v", RestResult(r.probe, 12.0, 5.0), ok).status is P
    assert clock_checks("v", RestResult(r.probe, -7000.0, 5.0), ok).status is F
    assert clock_checks("v", r, Check("rest v", S, "offline: x")) == Check("clock v", S, "offline: x")
    assert clock_checks("v", r, Check("rest v", F, "x")).status is S
    # an HTTP Date header has 1 s resolution: it can only catch the large offsets
    assert clock_checks("v", RestResult(r.probe, 800.0, 1050.0, coarse=True), ok).status is W
    assert clock_checks("v", RestResult(r.probe, 9000.0, 1050.0, coarse=True), ok).status is F
    assert clock_checks("v", RestResult(r.probe), ok).detail.startswith("unknown")


BINANCE_RESTRICTIONS = {"ipRestrict": False, "createTime": 1698645219000, "enableReading": True,
                        "enableWithdrawals": False, "enableInternalTransfer": False, "enableMargin": False,
                        "enableFutures": True, "permitsUniversalTransfer": False,
                        "enableVanillaOptions": False, "enableSpotAndMarginTrading": False}
BYBIT_QUERY_API = {"retCode": 0, "retMsg": "", "result": {
    "id": "13770661", "note": "xxxxx", "apiKey": "XXXXXX", "readOnly": 0, "secret": "",
    "permissions": {"ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"],
                    "Wallet": ["AccountTransfer", "SubMemberTransfer"], "Options": ["OptionsTrade"],
                    "Derivatives": ["DerivativesTrade"], "CopyTrading": [], "BlockTrade": [],
                    "Exchange": [], "NFT": []}, "ips": ["*"], "type": 1}}


def test_binance_rights() -> None:
    assert binance_rights(BINANCE_RESTRICTIONS) == KeyRights(True, False, "apiRestrictions")
    assert binance_rights({**BINANCE_RESTRICTIONS, "enableFutures": False}).can_trade is False
    assert binance_rights({}).can_trade is None


def test_bybit_rights() -> None:
    assert bybit_rights(BYBIT_QUERY_API) == KeyRights(True, False, "query-api")
    read_only = {"result": {**BYBIT_QUERY_API["result"], "readOnly": 1}}  # type: ignore[dict-item]
    assert bybit_rights(read_only).can_trade is False
    assert bybit_rights({"result": {"permissions": {"Wallet": ["Withdraw"]}}}) == KeyRights(None, True, "query-api")


def test_rights_against_the_mode() -> None:
    trade, read = KeyRights(True, False, "x"), KeyRights(False, False, "x")
    assert rights_check("r", "live", trade).status is P
    assert rights_check("r", "live", read).status is F
    assert rights_check("r", "readonly", trade).status is W
    assert rights_check("r", "readonly", read).status is P
    assert rights_check("r", "paper", read).status is P
    assert rights_check("r", "live", KeyRights(True, True, "x")).status is W
    unknown = rights_check("r", "live", KeyRights(None, None, "x"))
    assert unknown.status is W and unknown.detail.startswith("unknown")


def _keyed_config() -> object:
    raw = example_raw()
    raw["venues"]["binanceusdm"].update(api_key_env="DOC_BN_KEY", api_secret_env="DOC_BN_SECRET")
    from perpbot.config import parse_config

    return parse_config(raw)


def test_key_presence_by_mode() -> None:
    cfg = _keyed_config()
    env = {"DOC_BN_KEY": "k" * 20}  # the secret is missing
    by_mode = {m: {c.name: c for c in key_presence_checks(cfg, env, mode=m)}  # type: ignore[arg-type]
               for m in ("demo", "paper", "readonly", "live")}
    assert by_mode["demo"]["api keys binanceusdm"].status is S
    assert by_mode["paper"]["api keys binanceusdm"].status is W
    for m in ("readonly", "live"):
        line = by_mode[m]["api keys binanceusdm"]
        assert line.status is F and "DOC_BN_SECRET" in line.detail
        assert by_mode[m]["api keys okx"].status is F  # no keys configured at all
    full = {"DOC_BN_KEY": "k" * 20, "DOC_BN_SECRET": "s" * 20}
    live = {c.name: c for c in key_presence_checks(cfg, full, mode="live")}  # type: ignore[arg-type]
    assert live["api keys binanceusdm"].status is P
    assert "k" * 20 not in live["api keys binanceusdm"].detail


# -- local checks -----------------------------------------------------------------------------


def _doctor_segments() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir() if p.name.startswith("perpbot-doctor-")} if shm.is_dir() else set()


def test_shared_memory_check_passes_and_leaves_no_segment() -> None:
    before = _doctor_segments()
    c = check_shared_memory()
    assert c.status is P, c.detail
    assert _doctor_segments() == before


def test_shared_memory_check_replaces_a_leftover_of_its_own_name() -> None:
    from multiprocessing import shared_memory

    name = f"perpbot-doctor-{os.getpid()}"
    old = shared_memory.SharedMemory(name=name, create=True, size=64)
    old.close()
    try:
        assert check_shared_memory(name).status is P
        assert name not in _doctor_segments()
    finally:
        try:
            old.unlink()
        except FileNotFoundError:
            pass


class _FailingBuf(shared_memory.SharedMemory):
    """Created for real, then unusable: the doctor must still unlink it."""

    @property
    def buf(self) -> memoryview:  # type: ignore[override]
        raise OSError(errno.EIO, "Input/output error")


class _FailingInit(shared_memory.SharedMemory):
    """Makes the name, then fails before the caller gets a handle."""

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
        super().__init__(name=name, create=create, size=size)
        self.close()
        # the doctor removes the name itself; keep the tracker from warning about it at exit
        resource_tracker.unregister(self._name, "shared_memory")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("cls", [_FailingBuf, _FailingInit])
def test_shared_memory_check_unlinks_on_failure(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    before = _doctor_segments()
    monkeypatch.setattr(doctor, "shared_memory", SimpleNamespace(SharedMemory=cls))
    c = check_shared_memory()
    assert c.status is F, c.detail
    assert _doctor_segments() == before


def test_stale_segments_are_named() -> None:
    assert check_stale_segments(lambda: []).status is P
    c = check_stale_segments(lambda: ["perpbot-x-board", "perpbot-x-status"])
    assert c.status is W and "perpbot-x-board" in c.detail and "perpbot-x-status" in c.detail


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path: pytest's tmp_path can exceed the ipc path limit."""
    d = Path(tempfile.mkdtemp(prefix="pd-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_run_root_0755_is_a_failure(tmp_path: Path) -> None:
    root = tmp_path / "rr"
    root.mkdir()
    os.chmod(root, 0o755)
    c = check_run_root(root)
    assert c.status is F and "0755" in c.detail


def test_run_root_0700_passes(short_dir: Path) -> None:
    root = short_dir / "rr"
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    assert check_run_root(root).status is P
    assert list(root.iterdir()) == []


def test_run_root_that_does_not_exist_is_created_0700_and_removed_again(short_dir: Path) -> None:
    root = short_dir / "a" / "b"
    old = os.umask(0o022)
    try:
        c = check_run_root(root)
    finally:
        os.umask(old)
    assert c.status is P and "can be created" in c.detail
    assert not (short_dir / "a").exists()


def test_run_root_that_is_a_file_or_cannot_be_made_fails(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    assert check_run_root(f).status is F
    c = check_run_root(f / "rr")  # mkdir fails whoever we are (root ignores permission bits)
    assert c.status is F and "rr" in c.detail
    assert f.is_file()


def test_run_root_too_long_for_ipc_paths(tmp_path: Path) -> None:
    root = tmp_path / ("x" * 100)
    c = check_run_root(root)
    assert c.status is F and "ipc" in c.detail


def test_cpu_pinning() -> None:
    assert check_cpu_pinning(None).status is S
    before = os.sched_getaffinity(0)
    core = min(before)
    c = check_cpu_pinning(core)
    assert c.status is P, c.detail
    assert os.sched_getaffinity(0) == before  # only the short-lived thread was pinned
    assert check_cpu_pinning(10_000).status is F


def test_cores_for_spin() -> None:
    assert check_cores("spin", usable=2).status is W
    assert check_cores("spin", usable=4).status is P
    assert check_cores("hybrid", usable=1).status is P


# -- URLs -----------------------------------------------------------------------------------


def test_rest_base_from_ccxt_urls() -> None:
    assert rest_base({"fapiPublic": "https://fapi.binance.com/fapi/v1", "sapi": "https://api.binance.com/sapi/v1"}) \
        == "https://fapi.binance.com/fapi/v1"
    assert rest_base({"rest": "https://{hostname}"}, "www.okx.com") == "https://www.okx.com"
    assert rest_base({"public": {"futures": "https://api.gateio.ws/api/v4"}}) == "https://api.gateio.ws/api/v4"
    assert rest_base("https://x.example/api") == "https://x.example/api"
    assert rest_base({"ws": "wss://x"}) is None


def test_ws_urls_by_mode() -> None:
    demo = make_config()
    assert ws_urls(demo, "okx") == "served locally by the demo market"
    paper = make_config(mode="paper")  # type: ignore[arg-type]
    assert ws_urls(paper, "okx") == ["wss://ws.okx.com:8443/ws/v5/public"]
    ext = ws_urls(paper, "extended")
    assert isinstance(ext, list) and len(ext) == 3 and all(u.endswith("?depth=1") for u in ext)
    raw = example_raw()
    raw["venues"]["okx"]["url"] = "ws://127.0.0.1:9/okx"
    from perpbot.config import parse_config

    assert ws_urls(parse_config(raw), "okx") == ["ws://127.0.0.1:9/okx"]  # an override is probed in any mode


# -- the whole run on a bad config ------------------------------------------------------------


def test_bad_config_fails_naming_the_key_and_skips_the_rest(tmp_path: Path) -> None:
    raw = example_raw()
    raw["scanner"]["poll"] = "busy"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    checks, secrets = run_doctor(path, timeout_s=1.0)
    assert checks[0].name == "config" and checks[0].status is F
    assert "$.scanner.poll" in checks[0].detail
    assert all(c.status is S for c in checks[1:]) and len(checks) > 1
    assert exit_status(checks) == 1
    assert secrets == []
