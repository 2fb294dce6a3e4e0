"""Settings: one pydantic model, read from a file, then the environment, then CLI options.

Precedence, lowest first: built-in defaults < config file (``--config``, ``PHYLOLM_CONFIG``
or ``./phylolm.toml``) < environment variables ``PHYLOLM_<FIELD>`` < options given on the
command line. ``phylolm status`` shows the result and where each value came from. Secrets
(the Hub token, an API key) are never settings: they are read from the environment only
when used, and never stored or printed.
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from indexer.app import defaults
from indexer.app.probe_queue import QUEUE_ORDERS, PriorityWeights
from indexer.errors import PhylolmError
from schemas.records import ProbeParams


def _paper(name: str) -> Any:
    """The default of a sampling parameter: the paper's, as ``ProbeParams`` states it."""
    return ProbeParams.model_fields[name].default


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: Path = Field(defaults.CATALOG, description="the DuckDB catalog file")
    hub: str | None = Field(None, description="Hub endpoint URL or a folder of model repositories "
                                              "(default: HF_ENDPOINT or the public Hub)")
    backend: str = Field(defaults.BACKEND, description="prober: auto | vllm | transformers | openai | simulated "
                                                       "(auto: vllm where a GPU and vLLM are present, else transformers)")
    genome: str = Field(defaults.GENOME, description="built-in genome name or a JSONL file")
    genes: int | None = Field(None, ge=1, description="use only the first N genes of the genome")
    samples: int = Field(_paper("n_samples"), ge=1, description="samples per gene (N)")
    temperature: float = Field(_paper("temperature"), gt=0, description="sampling temperature")
    max_tokens: int = Field(_paper("max_tokens"), ge=1, description="new tokens per sample")
    seed: int = Field(_paper("seed"), ge=0, description="sampling seed recorded with each probe")
    publish_dir: Path | None = Field(None, description="folder of exported files (export + report): refreshed "
                                                        "at the end of each bundle, and between at most "
                                                        "`export_share` of the writer's time")
    export_share: float = Field(defaults.EXPORT_SHARE, gt=0, le=1,
                                description="the most of the writer's time that refreshing publish_dir may "
                                            "take between bundle ends (1: after every publish)")
    catalog_memory_limit: str | None = Field(defaults.CATALOG_MEMORY_LIMIT,
                                             description="DuckDB's memory limit on the writer's connection "
                                                         "(e.g. 4GB; default: DuckDB's own, 80 % of the RAM); "
                                                         "work past it fails, it does not slow down")
    cache_dir: Path = Field(defaults.CACHE_DIR, description="downloads, the zoo")
    max_weights_gb: float = Field(defaults.MAX_WEIGHTS_GB, gt=0,
                                  description="skip models whose weights exceed this (from metadata)")
    interval: float = Field(defaults.INTERVAL, gt=0, description="seconds between Hub polls in `watch`")
    author: str | None = Field(None, description="watch only this author's uploads")
    device: str | None = Field(None, description="torch device for the transformers backend (cpu, cuda)")
    reuse_engine: bool = Field(True, description="vllm backend: keep one engine across models, reloading a "
                                                 "fine-tune's weights in place and serving adapters on their "
                                                 "base's engine (false: a fresh engine per model)")
    first_window_hours: float = Field(defaults.FIRST_WINDOW_HOURS, gt=0,
                                      description="with no watermark yet, how far back the first "
                                                  "`watch` poll looks (older models: `backfill`)")
    probe_budget: int | None = Field(None, ge=1, description="models probed per watch cycle; the rest wait "
                                                              "as `queued` (default: no limit)")
    budget_seconds: float | None = Field(None, gt=0, description="probe seconds per watch cycle, at the rate "
                                                                  "measured over the last day")
    queue_order: str = Field(defaults.QUEUE_ORDER, pattern=f"^({'|'.join(QUEUE_ORDERS)})$",
                             description="which candidates a cycle takes first: rank (priority) | newest")
    index_mode: str = Field(defaults.INDEX_MODE, pattern="^(exact|sparse)$",
                            description="exact: every pair of models in `distances`, the whole matrix in "
                                        "memory (up to a few thousand models) | sparse: each model's k "
                                        "nearest (Hub scale); a catalog keeps the mode it was made with")
    index_k: int = Field(defaults.INDEX_K, ge=2, le=1024,
                         description="sparse index: nearest models kept per model (exact distances)")
    tree_every: int = Field(defaults.TREE_EVERY, ge=1,
                            description="sparse index: store the whole tree every N inserts, or every 2 % "
                                        "of the index's size when that is more; the inserts between "
                                        "store their placement, and a publish replaces `current_tree`")
    priority: str = Field(defaults.PRIORITY,
                          description="priority terms and weights: downloads, likes (log10), related "
                                      "(a base model is indexed), size (GB), age (days)")

    @field_validator("catalog_memory_limit")
    @classmethod
    def _a_size(cls, v: str | None) -> str | None:
        # DuckDB's own units; checked here so a typo is one line at start-up, not a failed open
        if v is None:
            return None
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*([kmgt]i?b?|bytes)\s*", v, re.I):
            raise ValueError(f"{v!r} is not a size such as 512MB, 4GB or 1.5GiB")
        return v.strip()

    @field_validator("priority")
    @classmethod
    def _valid_priority(cls, v: str) -> str:
        PriorityWeights.parse(v)  # ValueError says which term is wrong
        return v


