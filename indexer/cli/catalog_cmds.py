"""Catalog commands: init, status, genomes, sql, scores import."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from indexer.adapters import genome_files as genome_lib
from indexer.adapters.catalog import Catalog, CatalogReader, is_published, open_read_only, run_query, snapshot_path
from indexer.cli.common import DEFAULT_CATALOG, CatalogOpt, JsonOpt, catalog_path, out, print_json, print_rows
from indexer.errors import PhylolmError
from indexer.app import defaults
from indexer.app.settings import load_settings
from schemas.records import Score

SCORE_COLUMNS = ("model_id", "benchmark", "value", "source")
scores_app = typer.Typer(help="Measured benchmark scores (the estimates' training data).", no_args_is_help=True)


def read_scores_csv(path: Path) -> list[Score]:
    """Scores from a CSV with columns model_id, benchmark, value, source (values in [0, 1]).

    Every row is validated before anything is written: one bad row refuses the file, with
    its line number, so a half-imported file never happens.
    """
    if not path.is_file():
        raise PhylolmError(f"no such file: {path}")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise PhylolmError(f"{path}: not UTF-8 text") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in SCORE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PhylolmError(f"{path}: missing column(s) {', '.join(missing)}; expected header "
                           f"{','.join(SCORE_COLUMNS)}")
    scores = []
    for lineno, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise PhylolmError(f"{path}:{lineno}: wrong number of fields")
        try:
            value = float(row["value"])
        except ValueError:
            raise PhylolmError(f"{path}:{lineno}: value {row['value']!r} is not a number") from None
        try:
            scores.append(Score(model_id=row["model_id"].strip(), benchmark=row["benchmark"].strip().lower(),
                                value=value, source=row["source"].strip()))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(x) for x in first["loc"]) or "row"
            raise PhylolmError(f"{path}:{lineno}: {field}: {first['msg']}") from None
    if not scores:
        raise PhylolmError(f"{path}: no rows")
    return scores


def register(app: typer.Typer) -> None:
    @app.command()
    def init(catalog: CatalogOpt = DEFAULT_CATALOG,
             genome: Annotated[str, typer.Option(help="Genome to register now (name or JSONL file).")] = defaults.GENOME) -> None:
        """Create the catalog (or upgrade an older one) and register a genome."""
        catalog = catalog_path(catalog)
        existed = catalog.exists()
        g = genome_lib.load(genome)
        with Catalog(catalog, create=True) as cat:
            cat.register_genome(g)
            for name in genome_lib.BUILTIN:
                cat.register_genome(genome_lib.builtin(name))
            cat.publish_snapshot()
        out.print(f"{'opened' if existed else 'created'} catalog {catalog} (genome {g.name} {g.hash[:12]})")

    @app.command()
    def status(catalog: CatalogOpt = DEFAULT_CATALOG, json: JsonOpt = False,
               config: Annotated[Path | None, typer.Option(help="Config file (TOML).")] = None) -> None:
        """Where the index stands: models by status, the queue (backlog, throughput over the last day,
        time to clear it), the last complete and last failed Hub poll, the backend chosen and why,
        table sizes, the settings in force."""
        settings, sources = load_settings({"catalog": catalog}, config)
        catalog = settings.catalog
        with open_read_only(catalog) as reader:
            models = reader.models_by_status()
            counts = reader.table_sizes()
            watermark = reader.get_meta("watermark")
            polls, backlog = _polls(reader), _backlog(reader, models)
        snap = snapshot_path(catalog)
        from indexer.adapters.probers import resolve_backend

        backend, why = resolve_backend(settings.backend)
        report = {
            "catalog": str(catalog), "models": models, "tables": counts,
            "watermark": watermark,
            "snapshot": str(snap) if is_published(snap) else None,
            "polls": polls, "backlog": backlog,
            "backend": {"setting": settings.backend, "chosen": backend, "why": why},
            "settings": {k: {"value": v, "source": sources[k]} for k, v in settings.model_dump(mode="json").items()},
        }
        if json:
            print_json(report)
            return
        polls, backlog = report["polls"], report["backlog"]
        out.print(f"catalog {catalog}  watermark {report['watermark'] or '-'}")
        out.print(f"last complete poll {polls['last_complete'] or '-'}  last failed poll {polls['last_failed'] or '-'}"
                  + (f" ({polls['last_error']})" if polls["last_failed"] else ""), markup=False, highlight=False)
        rate = backlog["models_per_hour"]
        out.print(f"backlog {backlog['queued']} queued, {backlog['deferred']} deferred; throughput over the last "
                  f"day {backlog['probed_last_day']} models" + (f" ({rate:.1f}/h); backlog clears in about "
                                                                 f"{_hours(backlog['hours_to_clear'])}" if rate else ""),
                  markup=False, highlight=False)
        out.print(f"backend {backend} ({why})", markup=False, highlight=False)
        print_rows(["status", "models"], sorted(models.items()) or [("(none)", 0)])
        print_rows(["table", "rows"], list(counts.items()))
        print_rows(["setting", "value", "from"],
                   [(k, v["value"], v["source"]) for k, v in report["settings"].items()])

    def _polls(reader: CatalogReader) -> dict:
        """The last complete and the last failed poll (a catalog older than v4 has none)."""
        try:
            done, failed = reader.last_polls()
        except PhylolmError:
            return {"last_complete": None, "last_failed": None, "last_error": None}
        return {"last_complete": done.isoformat() if done else None,
                "last_failed": failed[0].isoformat() if failed else None,
                "last_error": failed[1] if failed else None}

    def _backlog(reader: CatalogReader, models: dict) -> dict:
        """What waits, the probing rate over the last day, and how long the queue takes at it."""
        n, first = reader.probes_last_day()
        queued, deferred = models.get("queued", 0), models.get("deferred", 0)
        rate = None
        if n and first is not None:
            from datetime import datetime, timezone

            span_h = max((datetime.now(timezone.utc) - first).total_seconds() / 3600, 1 / 60)
            rate = n / min(24.0, span_h)
        return {"queued": queued, "deferred": deferred, "probed_last_day": n, "models_per_hour": rate,
                "hours_to_clear": queued / rate if rate else None}

    def _hours(h: float | None) -> str:
        if h is None:
            return "-"
        return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"

    @app.command()
    def genomes(catalog: CatalogOpt = DEFAULT_CATALOG, json: JsonOpt = False,
                register_file: Annotated[Path | None, typer.Option(
                    "--register", help="Register a genome from a JSONL file (one {\"text\": ...} per line).")] = None) -> None:
        """The genomes: built-in ones and those registered in the catalog."""
        catalog = catalog_path(catalog)
        if register_file is not None:
            g = genome_lib.load(str(register_file))
            with Catalog(catalog) as cat:
                cat.register_genome(g)
                cat.publish_snapshot()
            out.print(f"registered genome {g.name} ({len(g)} genes, hash {g.hash[:12]})")
        rows: dict[str, dict] = {}
        for name in genome_lib.BUILTIN:
            g = genome_lib.builtin(name)
            rows[g.hash] = {"name": g.name, "hash": g.hash, "genes": len(g), "license": g.license,
                            "source": g.source, "builtin": True}
        if catalog.exists() or is_published(snapshot_path(catalog)):
            with open_read_only(catalog) as reader:
                found = reader.genomes()
            for h, name, n, lic, src in found:
                rows.setdefault(h, {"name": name, "hash": h, "genes": n, "license": lic, "source": src,
                                    "builtin": False})
        if json:
            print_json(list(rows.values()))
        else:
            print_rows(["name", "genes", "hash", "license", "builtin"],
                       [(r["name"], r["genes"], r["hash"][:16], r["license"], r["builtin"]) for r in rows.values()])

    @app.command()
    def sql(query: Annotated[str, typer.Argument(help="A SELECT (or EXPLAIN) query.")],
            catalog: CatalogOpt = DEFAULT_CATALOG, json: JsonOpt = False) -> None:
        """Query the catalog with SQL, read-only.

        Statements that would write the catalog or a file, attach a database, or install or
        load an extension are refused. While a job holds the catalog, the published catalog
        (<catalog>.published/, Parquet parts the job appends to) is queried instead.
        """
        cols, rows = run_query(catalog_path(catalog), query)
        if json:
            print_json([dict(zip(cols, r)) for r in rows])
        else:
            print_rows(cols, rows)

    @scores_app.command("import")
    def scores_import(file: Annotated[Path | None, typer.Argument(help="CSV: model_id,benchmark,value,source.")] = None,
                      reference: Annotated[str | None, typer.Option(
                          "--reference", help="Import a packaged reference set instead: leaderboard-v1 "
                                              "(Open LLM Leaderboard v1 scores of the PhyloLM paper's models).")] = None,
                      catalog: CatalogOpt = DEFAULT_CATALOG, json: JsonOpt = False) -> None:
        """Import measured scores (values are fractions in [0, 1])."""
        if (file is None) == (reference is None):
            raise PhylolmError("give either a CSV file or --reference NAME (not both)")
        if reference is not None:
            from indexer.adapters.reference import REFERENCE_SETS, reference_scores
            if reference not in REFERENCE_SETS:
                raise PhylolmError(f"--reference: unknown set {reference!r}; known: {', '.join(REFERENCE_SETS)}")
            scores = reference_scores(reference)
        else:
            scores = read_scores_csv(file)
        with Catalog(catalog_path(catalog)) as cat:
            n = cat.import_scores(scores)
            cat.publish_snapshot()
        summary = {"imported": n, "models": len({s.model_id for s in scores}),
                   "benchmarks": sorted({s.benchmark for s in scores})}
        print_json(summary) if json else out.print(
            f"imported {n} scores for {summary['models']} models ({', '.join(summary['benchmarks'])})")

    app.add_typer(scores_app, name="scores")
