"""The listing step: one poll of the Hub, screened, oldest first.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from indexer.errors import PhylolmError
from schemas.records import ModelRecord, ModelStatus
from indexer.app.job import JobConfig, PollReport

log = logging.getLogger("phylolm")


class ListStep:
    """One poll: the models to work on, screened, oldest first.

    What is already done (a final status for the same revision) and the watermark are read
    from the catalog read-only — its published snapshot while the writer holds it — so the
    poll never competes with the writer. The writer re-checks, which makes the pipeline
    exactly-once even when a poll races an update.
    """

    def __init__(self, config: JobConfig):
        from indexer.app.hub import watcher_for
        from indexer.app.probe_queue import PriorityWeights

        self.config = config
        self.watcher = watcher_for(config, resume_listing=True)
        self.client = self.watcher.client
        self.weights = PriorityWeights.parse(config.priority)
        self.last_poll: PollReport | None = None

    def catalog_state(self) -> tuple[dict[str, str], datetime | None, dict[str, int]]:
        """``(done, watermark, retry)``: the revision each finished model is done at, the
        watermark, and the failed attempts of every model that failed but may be retried."""
        from indexer.adapters.catalog import open_read_only

        self.deferred: dict[str, str | None] = {}  # id -> reason of every deferred model
        try:
            reader = open_read_only(self.config.catalog)
        except PhylolmError:
            return {}, None, {}  # no catalog yet: everything is new
        with reader:
            done = reader.done_revisions()
            retry = reader.retry_attempts()
            self.deferred = reader.deferred_reasons()
            wm = reader.get_meta("watermark")
        return done, datetime.fromisoformat(wm) if wm is not None else None, retry

    def queue_state(self) -> tuple[list[ModelRecord], set[str], float | None]:
        """``(queued, indexed, seconds_per_probe)``: the models waiting in the queue, the ids
        already indexed, and the mean probe time over the last day (None: none timed)."""
        from indexer.adapters.catalog import open_read_only

        try:
            reader = open_read_only(self.config.catalog)
        except PhylolmError:
            return [], set(), None
        with reader:
            return reader.queued_models(), reader.indexed_ids(), reader.mean_probe_seconds_last_day()

    def __call__(self, poll: float | None = None) -> list[ModelRecord]:
        """One poll: the records to work on (new models screened, retries, and the cycle's share
        of the queue). ``last_poll`` says whether the listing completed."""
        started = datetime.now(timezone.utc)
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
        self.last_poll = PollReport(poll_id, started, datetime.now(timezone.utc), error is None, error, new, taken, waiting)
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
            reader = open_read_only(self.config.catalog)
        except PhylolmError:
            reader = None
        if reader is not None:
            with reader:
                originals = reader.indexed_weight_hashes()
            for mid, rev, hashes in originals:
                known.setdefault(tuple(hashes), mid)
                self._revisions[mid] = rev
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
        now = datetime.now(timezone.utc)
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


def _renamed(record: ModelRecord) -> bool:
    return record.status == ModelStatus.skipped and (record.reason or "").startswith("renamed on the Hub")

