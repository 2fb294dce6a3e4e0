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
from indexer.settings import Settings, load_settings
from schemas.records import ProbeParams, check_model_id

RUNNER_HELP = ("Any other --option is passed to Beam as a pipeline option, e.g. --runner=FlinkRunner "
               "or --direct_num_workers 2 --direct_running_mode multi_processing.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file (TOML).")]
GenesOpt = Annotated[int | None, typer.Option("--genes", help="Use only the first G genes of the genome.")]
SamplesOpt = Annotated[int | None, typer.Option("--samples", help="Samples per gene (paper: 32).")]
PublishOpt = Annotated[Path | None, typer.Option("--publish-dir", help="Folder refreshed after each update.")]
GenomeOpt = Annotated[str | None, typer.Option("--genome", help="Genome: math, code, or a JSONL file.")]


def job_settings(config: Path | None, **cli) -> Settings:
    from indexer.probers.base import BACKENDS

    s = load_settings(cli, config)[0]
    if s.backend not in BACKENDS:  # refused up front: a typo must not fail every model of the run
        raise PhylolmError(f"backend: unknown {s.backend!r}; choose one of {', '.join(BACKENDS)}")
    return s


def job_config(s: Settings, hub_url: str | None, **extra):
    from indexer.service import JobConfig

    params = ProbeParams(n_samples=s.samples, temperature=s.temperature, max_tokens=s.max_tokens, seed=s.seed)
    options = (("device", s.device),) if s.device and s.backend == "transformers" else ()
    return JobConfig(catalog=s.catalog.resolve(), hub=hub_url, backend=s.backend, backend_options=options,
                     genome=s.genome, n_genes=s.genes, params=params, cache_dir=s.cache_dir.expanduser(),
                     publish_dir=s.publish_dir.resolve() if s.publish_dir else None,
                     max_bytes=s.max_weights_gb * 1e9, author=s.author, **extra)


@contextmanager
def job(s: Settings) -> Iterator[str | None]:
    """Holds the one-writer lock for the catalog and serves a folder hub while the job runs."""
    from indexer.hub.client import open_hub
    from indexer.service import WriterLock

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with WriterLock(s.catalog.resolve()), open_hub(s.hub) as url:
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
              author: Annotated[str | None, typer.Option("--author", help="Only this author's uploads.")] = None) -> None:
        """Watch the Hub: probe each new upload and insert it into the index as it appears.

        Streaming by default (a poll every --interval seconds, until stopped); --once runs a
        single bounded cycle. A failed probe (download, engine) is retried on later polls, up to
        3 attempts per revision. Only one job may write a catalog at a time; meanwhile
        `phylolm sql` reads the snapshot the job publishes after each update.
        """
        s = job_settings(config, catalog=catalog, hub=hub, backend=backend, genome=genome, genes=genes,
                         samples=samples, publish_dir=publish_dir, interval=interval, author=author)
        with job(s) as url:
            # Beam is imported only once the input is valid and the lock held: its import-time
            # warnings must not precede a refusal's one-line message.
            from pipelines.run import run_watch

            out.print(f"watching {url} every {s.interval:g}s → {s.catalog}" if not once else f"polling {url} once")
            run_watch(job_config(s, url), interval=s.interval, once=once, duration=duration,
                      runner_args=ctx.args)

    @app.command(context_settings=extra, epilog=RUNNER_HELP)
    def backfill(ctx: typer.Context,
                 model_ids: Annotated[list[str] | None, typer.Argument(help="Model ids (default: every model listed).")] = None,
                 catalog: CatalogOpt = DEFAULT_CATALOG, hub: HubOpt = None, backend: BackendOpt = None,
                 genome: GenomeOpt = None, genes: GenesOpt = None, samples: SamplesOpt = None,
                 publish_dir: PublishOpt = None, config: ConfigOpt = None,
                 author: Annotated[str | None, typer.Option("--author", help="Only this author's models.")] = None,
                 since: Annotated[str | None, typer.Option("--since", help="Only models created on/after (YYYY-MM-DD).")] = None,
                 limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N models (oldest first).")] = None) -> None:
        """Index existing models, oldest upload first, each inserted incrementally (bounded job)."""
        # Unknown --options land among the positional ids: everything from the first one on
        # is a Beam pipeline option (model ids never start with '-').
        given = list(model_ids or ())
        cut = next((i for i, a in enumerate(given) if a.startswith("-")), len(given))
        runner_args = given[cut:] + list(ctx.args)
        ids = tuple(check_id(m) for m in given[:cut])
        since_dt = parse_date(since, "--since")
        s = job_settings(config, catalog=catalog, hub=hub, backend=backend, genome=genome, genes=genes,
                         samples=samples, publish_dir=publish_dir, author=author)
        with job(s) as url:
            from pipelines.run import run_backfill  # after validation and the lock (see watch)

            run_backfill(job_config(s, url, since=since_dt, limit=limit, model_ids=ids), runner_args=runner_args)

    @app.command()
    def probe(model_id: Annotated[str, typer.Argument(help="The model to probe now.")],
              catalog: CatalogOpt = DEFAULT_CATALOG, hub: HubOpt = None, backend: BackendOpt = None,
              genome: GenomeOpt = None, genes: GenesOpt = None, samples: SamplesOpt = None,
              publish_dir: PublishOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
        """Probe one model now and insert it into the index (a no-op if already indexed)."""
        from indexer.service import IndexWriter, ListStep, ProbeStep

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
                        outcome = step(listed[0])
                    finally:
                        step.close()
                    summary = writer.apply(outcome)
                    writer.publish()
                    result = {"model_id": model_id, "status": summary.status, "reason": summary.reason,
                              "snapshot": summary.snapshot, "nearest": summary.nearest,
                              "seconds": outcome.probe.seconds if outcome.probe else None}
            finally:
                writer.close()
        if json:
            print_json(result)
        else:
            near = ", ".join(f"{m} ({d:.3f})" for m, d in result.get("nearest") or ())
            out.print(f"{result['status']}: {model_id}" + (f" — {result['reason']}" if result.get("reason") else "")
                      + (f"\nnearest: {near}" if near else ""))
        if result["status"] in ("failed", "skipped"):
            raise typer.Exit(1)


def check_id(model_id: str) -> str:
    try:
        return check_model_id(model_id)
    except ValueError as e:
        raise PhylolmError(str(e)) from None
