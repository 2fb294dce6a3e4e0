"""The watcher: which models are new on the Hub since a watermark, and which of them to probe.

``Watcher.list_new_models(since)`` pages through the listing newest first (the Hub's order),
stops at the watermark, and yields one ``ModelRecord`` per new model in upload order (oldest
first). Each record is screened from Hub metadata alone, before anything is downloaded
(``screen``): text-generation only, weights within a size budget, no gated model without a
token, no remote code, no pickle-only checkpoint. Refused models come out as ``skipped``
records with the reason; models whose metadata is broken come out as ``failed``. The watcher
never raises for one bad item, and a Hub that cannot be listed ends the poll with no records
and ``report.error`` set (the watermark must then stay where it was).

``Watcher.fetch(record, cache_dir)`` downloads a screened model (safetensors only, pinned to
the listed commit) and never raises either: it returns the record, updated to ``failed`` or
``skipped`` with the reason when the download cannot be done.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from huggingface_hub.hf_api import ModelInfo

from indexer.hub.client import HubClient, HubError, ListingReport, _describe, _gated
from schemas.records import ModelRecord, ModelStatus, check_model_id

log = logging.getLogger(__name__)

# Listing fields the screen needs, asked for in the listing itself (one request per page).
LISTING_EXPAND = ["createdAt", "author", "sha", "gated", "disabled", "private", "pipeline_tag",
                  "library_name", "tags", "cardData", "config", "safetensors", "siblings", "usedStorage"]
TEXT_GENERATION_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class ScreenPolicy:
    """What the watcher lets through to probing.

    ``max_bytes``: budget for the weights (safetensors) of one model, from metadata.
    ``pipeline_tags``: accepted tasks. ``has_token``: whether gated models can be fetched.
    """

    max_bytes: int = 4 * 1024**3
    pipeline_tags: tuple[str, ...] = ("text-generation",)
    has_token: bool = False


def weights_bytes(info: ModelInfo) -> int | None:
    """Bytes of safetensors weights from metadata: parameters x dtype size (exact), else the
    listed sizes of the *.safetensors files; None when the Hub gave neither."""
    st = getattr(info, "safetensors", None)
    params = getattr(st, "parameters", None)
    if isinstance(params, dict) and params:
        try:
            return sum(int(n) * _DTYPE_BYTES.get(str(dtype).upper(), 4) for dtype, n in params.items())
        except (TypeError, ValueError):
            pass
    sizes = [s.size for s in _siblings(info) if s.rfilename.endswith(".safetensors")]
    if sizes and all(isinstance(n, int) for n in sizes):
        return sum(sizes)
    return None


def _siblings(info: ModelInfo) -> list:
    sib = getattr(info, "siblings", None)
    return [s for s in sib if isinstance(getattr(s, "rfilename", None), str)] if isinstance(sib, list) else []


def _config(info: ModelInfo) -> dict:
    cfg = getattr(info, "config", None)
    return cfg if isinstance(cfg, dict) else {}


def _pipeline_tag(info: ModelInfo) -> str | None:
    tag = getattr(info, "pipeline_tag", None)
    if isinstance(tag, str) and tag:
        return tag
    archs = _config(info).get("architectures")
    if isinstance(archs, list) and any(isinstance(a, str) and a.endswith(TEXT_GENERATION_ARCH_SUFFIXES)
                                       for a in archs):
        return "text-generation"
    return None


def screen(info: ModelInfo, policy: ScreenPolicy = ScreenPolicy()) -> tuple[bool, str | None]:
    """Whether to probe a model, decided from Hub metadata before any download: (ok, reason).

    Checks, in order: disabled; task (``policy.pipeline_tags``); gated without a token; remote
    code (``auto_map`` in config, a ``custom_code`` tag, or *.py files); pickle-only weights;
    no safetensors weights; size unknown or over ``policy.max_bytes``. O(files).
    """
    if getattr(info, "disabled", False) is True:
        return False, "disabled on the Hub"
    tag = _pipeline_tag(info)
    if tag not in policy.pipeline_tags:
        return False, f"not {'/'.join(policy.pipeline_tags)} (pipeline_tag={tag})"
    if _gated(getattr(info, "gated", None)) and not policy.has_token:
        return False, "gated"
    files = [s.rfilename for s in _siblings(info)]
    tags = getattr(info, "tags", None)
    if ("auto_map" in _config(info) or (isinstance(tags, list) and "custom_code" in tags)
            or any(f.endswith(".py") for f in files)):
        return False, "remote code"
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    if not has_safetensors and any(f.endswith(PICKLE_SUFFIXES) for f in files):
        return False, "pickle-only checkpoint"
    if not has_safetensors:
        return False, "no safetensors weights" if files else "no file list"
    size = weights_bytes(info)
    if size is None:
        return False, "size unknown before download"
    if size > policy.max_bytes:
        return False, f"too large: {size} bytes of weights > budget {policy.max_bytes}"
    return True, None


def record_of(info: ModelInfo, status: ModelStatus = ModelStatus.discovered,
              reason: str | None = None) -> ModelRecord:
    """The ``ModelRecord`` of a model's Hub metadata (card fields read defensively)."""
    card = getattr(info, "card_data", None)
    card_get = (card.get if hasattr(card, "get") else (lambda k, d=None: d))
    bases = card_get("base_model", None)
    bases = [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []
    base_models = []
    for b in bases:
        try:
            base_models.append(check_model_id(b))
        except ValueError:
            continue
    relation, lic = card_get("base_model_relation", None), card_get("license", None)
    created = getattr(info, "created_at", None)
    sha = getattr(info, "sha", None)
    author = getattr(info, "author", None)
    return ModelRecord(
        id=info.id, revision=sha if isinstance(sha, str) and sha else "main",
        created_at=created if isinstance(created, datetime) else None,
        author=author if isinstance(author, str) else info.id.split("/")[0] if "/" in info.id else None,
        base_models=tuple(base_models),
        base_model_relation=relation if isinstance(relation, str) else None,
        license=lic if isinstance(lic, str) else None,
        pipeline_tag=_pipeline_tag(info), size_bytes=weights_bytes(info), status=status, reason=reason,
    )


def next_watermark(records: Iterable[ModelRecord], since: datetime | None) -> datetime | None:
    """The watermark after a poll: the newest ``created_at`` seen, or ``since`` unchanged."""
    times = [r.created_at for r in records if r.created_at is not None]
    if since is not None:
        times.append(since)
    return max(times) if times else None


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class Watcher:
    """Lists new models through a ``HubClient`` and screens them with a ``ScreenPolicy``.

    One poll keeps at most ``max_items`` new models, the oldest ones (``report.truncated``:
    the rest come in the next polls, as the watermark advances only to what was yielded), and
    reads at most ``max_pages`` pages. A listing that fails, loops, or does not reach the
    watermark within ``max_pages`` yields nothing and sets ``report.error``. With no watermark
    (``since=None``) the listing's end is wherever ``max_pages`` stops it. ``report``
    describes the last poll.
    """

    def __init__(self, client: HubClient, policy: ScreenPolicy | None = None, *, page_size: int | None = None,
                 max_items: int = 10_000, max_pages: int = 1_000):
        self.client = client
        self.policy = policy or ScreenPolicy(has_token=client.has_token)
        self.page_size = page_size
        self.max_items = max_items
        self.max_pages = max_pages
        self.report = ListingReport()

    def list_new_models(self, since: datetime | None, author: str | None = None, limit: int | None = None,
                        search: str | None = None, skip_ids: Iterable[str] = ()) -> Iterator[ModelRecord]:
        """Models created at or after ``since`` (all if None), oldest first, screened.

        ``created_at == since`` is included (uploads in the same instant as the watermark are
        not lost); pass the ids already recorded at the watermark in ``skip_ids``. ``limit``
        keeps the ``limit`` oldest. Never raises for a Hub error: see ``report``.
        """
        since = _aware(since)
        skip = set(skip_ids)
        report = self.report = ListingReport()
        started = time.perf_counter()
        # id -> (created_at, item), newest first as listed; bounded to the `max_items` OLDEST new
        # models (the newest are dropped first), so that a backlog drains over polls in upload
        # order and nothing between the watermark and what is yielded is ever skipped.
        records: OrderedDict[str, tuple[datetime | None, dict]] = OrderedDict()
        reached_end = False
        try:
            for page in self.client.iter_listing(author=author, search=search, expand=LISTING_EXPAND,
                                                 page_size=self.page_size, max_pages=self.max_pages,
                                                 report=report):
                older_seen = False
                for item in page:
                    created = _created(item)
                    if since is not None and created is not None and created < since:
                        older_seen = True
                        continue
                    model_id = item.get("id") if isinstance(item, dict) else None
                    try:
                        check_model_id(model_id)  # type: ignore[arg-type]
                    except ValueError:
                        report.invalid_items.append(self.client.scrub(repr(model_id))[:100])
                        log.warning("listing: item without a valid model id left out: %s",
                                    report.invalid_items[-1])
                        continue
                    if model_id in skip or model_id in records:
                        continue
                    records[model_id] = (created, item)
                    if len(records) > self.max_items:
                        records.popitem(last=False)
                        report.truncated = True
                if older_seen:
                    reached_end = True
                    break
            else:
                reached_end = not (report.loop_detected or report.truncated_pages)
        except HubError as exc:
            report.error = exc.reason
        if report.error is None and report.loop_detected:
            report.error = "the listing's pagination loops"
        if report.error is None and not reached_end and since is not None:
            report.error = f"the listing did not reach the watermark within {self.max_pages} pages"
        if report.error is not None:
            # An incomplete listing yields nothing: yielding its newest part would move the
            # watermark past models not yet seen. The next poll starts from the same watermark.
            log.warning("listing failed, nothing recorded this poll: %s", report.error)
            return
        if report.truncated:
            log.warning("listing: more than %d new models; the %d oldest this poll, the rest next",
                        self.max_items, self.max_items)
        ordered = sorted(records.items(), key=lambda kv: (kv[1][0] is None, kv[1][0] or since, kv[0]))
        if limit is not None:
            ordered = ordered[:limit]
        log.info("listing: %d pages, %d items, %d new models in %.2fs", report.pages, report.items,
                 len(ordered), time.perf_counter() - started)
        for model_id, (_, item) in ordered:
            yield self._screened(model_id, item)

    def _screened(self, model_id: str, item: dict) -> ModelRecord:
        """One listing item -> a screened record; never raises."""
        try:
            info = ModelInfo(**dict(item))
            record_of(info)  # the metadata must make a valid record
        except Exception as exc:
            reason = self.client.scrub(f"malformed Hub metadata: {_describe(exc)}")[:300]
            return ModelRecord(id=model_id, created_at=_created(item), status=ModelStatus.failed, reason=reason)
        if _created(item) is None:
            return record_of(info, ModelStatus.failed, "malformed Hub metadata: createdAt missing or invalid")
        ok, reason = screen(info, self.policy)
        if not ok and reason in ("size unknown before download", "no file list"):
            # The listing lacked sizes or files: ask for the model's info at the listed commit.
            try:
                sha = info.sha if isinstance(info.sha, str) and info.sha else None
                full = self.client.model_info(model_id, sha, files_metadata=True)
                ok, reason = screen(full, self.policy)
                info = full if isinstance(full.created_at, datetime) else info
            except HubError as exc:
                return record_of(info, exc.status, exc.reason)
            except Exception as exc:
                return record_of(info, ModelStatus.failed,
                                 self.client.scrub(f"malformed Hub metadata: {_describe(exc)}")[:300])
        try:
            return record_of(info, ModelStatus.discovered if ok else ModelStatus.skipped, reason)
        except Exception as exc:
            return ModelRecord(id=model_id, status=ModelStatus.failed,
                               reason=self.client.scrub(f"malformed Hub metadata: {_describe(exc)}")[:300])

    def fetch(self, record: ModelRecord, cache_dir: str | Path) -> tuple[ModelRecord, Path | None]:
        """Download a screened model at its listed revision; never raises.

        Returns (record, snapshot folder) or (record with status failed/skipped and the
        reason, None).
        """
        try:
            path = self.client.download(record.id, record.revision, cache_dir, max_bytes=self.policy.max_bytes)
        except HubError as exc:
            return record.model_copy(update={"status": exc.status, "reason": exc.reason}), None
        except Exception as exc:  # a bug or an unforeseen library error: recorded, not raised
            return record.model_copy(update={"status": ModelStatus.failed,
                                             "reason": self.client.scrub(f"download: {_describe(exc)}")[:300]}), None
        return record, path


def _created(item: Any) -> datetime | None:
    value = item.get("createdAt") if isinstance(item, dict) else None
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _aware(dt)
