"""What the local backends (transformers, vLLM) share about a checkpoint on disk: the safety
policy a snapshot must pass before any engine is asked to load it, and the dtype it loads in.

The policy refuses, with ``ProbeError(skip=True)`` (a refusal by policy, never retried):
pickle-only weights (only safetensors are loaded), code shipped with the model (``auto_map``
in the config or the tokenizer config: ``trust_remote_code`` stays off), and model types this
transformers does not know. The checks read JSON and file names only: nothing from the
repository is imported or executed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.adapters.probers.base import ProbeError
from schemas.records import check_model_id

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MAX_CONFIG_BYTES = 10 << 20


def check_repository(path: Path) -> dict[str, Any]:
    """Refuse, by policy, a repository snapshot that cannot be loaded safely; return its config.

    Raises ``ProbeError(skip=True)`` for: no ``config.json``; weights only as pickle files (or
    none at all); ``auto_map`` in the config or tokenizer config (remote code); a
    ``model_type`` this transformers does not know, or one without a causal-LM class.
    Reads JSON only: nothing from the repository is imported or executed. O(files).
    """
    if not path.is_dir():
        raise ProbeError(f"{path.name}: no such model folder")
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if not safetensors:
        pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ProbeError(f"pickle-only checkpoint ({', '.join(pickles[:3])}); only safetensors are loaded",
                             skip=True)
        raise ProbeError("no safetensors weights in the repository", skip=True)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ProbeError("no config.json in the repository", skip=True)
    config = _read_config(config_path)
    if "auto_map" in config:
        raise ProbeError("config needs remote code (auto_map); trust_remote_code stays off", skip=True)
    _refuse_remote_tokenizer(path)
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ProbeError(f"model_type {model_type!r} is unknown to this transformers "
                         "(it would need remote code)", skip=True)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ProbeError(f"model_type {model_type!r} has no causal language model class", skip=True)
    return config


def _read_config(path: Path) -> dict[str, Any]:
    """A repository's JSON config file (``config.json``, ``adapter_config.json``) as a dict,
    refused by policy (``ProbeError(skip=True)``) when too large, not JSON or not an object."""
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ProbeError(f"{path.name} is unreasonably large", skip=True)
    try:
        config = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ProbeError(f"{path.name} is not valid JSON ({e})", skip=True) from None
    if not isinstance(config, dict):
        raise ProbeError(f"{path.name} is not a JSON object", skip=True)
    return config


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# PEFT methods applied here: LoRA and its variants that keep LoRA's layout and loader.
ADAPTER_TYPES = ("LORA",)
ADAPTER_TASKS = (None, "CAUSAL_LM")


def is_adapter(path: Path) -> bool:
    """A PEFT adapter snapshot: ``adapter_config.json`` and no ``config.json`` of its own."""
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def check_adapter(path: Path) -> dict[str, Any]:
    """Refuse, by policy, a PEFT adapter snapshot that cannot be applied safely; return its
    ``adapter_config.json``.

    Raises ``ProbeError(skip=True)`` for: no or invalid ``adapter_config.json``; weights not in
    ``adapter_model.safetensors`` (``adapter_model.bin`` is pickle); a PEFT method other than
    LoRA (``peft_type``) or a task other than causal LM; a LoRA rank that is not a positive
    integer; ``auto_map`` or a tokenizer asking for remote code. Reads JSON only. O(files).
    """
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise ProbeError("no adapter_config.json in the adapter", skip=True)
    config = _read_config(cfg_path)
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ProbeError(f"pickle-only adapter ({', '.join(pickles[:3])}); only safetensors are loaded",
                             skip=True)
        raise ProbeError(f"no {ADAPTER_WEIGHTS} in the adapter", skip=True)
    if "auto_map" in config:
        raise ProbeError("adapter config needs remote code (auto_map); trust_remote_code stays off", skip=True)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ADAPTER_TYPES:
        raise ProbeError(f"PEFT method {config.get('peft_type')!r} is not applied here (LoRA only)", skip=True)
    if config.get("task_type") not in ADAPTER_TASKS:
        raise ProbeError(f"adapter task {config.get('task_type')!r} is not causal language modelling", skip=True)
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ProbeError(f"adapter rank r={rank!r} is not a positive integer", skip=True)
    _refuse_remote_tokenizer(path)
    return config


def adapter_base(config: dict[str, Any]) -> str | None:
    """The base model an adapter names (``base_model_name_or_path``), when it is a Hub id
    (a local path on the uploader's machine names nothing here)."""
    name = config.get("base_model_name_or_path")
    try:
        return check_model_id(name) if isinstance(name, str) else None
    except ValueError:
        return None


def check_gguf(path: Path, name: str) -> None:
    """Refuse a GGUF snapshot that cannot be loaded safely: the file must be a plain file at
    the root with the GGUF magic, and a tokenizer config, if any, needs no remote code. GGUF is
    data (tensors and metadata): reading it runs nothing."""
    f = path / name
    if "/" in name or not name.endswith(".gguf") or not f.is_file():
        raise ProbeError(f"{name}: no such GGUF file in the snapshot", skip=True)
    with f.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ProbeError(f"{name}: not a GGUF file", skip=True)
    _refuse_remote_tokenizer(path)


def _refuse_remote_tokenizer(path: Path) -> None:
    """A tokenizer config asking for remote code (``auto_map``) is refused, like a model's."""
    tok_config = path / "tokenizer_config.json"
    if tok_config.is_file():
        try:
            if "auto_map" in json.loads(tok_config.read_text("utf-8")):
                raise ProbeError("tokenizer needs remote code (auto_map); trust_remote_code stays off", skip=True)
        except ValueError:
            raise ProbeError("tokenizer_config.json is not valid JSON", skip=True) from None


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype a checkpoint loads in: ``dtype`` itself, or for "auto" bfloat16 on CUDA and on
    CPUs with native bf16, float32 on other CPUs (where bf16 would be emulated, many times
    slower)."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "bfloat16" if (" avx512_bf16" in flags or " amx_bf16" in flags) else "float32"
