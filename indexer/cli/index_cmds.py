"""Index commands: simulate an ecosystem, benchmark the index, show the tree, nearest models.

``simulate`` and ``bench index`` need no catalog; ``tree`` and ``nearest`` read it
(read-only, so they work while a watch writes).
"""
from __future__ import annotations

import json as jsonlib
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from indexer.cli.bench import bench_app
from indexer.cli.common import DEFAULT_CATALOG, CatalogOpt, JsonOpt, catalog_path, out, print_json, print_rows
from indexer.errors import PhylolmError

METHODS = ("incremental", "nj")
FORMATS = ("newick", "ascii", "json")
NJ_MAX_DEFAULT = 20_000  # a 3 GiB matrix; NJ of it takes hours on 2 cores


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        models: Annotated[int, typer.Option("--models", help="Number of simulated models.")] = 100,
        out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the repositories into.")] = Path("sim-hub"),
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        genes: Annotated[int, typer.Option(help="Genes per model (match the genome you probe with).")] = 128,
        samples: Annotated[int, typer.Option(help="Samples per gene a probe draws (recorded).")] = 32,
        shape: Annotated[str, typer.Option(help="Tree shape: yule | uniform | caterpillar | balanced.")] = "yule",
        json: JsonOpt = False,
    ) -> None:
        """Write a simulated ecosystem: Hub-style repositories for the `simulated` backend
        and the true tree as OUT/truth.nwk."""
        from indexer.adapters.probers import write_repositories
        from indexer.core.simulate import SHAPES
        from indexer.core.simulate import simulate as run

        if models < 2:
            raise PhylolmError("--models must be at least 2")
        if shape not in SHAPES:
            raise PhylolmError(f"--shape must be one of {', '.join(SHAPES)}")
        if genes < 1 or samples < 1:
            raise PhylolmError("--genes and --samples must be positive")
        if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "simulation.json").exists():
            raise PhylolmError(f"{out_dir} exists and is not a simulated hub; choose an empty folder")
        t0 = time.perf_counter()
        eco = run(models, seed=seed, n_genes=genes, shape=shape)
        write_repositories(eco, out_dir, probe_samples=samples)
        info = {"out": str(out_dir), "models": models, "seed": seed, "genes": genes, "samples": samples,
                "shape": shape, "truth": str(out_dir / "truth.nwk"), "seconds": round(time.perf_counter() - t0, 3)}
        if json:
            print_json(info)
        else:
            out.print(f"wrote {models} simulated models to {out_dir} (true tree: {out_dir / 'truth.nwk'})")

    @app.command()
    def tree(
        catalog: CatalogOpt = DEFAULT_CATALOG,
        method: Annotated[str, typer.Option(help="incremental (as maintained) | nj (fresh build).")] = "incremental",
        fmt: Annotated[str, typer.Option("--format", help="newick | ascii | json.")] = "newick",
        genome: Annotated[str | None, typer.Option(help="Genome hash (or prefix); default: the latest tree's.")] = None,
        nj_max: Annotated[int, typer.Option(
            "--nj-max", help="With --method nj on a sparse index: the most models to join. Its matrix is "
                             "computed from the alleles (n x n x 8 bytes) and NJ is O(n^3): about a minute "
                             "at 5,000 models here.")] = NJ_MAX_DEFAULT,
    ) -> None:
        """The index's tree: the incrementally maintained one, or a fresh neighbour-joining
        build of the current distance matrix. Leaves are model ids.

        A sparse index (`index_mode = sparse`) stores each model's k nearest, not every
        pair: there `--method nj` computes the whole matrix from the stored alleles first,
        up to --nj-max models."""
        from indexer.adapters.catalog import open_read_only
        from indexer.core.tree import neighbor_joining, parse_newick

        if method not in METHODS:
            raise PhylolmError(f"--method must be one of {', '.join(METHODS)}")
        if fmt not in FORMATS:
            raise PhylolmError(f"--format must be one of {', '.join(FORMATS)}")
        with open_read_only(catalog_path(catalog)) as reader:
            genome_hash = _pick_genome(reader, genome)
            if method == "incremental":
                row = reader.latest_tree(genome_hash, method=None)
                if row is None:
                    raise PhylolmError("no tree in the catalog yet; index some models first")
                t = parse_newick(row[1])
            else:
                layout = reader.index_layout()
                ids, dist = (_sparse_matrix(reader, layout, genome_hash, nj_max) if layout.mode == "sparse"
                             else _complete(reader.distance_matrix(genome_hash)))
                if len(ids) < 2:
                    raise PhylolmError("fewer than two models have distances; nothing to join")
                t = neighbor_joining(dist, ids)
        _print_tree(t, fmt)

    @app.command()
    def nearest(
        model_id: Annotated[str, typer.Argument(help="Model id (owner/name).")],
        k: Annotated[int, typer.Option("-k", "--k", help="How many neighbours.")] = 5,
        catalog: CatalogOpt = DEFAULT_CATALOG,
        genome: Annotated[str | None, typer.Option(help="Genome hash (or prefix).")] = None,
        exact: Annotated[bool, typer.Option(
            "--exact", help="Compute the model's full row now from the stored alleles (one sparse product) "
                            "instead of reading `distances`: a sparse index stores each model's k nearest "
                            "as the candidate search finds them (about 0.99 recall), not its whole row.")] = False,
        json: JsonOpt = False,
    ) -> None:
        """The K models nearest to MODEL_ID by PhyloLM distance (from the `distances` view, or
        computed from the alleles with --exact)."""
        from indexer.adapters.catalog import open_read_only

        if k < 1:
            raise PhylolmError("-k must be at least 1")
        with open_read_only(catalog_path(catalog)) as reader:
            genome_hash = _pick_genome(reader, genome)
            rows = (reader.nearest_exact if exact else reader.nearest)(model_id, k, genome_hash)
        if not rows:
            raise PhylolmError(f"{model_id!r} has no distances in the catalog (not indexed, or a different genome)")
        if json:
            print_json([{"model_id": m, "distance": d, "similarity": s} for m, d, s in rows])
        else:
            print_rows(["model", "distance", "similarity"], [(m, f"{d:.4f}", f"{s:.4f}") for m, d, s in rows],
                       title=f"nearest to {model_id}")