def _coerce_env(name: str, raw: str) -> Any:
    return raw if raw != "" else None


def config_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise PhylolmError(f"config file {explicit} does not exist")
        return explicit
    env = os.environ.get("PHYLOLM_CONFIG")
    if env:
        if not Path(env).is_file():
            raise PhylolmError(f"PHYLOLM_CONFIG names {env}, which does not exist")
        return Path(env)
    local = Path("phylolm.toml")
    return local if local.is_file() else None


def load_settings(cli: dict[str, Any] | None = None, config: Path | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings with their sources: returns (settings, {field: "default"|"file"|"env"|"cli"})."""
    values: dict[str, Any] = {}
    source = {k: "default" for k in Settings.model_fields}
    path = config_file(config)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise PhylolmError(f"config file {path}: {e}") from None
        data = data.get("phylolm", data)
        unknown = set(data) - set(Settings.model_fields)
        if unknown:
            raise PhylolmError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
        values.update(data)
        source.update({k: "file" for k in data})
    for k in Settings.model_fields:
        raw = os.environ.get(f"PHYLOLM_{k.upper()}")
        if raw is not None:
            values[k] = _coerce_env(k, raw)
            source[k] = "env"
    for k, v in (cli or {}).items():
        if v is not None:
            values[k] = v
            source[k] = "cli"
    try:
        return Settings(**values), source
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise PhylolmError(f"bad setting {where} (from {source.get(where, '?')}): {err['msg']}") from None


def job_settings(config: Path | None = None, **cli: Any) -> Settings:
    """The settings of a job (``load_settings``), with the backend checked up front: a typo must
    not fail every model of the run."""
    from indexer.adapters.probers.base import AUTO, BACKENDS

    s = load_settings(cli, config)[0]
    if s.backend not in BACKENDS and s.backend != AUTO:
        raise PhylolmError(f"backend: unknown {s.backend!r}; choose one of {', '.join([AUTO, *BACKENDS])}")
    return s


def job_config(s: Settings, hub_url: str | None, **extra: Any):
    """The ``JobConfig`` of settings ``s`` for the endpoint ``hub_url`` (``open_hub``'s), with
    ``extra`` fields (filters, the queue's budget...). ``auto`` is resolved here, so probes
    record the backend that really ran."""
    import logging

    from indexer.adapters.probers.base import resolve_backend
    from indexer.app.job import JobConfig

    params = ProbeParams(n_samples=s.samples, temperature=s.temperature, max_tokens=s.max_tokens, seed=s.seed)
    backend, why = resolve_backend(s.backend)
    if s.backend != backend:
        logging.getLogger("phylolm").info("backend %s (%s)", backend, why)
    options: tuple = ()
    if s.device and backend == "transformers":
        options = (("device", s.device),)
    elif backend == "vllm":
        options = (("reuse_engine", s.reuse_engine),)
    return JobConfig(catalog=s.catalog.resolve(), hub=hub_url, backend=backend, backend_options=options,
                     genome=s.genome, n_genes=s.genes, params=params, cache_dir=s.cache_dir.expanduser(),
                     publish_dir=s.publish_dir.resolve() if s.publish_dir else None,
                     max_bytes=defaults.max_bytes(s.max_weights_gb), author=s.author,
                     index_mode=s.index_mode, index_k=s.index_k, tree_every=s.tree_every,
                     export_share=s.export_share, catalog_memory_limit=s.catalog_memory_limit, **extra)
