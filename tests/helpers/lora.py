"""Variants of the zoo's PEFT/LoRA adapter (``zoo/smollm2-lora-shanties``, made by
``indexer.testbed.zoo``), for the adapter tests.

``lora_adapter(zoo, out)`` lays out the zoo adapter's files under another repository id
(its weights byte for byte) and, if asked, another ``base_model_name_or_path``, card base and
upload date: the same adapter as it would be uploaded under another name or on another
base. Copies three small files; the training happens once, in the zoo's build.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from indexer.testbed.zoo import ADAPTER, SMOLLM2 as BASE


def lora_adapter(zoo: Path, out: Path, *, repo_id: str = "lora-org/smollm2-shanties-lora",
                 created_at: str = "2025-10-01T09:00:00Z", base: str = BASE) -> Path:
    """The adapter repository ``out`` (``DIR/<owner>/<name>``): the zoo adapter's PEFT files,
    ``base_model_name_or_path`` set to ``base``, a card declaring ``base`` with relation
    ``adapter``, and the loopback Hub's ``.hub.json`` sidecar."""
    src = zoo / ADAPTER
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "adapter_model.safetensors", out / "adapter_model.safetensors")
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    (out / "README.md").write_text("---\nlibrary_name: peft\npipeline_tag: text-generation\nlicense: apache-2.0\n"
                                   f"base_model: {base}\nbase_model_relation: adapter\n---\n"
                                   f"# {repo_id.split('/')[-1]}\n\nA LoRA adapter (PEFT) of {base}.\n")
    (out / ".hub.json").write_text(json.dumps({"created_at": created_at, "author": repo_id.split("/")[0]}))
    return out
