"""The job as Beam composite transforms: poll → list new models → probe → update index.

The same transforms serve the streaming watch (a ``PeriodicImpulse`` drives the polls) and
the bounded runs (``watch --once``, ``backfill``: one poll). The streaming path uses only
ParDos and stateful DoFns — no GroupByKey, which never fires after an unbounded source on
Beam's in-process runner. Heavy resources (a Hub client, an inference engine, the catalog)
are built in ``setup`` or on first use, once per worker; DoFns carry only their picklable
``JobConfig``, so the pipeline runs unchanged on a cluster runner: the probe step fans out
over workers, and the index update is the one single-writer step (all its elements carry one
key, and it takes the catalog's write lock for each bundle).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms import userstate

from indexer.adapters.catalog import writer_turn
from indexer.app.writer import IndexWriter
from indexer.app.failpoints import failpoint
from indexer.app.job import JobConfig, PollReport, ProbeOutcome, UpdateSummary, this_process
from indexer.app.listing import ListStep
from indexer.app.probing import ProbeStep
from schemas.records import ModelRecord, ModelStatus

log = logging.getLogger("phylolm")
WRITER_KEY = "index"


class TickEveryFn(beam.DoFn):
    """The in-process runner's poll source: one tick now, then one every ``interval`` seconds
    (sleeping in between) until ``stop`` (a Unix time; None runs until the job is stopped).

    On Beam's in-process runner the whole streaming path is fused into one stage, so each
    tick flows through listing, probing and the index update before the next sleep. Beam's
    ``PeriodicImpulse`` does the same job on cluster runners; on the in-process runner it
    costs a third of a core while idle, this costs next to nothing.
    """

    def __init__(self, interval: float, stop: float | None = None):
        self.interval = interval
        self.stop = stop

    def process(self, _impulse):
        while True:
            now = time.time()
            yield now
            if self.stop is not None and now + self.interval >= self.stop:
                return
            time.sleep(self.interval)


class ListNewModelsFn(beam.DoFn):
    """One poll (its start time) → the screened new models, oldest first, then the poll's
    ``PollReport`` (recorded by the writer).

    ``retry_within`` (the streaming watch: half its interval) retries a listing that could not
    complete, with exponential backoff from ``retry_base`` seconds, resuming from its cursor,
    each failed try recorded; 0 (``--once``) leaves it to the scheduler's next run."""

    def __init__(self, config: JobConfig, retry_within: float = 0.0, retry_base: float = 30.0):
        self.config = config
        self.retry_within = retry_within
        self.retry_base = retry_base

    def setup(self) -> None:
        self.step = ListStep(self.config)

    def process(self, poll):
        waited, delay = 0.0, min(self.retry_base, max(self.retry_within / 4, 0.01))
        while True:
            yield from self.step(poll if isinstance(poll, (int, float)) else None)
            report = self.step.last_poll
            if report is not None:
                yield report
            if report is None or report.complete or waited + delay > self.retry_within:
                return
            log.warning("the Hub listing failed (%s); retrying in %.0fs", report.error, delay)
            time.sleep(delay)
            waited += delay
            delay *= 2
            poll = time.time()


class FirstSightFn(beam.DoFn):
    """Passes each (model, revision, attempt) once per job: a model still being probed when the
    next poll lists it again is not probed twice, while a failed one, listed again with its
    attempt count raised, is retried. Keyed state, so it holds across workers."""

    SEEN = userstate.ReadModifyWriteStateSpec("revision", StrUtf8Coder())

    def process(self, keyed, seen=beam.DoFn.StateParam(SEEN)):
        _, record = keyed
        if isinstance(record, PollReport):
            yield record
            return
        # The status is part of a sighting: a model queued by one poll and taken from the
        # queue by a later one passes again.
        sighting = f"{record.revision}#{record.attempt}#{record.status.value}"
        if seen.read() == sighting:
            return
        seen.write(sighting)
        yield record


class ProbeModelsFn(beam.DoFn):
    """Download and probe; the inference engine is built once per worker and reused."""

    def __init__(self, config: JobConfig):
        self.config = config

    def setup(self) -> None:
        self.step = ProbeStep(self.config)

    def process(self, record: ModelRecord):
        if isinstance(record, PollReport):
            yield WRITER_KEY, record
            return
        failpoint("probe")  # the fault suite kills a probing worker here
        yield WRITER_KEY, dataclasses.replace(self.step(record), worker=this_process())

    def teardown(self) -> None:
        step = getattr(self, "step", None)
        if step is not None:
            step.close()


