"""The watcher: which models are new on the Hub since a watermark, and which of them to probe.

``Watcher.list_new_models(since)`` pages through the listing newest first (the Hub's order),
stops at the watermark, and yields one ``ModelRecord`` per new model in upload order (oldest
first). Each record is screened from Hub metadata alone, before anything is downloaded
(``screen_status``): text-generation only, weights within a size budget, no gated model without a
token, no remote code, no pickle-only checkpoint. Refused models come out as ``skipped``
records with the reason; models whose metadata is broken come out as ``failed``. The watcher
never raises for one bad item, and a Hub that cannot be listed ends the poll with no records
and ``report.error`` set (the watermark must then stay where it was); what was read so far and
the cursor of the page that failed are kept (``resume``), and the next poll continues from
there instead of starting again.

Metadata is read as the Hub really gives it: weights' size from the root-level safetensors
files (sizes with ``blobs=true``, or their LFS sizes), else from ``safetensors.parameters``
with quantization-aware bytes per parameter (the Hub counts logical parameters: a GPTQ
``I32`` or bitsandbytes ``U8`` count is not a count of packed elements); lineage from the Hub's
``baseModels`` field and ``base_model:`` tags (canonical ids, the Hub's inferred relation),
falling back to the card; remote code from ``auto_map`` in ``config.json`` or
``tokenizer_config.json`` (``.py`` files are never downloaded, so they alone run nothing).

``Watcher.fetch(record, cache_dir)`` downloads a screened model (safetensors only, pinned to
the listed commit) and never raises either: it returns the record, updated to ``failed`` or
``skipped`` with the reason when the download cannot be done.

PEFT/LoRA adapters (``adapter_config.json`` and no ``config.json``) pass the screen on their
own (small) safetensors; they are probed on their base. ``adapter_bases(info)`` is the Hub's
side of which base that is (``base_model:adapter:<id>`` tags, ``baseModels`` with relation
adapter, the card); ``Watcher.fetch_base(base_id, cache_dir, max_bytes)`` screens the base
with the same policy (gated, remote code, formats, quantization, size within what is left of
the budget after the adapter) and downloads it the same way, or says why not: a base that is
missing, gated, too large or itself unsupported (another adapter, GGUF-only, deferred) is a
``skipped`` reason, never retried.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from huggingface_hub.hf_api import ModelInfo

from indexer.adapters.hub.client import HubClient, HubError, ListingReport, describe_error
from indexer.adapters.hub.metadata import DTYPE_BYTES, PACKED_DTYPES, file_size, is_gated, quantization_bits
from schemas.records import ModelRecord, ModelStatus, check_model_id

log = logging.getLogger(__name__)

# Listing fields the screen needs, asked for in the listing itself (one request per page).
LISTING_EXPAND = ["createdAt", "author", "sha", "gated", "disabled", "private", "pipeline_tag",
                  "library_name", "tags", "cardData", "config", "safetensors", "siblings", "usedStorage",
                  "baseModels", "downloads", "likes"]
RELATIONS = ("adapter", "merge", "quantized", "finetune")
TEXT_GENERATION_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")


@dataclass(frozen=True)
class ScreenPolicy:
    """What the watcher lets through to probing.

    ``max_bytes``: budget for the weights (safetensors) of one model, from metadata (no
    default here: the job's budget is stated once, in ``indexer.app.defaults``).
    ``pipeline_tags``: accepted tasks. ``has_token``: whether gated models can be fetched.
    """

    max_bytes: int
    pipeline_tags: tuple[str, ...] = ("text-generation",)
    has_token: bool = False
    # Pre-quantization methods the running backend can load, and "gguf" when it loads GGUF
    # files (see indexer.adapters.probers.base.quant_methods); others are deferred, "*" takes any.
    quant_methods: frozenset[str] = frozenset()


DEFERRED_PREFIX = "needs a GPU backend: "
GGUF_DEFERRED = "needs the transformers backend: "  # GGUF-only repositories on another backend
# The Hub's tags for pre-quantized checkpoints (it derives them from quantization_config).
_QUANT_TAGS = ("gptq", "awq", "bitsandbytes", "compressed-tensors", "fp8")
_NOT_LOADABLE = "not loadable by transformers/vLLM"
# Weight files of formats neither backend loads, by suffix: named in the skip reason.
_FORMAT_SUFFIXES = ((".onnx", "ONNX"), (".tflite", "TFLite"), (".h5", "Keras/TensorFlow"),
                    (".msgpack", "Flax"), (".mlmodel", "Core ML"), (".mlpackage", "Core ML"),
                    (".pte", "ExecuTorch"), ("openvino_model.xml", "OpenVINO"))


# GGUF types by precision, most precise first (the name's tag, e.g. "model-Q4_K_M.gguf").
GGUF_PRECISION = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M",
                  "Q4_K_S", "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
_GGUF_FALLBACK = ("Q8_0", "Q4_K_M")  # when the Hub gave no sizes to judge the budget by


def _gguf_type(name: str) -> str | None:
    stem = name[: -len(".gguf")].upper()
    for t in sorted(GGUF_PRECISION, key=len, reverse=True):  # Q5_K_M before Q5_K
        if stem.endswith(t) and (len(stem) == len(t) or not stem[-len(t) - 1].isalnum()):
            return t
    return None


def choose_gguf(info: ModelInfo, max_bytes: int) -> tuple[str | None, str | None]:
    """The GGUF file to probe a GGUF-only repository from, and why not when none: the most
    precise root-level file (by its type tag, ``GGUF_PRECISION``) whose size fits
    ``max_bytes``; without sizes, the Q8_0 file, else the Q4_K_M one. Split files
    (``-00001-of-00003``) and files of unknown type are not chosen."""
    files = [s for s in _siblings(info) if s.rfilename.endswith(".gguf") and "/" not in s.rfilename
             and "-of-" not in s.rfilename and _gguf_type(s.rfilename) is not None]
    if not files:
        return None, "no single-file GGUF of a known type"
    ranked = sorted(files, key=lambda s: (GGUF_PRECISION.index(_gguf_type(s.rfilename)), s.rfilename))
    sized = [(s, file_size(s)) for s in ranked]
    if all(isinstance(n, int) for _, n in sized):
        fits = [s for s, n in sized if n <= max_bytes]
        if fits:
            return fits[0].rfilename, None
        return None, f"too large: every GGUF file > budget {max_bytes} (smallest {min(n for _, n in sized)} bytes)"
    for t in _GGUF_FALLBACK:
        for s in ranked:
            if _gguf_type(s.rfilename) == t:
                return s.rfilename, None
    return None, "size unknown before download"


def quant_method(info: ModelInfo) -> str | None:
    """The pre-quantization method of a checkpoint (``gptq``, ``awq``, ``bitsandbytes``,
    ``compressed-tensors``, ``fp8``, ...) from ``quantization_config`` in config.json (as the
    Hub's ``config`` field carries it), else from the Hub's tags; None when not quantized."""
    q = _config(info).get("quantization_config")
    if isinstance(q, dict):
        m = q.get("quant_method")
        if isinstance(m, str) and m.strip():
            return m.strip().lower()
        if q.get("load_in_4bit") is True or q.get("load_in_8bit") is True or "bnb_4bit_quant_type" in q:
            return "bitsandbytes"  # configs written before quant_method existed
        return "unknown"
    tags = getattr(info, "tags", None)
    if isinstance(tags, list):
        for t in _QUANT_TAGS:
            if t in tags:
                return t
    return None


def unloadable_format(info: ModelInfo) -> str | None:
    """The skip reason of a repository whose weights are in a format neither backend loads
    (MLX, EXL2, ONNX and other exports), naming the format; None otherwise. ONNX and other
    exports often sit beside transformers safetensors: only repositories without root-level
    safetensors are refused for them."""
    tags = getattr(info, "tags", None)
    tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    lib = getattr(info, "library_name", None)
    q = _config(info).get("quantization_config")
    if (isinstance(q, dict) and str(q.get("quant_method", "")).lower() == "exl2") or "exl2" in tags:
        return f"EXL2 weights ({_NOT_LOADABLE})"
    if lib == "mlx" or "mlx" in tags:
        return f"MLX weights ({_NOT_LOADABLE})"
    files = [s.rfilename for s in _siblings(info)]
    if any(f.endswith(".safetensors") and "/" not in f for f in files):
        return None
    for suffix, name in _FORMAT_SUFFIXES:
        if any(f.endswith(suffix) for f in files):
            return f"{name} weights ({_NOT_LOADABLE})"
    if lib in ("onnx", "transformers.js") or "onnx" in tags:
        return f"ONNX weights ({_NOT_LOADABLE})"
    return None


def root_weight_files(info: ModelInfo) -> list:
    """The root-level *.safetensors siblings (weights in subfolders are not the model's)."""
    return [s for s in _siblings(info) if s.rfilename.endswith(".safetensors") and "/" not in s.rfilename]


def weight_hashes(info: ModelInfo) -> tuple[str, ...]:
    """The sorted LFS sha256 of the root-level weight files, as the Hub lists them with
    ``blobs=true`` (``files_metadata``); empty when any is missing (then nothing is claimed)."""
    shas = []
    for s in root_weight_files(info):
        lfs = getattr(s, "lfs", None)
        sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            return ()
        shas.append(sha)
    return tuple(sorted(shas))


def weights_bytes(info: ModelInfo) -> int | None:
    """Bytes of the model's weights from metadata: the root-level safetensors files' sizes (or
    their LFS sizes) when the Hub gave them (``blobs=true``), else ``safetensors.parameters``
    times bytes per parameter, where a quantized checkpoint's packed integer dtypes count
    ``bits/8`` bytes per (logical) parameter; None when the Hub gave neither."""
    files = root_weight_files(info)
    sizes = [file_size(s) for s in files]
    if sizes and all(isinstance(n, int) for n in sizes):
        return sum(sizes)  # type: ignore[arg-type]
    st = getattr(info, "safetensors", None)
    params = getattr(st, "parameters", None)
    if isinstance(params, dict) and params:
        bits = quantization_bits(_config(info))
        try:
            total = 0.0
            for dtype, n in params.items():
                d = str(dtype).upper()
                per = bits / 8 if bits is not None and d in PACKED_DTYPES else DTYPE_BYTES.get(d, 4)
                total += int(n) * per
            return int(math.ceil(total))
        except (TypeError, ValueError):
            pass
    return None


def remote_code(info: ModelInfo) -> bool:
    """Whether loading would need code shipped with the model: ``auto_map`` in ``config.json``
    or in ``tokenizer_config.json`` (as the Hub's ``config`` field carries them). Without a
    ``config`` in the metadata, the Hub's ``custom_code`` tag (derived from ``auto_map``)."""
    cfg = _config(info)
    tok = cfg.get("tokenizer_config")
    if "auto_map" in cfg or (isinstance(tok, dict) and "auto_map" in tok):
        return True
    tags = getattr(info, "tags", None)
    return not cfg and isinstance(tags, list) and "custom_code" in tags


def lineage(info: ModelInfo) -> tuple[tuple[str, ...], str | None]:
    """(base model ids, relation) as the Hub derives them: the ``baseModels`` field (canonical
    ids after renames, the Hub's relation), else the ``base_model:<relation>:<id>`` and
    ``base_model:<id>`` tags, else the card's ``base_model`` / ``base_model_relation``."""
    def valid(ids) -> list[str]:
        out = []
        for b in ids:
            try:
                b = check_model_id(b)
            except ValueError:
                continue
            if b not in out:
                out.append(b)
        return out

    bm = getattr(info, "base_models", None)
    if isinstance(bm, dict) and isinstance(bm.get("models"), list):
        ids = valid(m.get("id") for m in bm["models"] if isinstance(m, dict))
        rel = bm.get("relation")
        if ids:
            return tuple(ids), rel if rel in RELATIONS else None
    tags = getattr(info, "tags", None)
    if isinstance(tags, list):
        related = [t.split(":", 2) for t in tags if isinstance(t, str) and t.startswith("base_model:")]
        with_rel = [(p[1], p[2]) for p in related if len(p) == 3 and p[1] in RELATIONS]
        ids = valid(i for _, i in with_rel) or valid(p[1] for p in related if len(p) == 2)
        if ids:
            rels = {r for r, _ in with_rel}
            return tuple(ids), rels.pop() if len(rels) == 1 else ("merge" if rels else None)
    card = getattr(info, "card_data", None)
    card_get = (card.get if hasattr(card, "get") else (lambda k, d=None: d))
    bases = card_get("base_model", None)
    bases = [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []
    relation = card_get("base_model_relation", None)
    return tuple(valid(bases)), relation if isinstance(relation, str) else None


ADAPTER_FILE = "adapter_config.json"


def is_adapter_repo(info: ModelInfo) -> bool:
    """A PEFT adapter repository: ``adapter_config.json`` at the root and no ``config.json``."""
    files = {s.rfilename for s in _siblings(info)}
    return ADAPTER_FILE in files and "config.json" not in files


def adapter_bases(info: ModelInfo) -> tuple[str, ...]:
    """The bases the Hub records for an adapter (``lineage``: relation ``adapter``, or a
    repository that is an adapter by its files and names bases without a relation)."""
    bases, relation = lineage(info)
    return bases if relation == "adapter" or (relation is None and is_adapter_repo(info)) else ()


@dataclass(frozen=True)
class BaseFetch:
    """What ``Watcher.fetch_base`` found: the base's snapshot and commit, or the status
    (skipped/failed) and reason of the adapter whose base it is."""

    base_id: str
    path: Path | None = None
    revision: str | None = None
    size_bytes: int | None = None
    status: ModelStatus | None = None
    reason: str | None = None


def _siblings(info: ModelInfo) -> list:
    sib = getattr(info, "siblings", None)
    return [s for s in sib if isinstance(getattr(s, "rfilename", None), str)] if isinstance(sib, list) else []


def _config(info: ModelInfo) -> dict:
    cfg = getattr(info, "config", None)
    return cfg if isinstance(cfg, dict) else {}


def _pipeline_tag(info: ModelInfo) -> str | None:
    tag = getattr(info, "pipeline_tag", None)
    if isinstance(tag, str) and tag:
        return tag
    archs = _config(info).get("architectures")
    if isinstance(archs, list) and any(isinstance(a, str) and a.endswith(TEXT_GENERATION_ARCH_SUFFIXES)
                                       for a in archs):
        return "text-generation"
    return None


def screen_status(info: ModelInfo, policy: ScreenPolicy) -> tuple[ModelStatus, str | None]:
    """The status a model gets from Hub metadata before any download: ``discovered`` (to
    probe), ``skipped`` or ``deferred``, with the reason.

    Checks, in order: disabled; task (``policy.pipeline_tags``); gated without a token; remote
    code (``auto_map``, see ``remote_code``); weights in a format no backend loads (MLX, EXL2,
    ONNX..., see ``unloadable_format``); pickle-only weights; no root-level safetensors
    weights; a pre-quantized checkpoint whose method the backend cannot run (``deferred``:
    a capable backend takes it later); size unknown or over ``policy.max_bytes``. O(files).
    """
    skip = ModelStatus.skipped
    if getattr(info, "disabled", False) is True:
        return skip, "disabled on the Hub"
    tag = _pipeline_tag(info)
    if tag not in policy.pipeline_tags:
        return skip, f"not {'/'.join(policy.pipeline_tags)} (pipeline_tag={tag})"
    if is_gated(getattr(info, "gated", None)) and not policy.has_token:
        return skip, "gated"
    files = [s.rfilename for s in _siblings(info) if "/" not in s.rfilename]
    if remote_code(info):
        return skip, "remote code"
    fmt = unloadable_format(info)
    if fmt is not None:
        return skip, fmt
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    if not has_safetensors and any(f.endswith(".gguf") for f in files):
        # GGUF is data (no code, no pickle): probed from one file chosen by a stated rule. The
        # budget needs sizes: without them the watcher asks for the files' metadata first.
        if any(file_size(s) is None for s in _siblings(info) if s.rfilename.endswith(".gguf")):
            return skip, "size unknown before download"
        chosen, why = choose_gguf(info, policy.max_bytes)
        if not chosen:
            return skip, f"GGUF: {why}"
        if "gguf" not in policy.quant_methods and "*" not in policy.quant_methods:
            return ModelStatus.deferred, f"{GGUF_DEFERRED}gguf"  # e.g. a vLLM run: transformers takes it
        return ModelStatus.discovered, None
    if not has_safetensors and any(f.endswith(PICKLE_SUFFIXES) for f in files):
        return skip, "pickle-only checkpoint"
    if not has_safetensors:
        return skip, "no safetensors weights" if files else "no file list"
    method = quant_method(info)
    if method is not None and method not in policy.quant_methods and "*" not in policy.quant_methods:
        # Never downloaded here: a backend that can run the method takes it later.
        return ModelStatus.deferred, f"{DEFERRED_PREFIX}{method}"
    size = weights_bytes(info)
    if size is None:
        return skip, "size unknown before download"
    if size > policy.max_bytes:
        return skip, f"too large: {size} bytes of weights > budget {policy.max_bytes}"
    return ModelStatus.discovered, None


def record_of(info: ModelInfo, status: ModelStatus = ModelStatus.discovered,
              reason: str | None = None, max_bytes: int | None = None) -> ModelRecord:
    """The ``ModelRecord`` of a model's Hub metadata (fields read defensively). A GGUF-only
    repository's record, when ``discovered``, names the file to probe (``choose_gguf`` within
    ``max_bytes``; None: no file is chosen) and its size."""
    gguf = None
    if not root_weight_files(info) and status == ModelStatus.discovered and max_bytes is not None:
        gguf = choose_gguf(info, max_bytes)[0]
    size = weights_bytes(info)
    if gguf is not None:
        size = next((file_size(s) for s in _siblings(info) if s.rfilename == gguf), None)
    card = getattr(info, "card_data", None)
    card_get = (card.get if hasattr(card, "get") else (lambda k, d=None: d))
    base_models, relation = lineage(info)
    lic = card_get("license", None)
    created = getattr(info, "created_at", None)
    sha = getattr(info, "sha", None)
    author = getattr(info, "author", None)
    return ModelRecord(
        id=info.id, revision=sha if isinstance(sha, str) and sha else "main",
        created_at=created if isinstance(created, datetime) else None,
        author=author if isinstance(author, str) else info.id.split("/")[0] if "/" in info.id else None,
        base_models=base_models, base_model_relation=relation,
        license=lic if isinstance(lic, str) else None,
        pipeline_tag=_pipeline_tag(info), size_bytes=size, status=status, reason=reason, gguf_file=gguf,
        downloads=_counter(getattr(info, "downloads", None)), likes=_counter(getattr(info, "likes", None)),
        weight_hashes=weight_hashes(info),
    )


def _counter(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@dataclass
class ListingResume:
    """An interrupted listing: the watermark it was listing down to, the filters, the page to
    read next (its cursor), and the items read before the interruption."""

    since: datetime | None
    filters: tuple[str | None, str | None]  # (author, search)
    next_url: str
    items: dict[str, dict] = field(default_factory=dict)
    newest: datetime | None = None  # the newest createdAt among ``items``

    def to_json(self) -> str:
        return json.dumps({"since": self.since.isoformat() if self.since else None,
                           "filters": list(self.filters), "next_url": self.next_url, "items": self.items,
                           "newest": self.newest.isoformat() if self.newest else None})

    @classmethod
    def from_json(cls, text: str) -> "ListingResume":
        d = json.loads(text)
        when = lambda v: _aware(datetime.fromisoformat(v)) if v else None  # noqa: E731
        return cls(when(d["since"]), tuple(d["filters"]), str(d["next_url"]), dict(d["items"]), when(d["newest"]))


class Watcher:
    """Lists new models through a ``HubClient`` and screens them with a ``ScreenPolicy``.

    One poll keeps at most ``max_items`` new models, the oldest ones (``report.truncated``:
    the rest come in the next polls, as the watermark advances only to what was yielded), and
    reads at most ``max_pages`` pages. A listing that fails, loops, or does not reach the
    watermark within ``max_pages`` yields nothing and sets ``report.error``; the pages read
    and the cursor of the next one are kept in ``resume`` (and in ``resume_path``, a JSON file,
    when given, so that a later process resumes too), and the next poll with the same
    watermark reads the newest pages down to what it had, then continues from the cursor.
    With no watermark (``since=None``) the listing's end is wherever ``max_pages`` stops it.
    ``report`` describes the last poll.
    """

    def __init__(self, client: HubClient, policy: ScreenPolicy, *, page_size: int | None = None,
                 max_items: int = 10_000, max_pages: int = 1_000, resume_path: str | Path | None = None):
        self.client = client
        self.policy = policy
        self.page_size = page_size
        self.max_items = max_items
        self.max_pages = max_pages
        self.report = ListingReport()
        self.resume_path = Path(resume_path) if resume_path else None
        self.resume: ListingResume | None = self._load_resume()

    def _load_resume(self) -> ListingResume | None:
        if self.resume_path is None or not self.resume_path.is_file():
            return None
        try:
            return ListingResume.from_json(self.resume_path.read_text("utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a torn or foreign file: list from the top

    def _save_resume(self) -> None:
        if self.resume_path is None:
            return
        if self.resume is None:
            self.resume_path.unlink(missing_ok=True)
            return
        self.resume_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.resume_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(self.resume.to_json(), "utf-8")
        os.replace(tmp, self.resume_path)

    def _read(self, stop_at: datetime | None, start_url: str | None, author, search, report,
              into: OrderedDict) -> bool:
        """Read pages (from ``start_url`` or the top) into ``into`` until a page shows an item
        older than ``stop_at``; True when that point (or the listing's end) was reached.
        Raises ``HubError`` when a page cannot be had."""
        for page in self.client.iter_listing(author=author, search=search, expand=LISTING_EXPAND,
                                             page_size=self.page_size, max_pages=self.max_pages,
                                             report=report, start_url=start_url):
            older_seen = False
            for item in page:
                created = _created(item)
                if stop_at is not None and created is not None and created < stop_at:
                    older_seen = True
                    continue
                model_id = item.get("id") if isinstance(item, dict) else None
                try:
                    check_model_id(model_id)  # type: ignore[arg-type]
                except ValueError:
                    report.invalid_items.append(self.client.scrub(repr(model_id))[:100])
                    log.warning("listing: item without a valid model id left out: %s", report.invalid_items[-1])
                    continue
                if model_id not in into:
                    into[model_id] = item
            if older_seen:
                report.next_url = None
                return True
        if report.loop_detected or report.truncated_pages:
            return stop_at is None and not report.loop_detected
        report.next_url = None
        return True

    def list_new_models(self, since: datetime | None, author: str | None = None, limit: int | None = None,
                        search: str | None = None, skip_ids: Iterable[str] = ()) -> Iterator[ModelRecord]:
        """Models created at or after ``since`` (all if None), oldest first, screened.

        ``created_at == since`` is included (uploads in the same instant as the watermark are
        not lost); pass the ids already recorded at the watermark in ``skip_ids``. ``limit``
        keeps the ``limit`` oldest. Never raises for a Hub error: see ``report``.
        """
        since = _aware(since)
        skip = set(skip_ids)
        report = self.report = ListingReport()
        started = time.perf_counter()
        resume = self.resume
        if resume is not None and (resume.since != since or resume.filters != (author, search)):
            resume = None  # another listing than the interrupted one: start at the top
        top: OrderedDict[str, dict] = OrderedDict()
        rest: OrderedDict[str, dict] = OrderedDict()
        phase = "top"
        reached_end = False
        try:
            if resume is None:
                reached_end = self._read(since, None, author, search, report, top)
            else:
                # Newer uploads first, down to the newest item already read; then on from the
                # interrupted page's cursor down to the watermark.
                log.info("listing: resuming an interrupted listing (%d models read, from its cursor)",
                         len(resume.items))
                if self._read(resume.newest or since, None, author, search, report, top):
                    phase = "rest"
                    reached_end = self._read(since, resume.next_url, author, search, report, rest)
        except HubError as exc:
            report.error = exc.reason
        if report.error is None and report.loop_detected:
            report.error = "the listing's pagination loops"
        if report.error is None and not reached_end and since is not None:
            report.error = f"the listing did not reach the watermark within {self.max_pages} pages"
        if report.error is not None:
            # An incomplete listing yields nothing: yielding its newest part would move the
            # watermark past models not yet seen. Keep what was read and where to go on.
            if report.next_url is not None and not report.loop_detected:
                if resume is None:
                    if report.pages:
                        self.resume = ListingResume(since, (author, search), report.next_url, dict(top))
                elif phase == "rest":  # the top part is complete down to what was read before
                    resume.items.update(top)
                    resume.items.update(rest)
                    resume.next_url = report.next_url
                    self.resume = resume
                if self.resume is not None:
                    times = [t for t in map(_created, self.resume.items.values()) if t is not None]
                    self.resume.newest = max(times) if times else self.resume.newest
                    self._save_resume()
            log.warning("listing failed, nothing recorded this poll: %s%s", report.error,
                        f" (the next poll resumes after {len(self.resume.items)} models read)"
                        if self.resume is not None else "")
            return
        items: dict[str, dict] = dict(resume.items) if resume is not None else {}
        items.update(rest)
        items.update(top)
        if self.resume is not None:
            self.resume = None
            self._save_resume()
        # Bounded to the `max_items` OLDEST new models, so that a backlog drains over polls in
        # upload order and nothing between the watermark and what is yielded is ever skipped.
        dated = [(_created(item), model_id, item) for model_id, item in items.items() if model_id not in skip]
        ordered = sorted(dated, key=lambda t: (t[0] is None, t[0] or since or datetime.min.replace(tzinfo=timezone.utc), t[1]))
        if len(ordered) > self.max_items:
            ordered = ordered[: self.max_items]
            report.truncated = True
            log.warning("listing: more than %d new models; the %d oldest this poll, the rest next",
                        self.max_items, self.max_items)
        if limit is not None:
            ordered = ordered[:limit]
        log.info("listing: %d pages, %d items, %d new models in %.2fs", report.pages, report.items,
                 len(ordered), time.perf_counter() - started)
        for _, model_id, item in ordered:
            yield self._screened(model_id, item)

    def _screened(self, model_id: str, item: dict) -> ModelRecord:
        """One listing item -> a screened record; never raises."""
        try:
            info = ModelInfo(**dict(item))
            record_of(info, max_bytes=self.policy.max_bytes)  # the metadata must make a valid record
        except Exception as exc:
            reason = self.client.scrub(f"malformed Hub metadata: {describe_error(exc)}")[:300]
            return ModelRecord(id=model_id, created_at=_created(item), status=ModelStatus.failed, reason=reason)
        if _created(item) is None:
            return record_of(info, ModelStatus.failed, "malformed Hub metadata: createdAt missing or invalid")
        status, reason = screen_status(info, self.policy)
        if status != ModelStatus.discovered and reason in ("size unknown before download", "no file list"):
            # The listing lacked sizes or files: ask for the model's info at the listed commit.
            try:
                sha = info.sha if isinstance(info.sha, str) and info.sha else None
                full = self.client.model_info(model_id, sha, files_metadata=True)
                status, reason = screen_status(full, self.policy)
                info = full if isinstance(full.created_at, datetime) else info
            except HubError as exc:
                return record_of(info, exc.status, exc.reason)
            except Exception as exc:
                return record_of(info, ModelStatus.failed,
                                 self.client.scrub(f"malformed Hub metadata: {describe_error(exc)}")[:300])
        try:
            return record_of(info, status, reason, self.policy.max_bytes)
        except Exception as exc:
            return ModelRecord(id=model_id, status=ModelStatus.failed,
                               reason=self.client.scrub(f"malformed Hub metadata: {describe_error(exc)}")[:300])

    def fetch(self, record: ModelRecord, cache_dir: str | Path) -> tuple[ModelRecord, Path | None]:
        """Download a screened model at its listed revision; never raises.

        Returns (record, snapshot folder) or (record with status failed/skipped and the
        reason, None).
        """
        try:
            path = self.client.download(record.id, record.revision, cache_dir, max_bytes=self.policy.max_bytes,
                                        gguf_file=record.gguf_file)
        except HubError as exc:
            return record.model_copy(update={"status": exc.status, "reason": exc.reason}), None
        except Exception as exc:  # a bug or an unforeseen library error: recorded, not raised
            return record.model_copy(update={"status": ModelStatus.failed,
                                             "reason": self.client.scrub(f"download: {describe_error(exc)}")[:300]}), None
        return record, path


    def fetch_base(self, base_id: str, cache_dir: str | Path, max_bytes: int) -> BaseFetch:
        """Screen and download ``base_id`` (its newest commit), the base of an adapter, within
        ``max_bytes`` (the budget left after the adapter's own weights); never raises.

        The base passes the same screen as any listed model (``screen_status``, bar the task:
        a base need not be tagged text-generation when it has a causal-LM config) and must be a
        full safetensors checkpoint; anything else is ``skipped`` with "base <id>: <reason>".
        The download is the same as ``fetch``'s (pinned commit, safetensors and metadata only,
        verified), into the same cache, so a base already fetched for its own probe is reused.
        """
        def refused(reason: str, status: ModelStatus = ModelStatus.skipped) -> BaseFetch:
            return BaseFetch(base_id, status=status, reason=self.client.scrub(f"base {base_id}: {reason}")[:400])

        try:
            info = self.client.model_info(base_id, None, files_metadata=True)
        except HubError as exc:
            if exc.missing:
                return refused("not found on the Hub")
            return refused(exc.reason.removeprefix(f"{base_id}: "), exc.status)
        except Exception as exc:
            return refused(f"malformed Hub metadata: {describe_error(exc)}", ModelStatus.failed)
        if is_adapter_repo(info):
            return refused("is itself an adapter (adapters of adapters are not probed)")
        if not root_weight_files(info):
            files = [s.rfilename for s in _siblings(info) if "/" not in s.rfilename]
            what = "GGUF-only" if any(f.endswith(".gguf") for f in files) else "without safetensors weights"
            return refused(f"is {what} (an adapter is applied to a safetensors checkpoint)")
        if "config.json" not in {s.rfilename for s in _siblings(info)}:
            return refused("has no config.json")
        policy = ScreenPolicy(max_bytes=max(0, max_bytes), pipeline_tags=(_pipeline_tag(info),),
                              has_token=self.policy.has_token, quant_methods=self.policy.quant_methods)
        status, reason = screen_status(info, policy)
        if status != ModelStatus.discovered:
            if reason and reason.startswith("too large"):
                reason = (f"too large: {weights_bytes(info)} bytes of base weights > the {max(0, max_bytes)} "
                          "bytes the budget leaves after the adapter")
            return refused(reason or status.value)
        sha = info.sha if isinstance(info.sha, str) and info.sha else "main"
        try:
            path = self.client.download(base_id, sha, cache_dir, max_bytes=max(0, max_bytes))
        except HubError as exc:
            return refused(exc.reason.removeprefix(f"{base_id}: "),
                           ModelStatus.skipped if exc.missing else exc.status)
        except Exception as exc:
            return refused(f"download: {describe_error(exc)}", ModelStatus.failed)
        return BaseFetch(base_id, path=Path(path), revision=sha, size_bytes=weights_bytes(info))


def _created(item: Any) -> datetime | None:
    value = item.get("createdAt") if isinstance(item, dict) else None
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _aware(dt)
