"""Genomes: ordered, hashed sets of raw-text prompts ("genes").

A genome is data. Its content hash (over the gene texts, in order) is recorded with every
probe, so results from different genomes are never mixed. This module is the data model
and the JSONL format only; reading a genome from a file or from the package data (the two
built-in genomes) is ``indexer.adapters.genome_files``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

MIN_GENE_CHARS, MAX_GENE_CHARS = 1, 4096


class GenomeError(ValueError):
    """A genome file or name that cannot be used."""


@dataclass(frozen=True)
class Genome:
    name: str
    genes: tuple[str, ...]
    source: str = ""
    license: str = ""
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.genes:
            raise GenomeError(f"genome {self.name!r} has no genes")
        for i, g in enumerate(self.genes):
            if not isinstance(g, str) or not (MIN_GENE_CHARS <= len(g) <= MAX_GENE_CHARS):
                raise GenomeError(f"genome {self.name!r}: gene {i} must be text of 1-4096 characters")
        object.__setattr__(self, "hash", genome_hash(self.genes))

    def __len__(self) -> int:
        return len(self.genes)

    def subset(self, n_genes: int) -> "Genome":
        """The first ``n_genes`` genes, as a genome of its own (with its own hash)."""
        if not 1 <= n_genes <= len(self.genes):
            raise GenomeError(f"genome {self.name!r} has {len(self.genes)} genes; asked for {n_genes}")
        if n_genes == len(self.genes):
            return self
        return Genome(f"{self.name}[:{n_genes}]", self.genes[:n_genes], self.source, self.license)


def genome_hash(genes: tuple[str, ...] | list[str]) -> str:
    """SHA-256 over the genes in order, each length-prefixed so boundaries are unambiguous."""
    h = hashlib.sha256()
    for g in genes:
        b = g.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def parse_jsonl(text: str, name: str, origin: str = "") -> Genome:
    """A genome from JSONL: one object per line with a ``"text"`` field (a header line
    ``{"genome": ..., "source": ..., "license": ...}`` is optional)."""
    genes: list[str] = []
    meta: dict = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenomeError(f"{origin or name}: line {lineno} is not JSON ({e.msg})") from None
        if isinstance(obj, dict) and "genome" in obj and "text" not in obj:
            meta = obj
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise GenomeError(f"{origin or name}: line {lineno} needs a string field \"text\"")
        genes.append(obj["text"])
    return Genome(meta.get("genome", name), tuple(genes), meta.get("source", origin), meta.get("license", ""))

