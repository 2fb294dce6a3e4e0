"""Job commands: watch (streaming or --once), backfill, probe."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer

from indexer.cli.common import (DEFAULT_CATALOG, BackendOpt, CatalogOpt, HubOpt, JsonOpt, out, parse_date,
                                print_json)
from indexer.errors import PhylolmError
from indexer.app import defaults
from indexer.app.settings import Settings, job_config, job_settings
from schemas.records import ProbeParams, check_model_id

RUNNER_HELP = ("Any other --option is passed to Beam as a pipeline option, e.g. --runner=FlinkRunner "
               "or --direct_num_workers 2 --direct_running_mode multi_processing.")
BACKFILL_RUNNER_HELP = (RUNNER_HELP + " --runner dask (Beam's DaskRunner, with --dask-workers or "
                        "--dask-scheduler) runs it on a dask.distributed cluster; Beam's --dask_* options pass through.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file (TOML).")]
GenesOpt = Annotated[int | None, typer.Option("--genes", help="Use only the first G genes of the genome.")]
SamplesOpt = Annotated[int | None, typer.Option("--samples", help=f"Samples per gene (paper: {ProbeParams().n_samples}).")]
PublishOpt = Annotated[Path | None, typer.Option("--publish-dir", help="Folder refreshed after each update.")]
GenomeOpt = Annotated[str | None, typer.Option("--genome", help="Genome: math, code, or a JSONL file.")]
IndexModeOpt = Annotated[str | None, typer.Option(
    "--index-mode", help="exact (every pair in `distances`: up to a few thousand models) | sparse (each "
                         "model's --index-k nearest: Hub scale; see deploy/SCALE.md). A catalog keeps the "
                         f"mode it was made with [default: {defaults.INDEX_MODE}].")]
IndexKOpt = Annotated[int | None, typer.Option(
    "--index-k", min=2, help=f"Sparse index: nearest models kept per model [default: {defaults.INDEX_K}].")]
# `watch --once` exit status when the Hub could not be listed completely (an outage, a rate
# limit that outlasted the retries): distinct from bad input (2) and unexpected errors (1), so
# that a CronJob or systemd timer reports the failure.
EXIT_HUB_UNAVAILABLE = 3


@contextmanager
def job(s: Settings) -> Iterator[str | None]:
    """Holds the catalog's job lock (one job per catalog) and serves a folder hub while the job runs."""
    from indexer.adapters.catalog import JobLock
    from indexer.app.hub import open_hub

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with JobLock(s.catalog.resolve()), open_hub(s.hub) as url:
        yield url