@bench_app.command("index")
def bench_index_cmd(
    models: Annotated[int, typer.Option("--models", help="Models in the simulated ecosystem.")] = 1000,
    seed: Annotated[int, typer.Option(help="First random seed.")] = 0,
    seeds: Annotated[int, typer.Option(help="Repeat with this many seeds (seed, seed+1, ...); figures are averaged.")] = 1,
    genes: Annotated[int, typer.Option(help="Genes per model.")] = 128,
    samples: Annotated[int, typer.Option(help="Samples per gene (N).")] = 32,
    shape: Annotated[str, typer.Option(help="Tree shape: yule | uniform | caterpillar | balanced.")] = "yule",
    growth: Annotated[float, typer.Option(help="Rebuild policy: full NJ once the index grew by this fraction "
                                                "(0 = never rebuild).")] = 0.5,
    stream: Annotated[bool, typer.Option("--stream", help="The Hub-scale streaming run: real-like allele diversity "
                                                         "(~17 distinct alleles per gene), latency percentiles over n, "
                                                         "peak RSS, recall@10 against brute force, nRF to the truth.")] = False,
    mode: Annotated[str, typer.Option(help="With --stream: sparse (k nearest, no n x n matrix) | exact.")] = "sparse",
    k: Annotated[int, typer.Option("-k", help="With --stream: neighbours kept per model.")] = 32,
    candidates: Annotated[int, typer.Option(help="With --stream: candidates re-scored exactly per insert.")] = 64,
    backend: Annotated[str, typer.Option(help="With --stream: candidate search, hnsw | exact.")] = "hnsw",
    recall_queries: Annotated[int, typer.Option(help="With --stream: sampled models for recall@10.")] = 200,
    rebuild_max: Annotated[int, typer.Option(help="With --stream (sparse): full NJ rebuilds only up to this many "
                                                  "models (0 = never).")] = 2000,
    rebuild_lag: Annotated[int, typer.Option(help="With --stream (sparse): run rebuilds off the write path, "
                                                  "swapped in this many inserts later (0 = in place).")] = 0,
    nj_max: Annotated[int, typer.Option(help="With --stream or --peers: compare with full NJ (and, with --peers, "
                                             "quicktree and clearcut) up to this many models.")] = 5000,
    peers: Annotated[bool, typer.Option("--peers", help="Side by side with the peers installed for the run, on the "
                                                       "same simulated probes: placement of held-out queries against "
                                                       "APPLES-2 (delta error, time per query), full builds against "
                                                       "quicktree and clearcut (seconds, nRF), as ratios.")] = False,
    queries: Annotated[int, typer.Option(help="With --peers: held-out query models.")] = 100,
    backbone: Annotated[str | None, typer.Option(help="With --peers: the backbone both placements use, nj (NJ of the "
                                                      "backbone models) | index (our incremental tree); default nj "
                                                      "up to --nj-max models.")] = None,
    json: JsonOpt = False,
) -> None:
    """Index benchmark on a simulated ecosystem: insert latency (distance row + placement +
    local NNI), amortised rebuild cost, full NJ time at the same n, tree quality (nRF) of
    the incremental tree and of NJ against the true tree. ``--stream``: the Hub-scale run.
    ``--peers``: the same probes beside APPLES-2, quicktree and clearcut (those installed)."""
    from indexer.bench.index import MIN_MODELS, bench_index, bench_stream
    from indexer.core.simulate import SHAPES

    if models < MIN_MODELS:
        raise PhylolmError(f"--models must be at least {MIN_MODELS}")
    if shape not in SHAPES:
        raise PhylolmError(f"--shape must be one of {', '.join(SHAPES)}")
    if seeds < 1 or genes < 1 or samples < 1 or growth < 0:
        raise PhylolmError("--seeds, --genes and --samples must be positive and --growth non-negative")
    if stream and peers:
        raise PhylolmError("--stream and --peers are separate runs; choose one")
    if peers:
        from indexer.bench.peers import BACKBONES, bench_peers, table_rows

        if backend not in ("hnsw", "exact") or k < 1 or candidates < k:
            raise PhylolmError("--backend hnsw|exact, and -k <= --candidates")
        if not 1 <= queries <= models - MIN_MODELS:
            raise PhylolmError(f"--queries must be between 1 and --models - {MIN_MODELS}")
        if backbone is not None and backbone not in BACKBONES:
            raise PhylolmError(f"--backbone must be one of {', '.join(BACKBONES)}")
        result = bench_peers(models, queries, seed, genes, samples, shape, k, candidates, backend, growth or None,
                             backbone=backbone, nj_max_models=nj_max)
        if json:
            print_json(result)
        else:
            print_rows(["", "method", "figure", "value", "ours over it"], table_rows(result),
                       title=f"phylolm bench index --peers (n={models}, {queries} queries)")
        return
    if stream:
        if mode not in ("sparse", "exact") or backend not in ("hnsw", "exact") or k < 1 or candidates < k:
            raise PhylolmError("--mode sparse|exact, --backend hnsw|exact, and -k <= --candidates")
        if rebuild_max < 0 or rebuild_lag < 0:
            raise PhylolmError("--rebuild-max and --rebuild-lag must be non-negative")
        result = bench_stream(models, seed, genes, samples, shape, mode, k, candidates, backend, recall_queries,
                              nj_max, growth or None, rebuild_max_models=rebuild_max, rebuild_lag=rebuild_lag,
                              progress=lambda line: typer.echo(line, err=True))
    else:
        result = bench_index(models, seed, seeds, genes, samples, shape, growth)
    if json:
        print_json(result)
    else:
        rows = [(k, v) for k, v in result.items() if not isinstance(v, (dict, list))]
        print_rows(["figure", "value"], rows, title=f"phylolm bench index (n={models})")


