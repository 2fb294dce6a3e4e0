"""The backfill on Beam's DaskRunner, over a ``dask.distributed`` cluster.

``phylolm backfill --runner dask`` starts a local cluster of worker processes
(``--dask-workers N``, one thread each) for the length of the job, or joins a running one
(``--dask-scheduler ADDRESS``); any ``--dask_*`` option of Beam's ``DaskOptions`` passes
through. What Beam 2.77's DaskRunner does, and what the backfill does about it:

- It translates ``Create``, ``ParDo``, ``GroupByKey`` and ``Flatten`` to ``dask.bag``
  operations and computes only the last step's bag; ``Reshuffle`` is a no-op. So the fan-out
  is ``Create``'s partitioning: by default 128 elements per partition, which would put a
  small backfill in one task. Unless ``--dask_npartitions`` / ``--dask_partition_size`` is
  given, each model is its own partition (``--dask_partition_size=1``): one probe per dask
  task, spread over the workers, and a task lost with its worker is one probe redone.
- It has no keyed state (a ``DoFn.StateParam`` fails) and drops what ``finish_bundle``
  yields. So the backfill's writer is ``IndexGatheredFn``: it takes the one element that
  the GroupByKey onto ``WRITER_KEY`` makes, so it is one task, single by construction, and
  writes and yields everything inside that call. Behind it, the catalog's ``writer_turn``
  file lock still holds any second attempt back (dask may retry a task whose worker it
  thinks lost), and ``IndexWriter.apply`` leaves models already written ``unchanged``.
- It calls ``setup`` and ``teardown`` per partition, not once per worker: each probe task
  builds its own probe step, and the engine with it (measured in ``deploy/SCALE.md``).
- The last step's output comes back to the launcher: the writer's summaries, which say in
  which worker process each model was probed and which one wrote them (``report``).

The streaming ``watch`` does not run here: the DaskRunner reads bounded input only and its
stateful steps need keyed state.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from indexer.errors import PhylolmError

log = logging.getLogger("phylolm")
RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
NAMES = {"dask", "daskrunner", RUNNER.lower()}
_ADDRESS = ("--dask_client_address", "--dask_scheduler_file")
_PARTITIONS = ("--dask_npartitions", "--dask_partition_size")


def _runner(args: Sequence[str]) -> str | None:
    """The ``--runner`` value among Beam's arguments (``--runner X`` or ``--runner=X``)."""
    found = None
    for i, a in enumerate(args):
        if a == "--runner" and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith("--runner="):
            found = a.split("=", 1)[1]
    return found


def _has(args: Sequence[str], names: Sequence[str]) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def _without_runner(args: Sequence[str]) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "--runner":
            skip = True
            continue
        if not a.startswith("--runner="):
            out.append(a)
    return out


def wanted(args: Sequence[str], workers: int | None = None, scheduler: str | None = None) -> bool:
    """True when the job is to run on the DaskRunner: ``--runner dask`` (or ``DaskRunner``,
    or its full class path), or ``--dask-workers`` / ``--dask-scheduler`` with no other runner."""
    runner = _runner(args)
    if runner is not None and runner.lower() in NAMES:
        return True
    if workers is None and scheduler is None:
        return False
    if runner is not None:
        raise PhylolmError(f"--dask-workers/--dask-scheduler run the job on Beam's DaskRunner, "
                           f"not on --runner {runner}")
    return True


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


@contextmanager
def cluster(args: Sequence[str], *, workers: int | None = None, scheduler: str | None = None,
            n_items: int = 0) -> Iterator[list[str]]:
    """The Beam arguments that run the job on the DaskRunner, with a cluster to run on while
    the block runs: the one at ``scheduler`` (or named by ``--dask_client_address`` /
    ``--dask_scheduler_file``), else a local one of ``workers`` processes started here and
    closed at the end."""
    try:
        import distributed
    except ImportError:
        raise PhylolmError("the dask runner needs dask.distributed: pip install 'phylolm-indexer[dask]'") from None
    if workers is not None and workers < 1:
        raise PhylolmError("--dask-workers must be at least 1")
    out = _without_runner(args) + [f"--runner={RUNNER}"]
    if not _has(out, _PARTITIONS):
        out.append("--dask_partition_size=1")  # one model per task (Reshuffle is a no-op on dask)
    given = _has(out, _ADDRESS)
    if scheduler is not None and given:
        raise PhylolmError("--dask-scheduler and --dask_client_address/--dask_scheduler_file name two clusters")
    if workers is not None and (scheduler is not None or given):
        raise PhylolmError("--dask-workers starts a local cluster; a running cluster (--dask-scheduler, "
                           "--dask_client_address, --dask_scheduler_file) has the workers it has")
    if scheduler is not None:
        out.append(f"--dask_client_address={scheduler}")
    if scheduler is not None or given:
        yield out
        return
    n = workers or default_workers()
    for name in ("distributed", "tornado.application"):  # the scheduler's chatter; task errors still raise
        logging.getLogger(name).setLevel(logging.ERROR)
    started = time.monotonic()
    local = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                     dashboard_address=":0", silence_logs=logging.ERROR)
    try:
        print(f"dask: local cluster of {n} worker process(es) at {local.scheduler_address} "
              f"(up in {time.monotonic() - started:.1f}s)", flush=True)
        yield out + [f"--dask_client_address={local.scheduler_address}"]
    finally:
        # A worker process that imported Beam does not stop by itself (its event loop hangs at
        # shutdown): its nanny kills it after a few seconds. Nothing is lost by then.
        try:
            local.close(timeout=30)
        except Exception as e:  # noqa: BLE001 - the job is done; a slow shutdown is not its failure
            log.warning("the local dask cluster did not shut down cleanly: %s", type(e).__name__)


def results(result) -> list:
    """The last step's output, where the runner hands it back (Beam's DaskRunner computes the
    last step's bag and keeps its futures); else []."""
    futures = getattr(result, "futures", None)
    if futures is None:
        return []
    out = []
    for f in futures:
        got = f.result()
        out.extend(got if isinstance(got, list) else [got])
    return out


def close(result) -> None:
    """Let the DaskRunner's client go (the runner keeps it open after the job)."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


def report(summaries: Sequence) -> None:
    """The launcher's line for a dask run: where the probes ran and who wrote."""
    summaries = [s for s in summaries if hasattr(s, "model_id")]
    probed = {}
    for s in summaries:
        if s.probed_by and s.status == "indexed":
            probed[s.probed_by] = probed.get(s.probed_by, 0) + 1
    writers = sorted({s.written_by for s in summaries if s.written_by})
    where = ", ".join(f"{w} ({n})" for w, n in sorted(probed.items())) or "-"
    print(f"dask: {len(summaries)} update(s) by {len(writers)} writer process(es) ({', '.join(writers) or '-'}); "
          f"{sum(probed.values())} model(s) indexed from probes in {len(probed)} worker process(es): {where}",
          flush=True)
