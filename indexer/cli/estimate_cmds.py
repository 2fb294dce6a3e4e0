"""Estimate, lineage and publishing commands: `estimate`, `lineage`, `export`,
and `bench estimates` (leave-one-family-out validation on the packaged paper data)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from indexer.adapters.catalog import Catalog
from indexer.cli.bench import bench_app
from indexer.cli.common import DEFAULT_CATALOG, CatalogOpt, JsonOpt, out, print_json, print_rows
from indexer.errors import PhylolmError
from indexer.core.predict import DEFAULT_METHOD

MethodOpt = Annotated[str, typer.Option(
    "--method", help="Predictor: kinship-stack (default), kinship-ensemble, or paper-ica15-linear "
                     "(the paper's baseline).")]



def _check_method(method: str) -> None:
    from indexer.core.predict import PREDICTORS

    if method not in PREDICTORS:
        raise PhylolmError(f"--method: unknown predictor {method!r}; known: {', '.join(PREDICTORS)}")


def register(app: typer.Typer) -> None:
    @app.command()
    def estimate(model_id: Annotated[str | None, typer.Argument(help="Only this model (default: all).")] = None,
                 method: MethodOpt = DEFAULT_METHOD, catalog: CatalogOpt = DEFAULT_CATALOG,
                 json: JsonOpt = False) -> None:
        """Refresh benchmark estimates (with 90% intervals) for models without a measured score."""
        from indexer.adapters.publish import estimates_from_catalog

        _check_method(method)
        with Catalog(catalog) as cat:
            if model_id is not None:
                cat.require_model(model_id)
            est = estimates_from_catalog(cat.con, method=method)
            cat.replace_estimates(est)
            cat.publish_snapshot()
        if model_id is not None:
            est = [e for e in est if e.model_id == model_id]
        rows = [e.model_dump() for e in est]
        if json:
            print_json(rows)
        elif not rows:
            out.print("no estimates: a benchmark needs at least 3 scored, indexed models "
                      "(import some with `phylolm scores import`)")
        else:
            print_rows(["model", "benchmark", "estimate", "low", "high", "method", "snapshot"],
                       [(e.model_id, e.benchmark, f"{e.estimate:.3f}", f"{e.low:.3f}", f"{e.high:.3f}",
                         e.method, e.snapshot) for e in est])

    @app.command()
    def lineage(catalog: CatalogOpt = DEFAULT_CATALOG, json: JsonOpt = False) -> None:
        """Check declared base models against the phylogeny, and find undeclared close relatives."""
        from indexer.adapters.catalog import open_read_only
        from indexer.adapters.publish import lineage_from_catalog

        con, _ = open_read_only(catalog)
        try:
            findings = lineage_from_catalog(con)
        finally:
            con.close()
        if json:
            print_json(findings)
        else:
            print_rows(["finding", "model", "declared / relative", "distance", "rank", "nearest", "why"],
                       [(f["kind"], f["model_id"], f["other_id"],
                         None if f["distance"] is None else f"{f['distance']:.4f}", f["rank"],
                         f["nearest_id"], f["detail"]) for f in findings])

    @app.command()
    def export(directory: Annotated[Path, typer.Argument(help="Folder to write the published files into.")],
               catalog: CatalogOpt = DEFAULT_CATALOG, json: JsonOpt = False) -> None:
        """Write tree.nwk, distances/estimates/models parquet, estimates.csv and report.html."""
        from indexer.adapters.catalog import open_read_only
        from indexer.adapters.publish import export as do_export

        if directory.exists() and not directory.is_dir():
            raise PhylolmError(f"{directory} exists and is not a folder")
        con, _ = open_read_only(catalog)
        try:
            written = do_export(con, directory)
        finally:
            con.close()
        if json:
            print_json({k: str(v) for k, v in written.items()})
        else:
            out.print(f"wrote {', '.join(sorted(written))} to {directory}")

    @bench_app.command("estimates")
    def bench_estimates_cmd(json: JsonOpt = False,
                            methods: Annotated[str, typer.Option(
                                "--methods", help="Comma-separated predictors to compare.")]
                            = "paper-ica15-linear,kinship-ensemble,kinship-stack") -> None:
        """Leave-one-family-out accuracy on the PhyloLM paper's 127-model matrix with the
        Open LLM Leaderboard v1 scores (packaged reference data): pooled Pearson r, RMSE and
        90%-interval coverage per benchmark, the paper's baseline against this project's
        predictors. Hyper-parameters are chosen inside the training families only."""
        from indexer.bench.estimates import bench_estimates

        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        for m in chosen:
            _check_method(m)
        result = bench_estimates(chosen)
        if json:
            print_json(result)
            return
        from indexer.core.predict import BENCHMARKS

        rows = []
        for bench in BENCHMARKS:
            row = [bench]
            for m in chosen:
                r = result["methods"][m]["benchmarks"][bench]
                row += [f"{r['r']:.3f}", f"{r['rmse']:.4f}", f"{r['coverage']:.2f}"]
            rows.append(tuple(row))
        rows.append(tuple(["mean r / coverage"] + sum(
            ([f"{result['methods'][m]['mean_r']:.3f}", "", f"{result['methods'][m]['coverage']:.2f}"]
             for m in chosen), [])))
        cols = ["benchmark"] + sum(([f"{m} r", "RMSE", "90% cov"] for m in chosen), [])
        print_rows(cols, rows, title="Leave-one-family-out on the PhyloLM paper's models")
