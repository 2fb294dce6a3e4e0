"""The ``simulated`` backend: probes the repositories of a simulated ecosystem.

A simulated repository looks like a Hub model repository:

    DIR/<owner>/<name>/config.json    {"model_type": "simulated", ...}
    DIR/<owner>/<name>/README.md      YAML front matter: base_model, library_name, pipeline_tag
    DIR/<owner>/<name>/alleles.json   the model's allele distribution for every gene
    DIR/<owner>/<name>/.hub.json      {"created_at": ISO 8601, "author": ...} (Hub metadata)
    DIR/truth.nwk                     the true tree (leaves are model ids)
    DIR/simulation.json               the simulation's parameters

``alleles.json`` (format ``phylolm-simulated-alleles/1``) holds, per gene, the candidate
alleles and their probabilities. Probing draws ``params.n_samples`` alleles per gene from
them, with a random stream derived from ``params.seed`` and the model id: the same model,
seed and N always give the same counts, like a seeded sampler. Plain JSON (never pickle).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from indexer.core.genomes import Genome
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError
from indexer.core.simulate import Ecosystem, probe_rng, sample_alleles
from indexer.core.tree.newick import to_newick
from schemas.records import AlleleCounts, ProbeParams

ALLELES_FILE = "alleles.json"
FORMAT = "phylolm-simulated-alleles/1"


class SimulatedProber(Prober):
    backend = "simulated"

    def __init__(self, root: str | Path | None = None, **_options):
        self.root = Path(root) if root is not None else None

    def version(self) -> str:
        return f"simulated ({FORMAT})"

    def generate(self, model: ModelSource, genome: Genome, params: ProbeParams) -> AlleleCounts:
        folder = model.path or (self.root / model.model_id if self.root is not None else None)
        if folder is None:
            raise ProbeError(f"{model.model_id}: the simulated backend needs the repository folder")
        dists = read_alleles(Path(folder))
        if len(dists) != len(genome):
            raise ProbeError(f"{model.model_id}: simulated repository has {len(dists)} genes, "
                             f"the genome {genome.name!r} has {len(genome)}", skip=True)
        counts = sample_alleles(dists, params.n_samples, probe_rng(params.seed, model.model_id))
        return AlleleCounts(genome_hash=genome.hash, n_samples=params.n_samples, counts=counts)


def read_alleles(folder: Path) -> list[tuple[list[str], np.ndarray]]:
    """The per-gene allele distributions of one simulated repository."""
    path = folder / ALLELES_FILE
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ProbeError(f"{folder.name}: no {ALLELES_FILE}; not a simulated repository", skip=True) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProbeError(f"{path}: unreadable ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("genes"), list):
        raise ProbeError(f"{path}: not a {FORMAT} file", skip=True)
    out = []
    for g, gene in enumerate(doc["genes"]):
        alleles, p = gene.get("alleles"), gene.get("p")
        if (not isinstance(alleles, list) or not isinstance(p, list) or len(alleles) != len(p) or not p
                or not all(isinstance(a, str) and len(a) <= 4 for a in alleles)):
            raise ProbeError(f"{path}: gene {g} is malformed")
        probs = np.asarray(p, dtype=np.float64)
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.sum() <= 0:
            raise ProbeError(f"{path}: gene {g} has invalid probabilities")
        out.append((alleles, probs / probs.sum()))
    return out


def write_repositories(eco: Ecosystem, out_dir: Path, probe_samples: int = 32, min_prob: float = 1e-6) -> list[Path]:
    """Write the ecosystem as Hub-style repositories under ``out_dir`` (plus truth.nwk)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for i, mid in enumerate(eco.ids):
        folder = out_dir / mid
        folder.mkdir(parents=True, exist_ok=True)
        genes = []
        for alleles, p in eco.distributions(i):
            keep = np.flatnonzero(p >= min_prob)
            genes.append({"alleles": [alleles[k] for k in keep],
                          "p": [float(f"{p[k]:.8g}") for k in keep]})
        (folder / ALLELES_FILE).write_text(json.dumps({"format": FORMAT, "genes": genes}, separators=(",", ":")), "utf-8")
        # The "weights": the allele probabilities as a safetensors tensor, so a simulated
        # repository passes the same screen as a real one (safetensors only, sized from metadata).
        from safetensors.numpy import save_file
        save_file({"allele_probabilities": np.concatenate([np.asarray(g["p"], np.float32) for g in genes])},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({
            "model_type": "simulated", "architectures": ["SimulatedForCausalLM"],
            "n_genes": eco.n_genes}, indent=2) + "\n", "utf-8")
        front = ["---"]
        if eco.base_model[i]:
            front += ["base_model:", f"- {eco.base_model[i]}", "base_model_relation: finetune"]
        front += ["library_name: phylolm-simulated", "pipeline_tag: text-generation", "license: apache-2.0", "---", ""]
        body = f"# {mid}\n\nA simulated model (seed {eco.params.get('seed')}); probe it with the `simulated` backend.\n"
        (folder / "README.md").write_text("\n".join(front) + body, "utf-8")
        (folder / ".hub.json").write_text(json.dumps({
            "created_at": eco.created_at[i].isoformat(), "author": eco.authors[i]}) + "\n", "utf-8")
        folders.append(folder)
    (out_dir / "truth.nwk").write_text(to_newick(eco.truth, support=False) + "\n", "utf-8")
    (out_dir / "simulation.json").write_text(json.dumps(
        {**eco.params, "probe_samples": probe_samples, "models": len(eco.ids)}, indent=2) + "\n", "utf-8")
    return folders
