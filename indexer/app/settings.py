"""Settings: one pydantic model, read from a file, then the environment, then CLI options.

Precedence, lowest first: built-in defaults < config file (``--config``, ``PHYLOLM_CONFIG``
or ``./phylolm.toml``) < environment variables ``PHYLOLM_<FIELD>`` < options given on the
command line. ``phylolm status`` shows the result and where each value came from. Secrets
(the Hub token, an API key) are never settings: they are read from the environment only
when used, and never stored or printed.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from indexer.errors import PhylolmError


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: Path = Field(Path("phylolm.duckdb"), description="the DuckDB catalog file")
    hub: str | None = Field(None, description="Hub endpoint URL or a folder of model repositories "
                                              "(default: HF_ENDPOINT or the public Hub)")
    backend: str = Field("auto", description="prober: auto | vllm | transformers | openai | simulated "
                                             "(auto: vllm where a GPU and vLLM are present, else transformers)")
    genome: str = Field("math", description="built-in genome name or a JSONL file")
    genes: int | None = Field(None, ge=1, description="use only the first N genes of the genome")
    samples: int = Field(32, ge=1, description="samples per gene (N)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature")
    max_tokens: int = Field(5, ge=1, description="new tokens per sample")
    seed: int = Field(0, ge=0, description="sampling seed recorded with each probe")
    publish_dir: Path | None = Field(None, description="folder refreshed after every update (export + report)")
    cache_dir: Path = Field(Path.home() / ".cache" / "phylolm", description="downloads, the zoo")
    max_weights_gb: float = Field(16.0, gt=0, description="skip models whose weights exceed this (from metadata)")
    interval: float = Field(300.0, gt=0, description="seconds between Hub polls in `watch`")
    author: str | None = Field(None, description="watch only this author's uploads")
    device: str | None = Field(None, description="torch device for the transformers backend (cpu, cuda)")
    first_window_hours: float = Field(24.0, gt=0, description="with no watermark yet, how far back the first "
                                                               "`watch` poll looks (older models: `backfill`)")
    probe_budget: int | None = Field(None, ge=1, description="models probed per watch cycle; the rest wait "
                                                              "as `queued` (default: no limit)")
    budget_seconds: float | None = Field(None, gt=0, description="probe seconds per watch cycle, at the rate "
                                                                  "measured over the last day")
    queue_order: str = Field("rank", pattern="^(rank|newest)$", description="which candidates a cycle takes "
                                                                              "first: rank (priority) | newest")
    priority: str = Field("downloads=1,likes=2,related=2,size=-0.5",
                          description="priority terms and weights: downloads, likes (log10), related "
                                      "(a base model is indexed), size (GB), age (days)")


    @field_validator("priority")
    @classmethod
    def _valid_priority(cls, v: str) -> str:
        from indexer.app.probe_queue import PriorityWeights

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
