"""Our neighbour joining beside two independent exact NJ programs, quicktree and
``clearcut --neighbor`` (Debian packages ``quicktree`` and ``clearcut``): the matrices they
are compared on and the way they are run. Used by the agreement test (tests/test_nj_peers.py)
and the timing script (benchmarks/bench_nj_peers.py).

A peer reads a PHYLIP distance matrix at 8 decimals under short names m0, m1, ... (PHYLIP
names are at most 10 characters); our NJ gets the same rounded matrix.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from indexer.core.distance import AlleleIndex
from indexer.core.simulate import simulate

PEERS = ("quicktree", "clearcut")  # program = Debian package
PEER_TIMEOUT_S = 600


def simulated_distances(n: int, seed: int, shape: str = "yule") -> np.ndarray:
    """The peer comparisons' matrix: a simulated ecosystem of ``n`` models (128 genes), one
    probe of N = 32 per gene (probe seed = ``seed``), AlleleIndex distances rounded to 8
    decimals, the way the peer programs read them."""
    eco = simulate(n, seed=seed, shape=shape)
    index = AlleleIndex(n_genes=eco.n_genes, n_samples=32)
    for i, model_id in enumerate(eco.ids):
        index.add_unscored(model_id, eco.sample_counts(i, 32, seed))
    return np.round(index.distance_matrix(), 8)


def write_phylip(d: np.ndarray, path: str | Path) -> None:
    """Square PHYLIP distance matrix; names m<i> padded to the 10-character name field."""
    with open(path, "w") as f:
        f.write(f"{len(d)}\n")
        for i, row in enumerate(d):
            f.write(f"{'m%d' % i:<10}" + " ".join(f"{x:.8f}" for x in row) + "\n")


def quicktree_newick(phy: str | Path, program: str = "quicktree") -> str:
    """quicktree's NJ tree of a PHYLIP matrix, as Newick text (leaves m<i>)."""
    out = subprocess.run([program, "-in", "m", "-out", "t", str(phy)],
                         capture_output=True, text=True, timeout=PEER_TIMEOUT_S, check=True)
    return out.stdout


def clearcut_newick(phy: str | Path, tree_file: str | Path, program: str = "clearcut") -> str:
    """clearcut's exact NJ tree of a PHYLIP matrix, written to ``tree_file`` and returned as
    Newick text (leaves m<i>). ``--neighbor``: exact NJ, not clearcut's default relaxed NJ;
    ``--norandom``: no shuffling of the matrix, so ties are broken the same way every run."""
    subprocess.run([program, f"--in={phy}", f"--out={tree_file}", "--distance", "--neighbor",
                    "--norandom", "--seed=1", "--quiet"], capture_output=True, text=True,
                   timeout=PEER_TIMEOUT_S, check=True)
    return Path(tree_file).read_text()
