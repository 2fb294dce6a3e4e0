"""The catalog's locks: what each one guards, in one place.

Three mechanisms keep "one writer per catalog" true; each guards something different:

* ``JobLock`` -- ``<catalog>.lock``, held (exclusive, non-blocking ``flock``) for the life of a
  job (watch, backfill, probe): **one job per catalog**. A second job is refused at once with
  a clear message. Taking it first brings the published snapshot up to date.
* ``is_job_running(catalog)`` -- asks, without taking anything, whether some process holds
  the ``JobLock``. Readers use it to read the published snapshot instead of the catalog while
  a job runs, so a reader never holds DuckDB's file lock when the job's writer opens the file.
* ``writer_turn(catalog)`` -- ``<catalog>.writer.lock``, held (exclusive, blocking ``flock``)
  while a pipeline's writer applies one bundle: **one writing bundle at a time**. Inside one
  job the runner already sends all updates to one key; this makes writers on other workers
  of a multi-process or cluster runner (the key moved, a bundle retried) wait their turn
  instead of meeting DuckDB's lock.

DuckDB's own file lock (one process opens the file for writing) sits under all three; its
error is turned into "held by another writer" by ``store.Catalog``.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.adapters.catalog.store import refresh_snapshot
from indexer.errors import PhylolmError


def job_lock_path(catalog: Path) -> Path:
    """``<catalog>.lock``: the ``JobLock``'s file."""
    return catalog.with_name(catalog.name + ".lock")


def writer_turn_path(catalog: Path) -> Path:
    """``<catalog>.writer.lock``: the file ``writer_turn`` locks."""
    return catalog.with_name(catalog.name + ".writer.lock")


class JobLock:
    """One job per catalog: an advisory lock on ``<catalog>.lock`` held for the life of a
    watch, backfill or probe, so a second job on the same catalog is refused at once.

    While it is held, readers (``phylolm sql``, the job's own listing) read the published
    snapshot, which taking the lock brings up to date first, so no reader ever holds the file
    when the job's writer opens it."""

    def __init__(self, catalog: Path):
        self.catalog = catalog
        self.path = job_lock_path(catalog)
        self._fd: int | None = None

    def __enter__(self) -> "JobLock":
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


def is_job_running(catalog: Path) -> bool:
    """Whether a job holds the catalog's ``JobLock`` (in any process, this one included:
    flock conflicts between open file descriptions, not processes)."""
    try:
        fd = os.open(job_lock_path(catalog), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's shared lock
    return False


@contextmanager
def writer_turn(catalog: Path) -> Iterator[None]:
    """One writing bundle at a time: waits for, then holds, ``<catalog>.writer.lock``."""
    path = writer_turn_path(catalog)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks: writers take turns
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
