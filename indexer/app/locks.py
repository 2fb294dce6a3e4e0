"""One job per catalog: the advisory lock a watch or backfill holds.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from indexer.adapters.catalog import refresh_snapshot, writer_lock_path
from indexer.errors import PhylolmError


class WriterLock:
    """An advisory lock on ``<catalog>.lock`` held for the life of a watch or backfill, so a
    second job on the same catalog is refused at once with a clear message.

    While it is held, readers (``phylolm sql``, the job's own listing) read the published
    snapshot, which taking the lock brings up to date first, so no reader ever holds the file
    when the job's writer opens it."""

    def __init__(self, catalog: Path):
        self.catalog = catalog
        self.path = writer_lock_path(catalog)
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PhylolmError(f"another phylolm job (pid {holder}) is already writing {self.path.with_suffix('')}; "
                               f"one writer per catalog — query it with `phylolm sql` meanwhile") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        try:
            refresh_snapshot(self.catalog)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

