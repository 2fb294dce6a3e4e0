"""The safety rules for PEFT adapters (JSON and file names only) and vLLM's LoRA rank."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.adapters.probers.base import ProbeError
from indexer.adapters.probers.checkpoint import adapter_base, check_adapter, is_adapter
from indexer.adapters.probers.vllm_backend import lora_rank

LORA = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _adapter(tmp_path: Path, config: dict | None = None, weights: str | None = "adapter_model.safetensors") -> Path:
    d = tmp_path / "a"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(LORA if config is None else config))
    if weights:
        (d / weights).write_bytes(b"\0" * 16)
    return d


def test_a_lora_adapter_passes_and_names_its_base(tmp_path):
    d = _adapter(tmp_path)
    assert is_adapter(d) and check_adapter(d)["r"] == 8
    assert adapter_base(check_adapter(d)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (d / "config.json").write_text("{}")
    assert not is_adapter(d)  # a full checkpoint that ships an adapter beside it is a checkpoint


@pytest.mark.parametrize("config, weights, match", [
    (LORA, "adapter_model.bin", "pickle-only adapter"),
    (LORA, None, "no adapter_model.safetensors"),
    ({**LORA, "peft_type": "PREFIX_TUNING"}, "adapter_model.safetensors", "LoRA only"),
    ({**LORA, "task_type": "SEQ_CLS"}, "adapter_model.safetensors", "causal language"),
    ({**LORA, "r": 0}, "adapter_model.safetensors", "positive integer"),
    ({**LORA, "auto_map": {"x": "y.Z"}}, "adapter_model.safetensors", "remote code"),
])
def test_unsafe_or_unsupported_adapters_are_refused_by_policy(tmp_path, config, weights, match):
    with pytest.raises(ProbeError, match=match) as err:
        check_adapter(_adapter(tmp_path, config, weights))
    assert err.value.skip


def test_a_local_path_names_no_base():
    assert adapter_base({**LORA, "base_model_name_or_path": "/home/someone/models/smol"}) is None
    assert adapter_base({k: v for k, v in LORA.items() if k != "base_model_name_or_path"}) is None


def test_the_engine_rank_is_the_smallest_vllm_accepts():
    assert [lora_rank(r) for r in (1, 4, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(ProbeError, match="exceeds") as err:
        lora_rank(1024)
    assert err.value.skip


def test_the_hub_lineage_of_an_adapter():
    from huggingface_hub.hf_api import ModelInfo

    from indexer.adapters.hub.watcher import adapter_bases, is_adapter_repo

    files = [{"rfilename": "adapter_config.json"}, {"rfilename": "adapter_model.safetensors"}]
    tagged = ModelInfo(id="o/lora", siblings=files, tags=["peft", "base_model:adapter:b/base", "base_model:b/base"])
    assert is_adapter_repo(tagged) and adapter_bases(tagged) == ("b/base",)
    ft = ModelInfo(id="o/ft", siblings=[{"rfilename": "config.json"}], tags=["base_model:finetune:b/base"])
    assert not is_adapter_repo(ft) and adapter_bases(ft) == ()
