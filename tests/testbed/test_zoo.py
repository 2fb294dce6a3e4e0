"""The zoo's repositories: Hub-shaped (full checkpoints in bf16 safetensors, a PEFT adapter, a
GGUF re-upload, an exact copy), cards that declare lineage the way the Hub does (three of them
planted: a false base, two undeclared copies), upload order with parents first, the Hub's
tags and relations derived from them, and a second build that does nothing."""
from __future__ import annotations

import json
import struct
from datetime import datetime
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from indexer.testbed.zoo import ADAPTER, GEMMA, SMOLLM2, ZOO, build_zoo, zoo_ids  # noqa: E402

FULL = ("gguf", "finetune", "merge", "quantize", "copy")  # kinds that are full checkpoints
GGUF_REUPLOAD = next(m for m in ZOO if m.make == "to_gguf")
EXACT_COPY = next(m for m in ZOO if m.make == "copy")


def _card(repo: Path) -> dict:
    text = (repo / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _safetensors_dtypes(path: Path) -> set[str]:
    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_every_repository_is_hub_shaped(zoo_dir):
    manifest = json.loads((zoo_dir / "zoo.json").read_text())
    assert [m["id"] for m in manifest["models"]] == zoo_ids()
    for spec in ZOO:
        mid, repo = spec.id, zoo_dir / spec.id
        names = {p.name for p in repo.iterdir()}
        side = json.loads((repo / ".hub.json").read_text())
        assert side["author"] == mid.split("/")[0]
        datetime.fromisoformat(side["created_at"].replace("Z", "+00:00"))
        if spec.make == "lora":  # PEFT's layout: no config.json, no full weights
            assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= names
            assert not names & {"config.json", "model.safetensors"}, names
            cfg = json.loads((repo / "adapter_config.json").read_text())
            assert (cfg["peft_type"], cfg["base_model_name_or_path"], cfg["r"]) == ("LORA", SMOLLM2, 8)
            continue
        if spec.make == "to_gguf":  # one GGUF file and the card, as GGUF repositories go
            assert names == {spec.weights_file, "README.md", ".hub.json"}, names
            continue
        assert {"config.json", "model.safetensors", "README.md", ".hub.json", "tokenizer.json"} <= names, mid
        assert not any(n.endswith((".bin", ".pt", ".py", ".gguf")) for n in names), mid
        assert _safetensors_dtypes(repo / "model.safetensors") == {"BF16"}, mid
        config = json.loads((repo / "config.json").read_text())
        assert "auto_map" not in config and "quantization_config" not in config, mid
    families = {json.loads((zoo_dir / m / "config.json").read_text())["model_type"] for m in (SMOLLM2, GEMMA)}
    assert families == {"llama", "gemma3_text"}


def test_cards_declare_lineage_and_parents_come_first(zoo_dir):
    created = {m: json.loads((zoo_dir / m / ".hub.json").read_text())["created_at"] for m in zoo_ids()}
    for spec in ZOO:
        card = _card(zoo_dir / spec.id)
        declared = card.get("base_model") or []
        assert list(declared) == list(spec.declared_base)
        assert card.get("base_model_relation") == spec.declared_relation
        for parent in spec.parents:  # true parents were uploaded earlier
            assert created[parent] < created[spec.id]
        for base in declared:
            assert created[base] < created[spec.id]
    planted = json.loads((zoo_dir / "zoo.json").read_text())["planted"]
    # one false base (a SmolLM2 fine-tune claiming gemma), one near-copy declaring nothing
    false_base = [m for m in ZOO if m.declared_base and set(m.declared_base) != set(m.parents)]
    silent = [m for m in ZOO if m.parents and not m.declared_base]
    assert [m.id for m in false_base] == ["zoo/smollm2-ft-chess"] and false_base[0].declared_base == (GEMMA,)
    assert [m.id for m in silent] == ["zoo/SmolLM2-135M-Instruct-int8", EXACT_COPY.id]
    assert set(planted) == {false_base[0].id} | {m.id for m in silent}
    # the adapter and the GGUF re-upload declare their bases as such uploads do
    assert (_card(zoo_dir / ADAPTER)["library_name"], _card(zoo_dir / ADAPTER)["base_model_relation"]) == (
        "peft", "adapter")
    gguf_card = _card(zoo_dir / GGUF_REUPLOAD.id)
    assert "library_name" not in gguf_card and "gguf" in gguf_card["tags"]
    assert (gguf_card["base_model"], gguf_card["base_model_relation"]) == (["zoo/smollm2-ft-recipes"], "quantized")


def test_derived_weights_are_what_the_recipe_says(zoo_dir):
    import torch
    from safetensors.torch import load_file

    def w(mid: str, name: str = "model.layers.3.mlp.down_proj.weight") -> torch.Tensor:
        return load_file(str(zoo_dir / mid / "model.safetensors"))[name].float()

    base, quant = w(SMOLLM2), w("zoo/SmolLM2-135M-Instruct-int8")
    assert not torch.equal(base, quant)
    # per-row int8: every value within half a step of its row's scale, stored in bf16
    step = base.abs().amax(dim=1, keepdim=True) / 127
    assert ((quant - base).abs() <= step * 0.5 + base.abs() * 2 ** -7 + 1e-6).all()
    ft_a, ft_b = w("zoo/smollm2-ft-poetry"), w("zoo/smollm2-ft-recipes")
    assert not torch.equal(ft_a, base) and not torch.equal(ft_a, ft_b)
    merge_spec = next(m for m in ZOO if m.make == "merge")
    first, second = (w(p) for p in merge_spec.parents)
    merge = w(merge_spec.id)
    assert not torch.equal(first, second)
    want = merge_spec.weight * first + (1 - merge_spec.weight) * second
    assert torch.allclose(merge, want, atol=2e-2, rtol=1e-2)
    assert (merge - want).abs().max() < (first - second).abs().max()  # nearer the mean than the parents are apart
    # fine-tunes keep the (frozen) embeddings of their parent
    emb = "model.embed_tokens.weight"
    assert torch.equal(w(SMOLLM2, emb), w("zoo/smollm2-ft-poetry-shanties", emb))
    # the exact copy is its original, byte for byte
    original = EXACT_COPY.parents[0]
    assert (zoo_dir / EXACT_COPY.id / "model.safetensors").read_bytes() == (
        zoo_dir / original / "model.safetensors").read_bytes()
    for name in ("tokenizer.json", "config.json", "tokenizer_config.json"):  # a probe reads these too
        assert (zoo_dir / EXACT_COPY.id / name).read_bytes() == (zoo_dir / original / name).read_bytes()
    # the adapter trained LoRA matrices on q/v only, in every layer
    adapter = load_file(str(zoo_dir / ADAPTER / "adapter_model.safetensors"))
    assert {k.split(".")[-2] for k in adapter} == {"lora_A", "lora_B"}
    assert {k.split(".")[-3] for k in adapter} == {"q_proj", "v_proj"} and len(adapter) == 30 * 2 * 2
    assert all(t.abs().sum() > 0 for t in adapter.values())  # B starts at 0: it trained


def test_the_gguf_reupload_loads_back_to_its_fine_tune(zoo_dir):
    """transformers' GGUF loader reads the Q8_0 file back (names mapped, llama.cpp's q/k
    permutation undone) to the fine-tune's weights within Q8_0's rounding: a block of 32
    values shares one fp16 scale d = absmax/127, so each value is within d/2, plus the
    scale's fp16 rounding (at most 2^-11 relative, times |q| <= 127): 0.5 + 127 * 2^-11
    = 0.562 steps. Norms are stored in F32: exact."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    repo = zoo_dir / GGUF_REUPLOAD.id
    reader = gguf.GGUFReader(str(repo / GGUF_REUPLOAD.weights_file))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert "tokenizer.ggml.tokens" in reader.fields  # the tokenizer travels in the file
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {"Q8_0"}
    model = AutoModelForCausalLM.from_pretrained(str(repo), gguf_file=GGUF_REUPLOAD.weights_file,
                                                 dtype=torch.float32)
    loaded = model.state_dict()
    original = load_file(str(zoo_dir / GGUF_REUPLOAD.parents[0] / "model.safetensors"))
    worst = 0.0
    for name, want in original.items():
        want, got = want.float(), loaded[name]
        if want.dim() == 1:
            assert torch.equal(got, want), name
            continue
        blocks = want.reshape(want.shape[0], -1, 32)
        step = (blocks.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
        worst = max(worst, float(((got.reshape(blocks.shape) - blocks).abs() / step).max()))
    assert 0.25 < worst <= 0.5 + 127 * 2 ** -11, worst  # rounded (not exact), within the bound
    # q/k came back unpermuted: a wrong permutation would be off by whole values, not steps
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(loaded[q], original[q].float(), atol=float(original[q].float().abs().max()) / 100)


def test_manifest_records_each_models_weights_hash_and_recipe(zoo_dir):
    import hashlib

    manifest = json.loads((zoo_dir / "zoo.json").read_text())
    assert manifest["built_with"]["deterministic_algorithms"] is True
    hashes = set()
    by_id = {}
    for entry in manifest["models"]:
        spec = next(m for m in ZOO if m.id == entry["id"])
        assert entry["weights_file"] == spec.weights_file
        data = (zoo_dir / entry["id"] / spec.weights_file).read_bytes()
        assert entry["weights_sha256"] == hashlib.sha256(data).hexdigest(), entry["id"]
        by_id[spec.id] = entry["weights_sha256"]
        assert entry["true_parents"] == list(spec.parents)
        if spec.make in ("finetune", "lora"):
            assert {k: entry["recipe"][k] for k in ("steps", "lr", "seed", "text")} == {
                "steps": spec.steps, "lr": spec.lr, "seed": spec.seed, "text": spec.text}
    # no two models share their bytes, but the exact copy and its original
    assert by_id[EXACT_COPY.id] == by_id[EXACT_COPY.parents[0]]
    assert len(set(by_id.values())) == len(ZOO) - 1


def test_second_build_is_a_no_op(zoo_dir, tmp_path):
    again = build_zoo(zoo_dir)
    assert not again.built and again.seconds < 5
    # a fresh folder is laid out from the cache, without rebuilding, as hard links
    other = build_zoo(tmp_path / "elsewhere")
    assert not other.built
    a = zoo_dir / SMOLLM2 / "model.safetensors"
    b = tmp_path / "elsewhere" / SMOLLM2 / "model.safetensors"
    assert b.is_file() and b.stat().st_size == a.stat().st_size
    assert other.recipe_hash == again.recipe_hash


def test_the_hub_endpoint_serves_the_zoo(zoo_dir):
    """The project's Hub endpoint lists the zoo in upload order, with the cards' lineage,
    through the real huggingface_hub client."""
    from huggingface_hub import HfApi

    from indexer.testbed.hub import HubServer

    with HubServer(zoo_dir) as url:
        api = HfApi(endpoint=url)
        models = list(api.list_models(sort="created_at", cardData=True))  # newest first
        assert [m.id for m in models] == zoo_ids()[::-1]
        chess = api.model_info("zoo/smollm2-ft-chess")
        assert chess.card_data["base_model"] == [GEMMA]
        # the upload mix, as the Hub shows it: library, tags and relation from card and files
        adapter = api.model_info(ADAPTER)
        assert adapter.library_name == "peft"
        assert {"peft", "safetensors", "lora", f"base_model:adapter:{SMOLLM2}"} <= set(adapter.tags)
        q = api.model_info(GGUF_REUPLOAD.id, files_metadata=True)
        assert q.library_name == "gguf"
        assert {"gguf", "base_model:zoo/smollm2-ft-recipes", "base_model:quantized:zoo/smollm2-ft-recipes"} <= set(q.tags)
        assert [s.rfilename for s in q.siblings if s.rfilename.endswith(".gguf")] == [GGUF_REUPLOAD.weights_file]
        copy = api.model_info(EXACT_COPY.id, files_metadata=True)
        assert not [t for t in copy.tags if t.startswith("base_model:")]
        original = api.model_info(EXACT_COPY.parents[0], files_metadata=True)
        lfs = lambda info: {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs}  # noqa: E731
        assert lfs(copy)["model.safetensors"] == lfs(original)["model.safetensors"]
