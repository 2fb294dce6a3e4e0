"""Adapters: the catalog (DuckDB), the Hub (huggingface_hub), the probing backends, the
published files and the packaged reference data.

Each adapter speaks to one outside system and knows nothing of the others; shared plumbing
(HTTP retry timing) sits in modules of its own here. ``indexer.app`` composes them.
"""
