"""The journal's disk fails: full, or read-only.

File modes do not stop root, so the journal lives on a small tmpfs of its own
(mounted by the test; skipped where mounting is not allowed): before exec starts,
`journal.sqlite` and its intent log in the run's folder are made symlinks into it
(SQLite follows them and keeps its -wal and -shm beside the target). Logs and the
paper venues' ledgers stay on the ordinary disk, so what exec says about the
failure is readable and the venues keep an honest record.

- Full: a filler file takes every free page while exec trades.
- Read-only: a mounted filesystem cannot be made read-only while a process holds
  a file on it open for writing (EBUSY, for root too; only the kernel does that,
  after I/O errors), so exec is SIGKILLed and the filesystem remounted read-only
  before the launcher restarts it: the restarted exec meets a journal it cannot
  write.

Then the space is freed (the filesystem made writable again) and the run must
recover. What must hold: nothing reached a venue that the journal (SQLite or the
intent log) did not have first, no fill lost, trading stopped while the journal
could not be written, and the failure is said somewhere a person looks.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Bot, mono_ns
from invariants import failed_process_reported

pytestmark = pytest.mark.slow

FS_SIZE = "16m"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


@pytest.fixture
def journal_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of the journal's own, unmounted afterwards."""
    mnt = tmp_path / "journal-fs"
    mnt.mkdir()
    try:
        r = _run("mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mnt))
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a filesystem for the journal: {e}")
    if r.returncode:
        pytest.skip(f"cannot mount a filesystem for the journal (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        _run("mount", "-o", "remount,rw", str(mnt))
        for _ in range(10):
            if _run("umount", str(mnt)).returncode == 0:
                break
            time.sleep(0.3)
        else:
            _run("umount", "-l", str(mnt))


def _journal_into(mnt: Path) -> Any:
    def link(b: Bot) -> None:
        for name in ("journal.sqlite", "journal.sqlite.intents"):
            (b.data_dir / name).symlink_to(mnt / name)
    return link


def _fill(mnt: Path) -> Path:
    """Take every free page of the filesystem; the filler's path."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            while True:
                try:
                    f.write(b"\0" * chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def _exec_said(b: Bot, after_ns: int) -> list[str]:
    """What exec logged at ERROR or above since `after_ns`, and the tracebacks on its stderr."""
    said = [str(r.get("msg")) + (" | " + str(r.get("exc")).strip().splitlines()[-1] if r.get("exc") else "")
            for r in b.log_lines("exec") if r.get("level") in ("ERROR", "CRITICAL")
            and int(r.get("mono_ns", 0)) >= after_ns]
    stderr = (b.data_dir / "exec.log").read_text(errors="replace") if (b.data_dir / "exec.log").exists() else ""
    said += [ln.strip() for ln in stderr.splitlines() if "Error" in ln and not ln.startswith(" ")]
    return said


@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_journal_disk_fails_while_trading(journal_fs: Path, bot: Any, record: Any, failure: str) -> None:
    b: Bot = bot()
    b.start(trades=2, on_run_id=_journal_into(journal_fs))
    assert (journal_fs / "journal.sqlite-wal").exists(), "the journal is not on its own filesystem"
    st = b.status()
    exec_pid = st["processes"]["exec"]["pid"]
    restarts0 = st["processes"]["exec"]["restarts"]

    t0 = time.monotonic()
    t0_ns = mono_ns()
    filler: Path | None = None
    if failure == "full":
        filler = _fill(journal_fs)
    else:
        os.kill(exec_pid, signal.SIGKILL)
        for _ in range(40):  # before the launcher restarts it (0.5 s backoff)
            r = _run("mount", "-o", "remount,ro", str(journal_fs))
            if r.returncode == 0:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"could not make the journal's filesystem read-only: {r.stderr.strip()}")
    # what the run does while the journal cannot be written: watch it for a while
    snaps: list[dict[str, Any]] = []

    def failed_and_held() -> bool:
        s = b.try_status()
        if s is not None:
            snaps.append(s)
        crashed = any(x["processes"]["exec"]["restarts"] > restarts0 + (1 if failure == "read-only" else 0)
                      for x in snaps)
        return crashed and time.monotonic() - t0 > 3.0

    b.wait("exec to fail on the journal", failed_and_held, 30, step=0.05)
    sent_while_broken = {x["exec"].get("orders_sent", 0) for x in snaps if x["processes"]["exec"]["state"]
                         == "RUNNING" and x["processes"]["exec"]["pid"] != exec_pid}
    states = [x["trading_state"] for x in snaps]
    # the disk comes back
    t_fix = time.monotonic()
    if filler is not None:
        filler.unlink()
    else:
        r = _run("mount", "-o", "remount,rw", str(journal_fs))
        assert r.returncode == 0, r.stderr

    def recovered() -> bool:
        s = b.try_status()
        return bool(s and s["processes"]["exec"]["state"] == "RUNNING" and s["trading_state"] == "RUNNING")

    b.wait("exec recovered and trading again", recovered, 40)
    rec_s = time.monotonic() - t_fix
    b.trade_on(2)
    code, reply, err = b.kill_switch()
    assert code == 0, err
    assert b.stop() == 0, b.output()[-3000:]

    said = _exec_said(b, t0_ns)
    crashes = b.output().count("exec exited with code")
    problems, notes = b.check()
    problems += [f"exec not reported: {m}" for m in failed_process_reported(b.data_dir, "exec",
                                                                             launcher_output=b.out_path)]
    why = next((s for s in said if "No space" in s or "disk is full" in s or "readonly" in s or "Read-only" in s
                or "read-only" in s), None)
    if why is None:
        problems.append("nothing a person reads says the journal could not be written")
    paused = "PAUSED" in states
    launcher_said = [ln for ln in b.output().splitlines() if "exec" in ln and "exited" in ln]
    launcher_why = any(w in " ".join(launcher_said).lower() for w in ("space", "full", "read-only", "readonly"))
    launcher_line = launcher_said[-1].split(";")[0] if launcher_said else ""
    record(f"journal disk {failure}" + (" (exec restarted into it)" if failure == "read-only" else " while trading"),
           f"exec failed on the journal and exited ({crashes} crash(es), restarted with backoff), trading "
           f"{'PAUSED' if paused else 'states ' + '/'.join(sorted(set(states)))} meanwhile; "
           f"exec said: '{(why or (said[0] if said else 'nothing'))[:160]}'; the launcher "
           + ("says why too" if launcher_why else f"says only '{launcher_line}'")
           + f"; recovered once the disk was {'freed' if filler else 'writable'}"
           + ("; nothing sent unjournaled, no fill lost" if not problems else ""),
           rec_s, problems, notes=notes, recover_what="disk fixed to exec recovered and trading RUNNING")
    del sent_while_broken
    assert not problems, problems