class _CatalogWriterFn(beam.DoFn):
    """What both writers share: each outcome applied in one catalog transaction, then
    published; the catalog opened per bundle under an exclusive file lock (``writer_turn``),
    so two workers of a multi-process or cluster runner never write at once; between bundles
    a worker keeps only its in-memory index, reused when no other worker wrote meanwhile
    (``IndexWriter.reopen``). Publishing (snapshot, export, report) is throttled to once per
    ``publish_every`` seconds within a bundle and always done at its end; within a bundle
    the publish folder is refreshed only within ``export_share`` of the writer's time
    (``IndexWriter.publish``), at its end always."""

    QUEUED_BATCH = 5000

    def __init__(self, config: JobConfig, publish_every: float = 0.0):
        self.config = config
        self.publish_every = publish_every
        self._writer: IndexWriter | None = None  # kept, closed, between bundles

    def start_bundle(self) -> None:
        self._lock = None
        self._last_publish = 0.0
        self._dirty = False
        self._queued: list = []  # models recorded `queued`: written in one transaction, in order

    def _flush_queued(self):
        """Write the buffered queued models (before anything else is applied, so that the
        watermark moves in order); a crash before this loses nothing: they are listed again."""
        if not self._queued:
            return []
        batch, self._queued = self._queued, []
        writer = self._open()
        try:
            summaries = writer.apply_queued(batch)
        except BaseException:
            self._abandon()
            raise
        self._dirty = True
        return summaries

    def _open(self) -> IndexWriter:
        if self._lock is None:
            self._lock = writer_turn(self.config.catalog)
            self._lock.__enter__()
            try:
                if self._writer is None:
                    self._writer = IndexWriter(self.config)
                else:
                    self._writer.reopen()
            except BaseException:
                self._abandon()
                raise
        return self._writer

    def _abandon(self) -> None:
        """After a failure: forget the in-memory state (the next bundle starts from the
        catalog alone), let the file and the bundle lock go."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.catalog.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def _update(self, outcome):
        """Apply one outcome (or poll report); yields the summaries of what was written."""
        if (not isinstance(outcome, PollReport) and outcome.probe is None
                and outcome.model.status == ModelStatus.queued):
            self._queued.append(outcome.model)
            if len(self._queued) >= self.QUEUED_BATCH:
                yield from self._flush_queued()
            return
        yield from self._flush_queued()
        writer = self._open()
        if isinstance(outcome, PollReport):
            try:
                writer.record_poll(outcome)
                self._dirty = True
            except BaseException:
                self._abandon()
                raise
            return
        try:
            summary = writer.apply(outcome)
            self._dirty = True
            if time.monotonic() - self._last_publish >= self.publish_every:
                writer.publish(final=False)  # the publish folder within its share of the time
                self._last_publish = time.monotonic()
                self._dirty = False
        except BaseException:
            self._abandon()
            raise
        yield summary

    def _end_bundle(self) -> list[UpdateSummary]:
        """Write what is buffered, publish if anything changed, let the catalog go."""
        summaries = self._flush_queued()
        if self._lock is not None and self._writer is not None:
            try:
                if self._dirty:
                    self._writer.publish()
                self._writer.close()
            except BaseException:
                self._abandon()
                raise
            self._release()
        return summaries

    def teardown(self) -> None:
        if self._writer is not None:
            self._writer.close()


class UpdateIndexFn(_CatalogWriterFn):
    """The streaming single writer: outcomes arrive one by one, all keyed ``WRITER_KEY``."""

    # Keyed state makes this a stateful DoFn: a runner then processes the elements of one key
    # (all of them carry WRITER_KEY) one at a time, in one place, which is what makes the
    # update the single writer. The value, the key of the last outcome applied, is only a
    # trace; removing the state would let a cluster runner apply outcomes in parallel.
    APPLIED = userstate.ReadModifyWriteStateSpec("last", StrUtf8Coder())

    def process(self, keyed, last=beam.DoFn.StateParam(APPLIED)):
        _, outcome = keyed
        wrote = False
        for summary in self._update(outcome):
            wrote = True
            yield summary
        if wrote and not isinstance(outcome, PollReport) and outcome.model.status != ModelStatus.queued:
            last.write(outcome.key)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for summary in self._end_bundle():
            yield WindowedValue(summary, 0, [GlobalWindow()])


def _oldest_first(outcomes) -> list:
    far = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(outcomes, key=lambda o: (o.model.created_at or far, o.model.id))


class IndexGatheredFn(_CatalogWriterFn):
    """The backfill's single writer: one element, every outcome gathered under ``WRITER_KEY``
    by a GroupByKey, applied oldest upload first within one ``process`` call.

    One element means one call, so the writer is single by construction on any runner, with
    or without keyed state (Beam's DaskRunner has none); everything, the last summaries
    included, is written and yielded inside that call (the DaskRunner drops what a
    ``finish_bundle`` yields). A runner that retries the call after losing its worker finds
    the models already written and leaves them ``unchanged`` (``IndexWriter.apply``). It
    prints the ``[k/N]`` progress lines itself, then one line saying where the probes ran.
    """

    def process(self, keyed):
        _, outcomes = keyed
        outcomes = _oldest_first(outcomes)
        here, done, probed_by = this_process(), 0, {}
        self.start_bundle()  # a retried call starts clean, whatever the runner did before
        try:
            for outcome in outcomes:
                for summary in self._update(outcome):
                    summary = dataclasses.replace(summary, probed_by=outcome.worker, written_by=here)
                    if summary.status != "queued":
                        done += 1
                        print(progress_line(summary, done, len(outcomes)), flush=True)
                    if outcome.probe is not None and outcome.worker:
                        probed_by[outcome.worker] = probed_by.get(outcome.worker, 0) + 1
                    yield summary
            for summary in self._end_bundle():
                yield dataclasses.replace(summary, written_by=here)
        except BaseException:
            self._abandon()
            raise
        if probed_by:
            print(f"probes of {sum(probed_by.values())} model(s) ran in {len(probed_by)} process(es): "
                  + ", ".join(f"{w} ({n})" for w, n in sorted(probed_by.items()))
                  + f"; one writer, {here}", flush=True)


class ProbeAndIndex(beam.PTransform):
    """Listed models → probes (fanned out over workers) → single-writer index updates.

    With ``in_upload_order`` (bounded input only: a backfill) the probes are spread over
    workers by a reshuffle and gathered again onto one key by a GroupByKey; the writer
    (``IndexGatheredFn``) takes that one element and inserts them oldest upload first, so it
    needs no keyed state to be single. A probe finished before a crash is not lost, it sits
    in the probe cache.
    """

    def __init__(self, config: JobConfig, *, publish_every: float = 0.0, in_upload_order: bool = False):
        super().__init__()
        self.config = config
        self.publish_every = publish_every
        self.in_upload_order = in_upload_order

    def expand(self, models):
        if self.in_upload_order:
            models = models | "SpreadOverWorkers" >> beam.Reshuffle()
        outcomes = models | "Probe" >> beam.ParDo(ProbeModelsFn(self.config))
        if self.in_upload_order:
            return (outcomes
                    | "Gather" >> beam.GroupByKey()
                    | "UpdateIndex" >> beam.ParDo(IndexGatheredFn(self.config, self.publish_every)))
        return outcomes | "UpdateIndex" >> beam.ParDo(UpdateIndexFn(self.config, self.publish_every))


class IndexNewModels(beam.PTransform):
    """Polls → new models (each passed once) → probes → single-writer index updates.
    ``retry_within``: see ``ListNewModelsFn``."""

    def __init__(self, config: JobConfig, *, publish_every: float = 0.0, retry_within: float = 0.0):
        super().__init__()
        self.config = config
        self.publish_every = publish_every
        self.retry_within = retry_within

    def expand(self, polls):
        return (polls
                | "ListNewModels" >> beam.ParDo(ListNewModelsFn(self.config, self.retry_within))
                | "KeyByModel" >> beam.Map(lambda m: (m.key if isinstance(m, PollReport) else m.id, m))
                | "FirstSight" >> beam.ParDo(FirstSightFn())
                | "ProbeAndIndex" >> ProbeAndIndex(self.config, publish_every=self.publish_every))


class ReportProgress(beam.DoFn):
    """Prints one line per update (the job's log a user watches); with ``total``, a counter."""

    COUNT = userstate.ReadModifyWriteStateSpec("count", StrUtf8Coder())

    def __init__(self, total: int | None = None):
        self.total = total

    def process(self, keyed, count=beam.DoFn.StateParam(COUNT)):
        _, summary = keyed
        if summary.status == "queued":  # thousands a day: the poll's budget line says how many
            yield summary
            return
        done = int(count.read() or 0) + 1
        count.write(str(done))
        print(progress_line(summary, done, self.total), flush=True)
        yield summary


def progress_line(summary: UpdateSummary, done: int, total: int | None = None) -> str:
    """``[k/N] status model  (tree #s, n models; nearest: ...)``: one update, as the job logs it."""
    near = ", ".join(f"{m} {d:.3f}" for m, d in summary.nearest[:3])
    prefix = f"[{done}/{total}] " if total else ""
    line = f"{prefix}{summary.status:9s} {summary.model_id}"
    if summary.snapshot is not None:
        line += f"  (tree #{summary.snapshot}, {summary.n_models} models; nearest: {near or '-'})"
    elif summary.reason:
        line += f"  ({summary.reason})"
    return line


__all__ = ["TickEveryFn", "IndexNewModels", "ProbeAndIndex", "ReportProgress", "ListNewModelsFn", "ProbeModelsFn", "UpdateIndexFn",
           "IndexGatheredFn", "FirstSightFn", "ProbeOutcome", "WRITER_KEY", "progress_line"]
