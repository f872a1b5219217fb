"""Why exec stopped, as the launcher's alert says it: a journal that cannot be written is named."""

from __future__ import annotations

import errno
import sqlite3

from perpbot.exec.process import failure_code
from perpbot.shm.layout import ProcError


def test_a_journal_that_cannot_be_written_is_told_apart() -> None:
    assert failure_code(sqlite3.OperationalError("database or disk is full"),
                        ProcError.TASK_FAILED) is ProcError.JOURNAL_FAILED
    assert failure_code(sqlite3.OperationalError("attempt to write a readonly database"),
                        ProcError.START_FAILED) is ProcError.JOURNAL_FAILED
    assert failure_code(OSError(errno.ENOSPC, "No space left on device"),
                        ProcError.TASK_FAILED) is ProcError.JOURNAL_FAILED
    assert failure_code(OSError(errno.EROFS, "Read-only file system"),
                        ProcError.TASK_FAILED) is ProcError.JOURNAL_FAILED


def test_other_failures_keep_their_code() -> None:
    assert failure_code(ValueError("bug"), ProcError.TASK_FAILED) is ProcError.TASK_FAILED
    assert failure_code(OSError(errno.ECONNREFUSED, "refused"), ProcError.START_FAILED) is ProcError.START_FAILED
