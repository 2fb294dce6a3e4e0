"""The single writer: it applies one probe outcome to the catalog in one transaction (model
row, probe and alleles, one new row of distances, the tree with its new leaf, refreshed
estimates), so a crash at any point leaves either all of it or none of it, and a restart
resumes from the catalog alone.

``index_mode = "sparse"`` (the Hub-scale index, ``PhyloIndex(mode="sparse")``) stores per
insert the model's k nearest instead of its full row, and its whole tree every
``tree_every`` inserts, or every ``TREE_SHARE`` of the index's size when that is more (so
the whole trees stored add up to O(n) bytes, not O(n^2)), with a placement record for the
inserts between. A publish replaces the ``current_tree`` row instead of appending a whole
tree. A restart loads the newest whole tree and re-inserts the models after it.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import time
from datetime import datetime, timezone

import numpy as np
from indexer.errors import PhylolmError
from schemas.records import ModelRecord, ModelStatus, ProbeRecord
from indexer.app import defaults
from indexer.app.failpoints import failpoint
from indexer.app.job import JobConfig, PollReport, ProbeOutcome, UpdateSummary, probe_id_for, with_status as _with

log = logging.getLogger("phylolm")

WRITER_OPEN_WAIT_S = 120.0  # how long the writer waits out a reader's query that began before the job


class IndexWriter:
    """Applies probe outcomes to the catalog and the in-memory index, one transaction each.

    Construction opens the catalog (taking DuckDB's write lock) and rebuilds the index from
    it: the alleles of every indexed model and the latest incremental tree. Nothing else is
    carried between updates, so a writer killed at any point resumes exactly. ``close`` lets
    the file go and ``reopen`` takes it back, keeping the in-memory index and fitted
    estimators when nobody else wrote the catalog meanwhile (O(n) rebuild and cold refits
    avoided per bundle of a streaming job), rebuilding them otherwise.
    """

    def __init__(self, config: JobConfig):
        self.config = config
        self.genome = config.load_genome()
        self.catalog = self._connect()
        try:
            self.catalog.register_genome(self.genome)
            self._record_layout()
            self._load_index()
        except BaseException:
            self.catalog.close()
            raise
        self.estimator = _Estimator()
        self._export_seconds = 0.0  # how long the last export of publish_dir took
        self._export_ended = float("-inf")  # when it ended (time.monotonic)
        self._closed = False
        self._closed_at: tuple | None = None  # the catalog's generation when closed (None: unknown)

    def _connect(self):
        from indexer.adapters.catalog import Catalog

        return Catalog(self.config.catalog, create=True, wait_s=WRITER_OPEN_WAIT_S,
                       memory_limit=self.config.catalog_memory_limit)

    def reopen(self) -> None:
        """Take the catalog back after ``close``; rebuild the in-memory state if it changed."""
        if not self._closed:
            return
        self.catalog = self._connect()
        self._closed = False
        if self._closed_at is None or self.catalog.generation() != self._closed_at:
            self._load_index()
            self.estimator.close()
            self.estimator = _Estimator()

    def _record_layout(self) -> None:
        """Say in the catalog how it is indexed (``CatalogQueries.index_layout``: readers
        learn from it what ``distances`` holds), refusing to continue a catalog indexed the
        other way: its stored distances would mean two things."""
        cfg = self.config
        _refuse_other_layout(self.catalog, cfg)
        with self.catalog.transaction():
            self.catalog.set_meta("index_mode", cfg.index_mode)
            if cfg.index_mode == "sparse":
                self.catalog.set_meta("index_k", str(cfg.index_k))
            self.catalog.set_meta("index_params_hash", cfg.params.digest())
            self.catalog.set_meta("index_backend", cfg.backend)

    def _load_index(self) -> None:
        """The in-memory index, rebuilt from the catalog, and how many inserts have passed
        since the newest full tree."""
        from indexer.core.lineage import FarRanks

        self.catalog.one_thread(False)  # every allele read back: every core
        self.index = _reload(self)
        self._since_tree = self.catalog.placements_since_tree(self.genome.hash)
        self._current_tree_n = None  # the index's size when this writer last replaced current_tree
        self._far_ranks = FarRanks()  # the export's lineage counts, valid for this index only

    def _tree_record(self, result, stats: dict) -> str | None:
        """The Newick to store with an insert: the whole tree (exact mode: always; sparse
        mode: after a rebuild, and every ``tree_every`` inserts or ``TREE_SHARE`` of the
        index's size, whichever is more), else None, and ``stats`` then holds the placement
        (a placement record: the tree is the newest full one plus the later inserts, which a
        resume re-inserts)."""
        cfg = self.config
        every = max(cfg.tree_every, math.ceil(defaults.TREE_SHARE * len(self.index)))
        if cfg.index_mode == "exact" or result.rebuilt or result.placement is None \
                or self._since_tree + 1 >= every:
            return self.index.newick()
        p = result.placement
        stats["placement"] = {"sister": list(result.sister), "x": float(p.x), "pendant": float(p.pendant),
                              "error": float(p.error), "nni_moves": int(result.nni_moves)}
        return None

    def is_done(self, model: ModelRecord) -> bool:
        """True when this revision needs no more work (indexed, skipped, or failed too often)."""
        return self.catalog.is_done(model.id, model.revision)

    def apply_queued(self, models: list[ModelRecord]) -> list[UpdateSummary]:
        """Record many models that wait in the queue, in one transaction (a busy day lists
        thousands): those already done are left as they are; the watermark advances past them."""
        if not models:
            return []
        self.catalog.one_thread(False)  # a batch joined against the models table: every core
        done = set(self.catalog.done_revisions())
        todo = [m for m in models if m.id not in done]
        with self.catalog.transaction():
            self.catalog.upsert_models(todo)
            newest = max((m for m in todo if m.created_at is not None), key=lambda m: m.created_at, default=None)
            if newest is not None:
                self._advance_watermark(newest)
        n = len(self.index)
        return [UpdateSummary(m.id, "unchanged" if m.id in done else m.status.value, m.reason, n_models=n)
                for m in models]

    def apply(self, outcome: ProbeOutcome) -> UpdateSummary:
        model = outcome.model
        if (outcome.probe is None or model.id in self.index) and self.is_done(model):  # no lookup for a new leaf
            m = self.catalog.get_model(model.id)
            return UpdateSummary(model.id, "unchanged", m.reason, n_models=len(self.index))
        reason = None
        if outcome.probe is None and model.copy_of and model.status == ModelStatus.discovered:
            outcome, reason = self._copy(model)
            model = outcome.model
        if outcome.probe is None:
            with self.catalog.transaction():
                self.catalog.upsert_models([model])
                self._advance_watermark(model)
            return UpdateSummary(model.id, model.status.value, model.reason, n_models=len(self.index))
        probe = outcome.probe
        if probe.genome_hash != self.genome.hash:
            raise PhylolmError(f"probe of {model.id} used genome {probe.genome_hash[:12]}, "
                               f"this index uses {self.genome.hash[:12]}: results are never mixed")
        if model.id in self.index:  # a new revision of an indexed model: keep the first leaf
            with self.catalog.transaction():
                self.catalog.add_probe(probe)
                self._advance_watermark(model)
            return UpdateSummary(model.id, "indexed", "new revision probed; leaf kept", n_models=len(self.index))
        with self.estimator.index_lock:  # a background refit reads the index (sparse mode)
            result = self.index.insert(model.id, probe.alleles.counts)
        # the models of the new row: sparse mode, its k nearest and the lists it entered;
        # exact mode, every earlier model (O(n) there anyway); no copy of every id in sparse
        others = self.index.ids_at(result.rows.tolist() if result.rows is not None
                                   else range(len(result.similarity)))
        sim = np.asarray(result.similarity)
        dist = result.distance
        nearest = tuple(zip(result.neighbours, result.neighbour_distances))
        stats = {"timings_ms": dict(result.timings_ms), "rebuilt": bool(result.rebuilt),
                 "n_leaves": len(self.index)}
        failpoint("before_write")
        self.catalog.one_thread(True)  # single-row statements: faster on one thread
        try:
            with self.catalog.transaction():
                self.catalog.upsert_models([_with(model, ModelStatus.indexed, reason)])
                self.catalog.add_probe(probe)
                failpoint("mid_write")
                self.catalog.add_distances(self.genome.hash, model.id, others, sim, dist)
                newick = self._tree_record(result, stats)
                snapshot = self.catalog.add_tree_snapshot(
                    self.genome.hash, newick, "incremental",
                    "rebuild" if result.rebuilt else "insert", len(self.index), model.id, stats)
                self.estimator.refresh(self.catalog, self.index, snapshot,
                                       changed={model.id, *result.neighbours}, new_id=model.id)
                self._advance_watermark(model)
        except BaseException:
            # The transaction rolled back: the in-memory index must forget the leaf too.
            self._load_index()
            if self.estimator.sparse is not None:  # its fit's reference rows are the old index's
                self.estimator.close()
                self.estimator = _Estimator()
            raise
        self._since_tree = 0 if newick is not None else self._since_tree + 1
        failpoint("after_write")
        self.estimator.after_write(self.catalog, self.index, snapshot)
        return UpdateSummary(model.id, "indexed", reason, snapshot, len(self.index),
                             nearest,
                             tuple(result.timings_ms.items()), bool(result.rebuilt))

    def _copy(self, model: ModelRecord) -> tuple[ProbeOutcome, str | None]:
        """An exact copy's outcome: its twin's alleles as a probe of the copy (no download, no
        engine; the backend version says whose they are), or ``failed`` when the twin has no
        probe in this index (then a later poll looks at it again)."""
        twin = model.copy_of
        rows = self.catalog.indexed_probes(self.genome.hash, self.config.params.digest(), self.config.backend,
                                           model_id=twin)
        row = rows[0][1:] if rows else None
        if row is None or twin not in self.index:
            return ProbeOutcome(_with(model.model_copy(update={"copy_of": None}), ModelStatus.failed,
                                      f"identical weights to {twin}, which has no probe in this index yet")), None
        alleles = self.catalog.load_alleles([row[0]], len(self.genome))[row[0]]
        probe = ProbeRecord(probe_id=probe_id_for(model, self.config, self.genome.hash), model_id=model.id,
                            revision=model.revision, genome_hash=self.genome.hash, backend=self.config.backend,
                            backend_version=f"{row[1]} (alleles of {twin}: identical weights)",
                            params=self.config.params, alleles=alleles, seconds=0.0, started_at=datetime.now(timezone.utc))
        return ProbeOutcome(model, probe), f"identical weights to {twin}"

    def record_poll(self, report: PollReport) -> None:
        """Record one poll's outcome (the ``polls`` table: what `phylolm status` and a
        ``watch --once`` exit status read)."""
        with self.catalog.transaction():
            self.catalog.record_poll(report.poll_id, report.started_at, report.finished_at, report.complete,
                                     report.error, report.new_models, report.taken, report.queued)

    def _advance_watermark(self, model: ModelRecord) -> None:
        if model.created_at is None:
            return
        self.catalog.raise_meta("watermark", model.created_at.astimezone(timezone.utc).isoformat())

    def publish(self, *, final: bool = True) -> bool:
        """Refresh the read-only snapshot and, if configured, the publish folder. A sparse
        index first replaces its ``current_tree`` when inserts have passed since the last
        whole tree, so what readers get always has every indexed model in its tree.

        The snapshot is written by appends (cheap, every call). The publish folder's files
        are written whole, O(n) (13 s at 20,000 models): a publish within a bundle
        (``final=False``) refreshes them only when the time since the last export is at
        least ``(1 / export_share - 1)`` times that export's length, so exporting takes at
        most ``export_share`` of the writer's time however large the index grows; a final
        publish (a bundle's end) always does. Returns whether the folder was refreshed."""
        self.catalog.one_thread(False)  # whole tables written: every core
        if self._since_tree and self.index.tree is not None and self._current_tree_n != len(self.index):
            with self.catalog.transaction():
                self.catalog.set_current_tree(self.genome.hash, self.index.newick(), len(self.index))
            self._current_tree_n = len(self.index)
        self.catalog.publish_snapshot()
        failpoint("mid_publish")
        if self.config.publish_dir is None or not (final or self._export_due()):
            return False
        from indexer.adapters.publish import export

        started = time.monotonic()
        # A sparse index's exact rows (the lineage check's) come from the alleles already
        # in memory. Only this thread appends to them, so reading needs no lock.
        sparse = getattr(self.index, "mode", "exact") == "sparse"
        export(self.catalog, self.config.publish_dir, alleles=self.index.alleles if sparse else None,
               far_ranks=self._far_ranks if sparse else None)
        self._export_ended = time.monotonic()
        self._export_seconds = self._export_ended - started
        return True

    def _export_due(self) -> bool:
        """Whether a publish within a bundle refreshes the publish folder (``publish``)."""
        idle = time.monotonic() - self._export_ended
        return idle >= self._export_seconds * (1.0 / self.config.export_share - 1.0)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._closed_at = self.catalog.generation()
        except Exception:  # a connection in a bad state: rebuild on reopen
            self._closed_at = None
        self.catalog.close()
        self._closed = True


def check_index_layout(config: JobConfig) -> None:
    """Refuse, before anything is listed or probed, a job whose index settings differ from
    those its catalog was made with (the writer checks again when it opens the catalog)."""
    if not config.catalog.exists():
        _refuse_other_layout(None, config)
        return
    from indexer.adapters.catalog import open_read_only

    with open_read_only(config.catalog) as reader:
        _refuse_other_layout(reader, config)


def _refuse_other_layout(catalog, cfg: JobConfig) -> None:
    if cfg.index_mode == "sparse" and importlib.util.find_spec("hnswlib") is None:
        raise PhylolmError("index_mode = sparse finds neighbour candidates with hnswlib: "
                           "pip install 'phylolm-indexer[scale]'")
    if catalog is None or not catalog.generation()[1]:  # nothing indexed yet: any layout will do
        return
    stored = catalog.index_layout()
    if _layout_key(stored.mode, stored.k) != _layout_key(cfg.index_mode, cfg.index_k):
        was = "exact" if stored.mode == "exact" else f"sparse, k = {stored.k}"
        raise PhylolmError(f"catalog {cfg.catalog} is indexed in the {was} mode; "
                           f"it cannot be continued with index_mode = {cfg.index_mode}"
                           + (f", index_k = {cfg.index_k}" if cfg.index_mode == "sparse" else "")
                           + " (use a new catalog, or the settings it was made with)")


def _layout_key(mode: str, k: int | None) -> tuple:
    """What must match for a catalog to be continued: the mode, and k for a sparse index."""
    return (mode, k if mode == "sparse" else None)


def _reload(writer: IndexWriter):
    from indexer.core.phylo_index import PhyloIndex

    cfg = writer.config
    ids, alleles = writer.catalog.indexed_alleles(writer.genome.hash, cfg.params.digest(), cfg.backend,
                                                  len(writer.genome))
    counts = [a.counts for a in alleles]
    latest = writer.catalog.latest_tree(writer.genome.hash)
    options = {"mode": "sparse", "k": cfg.index_k} if cfg.index_mode == "sparse" else {}
    return PhyloIndex.from_state(ids, counts, latest[1] if latest else None, genome_hash=writer.genome.hash,
                                 n_samples=cfg.params.n_samples, **options)


class _Estimator:
    """The writer's fitted predictors, kept between updates; ``refresh`` writes the estimates
    of one update inside its transaction.

    Exact mode: ``estimate_scores`` on the full matrix (refit only when the scored set
    changes; ``FittedPredictors``). Sparse mode (``PhyloIndex(mode="sparse")``): the new
    model only, from a frozen fit and its distances to the fit's reference models, with
    refits in a background thread installed by ``after_write`` (``indexer.app.estimates``).
    """

    def __init__(self):
        import threading

        from indexer.core.predict import FittedPredictors

        self.cache = FittedPredictors()
        self.index_lock = threading.RLock()
        self.sparse = None  # SparseEstimates, made on the first sparse-mode refresh

    def refresh(self, catalog, index, snapshot: int, changed: set[str], new_id: str | None = None) -> int:
        if getattr(index, "mode", "exact") == "sparse":
            return self._sparse().refresh(catalog, index, snapshot, [new_id] if new_id else sorted(changed))
        from indexer.adapters.publish import estimate_records

        estimates = estimate_records(catalog, index.ids, index.distance_matrix(), snapshot,
                                     changed=changed, cache=self.cache)
        catalog.replace_estimates(estimates)
        return len(estimates)

    def after_write(self, catalog, index, snapshot: int | None) -> int:
        """Sparse mode: install a finished background refit and write its estimates (their
        own transaction); nothing in exact mode."""
        return self.sparse.install_ready(catalog, index, snapshot) if self.sparse is not None else 0

    def _sparse(self):
        if self.sparse is None:
            from indexer.app.estimates import SparseEstimates

            self.sparse = SparseEstimates(index_lock=self.index_lock)
        return self.sparse

    def close(self) -> None:
        if self.sparse is not None:
            self.sparse.close(wait=False)
