"""Phylogenetic trees of models: structure, Newick, neighbour joining, least-squares
placement, local NNI, comparison (Robinson-Foulds, monophyly, fit), gene-bootstrap support
and the rebuild policy. Pure numpy; no I/O."""
from indexer.core.tree.compare import families_recovered, is_monophyletic, robinson_foulds, splits, squared_error
from indexer.core.tree.core import Tree
from indexer.core.tree.incremental import IncrementalTree, TreeUpdate
from indexer.core.tree.newick import NewickError, parse_newick, to_newick
from indexer.core.tree.nj import neighbor_joining
from indexer.core.tree.nni import local_nni
from indexer.core.tree.placement import Placement, place
from indexer.core.tree.policy import RebuildPolicy

__all__ = [
    "Tree", "parse_newick", "to_newick", "NewickError", "neighbor_joining", "place", "Placement",
    "local_nni", "RebuildPolicy", "IncrementalTree", "TreeUpdate", "robinson_foulds", "splits", "is_monophyletic",
    "families_recovered", "squared_error",
]
