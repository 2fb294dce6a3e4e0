"""The job's steps as plain objects, shared by the Beam pipelines and the CLI.

``JobConfig`` is everything a step needs (picklable, so a cluster runner can ship it);
``ProbeStep`` turns a listed model into a probe outcome (download + probe, never raising
for one bad model); ``IndexWriter`` is the single writer: it applies one outcome to the
catalog in one transaction — model row, probe and alleles, one new row of distances, the
tree with its new leaf, refreshed estimates — so a crash at any point leaves either all of
it or none of it, and a restart resumes from the catalog alone.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from indexer import genomes as genome_lib
from indexer.catalog import DONE_SQL, refresh_snapshot, writer_lock_path
from indexer.errors import PhylolmError
from indexer.probers.base import ModelSource, Prober, ProbeError, get_prober
from schemas.records import ModelRecord, ModelStatus, ProbeParams, ProbeRecord, probe_key

log = logging.getLogger("phylolm")

WRITER_OPEN_WAIT_S = 120.0  # how long the writer waits out a reader's query that began before the job


@dataclass(frozen=True)
class JobConfig:
    catalog: Path
    hub: str | None = None  # endpoint URL (a folder is served by the CLI before the job starts)
    backend: str = "transformers"
    backend_options: tuple[tuple[str, str], ...] = ()
    genome: str = "math"
    n_genes: int | None = None
    params: ProbeParams = field(default_factory=ProbeParams)
    cache_dir: Path = Path.home() / ".cache" / "phylolm"
    publish_dir: Path | None = None
    max_bytes: float = 16e9  # weights budget, from metadata before download
    author: str | None = None
    search: str | None = None
    since: datetime | None = None
    limit: int | None = None
    model_ids: tuple[str, ...] = ()
    hub_timeout: float = 10.0

    def load_genome(self) -> genome_lib.Genome:
        g = genome_lib.load(self.genome)
        return g.subset(self.n_genes) if self.n_genes else g


@dataclass(frozen=True)
class ProbeOutcome:
    """A listed model after the probe step: probed (with its record) or skipped/failed."""

    model: ModelRecord
    probe: ProbeRecord | None = None

    @property
    def key(self) -> str:
        return f"{self.model.id}@{self.model.revision}"


@dataclass(frozen=True)
class UpdateSummary:
    model_id: str
    status: str
    reason: str | None = None
    snapshot: int | None = None
    n_models: int = 0
    nearest: tuple[tuple[str, float], ...] = ()
    timings_ms: tuple[tuple[str, float], ...] = ()
    rebuilt: bool = False


# ---- failpoints ----------------------------------------------------------------------------

_FAILPOINT_HITS: dict[str, int] = {}


def failpoint(stage: str) -> None:
    """Crash here, for real (SIGKILL), when ``PHYLOLM_FAILPOINT=<stage>:<n>`` names this stage
    and this is its n-th hit in the process. How the fault suite kills a writer at an exact
    point of an update (before, during, after the catalog write, while publishing); unset,
    it costs one dictionary lookup.
    """
    spec = os.environ.get("PHYLOLM_FAILPOINT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != stage:
        return
    _FAILPOINT_HITS[stage] = _FAILPOINT_HITS.get(stage, 0) + 1
    if _FAILPOINT_HITS[stage] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- one process per catalog ----------------------------------------------------------------

class WriterLock:
    """An advisory lock on ``<catalog>.lock`` held for the life of a watch or backfill, so a
    second job on the same catalog is refused at once with a clear message.

    While it is held, readers (``phylolm sql``, the job's own listing) read the published
    snapshot, which taking the lock brings up to date first, so no reader ever holds the file
    when the job's writer opens it."""

    def __init__(self, catalog: Path):
        self.catalog = catalog
        self.path = writer_lock_path(catalog)
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PhylolmError(f"another phylolm job (pid {holder}) is already writing {self.path.with_suffix('')}; "
                               f"one writer per catalog — query it with `phylolm sql` meanwhile") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        try:
            refresh_snapshot(self.catalog)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ---- listing --------------------------------------------------------------------------------

class ListStep:
    """One poll: the models to work on, screened, oldest first.

    What is already done (a final status for the same revision) and the watermark are read
    from the catalog read-only — its published snapshot while the writer holds it — so the
    poll never competes with the writer. The writer re-checks, which makes the pipeline
    exactly-once even when a poll races an update.
    """

    def __init__(self, config: JobConfig):
        from indexer.hub.client import HubClient
        from indexer.hub.watcher import ScreenPolicy, Watcher

        self.config = config
        self.client = HubClient(config.hub, timeout=config.hub_timeout)
        self.watcher = Watcher(self.client, ScreenPolicy(max_bytes=int(config.max_bytes),
                                                         has_token=self.client.has_token))

    def catalog_state(self) -> tuple[dict[str, str], datetime | None, dict[str, int]]:
        """``(done, watermark, retry)``: the revision each finished model is done at, the
        watermark, and the failed attempts of every model that failed but may be retried."""
        from indexer.catalog import MAX_ATTEMPTS, open_read_only

        try:
            con, _ = open_read_only(self.config.catalog)
        except PhylolmError:
            return {}, None, {}  # no catalog yet: everything is new
        try:
            done = dict(con.execute(f"select id, revision from models where {DONE_SQL}").fetchall())
            retry = dict(con.execute("select id, attempts from models where status = 'failed' and attempts < ?",
                                     [MAX_ATTEMPTS]).fetchall())
            wm = con.execute("select value from meta where key = 'watermark'").fetchall()
        finally:
            con.close()
        return done, datetime.fromisoformat(wm[0][0]) if wm else None, retry

    def __call__(self) -> list[ModelRecord]:
        done, watermark, retry = self.catalog_state()
        if self.config.model_ids:
            records = [self._one(m) for m in self.config.model_ids]
        else:
            since = max(filter(None, (watermark, self.config.since)), default=None)
            records = list(self.watcher.list_new_models(since, author=self.config.author,
                                                        search=self.config.search))
            # A failure older than the watermark is not listed by time: ask for it by id.
            listed = {r.id for r in records}
            again = [self._one(m) for m in sorted(retry) if m not in listed]
            records = [r for r in again if self._wanted(r)] + records
        fresh = [r.model_copy(update={"attempt": retry.get(r.id, 0)}) for r in records
                 if done.get(r.id) != r.revision]
        return fresh[: self.config.limit] if self.config.limit else fresh

    def _wanted(self, record: ModelRecord) -> bool:
        """A retried model still matches the job's filters (author, --since)."""
        if self.config.author and record.author and record.author != self.config.author:
            return False
        since = self.config.since
        return not (since and record.created_at and record.created_at < since)

    def _one(self, model_id: str) -> ModelRecord:
        from indexer.hub.client import HubError
        from indexer.hub.watcher import record_of, screen

        try:
            info = self.client.model_info(model_id, files_metadata=True)
        except HubError as e:
            return ModelRecord(id=model_id, status=e.status, reason=e.reason)
        ok, reason = screen(info, self.watcher.policy)
        return record_of(info, ModelStatus.discovered if ok else ModelStatus.skipped, reason)


# ---- probing --------------------------------------------------------------------------------

class ProbeStep:
    """Download (safetensors and metadata only) and probe one model; failures become records.

    Probes are cached on disk as JSON under ``cache_dir/probes/<probe id>.json`` (the id hashes
    model, revision, genome, parameters and backend), so a job killed after probing and
    restarted does not pay for the same probe twice.
    """

    BREAKER = 3  # identical engine failures in a row that stop the job

    def __init__(self, config: JobConfig):
        from indexer.hub.client import HubClient
        from indexer.hub.watcher import ScreenPolicy, Watcher

        self.config = config
        self.genome = config.load_genome()
        client = HubClient(config.hub, timeout=config.hub_timeout)
        self.watcher = Watcher(client, ScreenPolicy(max_bytes=int(config.max_bytes), has_token=client.has_token))
        self.scrub = client.scrub
        self._prober: Prober | None = None
        self._failures: list[str] = []

    @property
    def prober(self) -> Prober:
        if self._prober is None:  # built on first use: a job with nothing new loads no engine
            self._prober = get_prober(self.config.backend, **dict(self.config.backend_options))
        return self._prober

    def _engine(self) -> Prober:
        """The prober, or a ``PhylolmError`` that stops the job: an engine that cannot start
        (unknown or uninstalled backend, no such device) is no fault of the model, and recording
        it as the model's final status would lose every model of the run."""
        try:
            return self.prober
        except Exception as e:
            raise PhylolmError(f"backend {self.config.backend!r} cannot start: "
                               f"{self.scrub(' '.join(str(e).split()))[:300]}") from None

    def _trip(self, reason: str) -> None:
        """Stop the job when the engine fails the same way on ``BREAKER`` models in a row:
        then the engine is broken (a device gone, an endpoint down), not the models, and
        failing them all would only burn their retries. Models already failed are retried."""
        self._failures.append(reason[:120])
        if len(self._failures) >= self.BREAKER and len(set(self._failures[-self.BREAKER:])) == 1:
            raise PhylolmError(f"the {self.config.backend} backend failed {self.BREAKER} models in a row "
                               f"with the same error, stopping: {reason[:300]}")

    def _cache_file(self, model: ModelRecord) -> Path:
        return self.config.cache_dir / "probes" / f"{probe_id_for(model, self.config, self.genome.hash)}.json"

    def __call__(self, model: ModelRecord) -> ProbeOutcome:
        if model.status in (ModelStatus.skipped, ModelStatus.failed):
            return ProbeOutcome(model)
        cached = self._cache_file(model)
        if cached.is_file():
            try:
                return ProbeOutcome(_with(model, ModelStatus.probed, None),
                                    ProbeRecord.model_validate_json(cached.read_text("utf-8")))
            except ValueError:
                cached.unlink(missing_ok=True)  # a torn write: probe again
        prober = self._engine()
        try:
            path = None
            if self.config.backend != "openai":
                model, path = self.watcher.fetch(model, self.config.cache_dir / "models")
                if path is None:
                    return ProbeOutcome(model)
            source = ModelSource(model.id, model.revision, Path(path) if path else None)
            record = prober.probe(source, self.genome, self.config.params)
        except ProbeError as e:
            status = ModelStatus.skipped if e.skip else ModelStatus.failed
            return ProbeOutcome(_with(model, status, self.scrub(str(e))[:500]))
        except Exception as e:  # one bad model never stops the job; the reason is kept
            reason = f"{type(e).__name__}: {self.scrub(' '.join(str(e).split()))[:400]}"
            log.warning("probe of %s failed: %s", model.id, reason)
            self._trip(reason.replace(model.id, "<model>"))
            return ProbeOutcome(_with(model, ModelStatus.failed, reason))
        self._failures.clear()
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(record.model_dump_json(), "utf-8")
        os.replace(tmp, cached)
        return ProbeOutcome(_with(model, ModelStatus.probed, None), record)

    def close(self) -> None:
        if self._prober is not None:
            self._prober.close()
            self._prober = None


def _with(model: ModelRecord, status: ModelStatus, reason: str | None) -> ModelRecord:
    return model.model_copy(update={"status": status, "reason": reason})


# ---- the single writer ----------------------------------------------------------------------

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
        self.catalog.register_genome(self.genome)
        self.index = _reload(self)
        self.estimator = _Estimator()
        self._closed = False
        self._closed_at: tuple | None = None  # the catalog's generation when closed (None: unknown)

    def _connect(self):
        from indexer.catalog import Catalog

        return Catalog(self.config.catalog, create=True, wait_s=WRITER_OPEN_WAIT_S)

    def _generation(self) -> tuple:
        """What changes whenever any writer changes what the index or estimates are built from."""
        return tuple(self.catalog.con.execute(
            """select (select max(snapshot_id) from tree_snapshots),
                      (select count(*) from models where status = 'indexed'),
                      (select max(probe_id) from probes), (select count(*) from probes)""").fetchall()[0])

    def reopen(self) -> None:
        """Take the catalog back after ``close``; rebuild the in-memory state if it changed."""
        if not self._closed:
            return
        self.catalog = self._connect()
        self._closed = False
        if self._closed_at is None or self._generation() != self._closed_at:
            self.index = _reload(self)
            self.estimator = _Estimator()

    def _indexed_alleles(self) -> tuple[list[str], list]:
        rows = self.catalog.con.execute(
            """select m.id, p.probe_id from models m
               join probes p on p.model_id = m.id and p.revision = m.revision
               where m.status = 'indexed' and p.genome_hash = ? and p.params_hash = ? and p.backend = ?
               order by m.updated_at, m.id""",
            [self.genome.hash, self.config.params.digest(), self.config.backend]).fetchall()
        alleles = self.catalog.load_alleles([p for _, p in rows], len(self.genome))
        return [m for m, _ in rows], [alleles[p].counts for _, p in rows]

    def is_done(self, model: ModelRecord) -> bool:
        """True when this revision needs no more work (see ``indexer.catalog.DONE_SQL``)."""
        return _first_row(self.catalog.con.execute(
            f"select 1 from models where id = ? and revision = ? and {DONE_SQL}",
            [model.id, model.revision])) is not None

    def apply(self, outcome: ProbeOutcome) -> UpdateSummary:
        model = outcome.model
        if self.is_done(model) and (outcome.probe is None or model.id in self.index.ids):
            m = self.catalog.get_model(model.id)
            return UpdateSummary(model.id, "unchanged", m.reason, n_models=len(self.index.ids))
        if outcome.probe is None:
            with self.catalog.transaction():
                self.catalog.upsert_models([model])
                self._advance_watermark(model)
            return UpdateSummary(model.id, model.status.value, model.reason, n_models=len(self.index.ids))
        probe = outcome.probe
        if probe.genome_hash != self.genome.hash:
            raise PhylolmError(f"probe of {model.id} used genome {probe.genome_hash[:12]}, "
                               f"this index uses {self.genome.hash[:12]}: results are never mixed")
        if model.id in self.index.ids:  # a new revision of an indexed model: keep the first leaf
            with self.catalog.transaction():
                self.catalog.add_probe(probe)
                self._advance_watermark(model)
            return UpdateSummary(model.id, "indexed", "new revision probed; leaf kept", n_models=len(self.index.ids))
        others = list(self.index.ids)
        result = self.index.insert(model.id, probe.alleles.counts)
        sim = np.asarray(result.similarity)
        dist = -np.log(np.maximum(sim, 1e-10))
        order = np.argsort(dist)[:5]
        stats = {"timings_ms": dict(result.timings_ms), "rebuilt": bool(result.rebuilt),
                 "n_leaves": len(self.index.ids)}
        failpoint("before_write")
        try:
            with self.catalog.transaction():
                self.catalog.upsert_models([_with(model, ModelStatus.indexed, None)])
                self.catalog.add_probe(probe)
                failpoint("mid_write")
                self.catalog.add_distances(self.genome.hash, model.id, others, sim, dist)
                snapshot = self.catalog.add_tree_snapshot(
                    self.genome.hash, self.index.newick(), "incremental",
                    "rebuild" if result.rebuilt else "insert", len(self.index.ids), model.id, stats)
                self.estimator.refresh(self.catalog, self.index, snapshot,
                                       changed={model.id, *(others[i] for i in order)})
                self._advance_watermark(model)
        except BaseException:
            # The transaction rolled back: the in-memory index must forget the leaf too.
            self.index = _reload(self)
            raise
        failpoint("after_write")
        return UpdateSummary(model.id, "indexed", None, snapshot, len(self.index.ids),
                             tuple((others[i], float(dist[i])) for i in order),
                             tuple(result.timings_ms.items()), bool(result.rebuilt))

    def _advance_watermark(self, model: ModelRecord) -> None:
        if model.created_at is None:
            return
        current = self.catalog.get_meta("watermark")
        stamp = model.created_at.astimezone(timezone.utc).isoformat()
        if current is None or stamp > current:
            self.catalog.set_meta("watermark", stamp)

    def publish(self) -> None:
        """Refresh the read-only snapshot and, if configured, the publish folder."""
        self.catalog.publish_snapshot()
        failpoint("mid_publish")
        if self.config.publish_dir is not None:
            from indexer.publish import export

            export(self.catalog.con, self.config.publish_dir)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._closed_at = self._generation()
        except Exception:  # a connection in a bad state: rebuild on reopen
            self._closed_at = None
        self.catalog.close()
        self._closed = True


def _reload(writer: IndexWriter):
    from indexer.phylo_index import PhyloIndex

    ids, counts = writer._indexed_alleles()
    latest = writer.catalog.latest_tree(writer.genome.hash)
    return PhyloIndex.from_state(ids, counts, latest[1] if latest else None, genome_hash=writer.genome.hash,
                                 n_samples=writer.config.params.n_samples)


class _Estimator:
    """Refreshes benchmark estimates inside the writer's transaction (see indexer.predict),
    keeping the fitted predictors between updates."""

    def __init__(self):
        from indexer.predict import EstimateCache

        self.cache = EstimateCache()  # fitted predictors, refit only when the scored set changes

    def refresh(self, catalog, index, snapshot: int, changed: set[str]) -> int:
        from indexer import predict

        scores = {(m, b): v for m, b, v in catalog.con.execute(
            "select model_id, benchmark, avg(value) from scores group by 1, 2").fetchall()}
        if not scores:
            return 0
        from indexer.publish import cv_groups

        ids = list(index.ids)
        estimates = predict.refresh_estimates(
            index.distance_matrix(), ids, scores, changed, snapshot, cache=self.cache,
            groups=cv_groups(catalog.con, ids))
        catalog.replace_estimates(estimates)
        return len(estimates)


def _first_row(cur):
    rows = cur.fetchall()
    return rows[0] if rows else None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def probe_id_for(model: ModelRecord, config: JobConfig, genome_hash: str) -> str:
    return probe_key(model.id, model.revision, genome_hash, config.params, config.backend)


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
