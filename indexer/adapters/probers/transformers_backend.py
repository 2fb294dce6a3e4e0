"""The ``transformers`` prober: PhyloLM probes on CPU or GPU with Hugging Face transformers.

What it computes is exactly the paper's sampler: for each gene, ``n_samples`` independent
continuations drawn by ancestral sampling from the model's full next-token distribution at
``temperature`` (nucleus-filtered only when ``top_p < 1``; no top-k, unlike ``generate``'s
default of 50), at most ``max_tokens`` new tokens, raw gene text as the prompt (no chat
template). Only how it is computed differs from ``generate(num_return_sequences=N)``:

1. **Prefill once per gene.** A batch of genes (left-padded) is run through the model once;
   its KV cache is then shared by all of that gene's samples instead of being recomputed N
   times.
2. **Samples that agree share their work (counted prefix tree).** Samples with the same
   token prefix have the same next-token distribution, so rather than decoding N rows the
   sampler keeps one row per *distinct* prefix with a count ``c`` and draws ``c`` next tokens
   from it; distinct tokens become child rows carrying their counts. This is the same
   distribution over N i.i.d. samples (a multinomial split at every node), with far fewer
   rows: at temperature 0.7 most samples of a gene share their first tokens.
3. **Early stop.** A row stops as soon as its stripped text has ``ALLELE_LENGTH`` characters
   (more text cannot change its allele), on an end-of-sequence token, or at ``max_tokens``.

Cost per batch of B genes: one prefill over B padded prompts, then at most ``max_tokens``
decode steps over the live distinct prefixes (<= B*N rows, usually far fewer), each step
O(rows * (params + rows' context)). Memory: the KV cache of the live rows.

Safety: only local snapshots are loaded (``local_files_only``), weights from safetensors only
(``use_safetensors``), never code shipped with a model (``trust_remote_code=False``); a
repository that is pickle-only or whose config asks for remote code is refused with
``ProbeError(skip=True)`` before transformers is asked to load anything.

A PEFT/LoRA adapter (``ModelSource.adapter``) is probed as its base (``ModelSource.path``,
checked like any checkpoint) with the adapter applied by ``peft`` from
``adapter_model.safetensors`` (``checkpoint.check_adapter``) and merged into the weights, so
sampling costs what the base's does.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from indexer.core.alleles import ALLELE_LENGTH, allele_of
from indexer.core.genomes import Genome
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError
from indexer.adapters.probers.checkpoint import check_adapter, check_gguf, check_repository, resolve_dtype
from schemas.records import AlleleCounts, ProbeParams

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


class TransformersProber(Prober):
    """Probe local safetensors snapshots with transformers (see the module docstring).

    Options: ``device`` ("cpu", "cuda", ... ; default cuda when available), ``dtype``
    ("auto": bfloat16 on CUDA or on CPUs with native bf16, else float32), ``genes_per_batch``
    (genes prefilled and decoded together; default 8 on CPU, 64 on GPU), ``threads`` (CPU
    threads; default torch's).
    """

    backend = "transformers"

    def __init__(self, device: str | None = None, dtype: str = "auto", genes_per_batch: int | None = None,
                 threads: int | None = None):
        import torch

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # On CPU a decode row costs the same in a batch of 40 as of 400, while wide prefill
        # batches pad short genes to the longest: small batches win. GPUs want wide ones.
        genes_per_batch = genes_per_batch or (8 if self.device == "cpu" else 64)
        if genes_per_batch < 1:
            raise ValueError("genes_per_batch must be >= 1")
        self.dtype_name = resolve_dtype(dtype, self.device)
        self.genes_per_batch = genes_per_batch
        if threads:
            torch.set_num_threads(threads)
        self._loaded: tuple[tuple[Path, Path | None], Any, Any] | None = None

    def version(self) -> str:
        import torch
        import transformers

        return f"transformers {transformers.__version__}; torch {torch.__version__}; {self.dtype_name}"

    # -- loading -------------------------------------------------------------------------
    def load(self, model: ModelSource) -> tuple[Any, Any]:
        """Model and tokenizer for ``model`` (kept until another model is asked for)."""
        if model.path is None:
            raise ProbeError(f"{model.model_id}: the transformers backend probes local snapshots; "
                             "download the repository first (ModelSource.path)")
        path = Path(model.path)
        key = (path, Path(model.adapter) if model.adapter is not None else None)
        if self._loaded and self._loaded[0] == key:
            return self._loaded[1], self._loaded[2]
        self.close()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        common = dict(trust_remote_code=False, local_files_only=True)
        if model.gguf_file:
            # transformers' GGUF loader de-quantises the file into a regular model; the
            # tokenizer comes from the repository's tokenizer files, else from the GGUF.
            check_gguf(path, model.gguf_file)
            gguf = dict(gguf_file=model.gguf_file)
            tok_kw = {} if (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file() else gguf
            weights_kw: dict = gguf
        else:
            check_repository(path)
            tok_kw, weights_kw = {}, dict(use_safetensors=True)
        if model.adapter is not None:
            check_adapter(Path(model.adapter))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **tok_kw, **common)
            lm, info = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=getattr(torch, self.dtype_name), output_loading_info=True, **weights_kw, **common)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ProbeError(f"{model.model_id}: cannot load ({' '.join(str(e).split())[:300]})") from None
        # transformers fills tensors a checkpoint lacks with random values and only logs it:
        # the probe would be of a model nobody uploaded.
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ProbeError(f"{model.model_id}: checkpoint lacks {len(missing)} tensor(s) "
                             f"({', '.join(missing[:3])})")
        if model.adapter is not None:
            lm = _apply_adapter(lm, Path(model.adapter), model.model_id)
        lm.to(self.device).eval()
        self._loaded = (key, lm, tokenizer)
        return lm, tokenizer

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- sampling ------------------------------------------------------------------------
    def generate(self, model: ModelSource, genome: Genome, params: ProbeParams) -> AlleleCounts:
        import torch

        lm, tokenizer = self.load(model)
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        stop_ids = _stop_token_ids(lm, tokenizer)
        encoded = [tokenizer(g, add_special_tokens=True)["input_ids"] for g in genome.genes]
        if any(len(e) == 0 for e in encoded):
            raise ProbeError(f"{model.model_id}: a gene tokenizes to nothing")
        # Genes of similar length are prefilled together, so padding wastes little compute.
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        counts: list[dict[str, int]] = [{} for _ in encoded]
        for start in range(0, len(order), self.genes_per_batch):
            batch = order[start:start + self.genes_per_batch]
            found = sample_alleles(lm, tokenizer, [encoded[i] for i in batch], params, generator, stop_ids,
                                   self.device)
            for i, c in zip(batch, found):
                counts[i] = c
        return AlleleCounts(genome_hash=genome.hash, n_samples=params.n_samples, counts=tuple(counts))


def _apply_adapter(lm, adapter: Path, model_id: str):
    """``lm`` with the LoRA adapter in ``adapter`` applied by peft (from safetensors only) and
    merged into its weights. An adapter whose tensors do not fit the base (another
    architecture, other shapes) or name no module of it is refused, as a missing tensor is."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ProbeError(f"{model_id}: PEFT adapters need the peft package (the cpu extra)", skip=True) from None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(lm, str(adapter), is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            raise ProbeError(f"{model_id}: the adapter does not apply to its base "
                             f"({' '.join(str(e).split())[:300]})", skip=True) from None
    unexpected = [str(w.message) for w in caught if "unexpected" in str(w.message).lower()
                  or "missing adapter keys" in str(w.message).lower()]
    if unexpected:
        raise ProbeError(f"{model_id}: the adapter does not fit its base ({' '.join(unexpected[0].split())[:300]})",
                         skip=True)
    return peft_model.merge_and_unload()


