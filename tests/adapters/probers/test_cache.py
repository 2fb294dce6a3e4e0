"""The probe cache: one record per probe key, atomic writes, torn entries probed again."""
from pathlib import Path

from indexer.adapters.probers.base import ModelSource, get_prober
from indexer.adapters.probers.cache import ProbeCache, probe_cached
from indexer.adapters.probers.simulated import write_repositories
from indexer.adapters.genome_files import builtin
from indexer.core.simulate import simulate
from schemas.records import ProbeParams, probe_key

PARAMS = ProbeParams(n_samples=16, seed=3)


def _model(tmp_path: Path) -> ModelSource:
    eco = simulate(4, seed=2, n_genes=8)
    write_repositories(eco, tmp_path / "hub")
    return ModelSource(eco.ids[0], "main", tmp_path / "hub" / eco.ids[0])


class CountingProber:
    """The simulated prober, counting the probes it really runs."""

    def __init__(self):
        self.inner = get_prober("simulated")
        self.backend = self.inner.backend
        self.runs = 0

    def probe(self, model, genome, params):
        self.runs += 1
        return self.inner.probe(model, genome, params)


def test_a_probe_is_run_once_and_then_read_back(tmp_path: Path) -> None:
    model, genome, prober = _model(tmp_path), builtin("math").subset(8), CountingProber()
    cache = ProbeCache(tmp_path / "probes")
    first, was_cached = probe_cached(prober, model, genome, PARAMS, cache)
    assert not was_cached and prober.runs == 1
    key = probe_key(model.model_id, model.revision, genome.hash, PARAMS, "simulated")
    assert first.probe_id == key and cache.path(key) == tmp_path / "probes" / f"{key}.json"
    assert [p.name for p in (tmp_path / "probes").iterdir()] == [f"{key}.json"]  # no temporary left
    again, was_cached = probe_cached(prober, model, genome, PARAMS, cache)
    assert was_cached and prober.runs == 1 and again == first
    # another seed is another probe
    other, was_cached = probe_cached(prober, model, genome, PARAMS.model_copy(update={"seed": 4}), cache)
    assert not was_cached and prober.runs == 2 and other.probe_id != key


def test_a_torn_or_foreign_entry_is_probed_again(tmp_path: Path) -> None:
    model, genome, prober = _model(tmp_path), builtin("math").subset(8), CountingProber()
    cache = ProbeCache(tmp_path / "probes")
    record, _ = probe_cached(prober, model, genome, PARAMS, cache)
    path = cache.path(record.probe_id)
    path.write_text(path.read_text()[:40])  # a write cut short
    assert cache.get(record.probe_id) is None and not path.exists()
    again, was_cached = probe_cached(prober, model, genome, PARAMS, cache)
    assert not was_cached and prober.runs == 2 and again.alleles == record.alleles
    # a record stored under another probe's key is not that probe
    other_key = "0" * len(record.probe_id)
    cache.path(other_key).write_text(record.model_dump_json())
    assert cache.get(other_key) is None


def test_the_probe_step_reads_the_cache_layout_jobs_have_written(tmp_path: Path) -> None:
    """A job restarted after probing finds its probes where it left them,
    ``<cache_dir>/probes/<probe id>.json``, and neither downloads nor probes again (the Hub
    here answers nothing)."""
    from indexer.app.job import JobConfig, probe_id_for
    from indexer.app.probing import ProbeStep
    from schemas.records import ModelRecord, ModelStatus

    source = _model(tmp_path)
    config = JobConfig(catalog=tmp_path / "c.duckdb", hub="http://127.0.0.1:9", backend="simulated",
                       n_genes=8, params=PARAMS, cache_dir=tmp_path / "cache", hub_timeout=0.5)
    model = ModelRecord(id=source.model_id, revision="a" * 40)
    step = ProbeStep(config)
    record = get_prober("simulated").probe(ModelSource(model.id, model.revision, source.path), step.genome, PARAMS)
    key = probe_id_for(model, config, step.genome.hash)
    assert record.probe_id == key
    (tmp_path / "cache" / "probes").mkdir(parents=True)
    (tmp_path / "cache" / "probes" / f"{key}.json").write_text(record.model_dump_json())
    outcome = step(model)
    assert outcome.model.status == ModelStatus.probed and outcome.probe == record
    assert step._prober is None  # no engine was started