def register(app: typer.Typer) -> None:
    extra = {"allow_extra_args": True, "ignore_unknown_options": True}

    @app.command(context_settings=extra, epilog=RUNNER_HELP)
    def watch(ctx: typer.Context, catalog: CatalogOpt = DEFAULT_CATALOG, hub: HubOpt = None,
              backend: BackendOpt = None, genome: GenomeOpt = None, genes: GenesOpt = None,
              samples: SamplesOpt = None, publish_dir: PublishOpt = None, config: ConfigOpt = None,
              once: Annotated[bool, typer.Option("--once", help="One poll → probe → update → publish cycle (for cron).")] = False,
              interval: Annotated[float | None, typer.Option("--interval", help="Seconds between polls.")] = None,
              duration: Annotated[float | None, typer.Option("--duration", help="Stop after this many seconds.")] = None,
              author: Annotated[str | None, typer.Option("--author", help="Only this author's uploads.")] = None,
              first_window: Annotated[float | None, typer.Option(
                  "--first-window", help="Hours the first poll looks back when the catalog has no watermark "
                                         f"yet [default: {defaults.FIRST_WINDOW_HOURS:g}]; older models: "
                                         "`phylolm backfill --since`.")] = None,
              probe_budget: Annotated[int | None, typer.Option(
                  "--probe-budget", min=1, help="Models probed per cycle; the rest wait as `queued` for later "
                                                "cycles [default: no limit].")] = None,
              budget_seconds: Annotated[float | None, typer.Option(
                  "--budget-seconds", help="Probe seconds per cycle, at the rate measured over the last day.")] = None,
              queue_order: Annotated[str | None, typer.Option(
                  "--queue-order", help="Which candidates a cycle takes first: rank (by --priority) | newest.")] = None,
              priority: Annotated[str | None, typer.Option(
                  "--priority", help="Priority terms: downloads, likes, related, size, age, as TERM=WEIGHT,... "
                                     f"[default: {defaults.PRIORITY}].")] = None,
              index_mode: IndexModeOpt = None, index_k: IndexKOpt = None) -> None:
        """Watch the Hub: probe each new upload and insert it into the index as it appears.

        Streaming by default (a poll every --interval seconds, until stopped); --once runs a
        single bounded cycle. With no watermark yet, the first poll looks back --first-window
        hours. Each cycle probes at most --probe-budget models (or --budget-seconds of probing),
        the best by --queue-order; the rest are recorded `queued` (see the `queue` view) and
        taken by later cycles. A failed probe (download, engine) is retried on later polls, up
        to 3 attempts per revision. A listing the Hub did not let complete (outage, rate limit)
        records nothing: the streaming watch retries it with backoff and keeps polling, and
        --once exits with status 3 (bad input: 2). Only one job may write a catalog at a time;
        meanwhile `phylolm sql` reads what the job publishes (<catalog>.published/).
        """
        s = job_settings(config, catalog=catalog, hub=hub, backend=backend, genome=genome, genes=genes,
                         samples=samples, publish_dir=publish_dir, interval=interval, author=author,
                         first_window_hours=first_window, probe_budget=probe_budget,
                         budget_seconds=budget_seconds, queue_order=queue_order, priority=priority,
                         index_mode=index_mode, index_k=index_k)
        with job(s) as url:
            # Beam is imported only once the input is valid and the lock held: its import-time
            # warnings must not precede a refusal's one-line message.
            from pipelines.run import run_watch

            out.print(f"watching {url} every {s.interval:g}s → {s.catalog}" if not once else f"polling {url} once")
            budget = ", ".join(x for x in (f"{s.probe_budget} models" if s.probe_budget else "",
                                           f"{s.budget_seconds:g}s" if s.budget_seconds else "") if x)
            if budget:
                out.print(f"probe budget per cycle: {budget}; the rest queued ({s.queue_order} order)")
            cfg = job_config(s, url, first_window_hours=s.first_window_hours, probe_budget=s.probe_budget,
                             budget_seconds=s.budget_seconds, queue_order=s.queue_order, priority=s.priority,
                             use_queue=True)
            poll_id = run_watch(cfg, interval=s.interval, once=once, duration=duration, runner_args=ctx.args)
        if once:
            _exit_for_poll(s.catalog.resolve(), poll_id)

    @app.command(context_settings=extra, epilog=BACKFILL_RUNNER_HELP)
    def backfill(ctx: typer.Context,
                 model_ids: Annotated[list[str] | None, typer.Argument(help="Model ids (default: every model listed).")] = None,
                 catalog: CatalogOpt = DEFAULT_CATALOG, hub: HubOpt = None, backend: BackendOpt = None,
                 genome: GenomeOpt = None, genes: GenesOpt = None, samples: SamplesOpt = None,
                 publish_dir: PublishOpt = None, config: ConfigOpt = None,
                 author: Annotated[str | None, typer.Option("--author", help="Only this author's models.")] = None,
                 since: Annotated[str | None, typer.Option("--since", help="Only models created on/after (YYYY-MM-DD).")] = None,
                 limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N models (oldest first).")] = None,
                 dask_workers: Annotated[int | None, typer.Option(
                     "--dask-workers", min=1, help="Run on Beam's DaskRunner over a local dask cluster of N worker "
                                                   "processes (one thread each), started for this job "
                                                   "[default with --runner dask: one per CPU core].")] = None,
                 dask_scheduler: Annotated[str | None, typer.Option(
                     "--dask-scheduler", help="Run on Beam's DaskRunner over the running dask cluster whose "
                                              "scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786); its workers "
                                              "need phylolm installed and the catalog and cache paths.")] = None,
                 index_mode: IndexModeOpt = None, index_k: IndexKOpt = None) -> None:
        """Index existing models, oldest upload first, each inserted incrementally (bounded job).

        The probes fan out over the runner's workers; one writer inserts them. On a dask cluster
        (--runner dask, --dask-workers N or --dask-scheduler ADDRESS) each model is probed as one
        dask task in a worker process, and the writer is one task that takes every outcome at
        once; see deploy/CLUSTER.md.
        """
        # Unknown --options land among the positional ids: everything from the first one on
        # is a Beam pipeline option (model ids never start with '-').
        given = list(model_ids or ())
        cut = next((i for i, a in enumerate(given) if a.startswith("-")), len(given))
        runner_args = given[cut:] + list(ctx.args)
        ids = tuple(check_id(m) for m in given[:cut])
        since_dt = parse_date(since, "--since")
        s = job_settings(config, catalog=catalog, hub=hub, backend=backend, genome=genome, genes=genes,
                         samples=samples, publish_dir=publish_dir, author=author, index_mode=index_mode,
                         index_k=index_k)
        with job(s) as url:
            from pipelines.run import run_backfill  # after validation and the lock (see watch)

            run_backfill(job_config(s, url, since=since_dt, limit=limit, model_ids=ids), runner_args=runner_args,
                         dask_workers=dask_workers, dask_scheduler=dask_scheduler)

    @app.command()
    def probe(model_id: Annotated[str, typer.Argument(help="The model to probe now.")],
              catalog: CatalogOpt = DEFAULT_CATALOG, hub: HubOpt = None, backend: BackendOpt = None,
              genome: GenomeOpt = None, genes: GenesOpt = None, samples: SamplesOpt = None,
              publish_dir: PublishOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
        """Probe one model now and insert it into the index (a no-op if already indexed)."""
        from indexer.app.writer import IndexWriter
        from indexer.app.listing import ListStep
        from indexer.app.probing import ProbeStep

        model_id = check_id(model_id)  # before the lock: a refused id leaves nothing on disk
        s = job_settings(config, catalog=catalog, hub=hub, backend=backend, genome=genome, genes=genes,
                         samples=samples, publish_dir=publish_dir)
        with job(s) as url:
            cfg = job_config(s, url, model_ids=(model_id,))
            listed = ListStep(cfg)()
            writer = IndexWriter(cfg)
            try:
                if not listed:
                    m = writer.catalog.require_model(model_id)
                    result = {"model_id": model_id, "status": "unchanged", "reason": m.reason}
                else:
                    step = ProbeStep(cfg)
                    try:
                        # A renamed model lists its old id (resolved) before the new one.
                        for record in listed[:-1]:
                            writer.apply(step(record))
                        outcome = step(listed[-1])
                    finally:
                        step.close()
                    summary = writer.apply(outcome)
                    writer.publish()
                    result = {"model_id": summary.model_id, "status": summary.status, "reason": summary.reason,
                              "snapshot": summary.snapshot, "nearest": summary.nearest,
                              "seconds": outcome.probe.seconds if outcome.probe else None}
            finally:
                writer.close()
        if json:
            print_json(result)
        else:
            near = ", ".join(f"{m} ({d:.3f})" for m, d in result.get("nearest") or ())
            out.print(f"{result['status']}: {result['model_id']}" + (f" — {result['reason']}" if result.get("reason") else "")
                      + (f"\nnearest: {near}" if near else ""))
        if result["status"] in ("failed", "skipped"):
            raise typer.Exit(1)


def _exit_for_poll(catalog: Path, poll_id: str | None) -> None:
    """After `watch --once`: exit 3 when that cycle's listing did not complete."""
    from indexer.adapters.catalog import open_read_only
    from indexer.cli.common import err

    outcome = None
    if poll_id:
        with open_read_only(catalog) as reader:
            outcome = reader.poll_outcome(poll_id)
    if outcome and outcome[0]:
        return
    why = outcome[1] if outcome else "the poll recorded no outcome"
    err.print(f"error: the Hub listing did not complete, nothing new recorded this cycle: {why} "
              f"(exit {EXIT_HUB_UNAVAILABLE})", markup=False, highlight=False)
    raise typer.Exit(EXIT_HUB_UNAVAILABLE)


def check_id(model_id: str) -> str:
    try:
        return check_model_id(model_id)
    except ValueError as e:
        raise PhylolmError(str(e)) from None
