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
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from indexer.core import genomes as genome_lib
from indexer.adapters.catalog import DONE_SQL, refresh_snapshot, writer_lock_path
from indexer.errors import PhylolmError
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError, get_prober
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
    # With no watermark yet, a watch's first poll looks back this far (None: everything, as a
    # backfill does); older models are what `backfill` is for.
    first_window_hours: float | None = None
    probe_budget: int | None = None  # models probed per cycle (None: every new model)
    budget_seconds: float | None = None  # probe seconds per cycle, at the measured rate
    queue_order: str = "rank"  # rank | newest: which queued models a cycle takes first
    priority: str = "downloads=1,likes=2,related=2,size=-0.5"  # see indexer.app.probe_queue
    use_queue: bool = False  # the watch: a cycle takes its budget from new models and the queue
    # Pre-quantization methods the backend runs (None: what indexer.adapters.probers.base.quant_methods
    # finds for it); quantized checkpoints of other methods are deferred.
    quant_methods: tuple[str, ...] | None = None

    def screen_policy(self, has_token: bool):
        from indexer.adapters.hub.watcher import ScreenPolicy
        from indexer.adapters.probers.base import quant_methods

        methods = (frozenset(self.quant_methods) if self.quant_methods is not None
                   else quant_methods(self.backend, dict(self.backend_options).get("device")))
        return ScreenPolicy(max_bytes=int(self.max_bytes), has_token=has_token, quant_methods=methods)

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
class PollReport:
    """What one poll of the Hub did, recorded by the writer in the ``polls`` table. ``complete``:
    the listing reached the watermark (else nothing new was recorded; ``error`` says why)."""

    poll_id: str
    started_at: datetime
    finished_at: datetime
    complete: bool
    error: str | None = None
    new_models: int = 0
    taken: int = 0
    queued: int = 0

    @property
    def key(self) -> str:
        return f"poll:{self.poll_id}"


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
        import hashlib

        from indexer.adapters.hub.client import HubClient
        from indexer.adapters.hub.watcher import Watcher
        from indexer.app.probe_queue import PriorityWeights

        self.config = config
        self.client = HubClient(config.hub, timeout=config.hub_timeout)
        # An interrupted listing's cursor is kept beside the downloads, per endpoint and filters,
        # so that the next poll (in this process or the next cron run) resumes from it.
        tag = hashlib.sha1(f"{self.client.endpoint}|{config.author}|{config.search}".encode()).hexdigest()[:16]
        self.watcher = Watcher(self.client, config.screen_policy(self.client.has_token),
                               resume_path=config.cache_dir / "listing" / f"{tag}.json")
        self.weights = PriorityWeights.parse(config.priority)
        self.last_poll: PollReport | None = None

    def catalog_state(self) -> tuple[dict[str, str], datetime | None, dict[str, int]]:
        """``(done, watermark, retry)``: the revision each finished model is done at, the
        watermark, and the failed attempts of every model that failed but may be retried."""
        from indexer.adapters.catalog import MAX_ATTEMPTS, open_read_only

        self.deferred: dict[str, str | None] = {}  # id -> reason of every deferred model
        try:
            con, _ = open_read_only(self.config.catalog)
        except PhylolmError:
            return {}, None, {}  # no catalog yet: everything is new
        try:
            done = dict(con.execute(f"select id, revision from models where {DONE_SQL}").fetchall())
            retry = dict(con.execute("select id, attempts from models where status = 'failed' and attempts < ?",
                                     [MAX_ATTEMPTS]).fetchall())
            self.deferred = dict(con.execute("select id, reason from models where status = 'deferred'").fetchall())
            wm = con.execute("select value from meta where key = 'watermark'").fetchall()
        finally:
            con.close()
        return done, datetime.fromisoformat(wm[0][0]) if wm else None, retry

    def queue_state(self) -> tuple[list[ModelRecord], set[str], float | None]:
        """``(queued, indexed, seconds_per_probe)``: the models waiting in the queue, the ids
        already indexed, and the mean probe time over the last day (None: none timed)."""
        from indexer.adapters.catalog import open_read_only

        try:
            con, _ = open_read_only(self.config.catalog)
        except PhylolmError:
            return [], set(), None
        try:
            cur = con.execute(
                """select id, revision, created_at, author, base_models, base_model_relation, license,
                          pipeline_tag, size_bytes, downloads, likes, priority, gguf_file from models
                   where status = 'queued'""")
            cols = [d[0] for d in cur.description]
            queued = [ModelRecord(**{**dict(zip(cols, row)), "base_models": tuple(row[4] or ())})
                      for row in cur.fetchall()]
            indexed = {r[0] for r in con.execute("select id from models where status = 'indexed'").fetchall()}
            rate = con.execute("select avg(seconds) from probes where started_at >= now() - interval 1 day"
                               ).fetchall()[0][0]
        finally:
            con.close()
        return queued, indexed, float(rate) if rate else None

    def __call__(self, poll: float | None = None) -> list[ModelRecord]:
        """One poll: the records to work on (new models screened, retries, and the cycle's share
        of the queue). ``last_poll`` says whether the listing completed."""
        started = utcnow()
        poll_id = f"{poll if poll is not None else started.timestamp():.6f}"
        done, watermark, retry = self.catalog_state()
        error = None
        if self.config.model_ids:
            records = [r for m in self.config.model_ids for r in self._lookup(m)]
        else:
            since = max(filter(None, (watermark, self.config.since)), default=None)
            if since is None and self.config.first_window_hours is not None:
                since = started - timedelta(hours=self.config.first_window_hours)
                log.warning("no watermark yet: this first poll looks back %g h, to %s; older models are "
                            "for `phylolm backfill --since DATE`", self.config.first_window_hours,
                            since.isoformat(timespec="seconds"))
            records = list(self.watcher.list_new_models(since, author=self.config.author,
                                                        search=self.config.search))
            error = self.watcher.report.error
            # A failure older than the watermark is not listed by time: ask for it by id.
            listed = {r.id for r in records}
            again = [r for m in sorted(retry) if m not in listed for r in self._lookup(m)]
            again += [r for m in self._reoffered(listed | set(retry)) for r in self._lookup(m)]
            records = [r for r in again if self._wanted(r) or _renamed(r)] + records
        fresh = [r.model_copy(update={"attempt": retry.get(r.id, 0)}) for r in records
                 if done.get(r.id) != r.revision]
        if self.config.limit:
            fresh = fresh[: self.config.limit]
        new = len(fresh)
        if self.config.use_queue and not self.config.model_ids:
            fresh, taken, waiting = self._budget(fresh)
        else:
            taken, waiting = sum(r.status == ModelStatus.discovered for r in fresh), 0
        fresh = self._copies(fresh)
        self.last_poll = PollReport(poll_id, started, utcnow(), error is None, error, new, taken, waiting)
        return fresh

    def _copies(self, records: list[ModelRecord]) -> list[ModelRecord]:
        """Exact copies: when the index holds models with known weight hashes, each model going
        to probing gets its weight files' hashes (one ``model_info`` with file metadata when the
        record lacks them), and one whose hashes equal an indexed model's (or an earlier
        upload's in this batch) is marked ``copy_of`` it: the probe step then neither downloads
        nor probes it, and the writer gives it that model's alleles (a leaf at distance 0)."""
        from indexer.adapters.catalog import open_read_only
        from indexer.adapters.hub.client import HubError
        from indexer.adapters.hub.watcher import weight_hashes

        todo = [i for i, r in enumerate(records) if r.status == ModelStatus.discovered and not r.copy_of]
        if not todo:
            return records
        known: dict[tuple[str, ...], str] = {}
        self._revisions: dict[str, str] = {}  # an indexed model's revision, for its tokenizer files
        try:
            con, _ = open_read_only(self.config.catalog)
        except PhylolmError:
            con = None
        if con is not None:
            try:
                for mid, rev, hashes in con.execute(
                        """select id, revision, weight_hashes from models where status = 'indexed' and copy_of is null
                           and len(weight_hashes) > 0 order by created_at nulls last, id""").fetchall():
                    known.setdefault(tuple(hashes), mid)
                    self._revisions[mid] = rev
            finally:
                con.close()
        if not known:
            # Nothing to be a copy of: spare the request. Probed models get their hashes from
            # the verified download instead (``ProbeStep``).
            return records
        out = list(records)
        for i in todo:
            r = out[i]
            hashes = r.weight_hashes
            if not hashes:
                try:
                    hashes = weight_hashes(self.client.model_info(r.id, r.revision, files_metadata=True))
                except HubError as e:  # the probe step meets the same Hub: it records the error
                    log.info("weight hashes of %s not read (%s); probed without the copy check", r.id, e.reason)
                    continue
            twin = known.get(hashes) if hashes else None
            if twin is not None and twin != r.id and not self._same_tokenizer(r, twin):
                log.info("%s has the weight files of %s but another tokenizer: probed", r.id, twin)
                twin = None
            if twin is not None and twin != r.id:
                log.info("%s has the weight files of %s: recorded as an exact copy, not downloaded", r.id, twin)
                out[i] = r.model_copy(update={"weight_hashes": hashes, "copy_of": twin})
            else:
                out[i] = r.model_copy(update={"weight_hashes": hashes})
                if hashes:
                    known.setdefault(hashes, r.id)
                    self._revisions.setdefault(r.id, r.revision)
        return out

    def _budget(self, fresh: list[ModelRecord]) -> tuple[list[ModelRecord], int, int]:
        """The cycle's probe budget: of the new candidates and the queue, the best ``n`` (by
        ``queue_order``) go to probing; new candidates beyond it are recorded ``queued`` with
        their priority, and queued models whose priority changed are recorded again.
        Returns (records, taken, left waiting)."""
        from indexer.app.probe_queue import budget_models, order, priority

        queued, indexed, rate = self.queue_state()
        n = budget_models(self.config.probe_budget, self.config.budget_seconds, rate)
        if n is None and not queued:
            return fresh, sum(r.status == ModelStatus.discovered for r in fresh), 0
        new_ids = {r.id for r in fresh}
        stored = {r.id: r.priority for r in queued}
        candidates = [r for r in fresh if r.status == ModelStatus.discovered]
        candidates += [r for r in queued if r.id not in new_ids]
        now = utcnow()
        scored = [r.model_copy(update={"priority": priority(r, self.weights, indexed, now),
                                       "status": ModelStatus.discovered, "reason": None}) for r in candidates]
        ranked = order(scored, self.config.queue_order)
        take = ranked if n is None else ranked[:n]
        wait = [] if n is None else ranked[n:]
        out = [r for r in fresh if r.status != ModelStatus.discovered]  # skipped, failed: recorded as they are
        out += take
        out += [r.model_copy(update={"status": ModelStatus.queued,
                                     "reason": f"waiting for a cycle's probe budget ({self.config.queue_order} order)"})
                for r in wait if r.id not in stored or stored[r.id] != r.priority]
        if wait:
            log.warning("probe budget: %d of %d candidates this cycle, %d queued for later cycles",
                        len(take), len(ranked), len(wait))
        # In upload order, whatever the rank: the writer moves the watermark model by model, so
        # what it has applied must always be everything up to the watermark (a crash then
        # loses nothing).
        far = datetime.max.replace(tzinfo=timezone.utc)
        out.sort(key=lambda r: (r.created_at or far, r.id))
        return out, len(take), len(wait)

    def _reoffered(self, listed: set[str]) -> list[str]:
        """Deferred models (older than the watermark, so not listed by time) whose method the
        running backend can run: asked for by id, screened again, and probed this cycle."""
        methods = self.watcher.policy.quant_methods
        if not methods:
            return []
        out = []
        for model_id, reason in sorted(getattr(self, "deferred", {}).items()):
            method = (reason or "").rpartition(": ")[2]  # "needs a GPU backend: gptq" -> gptq
            if model_id not in listed and ("*" in methods or method in methods):
                out.append(model_id)
        if out:
            log.info("%d deferred models re-offered: the %s backend runs their quantization", len(out),
                     self.config.backend)
        return out

    def _same_tokenizer(self, record: ModelRecord, twin: str) -> bool:
        """Whether a weight-identical upload also has its twin's tokenizer files (same git blob
        ids): a probe reads tokens, so another tokenizer makes another model. Asked only when
        the weights match (rare): two ``model_info`` requests."""
        from indexer.adapters.hub.client import HubError

        names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.tiktoken")

        def blobs(model_id: str, revision: str | None) -> dict[str, object]:
            info = self.client.model_info(model_id, revision, files_metadata=True)
            return {s.rfilename: getattr(s, "blob_id", None) for s in (info.siblings or []) if s.rfilename in names}

        try:
            mine = blobs(record.id, record.revision)
            theirs = blobs(twin, self._revisions.get(twin, record.revision if twin == record.id else None))
        except HubError:
            return False  # not known to be the same: probe it
        return mine == theirs and all(mine.values())  # no tokenizer files on either side: the same

    def _wanted(self, record: ModelRecord) -> bool:
        """A retried model still matches the job's filters (author, --since)."""
        if self.config.author and record.author and record.author != self.config.author:
            return False
        since = self.config.since
        return not (since and record.created_at and record.created_at < since)

    def _lookup(self, model_id: str) -> list[ModelRecord]:
        """A model looked up by id: its record, and, when the Hub answered with a rename (a
        307 to another id), also the old id's row resolved as skipped (renamed), so that no
        later poll looks the old id up again."""
        from indexer.adapters.hub.client import HubError
        from indexer.adapters.hub.watcher import record_of, screen_status

        try:
            info = self.client.model_info(model_id, files_metadata=True)
        except HubError as e:
            return [ModelRecord(id=model_id, status=e.status, reason=e.reason)]
        status, reason = screen_status(info, self.watcher.policy)
        try:
            record = record_of(info, status, reason, self.watcher.policy.max_bytes)
        except ValueError as e:
            return [ModelRecord(id=model_id, status=ModelStatus.failed,
                                reason=f"malformed Hub metadata: {' '.join(str(e).split())[:200]}")]
        if record.id == model_id:
            return [record]
        log.warning("%s was renamed on the Hub to %s; following the new id", model_id, record.id)
        old = record.model_copy(update={"id": model_id, "status": ModelStatus.skipped,
                                        "reason": f"renamed on the Hub to {record.id}"})
        return [old, record]

    def _one(self, model_id: str) -> ModelRecord:
        return self._lookup(model_id)[-1]


