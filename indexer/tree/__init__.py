"""Phylogenetic trees of models: structure, Newick, neighbour joining, least-squares
placement, local NNI, comparison (Robinson-Foulds, monophyly, fit), gene-bootstrap support
and the rebuild policy. Pure numpy; no I/O."""
from indexer.tree.compare import families_recovered, is_monophyletic, robinson_foulds, splits, squared_error
from indexer.tree.core import Tree
from indexer.tree.incremental import IncrementalTree, TreeUpdate
from indexer.tree.newick import NewickError, parse_newick, to_newick
from indexer.tree.nj import neighbor_joining
from indexer.tree.nni import local_nni
from indexer.tree.placement import Placement, place
from indexer.tree.policy import RebuildPolicy

__all__ = [
    "Tree", "parse_newick", "to_newick", "NewickError", "neighbor_joining", "place", "Placement",
    "local_nni", "RebuildPolicy", "IncrementalTree", "TreeUpdate", "robinson_foulds", "splits", "is_monophyletic",
    "families_recovered", "squared_error",
]
