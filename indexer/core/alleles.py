"""Alleles: the short text a model writes after a gene, as the PhyloLM paper defines it.

An allele is the first four characters of a completion once leading spaces and then
leading newlines are removed (Yax et al., 2024, "PhyloLM", section 2). Comparing text, not
token ids, makes models with different tokenizers comparable.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

ALLELE_LENGTH = 4


def allele_of(text: str) -> str:
    """The allele of one completion: ``text.lstrip(' ').lstrip('\\n')[:4]``.

    The order matters and is the paper's: spaces first, then newlines, so ``" \\n x"``
    gives ``" x"`` (the space after the newline is kept). Characters, not bytes, are
    counted, so multi-byte characters are never split. An empty completion is ``""``.
    """
    return text.lstrip(" ").lstrip("\n")[:ALLELE_LENGTH]


def is_complete(text: str) -> bool:
    """True once more generated text could not change the allele (early stopping): the
    allele has its ``ALLELE_LENGTH`` characters and none is U+FFFD (a multi-byte character
    cut between tokens decodes as the replacement character until its last byte arrives)."""
    allele = allele_of(text)
    return len(allele) >= ALLELE_LENGTH and "\ufffd" not in allele


def count_alleles(completions: Iterable[str]) -> dict[str, int]:
    """Allele counts of one gene's sampled completions."""
    return dict(Counter(allele_of(t) for t in completions))


def count_genome(completions_per_gene: Sequence[Iterable[str]]) -> tuple[dict[str, int], ...]:
    """Allele counts for every gene, in genome order."""
    return tuple(count_alleles(c) for c in completions_per_gene)
