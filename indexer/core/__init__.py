"""The domain core: alleles, genomes, distances, the tree and its index, estimates, lineage.

Pure computation: no files, no network, no database, no engines. Everything that touches the
outside world lives in ``indexer.adapters``; ``indexer.app`` composes the two.
"""
