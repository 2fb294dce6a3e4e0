"""The paper's allele rule, pinned on its edge cases."""
import pytest

from indexer.core.alleles import allele_of, count_alleles, count_genome, is_complete


@pytest.mark.parametrize("text, allele", [
    ("", ""),                       # empty completion is the allele ""
    ("   ", ""),                    # only spaces
    ("\n\n", ""),                   # only newlines
    (" The cat", "The "),           # leading space stripped
    ("\n\nx = 1", "x = "),          # leading newlines stripped
    ("  \n\nabc", "abc"),           # spaces, then newlines
    ("\n  abcdef", "  ab"),         # newline then spaces: the spaces stay (lstrip order)
    (" \n \nab", " \nab"),          # only the first run of each is removed
    ("ab", "ab"),                   # fewer than 4 characters
    ("\tabc", "\tabc"),             # tabs are not stripped
    ("éèà€ü", "éèà€"),              # characters, not bytes
    ("  😀😀😀😀😀", "😀😀😀😀"),     # astral-plane characters count once
])
def test_allele_rule(text, allele):
    assert allele_of(text) == allele
    assert allele == text.lstrip(" ").lstrip("\n")[:4]


def test_is_complete_matches_rule():
    assert not is_complete("  \nab")
    assert is_complete("  \nabcd")
    assert is_complete("\n\n1234xyz")


def test_counts():
    assert count_alleles([" 1+1", "1+1=2", "\n1+1", "x"]) == {"1+1": 2, "1+1=": 1, "x": 1}
    assert count_genome([["a", "a"], ["", "b"]]) == ({"a": 2}, {"": 1, "b": 1})