def sample_alleles(lm, tokenizer, encoded: list[list[int]], params: ProbeParams, generator,
                   stop_ids: set[int], device: str = "cpu") -> list[dict[str, int]]:
    """Allele counts of ``params.n_samples`` samples for each gene of one batch (token ids).

    The counted-prefix-tree sampler of the module docstring. Rows of the decode batch are
    distinct live prefixes; ``rows`` holds, per row, (gene index, token list, count).
    """
    import torch

    n_genes = len(encoded)
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((n_genes, width), pad, dtype=torch.long)
    attention = torch.zeros((n_genes, width), dtype=torch.long)
    for i, ids in enumerate(encoded):  # left padding: every prompt ends at the last column
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention[i, width - len(ids):] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    input_ids, attention, positions = input_ids.to(device), attention.to(device), positions.to(device)

    counts: list[dict[str, int]] = [dict() for _ in range(n_genes)]
    cache_kw = _cache_keyword(lm)
    with torch.inference_mode():
        out = lm(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                 use_cache=True, logits_to_keep=1)
        cache, logits = _cache_of(out), out.logits[:, -1, :]
        next_pos = positions[:, -1] + 1
        rows: list[tuple[int, tuple[int, ...], int]] = [(g, (), params.n_samples) for g in range(n_genes)]
        for step in range(params.max_tokens):
            draws = _draw(logits, [c for _, _, c in rows], params, generator)
            children: dict[tuple[int, tuple[int, ...]], list[int]] = {}  # (gene, tokens) -> [parent row, count]
            for r, ((g, tokens, _), tokens_drawn) in enumerate(zip(rows, draws)):
                for tok in tokens_drawn:
                    key = (g, tokens + (tok,))
                    if key in children:
                        children[key][1] += 1
                    else:
                        children[key] = [r, 1]
            keys = list(children)
            texts = tokenizer.batch_decode([t for _, t in keys], skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
            live_parents, live_rows = [], []
            last = step == params.max_tokens - 1
            for (g, tokens), text in zip(keys, texts):
                parent, c = children[(g, tokens)]
                if last or tokens[-1] in stop_ids or _allele_is_final(text):
                    a = allele_of(text)
                    counts[g][a] = counts[g].get(a, 0) + c
                else:
                    live_parents.append(parent)
                    live_rows.append((g, tokens, c))
            if not live_rows:
                break
            index = torch.tensor(live_parents, device=device)
            cache.reorder_cache(index)
            attention = torch.cat([attention[index], torch.ones((len(index), 1), dtype=attention.dtype,
                                                                 device=device)], dim=1)
            next_pos = next_pos[index]
            step_ids = torch.tensor([[t[-1]] for _, t, _ in live_rows], device=device)
            out = lm(input_ids=step_ids, attention_mask=attention, position_ids=next_pos[:, None],
                     use_cache=True, **{cache_kw: cache})
            cache, logits = _cache_of(out), out.logits[:, -1, :]
            next_pos = next_pos + 1
            rows = live_rows
    del cache, out
    return counts


def _cache_keyword(lm) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier)."""
    import inspect

    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _draw(logits, counts: list[int], params: ProbeParams, generator) -> list[list[int]]:
    """``counts[r]`` i.i.d. draws from row r's tempered (and nucleus-filtered) distribution."""
    import torch

    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    most = max(counts)
    drawn = torch.multinomial(probs, most, replacement=True, generator=generator).tolist()
    return [d[:c] for d, c in zip(drawn, counts)]


def _allele_is_final(text: str) -> bool:
    """True once more tokens cannot change the allele: ALLELE_LENGTH characters after the
    stripping, none of them a replacement character (a multi-byte character cut between
    tokens decodes as U+FFFD until its last byte arrives)."""
    a = allele_of(text)
    return len(a) >= ALLELE_LENGTH and "\ufffd" not in a


def _stop_token_ids(lm, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(lm, "generation_config", None), lm.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def naive_sample_alleles(lm, tokenizer, gene: str, params: ProbeParams, seed: int) -> dict[str, int]:
    """Reference sampler: ``generate(num_return_sequences=N)`` over the full vocabulary.

    N full rows, no cache sharing, no early stop: what the paper ran. Used to check that the
    fast sampler draws from the same distribution, and as the benchmark baseline.
    """
    import torch

    torch.manual_seed(seed)
    enc = tokenizer(gene, return_tensors="pt").to(lm.device)
    with torch.inference_mode():
        out = lm.generate(**enc, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=0, max_new_tokens=params.max_tokens, num_return_sequences=params.n_samples,
                          pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    result: dict[str, int] = {}
    for t in texts:
        a = allele_of(t)
        result[a] = result.get(a, 0) + 1
    return result
