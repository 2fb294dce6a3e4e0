"""What the zoo's true lineage says about distances, as relations that can be checked.

Each relation is a statement about a distance matrix of the zoo (``holds``) with a
*margin*: how far, in distance units, the data are from contradicting it (the gap between
the nearest wrong answer and the right one). A relation is worth asserting only when its
margin is well above the noise of a probe (docs/zoo.md gives the measured noise floor and
margins) and a gene bootstrap supports it (``bootstrap_support``).

Kin: a model's true parents and children. A re-upload of a model's weights -- the int8
rounding, the Q8_0 GGUF, the byte-identical copy -- is a copy of its original (its distance
from it is the noise floor, or 0 for the exact copy), so it counts as kin wherever its
original does. The LoRA adapter is a child of its base like any fine-tune.

Relations (names are stable; tests and docs refer to them):

* ``nearest-is-kin:<id>`` -- the model's nearest neighbour is kin of it (every model but the
  out-group).
* ``copy-pairs-with-original:<id>`` -- an undeclared copy (the int8 one, the exact one) and
  its original are each other's nearest.
* ``beside-true-parent:<id>`` -- an upload of the mix (adapter, GGUF re-upload, exact copy)
  is placed beside its true parent: its nearest is the parent, the parent's copies set aside
  (X's int8 copy is X) and, for a copy, the parent's descendants too (a copy of X is as near
  X's children as X is). ``nearest-is-true-parent:<id>`` is the same without setting anything
  aside: reported (docs/zoo.md), not asserted where the parent has a near copy or derivative.
* ``nearer-parent-than-grandparent:<id>`` -- a fine-tune of a fine-tune.
* ``outgroup-farther-than-root`` -- every model of the family is nearer the family's root
  than the out-group (so rooting on the out-group puts the root where it belongs).
* ``declared-base-confirmed:<id>:<base>`` -- the lineage check's ``confirmed`` rule for a true
  declaration: the declared base is among the model's 3 nearest, the base's own declared
  lineage, the model's other declared bases and its exact copies set aside.
* ``false-claim-flagged:<id>`` -- the lineage check's ``suspicious`` rule for the planted
  false claim: the declared base is at least ``ratio`` times the distance to the nearest.
* ``undeclared-copy-found:<id>`` -- an undeclared copy is within the lineage check's close
  distance (``ratio`` x the median distance of the confirmed declarations) of its original.
* ``true-parent-found:<id>`` -- the model with the false claim is within the close distance
  of its true parent, so the check names the parent it does not declare.
* ``clade:<a>+<b>...`` -- in the neighbour-joining tree of the family (the out-group left
  out, i.e. rooted on it) the near-copy and its original, and each model with all its
  descendants, form a clade; no margin, bootstrap support only.

Cost: O(n^2) per relation set on the zoo's n (about ten) models; the bootstrap is B x that
plus B small NJ trees.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.core.lineage import declared_descendants
from indexer.testbed.zoo import GEMMA, ZOO, ZooModel

CONFIRM_RANK = 3  # indexer.core.lineage.check_lineage's defaults, which the demo uses
RATIO = 2.0


@dataclass(frozen=True)
class Relation:
    name: str
    holds: bool
    margin: float | None  # distance units; None for tree relations
    detail: str


def _spec(model_id: str) -> ZooModel:
    return next(m for m in ZOO if m.id == model_id)


COPY_MAKES = ("quantize", "to_gguf", "copy")  # re-uploads of one model's weights
MIX_MAKES = ("lora", "to_gguf", "copy")  # the upload mix: each must land beside its parent


def copies() -> dict[str, str]:
    """{copy id: original id}: every re-upload of one model's weights (int8, GGUF, exact)."""
    return {m.id: m.parents[0] for m in ZOO if m.make in COPY_MAKES}


def undeclared_copies() -> dict[str, str]:
    """The copies whose card declares nothing (the lineage check must name their original)."""
    return {c: o for c, o in copies().items() if not _spec(c).declared_base}


def exact_copies() -> dict[str, str]:
    """{exact copy: original}: what the index knows from the Hub's hashes (check_lineage's
    ``copies``)."""
    return {m.id: m.parents[0] for m in ZOO if m.make == "copy"}


def exact_twins(model_id: str) -> set[str]:
    pairs = exact_copies().items()
    return {c for c, o in pairs if o == model_id} | {o for c, o in pairs if c == model_id}


def descendants(model_id: str) -> set[str]:
    children = _children()
    out, stack = set(), list(children[model_id])
    while stack:
        x = stack.pop()
        if x not in out:
            out.add(x)
            stack.extend(children[x])
    return out


