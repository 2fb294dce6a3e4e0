"""A small real PEFT/LoRA adapter of the zoo's SmolLM2-135M-Instruct, for the adapter tests.

``lora_adapter(zoo, out)`` trains a rank-8 LoRA on ``q_proj``/``v_proj`` for a few AdamW
steps on one of the zoo's texts (fixed seed, one thread) and saves it in PEFT's layout
(``adapter_config.json`` + ``adapter_model.safetensors``, no ``config.json``), with a card that
declares its base and relation as an adapter's card on the Hub does. Built once into the
cache (``indexer.cache``), keyed by the base's weights, the recipe and the torch/peft
versions, then copied to ``out``. Cost: about 10-20 s on 2 CPU cores the first time.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

from indexer.cache import default_cache_dir

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECIPE = {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"], "text": "shanties", "steps": 12,
          "lr": 2e-3, "seed": 7, "window": 64, "version": 1}


def _key(base_dir: Path) -> str:
    import peft
    import torch

    weights = base_dir / "model.safetensors"
    h = hashlib.sha256()
    with weights.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    blob = json.dumps({"base": h.hexdigest(), "recipe": RECIPE, "torch": torch.__version__,
                       "peft": peft.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train(base_dir: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(RECIPE["seed"])
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        config = LoraConfig(r=RECIPE["r"], lora_alpha=RECIPE["alpha"], target_modules=RECIPE["targets"],
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        text = resources.files("indexer").joinpath(f"data/zoo/{RECIPE['text']}.txt").read_text("utf-8")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        w = RECIPE["window"]
        n = max(1, len(ids) // w)
        slices = torch.tensor(ids[: n * w]).view(n, w)
        order = torch.randperm(n).tolist()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=RECIPE["lr"])
        model.train()
        for step in range(RECIPE["steps"]):
            batch = slices[order[step % n]][None, :]
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
    finally:
        torch.set_num_threads(threads)
    cfg = json.loads((tmp / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = BASE  # save_pretrained writes the local folder's path
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (tmp / "README.md").unlink(missing_ok=True)
    tmp.rename(out)


def lora_adapter(zoo: Path, out: Path, *, repo_id: str = "lora-org/smollm2-shanties-lora",
                 created_at: str = "2025-10-01T09:00:00Z", base: str = BASE) -> Path:
    """The adapter repository ``out`` (``DIR/<owner>/<name>``): PEFT's files from the cache,
    ``base_model_name_or_path`` set to ``base``, a card declaring ``base`` with relation
    ``adapter``, and the loopback Hub's ``.hub.json`` sidecar."""
    base_dir = zoo / BASE
    cached = default_cache_dir() / "test-lora" / _key(base_dir)
    if not (cached / "adapter_model.safetensors").is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        _train(base_dir, cached)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached / "adapter_model.safetensors", out / "adapter_model.safetensors")
    cfg = json.loads((cached / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    (out / "README.md").write_text("---\nlibrary_name: peft\npipeline_tag: text-generation\nlicense: apache-2.0\n"
                                   f"base_model: {base}\nbase_model_relation: adapter\n---\n"
                                   f"# {repo_id.split('/')[-1]}\n\nA LoRA adapter (PEFT) of {base}.\n")
    (out / ".hub.json").write_text(json.dumps({"created_at": created_at, "author": repo_id.split("/")[0]}))
    return out