# ---- probing --------------------------------------------------------------------------------

class ProbeStep:
    """Download (safetensors and metadata only) and probe one model; failures become records.

    Probes are cached on disk as JSON under ``cache_dir/probes/<probe id>.json`` (the id hashes
    model, revision, genome, parameters and backend), so a job killed after probing and
    restarted does not pay for the same probe twice.
    """

    BREAKER = 3  # identical engine failures in a row that stop the job

    def __init__(self, config: JobConfig):
        from indexer.adapters.hub.client import HubClient
        from indexer.adapters.hub.watcher import Watcher

        self.config = config
        self.genome = config.load_genome()
        client = HubClient(config.hub, timeout=config.hub_timeout)
        self.watcher = Watcher(client, config.screen_policy(client.has_token))
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
        if model.status in (ModelStatus.skipped, ModelStatus.failed, ModelStatus.queued, ModelStatus.deferred):
            return ProbeOutcome(model)  # recorded as it is: refused, failed, or waiting
        if model.copy_of:
            return ProbeOutcome(model)  # an exact copy: the writer reuses its twin's alleles
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
            if path is not None and not model.weight_hashes:
                model = model.model_copy(update={"weight_hashes": snapshot_weight_hashes(Path(path))})
            source = ModelSource(model.id, model.revision, Path(path) if path else None, model.gguf_file)
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


