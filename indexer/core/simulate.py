"""A simulated model ecosystem with a known tree, for tree-quality tests and scale benchmarks.

Models evolve along a random tree. Each gene has a fixed list of K candidate alleles and
each node a vector of logits over them; along an edge of length t the logits take a
Brownian step of variance ``drift**2 * t`` (softmax gives the allele distribution), so
divergence grows with branch length. Branch lengths are exponential draws multiplied by a
lognormal rate per branch (rates vary between lineages, as fine-tuning intensity does).
Leaves are the released models; probing one means drawing N samples per gene from its
distribution, exactly like a real probe. Creation times follow the tree (root first), and a
model's declared base model is the earliest-created model of its sister clade when that one
is older: a plausible upload order and lineage metadata for a watcher. Pure: returns data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from indexer.core.tree.core import Tree

SHAPES = ("yule", "uniform", "caterpillar", "balanced")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class Ecosystem:
    """The simulated models, their allele distributions and the true tree."""

    ids: list[str]  # model ids, in creation order
    truth: Tree  # leaves are the ids
    alleles: list[list[str]]  # per gene: the K candidate allele strings
    probs: np.ndarray  # (n_models, n_genes, K) allele probabilities, rows follow ids
    created_at: list[datetime]
    base_model: list[str | None]
    authors: list[str]
    params: dict = field(default_factory=dict)

    @property
    def n_genes(self) -> int:
        return self.probs.shape[1]

    def distributions(self, i: int) -> list[tuple[list[str], np.ndarray]]:
        return [(self.alleles[g], self.probs[i, g]) for g in range(self.n_genes)]

    def sample_counts(self, i: int, n_samples: int, seed: int = 0) -> tuple[dict[str, int], ...]:
        """Allele counts of one probe of model ``i``: N samples per gene."""
        return sample_alleles(self.distributions(i), n_samples, probe_rng(seed, self.ids[i]))


def probe_rng(seed: int, model_id: str) -> np.random.Generator:
    """The random stream of one probe: from the probe seed and the model id."""
    h = int.from_bytes(hashlib.sha256(model_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), h])


def sample_alleles(distributions, n_samples: int, rng: np.random.Generator) -> tuple[dict[str, int], ...]:
    """Draw ``n_samples`` alleles per gene; return counts (positive only), as a probe does."""
    out = []
    for alleles, p in distributions:
        p = np.asarray(p, dtype=np.float64)
        c = rng.multinomial(n_samples, p / p.sum())
        nz = np.flatnonzero(c)
        out.append({alleles[k]: int(c[k]) for k in nz})
    return tuple(out)


def simulate(n_models: int, seed: int = 0, n_genes: int = 128, shape: str = "yule",
             n_alleles: int = 12, branch_length: float = 0.15, rate_sd: float = 0.5,
             drift: float = 1.0, root_spread: float = 2.5, n_labs: int = 8,
             start: datetime | None = None) -> Ecosystem:
    """Simulate ``n_models`` models on a random tree of the given ``shape``.

    shape: ``yule`` (a random lineage splits), ``uniform`` (a random edge is split, the
    uniform distribution on topologies), ``caterpillar`` (the newest lineage splits: deep,
    ladder-like), ``balanced`` (lineages split breadth-first).
    O(n_models * n_genes * n_alleles).
    """
    if n_models < 2:
        raise ValueError("simulate at least two models")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if n_genes < 1 or n_alleles < 2:
        raise ValueError("need at least one gene and two alleles per gene")
    rng = np.random.default_rng(seed)
    parent, order_leaves, lengths = _random_tree(n_models, shape, branch_length, rate_sd, rng)
    n_nodes = len(parent)
    # evolve logits from the root (node 0); parents always precede children
    logits = np.empty((n_nodes, n_genes, n_alleles), dtype=np.float64)
    logits[0] = rng.normal(0.0, root_spread, (n_genes, n_alleles))
    depth = np.zeros(n_nodes)
    for v in range(1, n_nodes):
        p = parent[v]
        logits[v] = logits[p] + rng.normal(0.0, drift * np.sqrt(lengths[v]), (n_genes, n_alleles))
        depth[v] = depth[p] + lengths[v]
    leaves = order_leaves
    # creation order: by depth (a parent lineage is always shallower than its descendants)
    leaves = sorted(leaves, key=lambda v: (depth[v], v))
    children: list[list[int]] = [[] for _ in range(n_nodes)]
    for v in range(1, n_nodes):
        children[parent[v]].append(v)
    labs = _labs(children, n_labs)
    start = start or datetime(2024, 1, 1, tzinfo=timezone.utc)
    span = max(depth[leaves].max(), 1e-9)
    ids, created = [], []
    name_of = {}
    for i, v in enumerate(leaves):
        mid = f"lab-{labs[v]:02d}/sim-{i:05d}.v{_generation(parent, v)}"
        name_of[v] = mid
        ids.append(mid)
        created.append(start + timedelta(days=730.0 * depth[v] / span, seconds=i))
    base = _base_models(children, parent, leaves, name_of, depth)
    truth = _truth_tree(n_nodes, lengths, parent, name_of)
    alleles = [_allele_names(rng, n_alleles) for _ in range(n_genes)]
    z = logits[leaves]
    z -= z.max(axis=2, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=2, keepdims=True)
    return Ecosystem(ids=ids, truth=truth, alleles=alleles, probs=probs, created_at=created,
                     base_model=[base[v] for v in leaves],
                     authors=[m.split("/")[0] for m in ids],
                     params=dict(n_models=n_models, seed=seed, n_genes=n_genes, shape=shape,
                                 n_alleles=n_alleles, branch_length=branch_length,
                                 rate_sd=rate_sd, drift=drift, root_spread=root_spread))


def _random_tree(n_models: int, shape: str, branch_length: float, rate_sd: float, rng: np.random.Generator):
    """The true topology (``_topology``) and its branch lengths: exponential times a
    lognormal rate per branch, the root's 0. Draws from ``rng`` in that order. O(n_models)."""
    parent, leaves = _topology(n_models, shape, rng)
    n_nodes = len(parent)
    lengths = branch_length * rng.exponential(1.0, n_nodes) * rng.lognormal(0.0, rate_sd, n_nodes)
    lengths[0] = 0.0
    return parent, leaves, lengths


