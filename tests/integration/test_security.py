"""Security of a real installation: the `perpbot keys` command, who can reach a run's directory and
sockets, and credentials that appear nowhere a run writes or prints.

- `perpbot keys` runs as a subprocess: add --from-env, list, remove against the
  default file under a temporary HOME; a wrong passphrase is exit code 2 and
  one line, no traceback.
- A demo run (three venues) with venue credentials set in the environment: the
  run root and run directory are 0700 and ours, no ipc socket is reachable by
  group or others (and, when the test runs as root, a process running as
  `nobody` is refused by the kernel), `perpbot-ctl status --json` and every
  file of the data dir (logs, journal, paper ledgers, summary.json) and the
  launcher's output hold no credential; after SIGTERM no segment, directory or
  process is left.
- A readonly run whose exec process crashes at start after decrypting the key
  file: the crash output (the launcher's stderr with exec's last log lines)
  and the data dir hold no credential, no key-file value, no passphrase.
- A live start whose key file does not decrypt is refused before anything
  starts, without the passphrase in its output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kit import example_raw

from perpbot import keys

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
#: recognisable credential values: none of them may be found anywhere
ENV_SECRETS = {"PB_SEC_BINANCE_KEY": "envkey-4f1c9e2a-binance", "PB_SEC_BINANCE_SECRET": "envsecret-77ad01-binance",
               "PB_SEC_OKX_KEY": "envkey-5b2d8c-okx", "PB_SEC_OKX_SECRET": "envsecret-9e3f4a-okx",
               "PB_SEC_OKX_PASSPHRASE": "envpass-c0ffee-okx"}
FILE_SECRETS = {"okx": {"apiKey": "filekey-31337-okx", "secret": "filesecret-8badf00d-okx",
                        "password": "filepass-feedface-okx"}}
PASSPHRASE = "keyfile-passphrase-d00dfeed"
NOBODY = 65534


def _cmd(name: str) -> list[str]:
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    module = {"perpbot": "perpbot.cli", "perpbot-launch": "perpbot.launch", "perpbot-ctl": "perpbot.ctl"}[name]
    return [sys.executable, "-m", module]


def _everything_secret() -> list[str]:
    return [*ENV_SECRETS.values(), *(v for f in FILE_SECRETS.values() for v in f.values()), PASSPHRASE]


def _assert_no_secret(label: str, blob: bytes | str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for s in _everything_secret():
        assert s.encode() not in data, f"{label} holds a credential"


def _assert_data_dir_clean(data: Path) -> int:
    n = 0
    for p in data.rglob("*"):
        if p.is_file():
            _assert_no_secret(str(p), p.read_bytes())
            n += 1
    return n


def _three_venue_demo(tmp: Path, run_root: Path) -> dict[str, Any]:
    raw = example_raw()
    keep = ("binanceusdm", "okx", "bybit")
    raw["venues"] = {k: v for k, v in raw["venues"].items() if k in keep}
    raw["demo"]["venues"] = {k: v for k, v in raw["demo"]["venues"].items() if k in keep}
    raw["venues"]["binanceusdm"].update(api_key_env="PB_SEC_BINANCE_KEY", api_secret_env="PB_SEC_BINANCE_SECRET")
    raw["venues"]["okx"].update(api_key_env="PB_SEC_OKX_KEY", api_secret_env="PB_SEC_OKX_SECRET")
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp / "data"))
    return raw


@pytest.fixture
def run_root() -> Iterator[Path]:
    """A short directory for the run's ipc sockets (their paths have a length limit)."""
    d = Path(tempfile.mkdtemp(prefix="pbsec"))
    yield d / "r"
    shutil.rmtree(d, ignore_errors=True)


def _leftovers(pid: int, marker: str) -> list[str]:
    """Segments of the launcher `pid` and processes whose command line names `marker`."""
    out = []
    shm = Path("/dev/shm")
    if shm.is_dir():
        out += [p.name for p in shm.iterdir() if p.name.startswith("perpbot-") and f"-{pid}-" in p.name]
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            out.append(f"process {proc_dir.name}: {cmdline}")
    return out


# --------------------------------------------------------------------------- perpbot keys