def _children() -> dict[str, set[str]]:
    """{model: its true children}, every zoo model a key."""
    out: dict[str, set[str]] = {m.id: set() for m in ZOO}
    for m in ZOO:
        for p in m.parents:
            out[p].add(m.id)
    return out


def _root() -> str:
    """The family's root: the released model that is not the out-group."""
    return next(m.id for m in ZOO if m.make == "gguf" and m.id != GEMMA)


def kin(model_id: str) -> set[str]:
    """True parents and children, a near-copy standing for its original."""
    children = _children()
    direct = {m.id: set(m.parents) | children[m.id] for m in ZOO}
    alias = copies()
    out = set(direct[model_id])
    if model_id in alias:
        out |= direct[alias[model_id]] | {alias[model_id]}
    for c, orig in alias.items():
        if orig in out:
            out.add(c)
    out.discard(model_id)
    return out


def family() -> list[str]:
    return [m.id for m in ZOO if m.id != GEMMA]


def relations(D: np.ndarray, ids: Sequence[str], tree_builder: Callable | None = None) -> list[Relation]:
    """Every relation of the zoo evaluated on ``D`` (rows in ``ids`` order). With
    ``tree_builder(D, names) -> Tree`` (neighbour joining), the clade relations too."""
    ids = list(ids)
    pos = {m: i for i, m in enumerate(ids)}
    d = lambda a, b: float(D[pos[a], pos[b]])  # noqa: E731
    others = lambda a, excl=(): [b for b in ids if b != a and b not in excl]  # noqa: E731
    out: list[Relation] = []

    for m in family():
        k = kin(m) & set(ids)
        near_kin = min(k, key=lambda b: d(m, b))
        non = [b for b in others(m) if b not in k]
        near_non = min(non, key=lambda b: d(m, b))
        margin = d(m, near_non) - d(m, near_kin)
        out.append(Relation(f"nearest-is-kin:{m}", margin > 0, margin,
                            f"kin {near_kin} at {d(m, near_kin):.3f}, nearest other {near_non} at "
                            f"{d(m, near_non):.3f}"))

    alias = copies()
    for c, orig in undeclared_copies().items():
        if c not in pos:
            continue
        # the original's other copies are the original
        aside = {orig} | {x for x, o in alias.items() if o == orig}
        mc = min(d(c, b) for b in others(c, tuple(aside))) - d(c, orig)
        mo = min(d(orig, b) for b in others(orig, tuple(aside))) - d(orig, c)
        margin = min(mc, mo)
        out.append(Relation(f"copy-pairs-with-original:{c}", margin > 0, margin,
                            f"{c} - {orig} {d(c, orig):.3f}; next nearest of the copy +{mc:.3f}, "
                            f"of the original +{mo:.3f}"))

    for m in ZOO:
        if m.make not in MIX_MAKES or m.id not in pos:
            continue
        parent = m.parents[0]
        aside = {parent} | {x for x, o in alias.items() if o == parent}
        if m.id in alias:  # a copy is as near its original's children as the original is
            aside |= descendants(parent)
        near_other = min(others(m.id, tuple(aside)), key=lambda b: d(m.id, b))
        margin = d(m.id, near_other) - d(m.id, parent)
        what = "copies and descendants" if m.id in alias else "copies"
        out.append(Relation(f"beside-true-parent:{m.id}", margin > 0, margin,
                            f"parent {parent} at {d(m.id, parent):.3f}, nearest other (the parent's {what} "
                            f"aside) {near_other} at {d(m.id, near_other):.3f}"))
        strict = min(others(m.id, (parent,)), key=lambda b: d(m.id, b))
        margin = d(m.id, strict) - d(m.id, parent)
        out.append(Relation(f"nearest-is-true-parent:{m.id}", margin > 0, margin,
                            f"parent {parent} at {d(m.id, parent):.3f}, nearest other {strict} at "
                            f"{d(m.id, strict):.3f}"))

    for m in ZOO:
        if m.make == "finetune" and _spec(m.parents[0]).make == "finetune":
            parent = m.parents[0]
            grand = _spec(parent).parents[0]
            margin = d(m.id, grand) - d(m.id, parent)
            out.append(Relation(f"nearer-parent-than-grandparent:{m.id}", margin > 0, margin,
                                f"parent {d(m.id, parent):.3f}, grandparent {d(m.id, grand):.3f}"))

    root = _root()
    gaps = {m: d(m, GEMMA) - d(m, root) for m in family() if m != root}
    worst = min(gaps, key=gaps.get)
    out.append(Relation("outgroup-farther-than-root", gaps[worst] > 0, gaps[worst],
                        f"closest call {worst}: out-group {d(worst, GEMMA):.3f}, root {d(worst, root):.3f}"))

    confirmed: list[float] = []
    lineage_of = declared_descendants(ids, {m.id: m.declared_base for m in ZOO})
    for m in ZOO:
        for base in m.declared_base:
            if base in m.parents:
                # as check_lineage ranks it: the base's declared lineage, the child's other
                # declared bases and the child's exact copies set aside
                aside = lineage_of.get(base, set()) | set(m.declared_base) | exact_twins(m.id)
                rest = sorted(d(m.id, b) for b in others(m.id, tuple(aside)))
                edge = rest[CONFIRM_RANK - 1] if len(rest) >= CONFIRM_RANK else np.inf
                margin = edge - d(m.id, base)
                confirmed.append(d(m.id, base))
                out.append(Relation(f"declared-base-confirmed:{m.id}:{base}", margin > 0, float(margin),
                                    f"declared base at {d(m.id, base):.3f}, rank-{CONFIRM_RANK} edge {edge:.3f}"))
            else:
                nn = min(d(m.id, b) for b in others(m.id))
                margin = d(m.id, base) - RATIO * nn
                out.append(Relation(f"false-claim-flagged:{m.id}", margin > 0, margin,
                                    f"claimed base {base} at {d(m.id, base):.3f}, nearest at {nn:.3f}"))

    close = RATIO * float(np.median(confirmed)) if confirmed else 0.0
    for c, orig in undeclared_copies().items():
        if c not in pos:
            continue
        margin = close - d(c, orig)
        out.append(Relation(f"undeclared-copy-found:{c}", margin > 0, margin,
                            f"{c} at {d(c, orig):.3f} from {orig}; close distance {close:.3f}"))
    for m in ZOO:
        if m.declared_base and not set(m.declared_base) & set(m.parents):
            parent = m.parents[0]
            margin = close - d(m.id, parent)
            out.append(Relation(f"true-parent-found:{m.id}", margin > 0, margin,
                                f"true parent {parent} at {d(m.id, parent):.3f}; close distance {close:.3f}"))

    if tree_builder is not None:
        out += clades(D, ids, tree_builder)
    return out


