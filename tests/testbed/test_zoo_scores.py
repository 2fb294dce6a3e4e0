"""Zoo scores: the bits-per-byte arithmetic on a model whose likelihood is known exactly,
the held-out texts kept apart from the training texts, and (slow) the real zoo measured."""
from __future__ import annotations

import math
from importlib import resources

import pytest

from indexer.errors import PhylolmError
from indexer.testbed.zoo_scores import DOMAINS, bits_per_byte, heldout_text


class _Tokenizer:
    """One token per byte (ids 2..257), BOS id 0."""
    bos_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b + 2 for b in text.encode("utf-8")]}


class _Uniform:
    """Every next token equally likely among ``vocab``: log2(vocab) bits a token."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, input_ids):
        import torch

        class _Out:
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        return _Out()


def test_bits_per_byte_of_a_uniform_model_is_log2_of_its_vocabulary():
    pytest.importorskip("torch")
    text = "Héllo, zoo! " * 100  # multi-byte characters, and more than one window
    assert bits_per_byte(_Uniform(258), _Tokenizer(), text, window=64) == pytest.approx(math.log2(258))
    with pytest.raises(PhylolmError):
        bits_per_byte(_Uniform(258), _Tokenizer(), "")


def test_heldout_texts_share_no_line_with_the_training_texts():
    train = resources.files("indexer") / "data" / "zoo"
    for d in DOMAINS:
        held = [ln.strip() for ln in heldout_text(d).splitlines() if ln.strip()]
        assert len("\n".join(held).encode()) > 400, d
        path = train / f"{d}.txt"
        if path.is_file():
            seen = {ln.strip() for ln in path.read_text().splitlines()}
            assert not seen & set(held), d
    with pytest.raises(PhylolmError):
        heldout_text("cooking")


@pytest.mark.slow
def test_the_zoo_measured(tmp_path):
    """Each fine-tune chosen for a clear margin: the chess fine-tune reads held-out chess
    better than its parent, the shanties fine-tune held-out shanties better than its parent."""
    pytest.importorskip("torch")
    from indexer.testbed.zoo import ensure_zoo
    from indexer.testbed.zoo_scores import score_zoo

    rows = score_zoo(ensure_zoo(), cache=tmp_path)
    bpb = {(r["model_id"], r["domain"]): r["bits_per_byte"] for r in rows}
    assert len(rows) == 8 * len(DOMAINS) and all(0.3 < v < 5 for v in bpb.values())
    assert bpb["zoo/smollm2-ft-chess", "chess"] < bpb["zoo/smollm2-ft-recipes", "chess"] - 0.1
    assert bpb["zoo/smollm2-ft-poetry-shanties", "shanties"] < bpb["zoo/smollm2-ft-poetry", "shanties"] - 0.5
    assert all(r["value"] == pytest.approx(2 ** -r["bits_per_byte"], rel=1e-5) for r in rows)