def test_keys_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    raw = _three_venue_demo(tmp_path, tmp_path / "run")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, **ENV_SECRETS, "HOME": str(home), keys.PASSPHRASE_ENV: PASSPHRASE}

    def perpbot(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_cmd("perpbot"), "keys", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=60, check=False)

    added = perpbot("add", "okx", "--from-env", "--config", str(cfg))
    assert added.returncode == 0, added.stderr
    default = home / ".config" / "perpbot" / "keys.enc"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert stat.S_IMODE(default.parent.stat().st_mode) == 0o700
    assert perpbot("add", "binanceusdm", "--from-env", "--config", str(cfg)).returncode == 0
    listed = perpbot("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["binanceusdm: apiKey, secret", "okx: apiKey, secret, password"]
    for out in (added, listed):
        _assert_no_secret("perpbot keys output", out.stdout + out.stderr)
    _assert_no_secret("the key file", default.read_bytes())
    assert keys.read_keys(default, PASSPHRASE)["okx"] == {
        "apiKey": ENV_SECRETS["PB_SEC_OKX_KEY"], "secret": ENV_SECRETS["PB_SEC_OKX_SECRET"],
        "password": ENV_SECRETS["PB_SEC_OKX_PASSPHRASE"]}

    removed = perpbot("remove", "binanceusdm")
    assert removed.returncode == 0, removed.stderr
    assert perpbot("list").stdout.splitlines() == ["okx: apiKey, secret, password"]

    before = default.read_bytes()
    wrong = perpbot("remove", "okx", **{keys.PASSPHRASE_ENV: "not-the-passphrase"})
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr == f"perpbot keys: wrong passphrase or damaged file: {default}\n"
    assert "Traceback" not in wrong.stderr and "not-the-passphrase" not in wrong.stderr
    assert default.read_bytes() == before


# --------------------------------------------------------------------------- a demo run


def _others_may_connect(sock: Path) -> bool:
    """Whether the permission bits let group or others connect: search on every directory above the
    socket and write on the socket itself, for the group class or the other class."""
    for x_bit, w_bit in ((stat.S_IXGRP, stat.S_IWGRP), (stat.S_IXOTH, stat.S_IWOTH)):
        if sock.stat().st_mode & w_bit and all(d.stat().st_mode & x_bit for d in sock.parents):
            return True
    return False


PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("denied")
except OSError as e:
    print("error", e.errno)
else:
    print("connected")
"""


def _probe_as_nobody(path: Path) -> str:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    res = subprocess.run([python, "-c", PROBE, str(path)], user=NOBODY, group=NOBODY, extra_groups=[],
                         capture_output=True, text=True, timeout=30, check=False)
    return res.stdout.strip() or res.stderr.strip()


def test_run_directory_sockets_and_no_secret_anywhere(tmp_path: Path, run_root: Path) -> None:
    raw = _three_venue_demo(tmp_path, run_root)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, **ENV_SECRETS}
    out_path, err_path = tmp_path / "launch.out", tmp_path / "launch.err"
    proc = subprocess.Popen([*_cmd("perpbot-launch"), "--config", str(cfg), "--duration", "120"],
                            stdout=open(out_path, "wb"), stderr=open(err_path, "wb"), env=env)

    def until(what: str, cond: Any, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert proc.poll() is None, f"launcher exited while waiting for {what}:\n{err_path.read_text()}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.1)

    try:
        until("start", lambda: b"all processes running" in out_path.read_bytes())
        status = subprocess.run([*_cmd("perpbot-ctl"), "--config", str(cfg), "--json", "status"],
                                capture_output=True, text=True, env=env, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        report = orjson.loads(status.stdout)
        _assert_no_secret("perpbot-ctl status --json", status.stdout + status.stderr)
        run_dir = run_root / report["run_id"]
        assert {"exec", "scanner", "feed-okx"} <= set(report["processes"])

        # the run root and the run directory: ours, nobody else may even list or traverse them
        for d in (run_root, run_dir):
            st = d.stat()
            assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700, (d, oct(st.st_mode))
        socks = sorted(p for p in run_dir.iterdir() if stat.S_ISSOCK(p.stat().st_mode))
        assert {p.name for p in socks} >= {"control.ipc", "events.ipc", "events-in.ipc", "opportunities.ipc"}
        for p in socks:
            assert p.stat().st_uid == os.getuid()
            assert not _others_may_connect(p), p
        if os.getuid() == 0:
            # the kernel's own answer for another user; an open socket shows the probe can connect at all
            open_dir = Path(tempfile.mkdtemp(prefix="pbsec-open"))
            try:
                os.chmod(open_dir, 0o777)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(str(open_dir / "s"))
                listener.listen(1)
                os.chmod(open_dir / "s", 0o777)
                assert _probe_as_nobody(open_dir / "s") == "connected"
                listener.close()
            finally:
                shutil.rmtree(open_dir, ignore_errors=True)
            assert _probe_as_nobody(run_dir / "control.ipc") == "denied"
            assert _probe_as_nobody(run_dir / "events.ipc") == "denied"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert not run_dir.exists()
    assert _leftovers(proc.pid, str(run_root)) == []
    out = out_path.read_bytes() + err_path.read_bytes()
    _assert_no_secret("the launcher's output", out)
    data = next((tmp_path / "data").iterdir())
    assert (data / "summary.json").exists() and (data / "journal.sqlite").exists()
    assert _assert_data_dir_clean(data) >= 8  # logs of every process, the journal, the summary


# --------------------------------------------------------------------------- crash output


def test_a_crash_at_start_prints_no_secret(tmp_path: Path, run_root: Path) -> None:
    """exec decrypts the key file, then fails on a venue's markets file: its traceback reaches the
    launcher's stderr and exec's logs, without a credential or the passphrase."""
    key_file = tmp_path / "keys.enc"
    keys.write_keys(key_file, PASSPHRASE, FILE_SECRETS, n=2**12)
    raw = _three_venue_demo(tmp_path, run_root)
    raw["mode"] = "readonly"
    raw["venues"] = {k: raw["venues"][k] for k in ("binanceusdm", "okx")}
    raw["venues"]["okx"].pop("api_key_env")  # okx's credentials come from the key file
    for v in raw["venues"].values():
        v["ccxt_markets_file"] = str(tmp_path / "no-such-markets.json")
    raw["run"]["keys_file"] = str(key_file)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, **ENV_SECRETS, keys.PASSPHRASE_ENV: PASSPHRASE}
    proc = subprocess.Popen([*_cmd("perpbot-launch"), "--config", str(cfg), "--duration", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err_bytes = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err_bytes.decode()
    assert proc.returncode == 1, err
    assert "process exec exited with code 1 while starting" in err
    assert "no-such-markets.json" in err and "Traceback" in err  # exec's crash, as the launcher shows it
    _assert_no_secret("the launcher's crash output", out + err_bytes)
    data = next((tmp_path / "data").iterdir())
    exec_log = (data / "exec.jsonl").read_text()
    assert "exec failed" in exec_log and "no-such-markets.json" in exec_log
    _assert_data_dir_clean(data)
    assert _leftovers(proc.pid, str(run_root)) == [] and not any(run_root.iterdir())


def test_live_refuses_a_key_file_it_cannot_decrypt(tmp_path: Path, run_root: Path) -> None:
    key_file = tmp_path / "keys.enc"
    keys.write_keys(key_file, PASSPHRASE, FILE_SECRETS, n=2**12)
    raw = _three_venue_demo(tmp_path, run_root)
    raw["mode"] = "live"
    raw["venues"] = {k: raw["venues"][k] for k in ("binanceusdm", "okx")}
    raw["run"]["keys_file"] = str(key_file)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(raw))
    wrong = "wrong-passphrase-0f0f0f"
    env = {**os.environ, **ENV_SECRETS, keys.PASSPHRASE_ENV: wrong}
    res = subprocess.run([*_cmd("perpbot-launch"), "--config", str(cfg), "--confirm-live"], capture_output=True,
                         text=True, env=env, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"perpbot-launch: mode live reads credentials from the key file (run.keys_file), but: wrong passphrase "
        f"or damaged file: {key_file}"]
    assert wrong not in res.stdout + res.stderr
    _assert_no_secret("the refusal", res.stdout + res.stderr)
    assert not run_root.exists() and not (tmp_path / "data").exists()