def _pick_genome(reader, genome: str | None) -> str:
    if genome:
        found = reader.genome_hashes_with_prefix(genome)
        if not found:
            raise PhylolmError(f"no distances or trees for a genome {genome!r}")
        if len(found) > 1:
            raise PhylolmError(f"genome prefix {genome!r} is ambiguous; give more characters")
        return found[0]
    genome_hash = reader.default_genome_hash()
    if genome_hash is None:
        raise PhylolmError("the catalog has no distances yet; index some models first")
    return genome_hash


def _sparse_matrix(reader, layout, genome_hash: str, nj_max: int) -> tuple[list[str], np.ndarray]:
    """A sparse index's whole matrix, computed from its alleles (``exact_distances``), or a
    refusal before any of it is allocated when there are more than ``nj_max`` models
    (``layout``: the catalog's ``index_layout``)."""
    n = len(reader.indexed_probes(genome_hash, layout.params_hash, layout.backend))
    if n > nj_max:
        raise PhylolmError(
            f"a fresh NJ of this sparse index needs all {n:,} x {n:,} distances "
            f"({n * n * 8 / 2**30:.1f} GiB) computed from the alleles and O(n^3) time; "
            f"pass --nj-max {n} to run it anyway, or read the maintained tree (--method incremental)")
    ids, _, dist = reader.exact_distances(genome_hash)
    return ids, dist


def _complete(matrix: tuple[list[str], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The catalog's distance matrix, refused when a pair was never measured."""
    ids, dist = matrix
    missing = int(np.isnan(dist).sum()) // 2
    if missing:
        raise PhylolmError(f"the distance matrix has {missing} missing pairs; re-run the index update")
    return ids, dist


def _print_tree(t, fmt: str) -> None:
    from indexer.core.tree import to_newick
    from indexer.core.tree.render import to_ascii, to_dict

    if fmt == "newick":
        print(to_newick(t))
    elif fmt == "ascii":  # drawn from the midpoint root: an out-group family reads as one
        from indexer.core.tree.rooting import midpoint_root

        print(to_ascii(midpoint_root(t)))
    else:
        print(jsonlib.dumps(to_dict(t), indent=1))
