"""Building and running the pipelines: the streaming watch, one bounded poll, a backfill.

Locally they run on Beam's in-process runner (``FnApiRunner``); the default DirectRunner
would first try to download the Prism runner, which fails offline. Any ``--runner`` and
pipeline options given by the user pass through unchanged (Flink, Spark, Dataflow, or
``--direct_num_workers N --direct_running_mode multi_processing``). A backfill also runs on
Beam's DaskRunner over a ``dask.distributed`` cluster (``--runner dask``; ``pipelines.dask_cluster``).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from indexer.app.job import JobConfig
from indexer.errors import PhylolmError
from indexer.app.listing import ListStep
from indexer.app.writer import check_index_layout
from pipelines import dask_cluster
from pipelines.transforms import WRITER_KEY, IndexNewModels, ProbeAndIndex, ReportProgress, TickEveryFn

MAX_TIMESTAMP = 2**62 / 1e6  # "forever" in seconds, well inside Beam's timestamp range


def pipeline_options(runner_args: Sequence[str] = (), *, streaming: bool = False) -> PipelineOptions:
    args = list(runner_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")
    opts = PipelineOptions(args)
    if streaming:
        opts.view_as(StandardOptions).streaming = True
    return opts


def _in_process(opts: PipelineOptions) -> bool:
    runner = opts.view_as(StandardOptions).runner or ""
    return runner.split(".")[-1] in ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner")


def _report(pcoll, total: int | None = None):
    return (pcoll
            | "KeyForReport" >> beam.Map(lambda s: (WRITER_KEY, s))
            | "Report" >> beam.ParDo(ReportProgress(total)))


def run_watch(config: JobConfig, *, interval: float, once: bool = False, duration: float | None = None,
              runner_args: Sequence[str] = (), publish_every: float = 0.0) -> str | None:
    """The streaming job (or, with ``once``, one poll → probe → update → publish cycle).

    On the in-process runner the polls come from ``TickEveryFn`` (a sleeping loop: the job
    runs in batch mode with one never-ending element source); elsewhere from Beam's
    ``PeriodicImpulse`` in streaming mode. The streaming job retries a listing that failed
    with backoff within half an interval; ``once`` does not (the scheduler runs it again) and
    returns the poll's id, whose row in the ``polls`` table says whether the listing completed.
    """
    if dask_cluster.wanted(runner_args):
        raise PhylolmError("the dask runner runs `phylolm backfill` only: Beam's DaskRunner has no keyed state "
                           "and no unbounded input, which `watch` needs")
    check_index_layout(config)
    opts = pipeline_options(runner_args)
    if not once and not _in_process(opts):
        opts.view_as(StandardOptions).streaming = True
    started = time.time()
    with beam.Pipeline(options=opts) as p:
        if once:
            polls = p | "OnePoll" >> beam.Create([started])
        elif _in_process(opts):
            stop = time.time() + duration if duration else None
            polls = p | "Start" >> beam.Impulse() | "Poll" >> beam.ParDo(TickEveryFn(interval, stop))
        else:
            start = time.time()
            stop = start + duration if duration else MAX_TIMESTAMP
            polls = p | "Poll" >> PeriodicImpulse(start_timestamp=start, stop_timestamp=stop,
                                                  fire_interval=interval)
        _report(polls | "IndexNewModels" >> IndexNewModels(config, publish_every=publish_every,
                                                            retry_within=0.0 if once else interval / 2))
    return f"{started:.6f}" if once else None


def run_backfill(config: JobConfig, *, runner_args: Sequence[str] = (), publish_every: float = 10.0,
                 dask_workers: int | None = None, dask_scheduler: str | None = None) -> int:
    """List the models to backfill now (upload order), then probe and insert each one.

    Returns how many models were listed. Progress is printed as ``[k/N]`` per model by the
    writer. ``dask_workers`` / ``dask_scheduler`` (or ``--runner dask`` among the runner
    arguments) run it on Beam's DaskRunner: the probes as dask tasks on the cluster's worker
    processes, the writer as one task (see ``pipelines.dask_cluster``).
    """
    args = list(runner_args)
    on_dask = dask_cluster.wanted(args, dask_workers, dask_scheduler)
    check_index_layout(config)  # a refusal before hours of probing, not after
    models = ListStep(config)()
    print(f"backfill: {len(models)} model(s) to index", flush=True)
    if not models:
        return 0
    if on_dask:
        with dask_cluster.cluster(args, workers=dask_workers, scheduler=dask_scheduler, n_items=len(models)) as dargs:
            summaries = _run(config, models, dargs, publish_every)
        dask_cluster.report(summaries)
    else:
        _run(config, models, args, publish_every)
    return len(models)


def _run(config: JobConfig, models, runner_args: Sequence[str], publish_every: float) -> list:
    """The backfill pipeline; returns the writer's summaries where the runner hands them back
    (the DaskRunner does: its last step's output), else an empty list."""
    p = beam.Pipeline(options=pipeline_options(runner_args))
    listed = p | "Listed" >> beam.Create(models, reshuffle=False)
    _ = listed | "ProbeAndIndex" >> ProbeAndIndex(config, publish_every=publish_every, in_upload_order=True)
    result = p.run()
    try:
        result.wait_until_finish()
        return dask_cluster.results(result)
    finally:
        dask_cluster.close(result)