def snapshot_weight_hashes(folder: Path) -> tuple[str, ...]:
    """Sorted sha256 of a downloaded snapshot's root-level safetensors: the LFS sha256 the Hub
    lists (the download was verified against them). The Hub cache names an LFS blob by its
    sha256, so the file is read only when the blob's name is not one."""
    import hashlib

    out = []
    for f in sorted(folder.glob("*.safetensors")):
        blob = Path(os.path.realpath(f)).name
        if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
            out.append(blob)
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return tuple(sorted(out))


def _renamed(record: ModelRecord) -> bool:
    return record.status == ModelStatus.skipped and (record.reason or "").startswith("renamed on the Hub")


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
        from indexer.adapters.catalog import Catalog

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
        """True when this revision needs no more work (see ``indexer.adapters.catalog.DONE_SQL``)."""
        return _first_row(self.catalog.con.execute(
            f"select 1 from models where id = ? and revision = ? and {DONE_SQL}",
            [model.id, model.revision])) is not None

    def apply_queued(self, models: list[ModelRecord]) -> list[UpdateSummary]:
        """Record many models that wait in the queue, in one transaction (a busy day lists
        thousands): those already done are left as they are; the watermark advances past them."""
        if not models:
            return []
        done = {r[0] for r in self.catalog.con.execute(
            f"select id from models where status not in ('queued', 'discovered') and {DONE_SQL}").fetchall()}
        todo = [m for m in models if m.id not in done]
        with self.catalog.transaction():
            self.catalog.upsert_models(todo)
            newest = max((m for m in todo if m.created_at is not None), key=lambda m: m.created_at, default=None)
            if newest is not None:
                self._advance_watermark(newest)
        n = len(self.index.ids)
        return [UpdateSummary(m.id, "unchanged" if m.id in done else m.status.value, m.reason, n_models=n)
                for m in models]

    def apply(self, outcome: ProbeOutcome) -> UpdateSummary:
        model = outcome.model
        if self.is_done(model) and (outcome.probe is None or model.id in self.index.ids):
            m = self.catalog.get_model(model.id)
            return UpdateSummary(model.id, "unchanged", m.reason, n_models=len(self.index.ids))
        reason = None
        if outcome.probe is None and model.copy_of and model.status == ModelStatus.discovered:
            outcome, reason = self._copy(model)
            model = outcome.model
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
                self.catalog.upsert_models([_with(model, ModelStatus.indexed, reason)])
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
        return UpdateSummary(model.id, "indexed", reason, snapshot, len(self.index.ids),
                             tuple((others[i], float(dist[i])) for i in order),
                             tuple(result.timings_ms.items()), bool(result.rebuilt))

    def _copy(self, model: ModelRecord) -> tuple[ProbeOutcome, str | None]:
        """An exact copy's outcome: its twin's alleles as a probe of the copy (no download, no
        engine; the backend version says whose they are), or ``failed`` when the twin has no
        probe in this index (then a later poll looks at it again)."""
        twin = model.copy_of
        row = _first_row(self.catalog.con.execute(
            """select p.probe_id, p.backend_version from models m
               join probes p on p.model_id = m.id and p.revision = m.revision
               where m.id = ? and m.status = 'indexed' and p.genome_hash = ? and p.params_hash = ? and p.backend = ?""",
            [twin, self.genome.hash, self.config.params.digest(), self.config.backend]))
        if row is None or twin not in self.index.ids:
            return ProbeOutcome(_with(model.model_copy(update={"copy_of": None}), ModelStatus.failed,
                                      f"identical weights to {twin}, which has no probe in this index yet")), None
        alleles = self.catalog.load_alleles([row[0]], len(self.genome))[row[0]]
        probe = ProbeRecord(probe_id=probe_id_for(model, self.config, self.genome.hash), model_id=model.id,
                            revision=model.revision, genome_hash=self.genome.hash, backend=self.config.backend,
                            backend_version=f"{row[1]} (alleles of {twin}: identical weights)",
                            params=self.config.params, alleles=alleles, seconds=0.0, started_at=utcnow())
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
        current = self.catalog.get_meta("watermark")
        stamp = model.created_at.astimezone(timezone.utc).isoformat()
        if current is None or stamp > current:
            self.catalog.set_meta("watermark", stamp)

    def publish(self) -> None:
        """Refresh the read-only snapshot and, if configured, the publish folder."""
        self.catalog.publish_snapshot()
        failpoint("mid_publish")
        if self.config.publish_dir is not None:
            from indexer.adapters.publish import export

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
    from indexer.core.phylo_index import PhyloIndex

    ids, counts = writer._indexed_alleles()
    latest = writer.catalog.latest_tree(writer.genome.hash)
    return PhyloIndex.from_state(ids, counts, latest[1] if latest else None, genome_hash=writer.genome.hash,
                                 n_samples=writer.config.params.n_samples)


class _Estimator:
    """Refreshes benchmark estimates inside the writer's transaction (see indexer.core.predict),
    keeping the fitted predictors between updates."""

    def __init__(self):
        from indexer.core.predict import EstimateCache

        self.cache = EstimateCache()  # fitted predictors, refit only when the scored set changes

    def refresh(self, catalog, index, snapshot: int, changed: set[str]) -> int:
        from indexer.core import predict

        scores = {(m, b): v for m, b, v in catalog.con.execute(
            "select model_id, benchmark, avg(value) from scores group by 1, 2").fetchall()}
        if not scores:
            return 0
        from indexer.adapters.publish import cv_groups

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
