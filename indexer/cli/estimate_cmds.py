"""Estimate, lineage and publishing commands: `estimate`, `lineage`, `export`, `view`,
and `bench estimates` (leave-one-family-out validation on the packaged paper data)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from indexer.adapters.catalog import Catalog
from indexer.cli.bench import bench_app
from indexer.cli.common import DEFAULT_CATALOG, CatalogOpt, JsonOpt, catalog_path, out, print_json, print_rows
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
        with Catalog(catalog_path(catalog)) as cat:
            if model_id is not None:
                cat.require_model(model_id)
            est = estimates_from_catalog(cat, method=method)
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

        with open_read_only(catalog_path(catalog)) as reader:
            findings = lineage_from_catalog(reader)
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
        """Write the publish folder: index.html (the explorer), report.html, auspice.json,
        tree.jsonl.gz (Taxonium), tree.nwk, parquet tables, estimates.csv and plots/*.svg."""
        from indexer.adapters.catalog import open_read_only
        from indexer.adapters.publish import export as do_export

        if directory.exists() and not directory.is_dir():
            raise PhylolmError(f"{directory} exists and is not a folder")
        with open_read_only(catalog_path(catalog)) as reader:
            written = do_export(reader, directory)
        if json:
            print_json({k: str(v) for k, v in written.items()})
        else:
            out.print(f"wrote {', '.join(sorted(written))} to {directory}")

    @app.command()
    def view(directory: Annotated[Path, typer.Argument(help="A publish folder (written by `phylolm export`).")],
             port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 8765) -> None:
        """Serve a publish folder read-only on the loopback interface and print the explorer's
        URL; runs until interrupted (Ctrl-C)."""
        from indexer.adapters.publish import make_server, page_url

        server = make_server(directory, port)
        out.print(f"serving {directory} read-only at {page_url(server)}  (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            out.print("stopped")
        finally:
            server.server_close()

    @bench_app.command("explorer")
    def bench_explorer_cmd(models: Annotated[int, typer.Option("--models", help="Simulated models (leaves).")] = 100_000,
                           seed: Annotated[int, typer.Option("--seed")] = 0,
                           keep: Annotated[Path | None, typer.Option(
                               "--keep", help="Folder to keep the page in (default: a temporary one).")] = None,
                           json: JsonOpt = False) -> None:
        """The explorer page of a simulated ecosystem of MODELS models, loaded in headless
        Chromium with one model searched: build time, page size, load time, JS heap."""
        from indexer.bench.explorer import bench_explorer

        if models < 2:
            raise PhylolmError("--models: at least 2")
        r = bench_explorer(models, seed, keep)
        if json:
            print_json(r)
        else:
            out.print(f"{r['models']} models: page {r['page_bytes'] / 1e6:.1f} MB built in {r['page_build_s']:.1f} s "
                      f"(simulation {r['simulate_s']:.1f} s; auspice.json {r['auspice_bytes'] / 1e6:.1f} MB in "
                      f"{r['auspice_build_s']:.1f} s); Chromium: ready={r['ready']}, loaded in {r['load_ms']:.0f} ms "
                      f"(script {r['script_ms']:.0f} ms), redraw {r['full_draw_ms']:.0f} ms whole tree, {r['draw_ms']:.0f} ms zoomed, JS heap {r['heap_bytes'] / 1e6:.0f} MB, card {r['card']}, "
                      f"whole run {r['chromium_wall_s']:.1f} s")

    @bench_app.command("estimates")
    def bench_estimates_cmd(json: JsonOpt = False,
                            methods: Annotated[str, typer.Option(
                                "--methods", help="Comma-separated predictors to compare.")]
                            = "paper-ica15-linear,kinship-ensemble,kinship-stack",
                            refresh_at: Annotated[int, typer.Option(
                                "--refresh-at", help="Instead: the sparse mode's per-insert refresh "
                                                     "at this many simulated models.")] = 0,
                            scored: Annotated[int, typer.Option(
                                help="With --refresh-at: simulated models with six scores.")] = 1000,
                            max_anchors: Annotated[int, typer.Option(
                                help="With --refresh-at: the joint predictor's anchor cap.")] = 1024,
                            queries: Annotated[int, typer.Option(
                                help="With --refresh-at: inserts timed.")] = 200,
                            index: Annotated[str, typer.Option(
                                help="With --refresh-at: alleles (what the refresh reads) | sparse "
                                     "(a full PhyloIndex(mode='sparse'), much slower to build).")] = "alleles",
                            seed: Annotated[int, typer.Option(help="With --refresh-at: random seed.")] = 0) -> None:
        """Leave-one-family-out accuracy on the PhyloLM paper's 127-model matrix with the
        Open LLM Leaderboard v1 scores (packaged reference data): pooled Pearson r, RMSE and
        90%-interval coverage per benchmark, the paper's baseline against this project's
        predictors. Hyper-parameters are chosen inside the training families only.
        ``--refresh-at N``: the per-insert refresh of the sparse mode's estimates at N
        simulated models instead (``indexer.bench.estimates.bench_refresh``)."""
        from indexer.bench.estimates import bench_estimates, bench_refresh

        if refresh_at:
            if index not in ("alleles", "sparse") or not 0 < queries < refresh_at \
                    or not 3 <= scored <= refresh_at - queries or max_anchors < 1:
                raise PhylolmError("--refresh-at N needs 0 < --queries < N, 3 <= --scored <= N - queries, "
                                   "--max-anchors >= 1 and --index alleles|sparse")
            one = [m.strip() for m in methods.split(",") if m.strip()]
            for m in one:
                _check_method(m)
            # one --methods name: that predictor; the default list: the default predictor
            r = bench_refresh(refresh_at, scored, max_anchors, queries, seed, index,
                              one[0] if len(one) == 1 else None)
            if json:
                print_json(r)
                return
            rows = [(k, v) for k, v in r.items() if not isinstance(v, (dict, list))]
            rows += [(f"{k} median / p95 / max", f"{v['median']} / {v['p95']} / {v['max']}")
                     for k, v in r.items() if isinstance(v, dict)]
            rows.append(("load average", " ".join(map(str, r["load_average"]))))
            print_rows(["figure", "value"], rows, title=f"sparse-mode estimate refresh at n={refresh_at}")
            return

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
