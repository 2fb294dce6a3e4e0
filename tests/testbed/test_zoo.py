"""The zoo's repositories: Hub-shaped, safetensors in bf16, cards that declare lineage the way
the Hub does (two of them lying on purpose), upload order with parents first, and a second
build that does nothing."""
from __future__ import annotations

import json
import struct
from datetime import datetime
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from indexer.testbed.zoo import GEMMA, SMOLLM2, ZOO, build_zoo, zoo_ids  # noqa: E402


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
    for mid in zoo_ids():
        repo = zoo_dir / mid
        names = {p.name for p in repo.iterdir()}
        assert {"config.json", "model.safetensors", "README.md", ".hub.json", "tokenizer.json"} <= names, mid
        assert not any(n.endswith((".bin", ".pt", ".py", ".gguf")) for n in names), mid
        assert _safetensors_dtypes(repo / "model.safetensors") == {"BF16"}, mid
        config = json.loads((repo / "config.json").read_text())
        assert "auto_map" not in config and "quantization_config" not in config, mid
        side = json.loads((repo / ".hub.json").read_text())
        assert side["author"] == mid.split("/")[0]
        datetime.fromisoformat(side["created_at"].replace("Z", "+00:00"))
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
    assert [m.id for m in silent] == ["zoo/SmolLM2-135M-Instruct-int8"]
    assert set(planted) == {false_base[0].id, silent[0].id}


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


def test_manifest_records_each_models_weights_hash_and_recipe(zoo_dir):
    import hashlib

    manifest = json.loads((zoo_dir / "zoo.json").read_text())
    assert manifest["built_with"]["deterministic_algorithms"] is True
    hashes = set()
    for entry in manifest["models"]:
        data = (zoo_dir / entry["id"] / "model.safetensors").read_bytes()
        assert entry["weights_sha256"] == hashlib.sha256(data).hexdigest(), entry["id"]
        hashes.add(entry["weights_sha256"])
        spec = next(m for m in ZOO if m.id == entry["id"])
        if spec.make == "finetune":
            assert entry["recipe"] == {"steps": spec.steps, "lr": spec.lr, "seed": spec.seed, "text": spec.text}
    assert len(hashes) == len(ZOO)  # no two models share their bytes


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
