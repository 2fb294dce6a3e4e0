"""Tiny but real model repositories for the Hub tests (real safetensors files, real cards)."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def make_repo(root: Path, repo_id: str, *, created_at: datetime | None = None, n_params: int = 64,
              dtype: str = "float32", pipeline_tag: str | None = "text-generation",
              base_model: str | list[str] | None = None, relation: str | None = None, gated: bool | None = None,
              auto_map: bool = False, extra_files: dict[str, bytes] | None = None,
              weights: bool = True, author: str | None = None, seed: int = 0,
              config_extra: dict | None = None, tokenizer_extra: dict | None = None,
              sidecar_extra: dict | None = None) -> Path:
    """Write ``root/<repo_id>/`` with config.json, model.safetensors, tokenizer files, a card,
    and a ``.hub.json`` sidecar (created_at, author, gated, and ``sidecar_extra``: downloads,
    likes, renamed_from). ``base_model`` may be a list."""
    d = root / repo_id
    d.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
              "torch_dtype": dtype}
    if auto_map:
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    config.update(config_extra or {})
    (d / "config.json").write_text(json.dumps(config))
    if weights:
        rng = np.random.default_rng(seed)
        save_file({"w": rng.standard_normal(n_params).astype(dtype)}, str(d / "model.safetensors"))
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64, **(tokenizer_extra or {})}))
    meta = ["---", "license: apache-2.0", "library_name: transformers"]
    if pipeline_tag:
        meta.append(f"pipeline_tag: {pipeline_tag}")
    if isinstance(base_model, list):
        meta += ["base_model:"] + [f"- {b}" for b in base_model]
    elif base_model:
        meta.append(f"base_model: {base_model}")
    if relation:
        meta.append(f"base_model_relation: {relation}")
    meta += ["---", "", f"# {repo_id}", ""]
    (d / "README.md").write_text("\n".join(meta))
    for name, data in (extra_files or {}).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    side: dict = {"created_at": (created_at or datetime.now(timezone.utc)).isoformat()}
    if author:
        side["author"] = author
    if gated is not None:
        side["gated"] = gated
    side.update(sidecar_extra or {})
    (d / ".hub.json").write_text(json.dumps(side))
    return d


def repos_by_upload(hub: Path) -> list[Path]:
    """The repositories of a simulated hub folder (``phylolm simulate``), oldest upload first."""
    repos = [r for o in sorted(hub.iterdir()) if o.is_dir() for r in sorted(o.iterdir()) if r.is_dir()]
    return sorted(repos, key=lambda r: json.loads((r / ".hub.json").read_text())["created_at"])


def publish(repos: list[Path], served: Path) -> list[str]:
    """Copy repositories into a served hub folder (as if uploaded now); returns their ids."""
    for repo in repos:
        shutil.copytree(repo, served / repo.parent.name / repo.name)
    return [f"{r.parent.name}/{r.name}" for r in repos]
