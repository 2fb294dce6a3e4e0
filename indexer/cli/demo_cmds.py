"""`phylolm demo`: the whole job, offline, on the bundled zoo."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from indexer.cli.common import JsonOpt, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(workdir: Annotated[Path, typer.Option(help="Where the demo's catalog, hub folder and report go.")] = Path("phylolm-demo"),
             genes: Annotated[int, typer.Option(min=1, max=128, help="Genes of the math genome used (paper: 128).")] = 128,
             samples: Annotated[int, typer.Option(min=1, help="Samples per gene (paper: 32).")] = 32,
             backend: Annotated[str, typer.Option(help="Prober for the zoo's models.")] = "transformers",
             interval: Annotated[float, typer.Option(help="Seconds between the watch's polls.")] = 1.0,
             timeout_per_model: Annotated[float, typer.Option(help="Give up if a model is not indexed by then.")] = 600.0,
             scores: Annotated[bool, typer.Option(
                 "--scores/--no-scores", help="Measure the zoo scores (held-out bits per byte) and estimate the hidden model.")] = True,
             hide: Annotated[str, typer.Option(help="The zoo model whose scores are hidden and estimated from its relatives.")]
             = "zoo/smollm2-ft-poetry-shanties",
             json: JsonOpt = False) -> None:
        """Run the whole job offline on the bundled zoo of real models.

        Builds the zoo (cached after the first run), serves an empty folder as a Hub on
        loopback, starts the streaming watch, uploads the zoo's models one at a time so the
        tree grows leaf by leaf, then prints the tree, nearest relatives, lineage check and
        check; measures the zoo scores (bits per byte on held-out text of each domain), hides
        one model's (--hide), estimates them from its relatives and prints estimate, interval
        and measured value side by side; writes the explorer, report, plots and exports under
        WORKDIR/publish.
        """
        from indexer.testbed.demo import run_demo

        result = run_demo(workdir.resolve(), genes=genes, samples=samples, backend=backend, interval=interval,
                          timeout_per_model=timeout_per_model, scores=scores, hide=hide)
        if json:
            print_json(result)
