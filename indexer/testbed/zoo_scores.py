"""Zoo scores: a mini-benchmark the zoo's models can be measured on, offline, on CPU.

Each zoo model's **bits per byte** on a held-out text of each domain its fine-tunes were
trained on (``poetry``, ``recipes``, ``chess``, ``shanties``) and of one domain none was
trained on (``math``). The texts are ``indexer/data/zoo_heldout/<domain>.txt``: the same
genres as the training texts (``indexer/data/zoo/``) but none of their lines, so a
fine-tune's advantage on its own domain is generalisation, not memory.

Measurement: the text is tokenised by the model's own tokenizer, preceded by its BOS token
(EOS when it has none), cut into windows of ``WINDOW`` tokens (each window after the first
starts fresh, with the same BOS), and every token is scored by next-token log-likelihood in
float32 with one thread, so the numbers are deterministic on a machine. Bits per byte =
total negative log2-likelihood / UTF-8 bytes of the text: comparable across tokenizers
(SmolLM2's and Gemma's differ).

The catalog's estimators work on scores in [0, 1] (benchmark accuracies), so the stored
score is the **per-byte likelihood** ``2 ** -bits_per_byte`` (a monotone transform: higher
is better, 0.5 means one bit per byte), benchmark ``zoo_<domain>``, source naming this
benchmark and its version. ``bits_per_byte`` is kept next to it in the results.

Only the zoo's eight full checkpoints are measured; the upload mix (its LoRA adapter, GGUF
re-upload and exact copy) is not, and is left to the estimators like any model without
scores. Cost (2 CPU cores): loading the eight models and scoring five ~1 kB texts takes
about a minute; results are cached under ``<cache>/zoo/scores-<key>.json``, the key hashing
the measured models' zoo keys, the texts, this module's version and the torch/transformers
versions.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from indexer.errors import PhylolmError

VERSION = 2
DOMAINS = ("poetry", "recipes", "chess", "shanties", "math")
WINDOW = 512
MIX = ("lora", "to_gguf", "copy")  # zoo kinds not scored (see score_zoo)
SOURCE = f"phylolm zoo-scores v{VERSION}: per-byte likelihood 2^-bpb on indexer/data/zoo_heldout"


def heldout_text(domain: str) -> str:
    """The held-out text of ``domain`` (one of ``DOMAINS``)."""
    if domain not in DOMAINS:
        raise PhylolmError(f"unknown zoo-score domain {domain!r}; known: {', '.join(DOMAINS)}")
    return (resources.files("indexer") / "data" / "zoo_heldout" / f"{domain}.txt").read_text(encoding="utf-8")


def benchmark_name(domain: str) -> str:
    return f"zoo_{domain}"


def bits_per_byte(model, tokenizer, text: str, window: int = WINDOW) -> float:
    """Negative log2-likelihood of ``text`` under ``model`` per UTF-8 byte (see the module)."""
    if not text:
        raise PhylolmError("cannot score an empty text")
    return _bits(model, tokenizer, text, window) / len(text.encode("utf-8"))


def _bits(model, tokenizer, text: str, window: int) -> float:
    import torch

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(ids), window - 1):
            chunk = [start, *ids[i: i + window - 1]]
            x = torch.tensor([chunk])
            logits = model(input_ids=x).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp.gather(1, x[0, 1:, None]).sum().item()
            total += nll / math.log(2)
    return total


def cache_key(recipe: str) -> str:
    import torch
    import transformers

    blob = {"version": VERSION, "recipe": recipe, "window": WINDOW,
            "texts": {d: hashlib.sha256(heldout_text(d).encode()).hexdigest() for d in DOMAINS},
            "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def score_zoo(zoo_dir: str | Path, *, cache: str | Path | None = None, domains: Sequence[str] = DOMAINS,
              log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every full checkpoint of the zoo in ``zoo_dir`` (a built zoo: ``zoo.json`` and one folder per model)
    measured on every domain: rows ``{model_id, benchmark, domain, bits_per_byte, value,
    source}``. Cached (see the module) when all ``DOMAINS`` are asked for."""
    zoo_dir = Path(zoo_dir)
    manifest = zoo_dir / "zoo.json"
    if not manifest.is_file():
        raise PhylolmError(f"{zoo_dir} is not a built zoo (no zoo.json); run `phylolm zoo build DIR` first")
    info = json.loads(manifest.read_text())
    for d in domains:
        heldout_text(d)  # refuses unknown domains before any model loads
    from indexer.testbed.zoo import default_cache

    # Full checkpoints only: the upload mix (adapter, GGUF re-upload, exact copy) is left to the
    # estimators, as models without scores of their own.
    scored = [m for m in info["models"] if m.get("make") not in MIX]
    use_cache = tuple(domains) == DOMAINS
    recipe = json.dumps([[m["id"], m.get("key", "")] for m in scored])
    cached = Path(cache or default_cache()) / "zoo" / f"scores-{cache_key(recipe)}.json"
    if use_cache and cached.is_file():
        log(f"zoo scores from the cache ({cached.name})")
        return json.loads(cached.read_text())
    rows = _measure(zoo_dir, [m["id"] for m in scored], domains, log)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        os.replace(tmp, cached)
    return rows


def _measure(zoo_dir: Path, ids: list[str], domains: Sequence[str], log) -> list[dict]:
    import torch

    from indexer.testbed.zoo import _load_saved

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for mid in ids:
            model, tokenizer = _load_saved(zoo_dir / mid)
            model.eval()
            for d in domains:
                bpb = bits_per_byte(model, tokenizer, heldout_text(d))
                rows.append({"model_id": mid, "benchmark": benchmark_name(d), "domain": d,
                             "bits_per_byte": round(bpb, 6), "value": round(2.0 ** -bpb, 6), "source": SOURCE})
            log(f"{mid}: " + ", ".join(f"{r['domain']} {r['bits_per_byte']:.3f}" for r in rows[-len(domains):]))
            del model, tokenizer
    finally:
        torch.set_num_threads(threads)
    return rows