def expected_clades() -> list[tuple[str, ...]]:
    """Groups the family's tree must keep together: each undeclared copy with its original, and
    every model that has descendants with all of them, where no descendant has a parent
    outside the group (a merge sits between its parents, so a parent alone with the merge
    is no clade), the family's root excepted (its clade is the whole family)."""
    children = _children()
    root = _root()
    out = [(c, orig) for c, orig in undeclared_copies().items()]
    for m in ZOO:
        if m.id in (root, GEMMA) or not children[m.id]:
            continue
        group, stack = {m.id}, list(children[m.id])
        while stack:
            x = stack.pop()
            if x not in group:
                group.add(x)
                stack.extend(children[x])
        parents = {p for x in group - {m.id} for p in _spec(x).parents}
        if parents <= group:
            out.append(tuple(sorted(group)))
    return out


def clades(D: np.ndarray, ids: Sequence[str], tree_builder: Callable) -> list[Relation]:
    """``clade:<a>+<b>+...`` for each expected clade, on the tree of the family alone (the
    out-group left out: the family's tree rooted on it)."""
    from indexer.core.tree.compare import is_monophyletic

    ids = list(ids)
    fam = [m for m in family() if m in ids]
    keep = [ids.index(m) for m in fam]
    tree = tree_builder(D[np.ix_(keep, keep)], fam)
    out = []
    for group in expected_clades():
        ok = is_monophyletic(tree, list(group))
        out.append(Relation("clade:" + "+".join(group), ok, None, "together" if ok else "split apart"))
    return out


def bootstrap_support(distances_for_weights: Callable[[np.ndarray], np.ndarray], ids: Sequence[str],
                      n_genes: int, n_replicates: int = 200, seed: int = 0,
                      tree_builder: Callable | None = None) -> dict[str, float]:
    """{relation name: fraction of gene-bootstrap replicates in which it holds}.

    ``distances_for_weights(w)`` is the distance matrix when gene g weighs ``w[g]`` (genes
    drawn with replacement, Felsenstein 1985 with genes as characters)."""
    rng = np.random.default_rng(seed)
    held: dict[str, int] = {}
    for _ in range(n_replicates):
        w = rng.multinomial(n_genes, np.full(n_genes, 1.0 / n_genes)).astype(np.float64)
        for r in relations(distances_for_weights(w), ids, tree_builder):
            held[r.name] = held.get(r.name, 0) + int(r.holds)
    return {k: v / n_replicates for k, v in held.items()}
