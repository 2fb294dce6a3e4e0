"""Genomes read from files: the built-in ones shipped as package data
(``indexer/data/genomes/*.jsonl``, with their provenance and licence) and user genomes in
JSONL files. The genome itself (what it is, its hash, the JSONL format) is
``indexer.core.genomes``.

The package data are read through ``importlib.resources`` so that an installed wheel works.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from indexer.core.genomes import Genome, GenomeError, parse_jsonl

BUILTIN = ("math", "code")


def builtin(name: str) -> Genome:
    """One of the built-in genomes (``math`` or ``code``)."""
    if name not in BUILTIN:
        raise GenomeError(f"unknown genome {name!r}; built-in genomes are {', '.join(BUILTIN)}")
    text = resources.files("indexer").joinpath(f"data/genomes/{name}.jsonl").read_text("utf-8")
    return parse_jsonl(text, name)


def load(name_or_path: str) -> Genome:
    """A built-in genome by name, or a user genome from a JSONL file."""
    if name_or_path in BUILTIN:
        return builtin(name_or_path)
    p = Path(name_or_path)
    if not p.is_file():
        raise GenomeError(f"no genome named {name_or_path!r} (built-ins: {', '.join(BUILTIN)}) and no such file")
    return parse_jsonl(p.read_text("utf-8"), p.stem, origin=str(p.name))