def _truth_tree(n_nodes: int, lengths, parent, name_of: dict[int, str]) -> Tree:
    """The true tree: node 0 the root, ``parent[v]`` and ``lengths[v]`` each other node's
    parent and branch length, leaves labelled by ``name_of``. O(n_nodes)."""
    truth = Tree(capacity=n_nodes + 1)
    for v in range(n_nodes):
        truth.add_node(-1, lengths[v], name_of.get(v))
    for v in range(1, n_nodes):
        truth.parent[v] = parent[v]
        truth.children[parent[v]].append(v)
    truth.root = 0
    truth.reindex()
    return truth


def _topology(n: int, shape: str, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Parent array of a rooted binary tree with ``n`` leaves (node 0 is the root), built by
    splitting; returns (parent, leaves)."""
    parent = [-1, 0, 0]
    leaves = [1, 2]
    edges = [1, 2]  # nodes with an edge above them
    queue = [1, 2]  # for balanced
    leaf_set = {1, 2}  # membership in O(1): the list keeps the order the draws index
    k = -1
    while len(leaves) < n:
        if shape == "yule":
            k = int(rng.integers(len(leaves)))
            target = leaves[k]
        elif shape == "caterpillar":
            target = leaves[-1] if rng.random() < 0.8 else leaves[int(rng.integers(len(leaves)))]
        elif shape == "balanced":
            target = queue.pop(0)
        else:  # uniform: split a random edge
            target = edges[int(rng.integers(len(edges)))]
        if target in leaf_set and shape != "uniform":
            # the leaf becomes internal with two new leaf children
            a, b = len(parent), len(parent) + 1
            parent += [target, target]
            if shape == "yule":
                del leaves[k]  # leaves[k] is target: no search
            else:
                leaves.remove(target)
            leaf_set.discard(target)
            leaf_set.update((a, b))
            leaves += [a, b]
            edges += [a, b]
            queue += [a, b]
        else:
            # split the edge above target: new internal node m, new leaf q
            m, q = len(parent), len(parent) + 1
            parent += [parent[target], m]
            parent[target] = m
            leaves.append(q)
            leaf_set.add(q)
            edges += [m, q]
    # renumber so parents precede children (edge splitting breaks that)
    children: list[list[int]] = [[] for _ in parent]
    for v, p in enumerate(parent):
        if p >= 0:
            children[p].append(v)
    new_of, stack, order = {}, [0], []
    while stack:
        v = stack.pop()
        new_of[v] = len(order)
        order.append(v)
        stack.extend(reversed(children[v]))
    new_parent = [-1] * len(parent)
    for v, p in enumerate(parent):
        if p >= 0:
            new_parent[new_of[v]] = new_of[p]
    return new_parent, sorted(new_of[v] for v in leaves)


def _labs(children: list[list[int]], n_labs: int) -> dict[int, int]:
    """Owner of every node: the clade among the first ~n_labs splits it descends from."""
    clades = [0]
    while len(clades) < n_labs:
        internal = [c for c in clades if children[c]]
        if not internal:
            break
        v = internal[0]
        clades.remove(v)
        clades += children[v]
    lab = {}
    for k, c in enumerate(sorted(clades)):
        stack = [c]
        while stack:
            v = stack.pop()
            lab[v] = k
            stack.extend(children[v])
    return lab


def _generation(parent: list[int], v: int) -> int:
    g = 0
    while parent[v] >= 0:
        v = parent[v]
        g += 1
    return g


def _base_models(children, parent, leaves, name_of, depth) -> dict[int, str | None]:
    """A leaf's base model: the earliest model of its sister clade, if created before it."""
    earliest: dict[int, int] = {}
    for v in reversed(range(len(parent))):
        if not children[v]:
            earliest[v] = v
        else:
            earliest[v] = min((earliest[c] for c in children[v]), key=lambda x: (depth[x], x))
    out: dict[int, str | None] = {}
    for v in leaves:
        p = parent[v]
        sisters = [c for c in children[p] if c != v]
        cand = min((earliest[c] for c in sisters), key=lambda x: (depth[x], x))
        out[v] = name_of[cand] if (depth[cand], cand) < (depth[v], v) else None
    return out


def _allele_names(rng: np.random.Generator, k: int) -> list[str]:
    names: set[str] = set()
    while len(names) < k:
        n = int(rng.integers(1, 5))
        names.add("".join(_ALPHABET[int(i)] for i in rng.integers(0, len(_ALPHABET), n)))
    return sorted(names)


@dataclass
class ProbedEcosystem:
    """A large simulated ecosystem kept as probe results only: allele counts of every model,
    stored compactly (CSR over (gene, allele) codes, one byte a count), and the true tree.

    What ``simulate`` keeps per model (the full allele distributions) does not fit in
    memory at Hub scale (100,000 models x 128 genes x 64 alleles is 6.5 GB in float64);
    this keeps about 3 bytes per sampled allele instead.
    """

    ids: list[str]  # model ids, in creation order
    truth: Tree
    alleles: list[list[str]]  # per gene: the K candidate allele strings
    indptr: np.ndarray  # model i's alleles are codes[indptr[i]:indptr[i + 1]]
    codes: np.ndarray  # gene * K + allele number, int32
    counts_data: np.ndarray  # their counts, uint8
    n_samples: int
    params: dict = field(default_factory=dict)

    @property
    def n_genes(self) -> int:
        return len(self.alleles)

    def counts(self, i: int) -> tuple[dict[str, int], ...]:
        """Allele counts of model ``i``, in the form ``PhyloIndex.insert`` takes."""
        k = len(self.alleles[0])
        out: list[dict[str, int]] = [{} for _ in range(self.n_genes)]
        lo, hi = self.indptr[i], self.indptr[i + 1]
        for code, c in zip(self.codes[lo:hi].tolist(), self.counts_data[lo:hi].tolist()):
            g, a = divmod(code, k)
            out[g][self.alleles[g][a]] = c
        return tuple(out)

    def distinct_alleles_per_gene(self) -> float:
        """Mean number of distinct alleles a model shows per gene (real probes: about 17)."""
        return float(np.diff(self.indptr).mean() / self.n_genes)


def simulate_probes(n_models: int, seed: int = 0, n_genes: int = 128, n_samples: int = 32,
                    shape: str = "yule", n_alleles: int = 64, branch_length: float = 0.15,
                    rate_sd: float = 0.5, drift: float = 0.5, root_spread: float = 1.2,
                    n_labs: int = 8) -> ProbedEcosystem:
    """The model of ``simulate`` (Brownian logits along a random tree), probed once per model
    (``n_samples`` draws per gene), at any scale.

    The defaults give real-like allele diversity: with 64 candidate alleles per gene and a
    flatter root distribution, a probe of 32 samples shows about 17 distinct alleles per
    gene, as real models do (``ProbedEcosystem.distinct_alleles_per_gene`` measures it:
    17.2 at 5,000 models; the figure falls slowly as the tree deepens with n).
    Logits are carried down the tree depth first, so memory is O(depth x genes x alleles)
    for them plus the counts; time O(n_models x genes x alleles). The random streams differ
    from ``simulate``'s: the same seed gives a different ecosystem.
    """
    if n_models < 2:
        raise ValueError("simulate at least two models")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if n_genes < 1 or n_alleles < 2 or not 1 <= n_samples <= 255:
        raise ValueError("need at least one gene, two alleles per gene and 1-255 samples")
    rng = np.random.default_rng(seed)
    parent, leaf_nodes, lengths = _random_tree(n_models, shape, branch_length, rate_sd, rng)
    n_nodes = len(parent)
    children: list[list[int]] = [[] for _ in range(n_nodes)]
    for v in range(1, n_nodes):
        children[parent[v]].append(v)
    depth = np.zeros(n_nodes)
    for v in range(1, n_nodes):
        depth[v] = depth[parent[v]] + lengths[v]
    offsets = (np.arange(n_genes, dtype=np.int64) * n_alleles)[:, None]
    probe_codes: dict[int, np.ndarray] = {}
    probe_counts: dict[int, np.ndarray] = {}
    stack = [(0, rng.normal(0.0, root_spread, (n_genes, n_alleles)))]
    while stack:
        v, z = stack.pop()
        if not children[v]:
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            c = rng.multinomial(n_samples, p)
            nz = c > 0
            probe_codes[v] = (offsets + np.arange(n_alleles))[nz].astype(np.int32)
            probe_counts[v] = c[nz].astype(np.uint8)
            continue
        for u in children[v]:
            stack.append((u, z + rng.normal(0.0, drift * np.sqrt(lengths[u]), z.shape)))
    leaves = sorted(leaf_nodes, key=lambda v: (depth[v], v))
    labs = _labs(children, n_labs)
    name_of = {v: f"lab-{labs[v]:02d}/sim-{i:06d}.v{_generation(parent, v)}" for i, v in enumerate(leaves)}
    truth = _truth_tree(n_nodes, lengths, parent, name_of)
    sizes = np.array([probe_codes[v].shape[0] for v in leaves], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    codes = np.concatenate([probe_codes.pop(v) for v in leaves])
    data = np.concatenate([probe_counts.pop(v) for v in leaves])
    alleles = [_allele_names(rng, n_alleles) for _ in range(n_genes)]
    return ProbedEcosystem(ids=[name_of[v] for v in leaves], truth=truth, alleles=alleles, indptr=indptr,
                           codes=codes, counts_data=data, n_samples=n_samples,
                           params=dict(n_models=n_models, seed=seed, n_genes=n_genes, n_samples=n_samples,
                                       shape=shape, n_alleles=n_alleles, branch_length=branch_length,
                                       rate_sd=rate_sd, drift=drift, root_spread=root_spread))
