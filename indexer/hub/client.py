"""The Hub client side: listing pages, model info and snapshot downloads through the real
``huggingface_hub`` client, with bounded retries and no secret ever leaking.

Every call to the Hub goes through ``HubClient._call``: transient failures (HTTP 408/429/5xx,
timeouts, connection resets, malformed JSON) are retried with exponential backoff and full
jitter, honouring ``Retry-After``, for at most ``RetryPolicy.attempts`` attempts; permanent
ones (repository or revision not found, gated) are not. What cannot be done ends as a
``HubError`` carrying the model's status (skipped | failed) and a one-line reason.

The token comes from the environment only (``HF_TOKEN``; never the login file) and is scrubbed
from every message this module produces or passes on.

Downloads are safe by construction: only safetensors, JSON, tokenizer files and the model card
are fetched (never ``*.py``, never pickle), at a pinned commit sha, and every file is checked
against the hashes the Hub lists for that commit, so a repository that changes while it is
being downloaded is detected, never mixed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
from huggingface_hub.utils import tqdm as _hf_tqdm

from indexer.http_retry import retry_after_seconds
from schemas.records import ModelStatus

log = logging.getLogger(__name__)

PUBLIC_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
# What a download may fetch: weights as safetensors, configs, tokenizers, the card.
ALLOW_PATTERNS = ("*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt",
                  "README.md")
# Never fetched, whatever the allow list says: code and pickle-based checkpoints.
DENY_PATTERNS = ("*.py", "*.pyc", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.joblib",
                 "*.npy", "*.h5", "*.msgpack")
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA = re.compile(r"^[0-9a-f]{40}$")
_TOKENISH = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|api_org_[A-Za-z0-9]{8,})\b")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")

T = TypeVar("T")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection / timeout / protocol error classes of whichever HTTP library the installed
    ``huggingface_hub`` uses (httpx2, httpx or requests)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                       ("requests", ("ConnectionError", "Timeout"))):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        errors += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


def env_token(env: str = TOKEN_ENV) -> str | None:
    """The Hub token from the environment, or None. Never read from anywhere else."""
    value = os.environ.get(env, "").strip()
    return value or None


def scrub(text: object, token: str | None = None) -> str:
    """``text`` with the token (given, or from the environment) and anything token-like
    replaced by ``***``; also flattened to one line."""
    s = " ".join(str(text).split())
    for secret in {token, env_token()} - {None}:
        s = s.replace(secret, "***")  # type: ignore[arg-type]
    s = _TOKENISH.sub("***", s)
    return _BEARER.sub(r"\1***", s)


class _ScrubFilter(logging.Filter):
    """Scrubs tokens out of log records of the Hub adapter and of huggingface_hub."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: leave it to logging
            return True
        clean = scrub(msg)
        if clean != " ".join(msg.split()):
            record.msg, record.args = clean, None
        return True


for _name in ("indexer.hub", "huggingface_hub"):
    logging.getLogger(_name).addFilter(_ScrubFilter())


class _QuietBar(_hf_tqdm):
    """Download progress bars, switched off (a scheduled job's logs are not a terminal)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class HubError(Exception):
    """A Hub operation that failed for one model. ``status`` is what the model's record says
    (skipped: refused by policy; failed: an error), ``reason`` a scrubbed one-line reason."""

    def __init__(self, reason: str, *, status: ModelStatus = ModelStatus.failed, transient: bool = False):
        self.reason = scrub(reason)
        self.status = status
        self.transient = transient
        super().__init__(self.reason)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k waits U(0, min(cap, base*2^k)), but at
    least the server's ``Retry-After`` (capped by ``max_retry_after``)."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    max_retry_after: float = 300.0
    seed: int | None = None

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.cap, self.base * (2 ** attempt)))
        if retry_after is not None:
            return max(min(retry_after, self.max_retry_after), backoff)
        return backoff


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return retry_after_seconds(headers.get("Retry-After") if headers is not None else None)


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: 408/429/5xx, transport errors, malformed JSON, snapshot look-up failures."""
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        return False
    if isinstance(exc, HfHubHTTPError):
        return _status_of(exc) in RETRY_STATUS
    if isinstance(exc, LocalEntryNotFoundError):
        # snapshot_download's answer when the Hub could not be reached (5xx, timeout...)
        return True
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return True
    return isinstance(exc, TRANSPORT_ERRORS)


@dataclass
class ListingReport:
    """What one listing did: pages read, items seen, and what went wrong."""

    pages: int = 0
    items: int = 0
    retries: int = 0
    loop_detected: bool = False
    truncated_pages: bool = False  # stopped at max_pages
    truncated: bool = False  # more new models than one poll keeps
    error: str | None = None
    invalid_items: list[str] = field(default_factory=list)


class HubClient:
    """The real ``huggingface_hub`` client for one endpoint, with timeouts and retries.

    ``endpoint``: a Hub URL (default ``HF_ENDPOINT`` or the public Hub). The token is read from
    the environment variable ``token_env`` (``HF_TOKEN``) and nowhere else. ``timeout`` bounds
    each request (seconds); ``retry`` sets the backoff; ``sleep`` is how waiting is done;
    ``progress`` shows download progress bars.
    """

    def __init__(self, endpoint: str | None = None, *, token_env: str = TOKEN_ENV, timeout: float = 10.0,
                 retry: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep,
                 max_workers: int = 4, progress: bool = False):
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or PUBLIC_ENDPOINT).rstrip("/")
        self._token = env_token(token_env)
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep
        self.max_workers = max_workers
        self.progress = progress
        self._rng = random.Random(retry.seed)
        # token=False: never fall back on a token stored by `hf auth login`.
        self.api = HfApi(endpoint=self.endpoint, token=self._token or False,
                         library_name="phylolm-indexer")

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # never shows the token
        return f"HubClient(endpoint={self.endpoint!r}, token={'set' if self._token else 'none'})"

    def scrub(self, text: object) -> str:
        return scrub(text, self._token)

    # -- retries ----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], on_retry: Callable[[], None] | None = None) -> T:
        """``fn()`` with retries on transient errors; permanent errors propagate unchanged."""
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except Exception as exc:  # classified below; nothing is swallowed silently
                if not is_transient(exc):
                    raise
                last = exc
                if attempt + 1 >= self.retry.attempts:
                    break
                wait = self.retry.delay(attempt, _retry_after(exc), self._rng)
                log.warning("%s: %s (attempt %d/%d), retrying in %.2fs", what,
                            self.scrub(_describe(exc)), attempt + 1, self.retry.attempts, wait)
                if on_retry:
                    on_retry()
                self.sleep(wait)
        raise HubError(f"{what}: gave up after {self.retry.attempts} attempts: {_describe(last)}",
                       transient=True) from None

    # -- listing ----------------------------------------------------------------------------

    def iter_listing(self, *, sort: str = "createdAt", author: str | None = None, search: str | None = None,
                     filter: list[str] | None = None, expand: list[str] | None = None,  # noqa: A002
                     page_size: int | None = None, max_pages: int = 1000,
                     report: ListingReport | None = None) -> Iterator[list[dict]]:
        """Pages of raw listing items (``GET /api/models``), newest first for ``createdAt``.

        Follows ``Link: rel="next"``; stops on a link already followed (a loop) or after
        ``max_pages``; retries each page; raises ``HubError`` if a page cannot be had.
        """
        report = report if report is not None else ListingReport()
        params: list[tuple[str, Any]] = [("sort", sort), ("direction", "-1")]
        if author:
            params.append(("author", author))
        if search:
            params.append(("search", search))
        params += [("filter", f) for f in filter or ()]
        params += [("expand", e) for e in expand or ()]
        if page_size:
            params.append(("limit", page_size))
        headers = build_hf_headers(token=self._token or False, library_name="phylolm-indexer")
        url: str | None = f"{self.endpoint}/api/models"
        seen: set[str] = set()
        first = True
        while url is not None:
            if report.pages >= max_pages:
                report.truncated_pages = True
                log.warning("listing: stopped after %d pages", max_pages)
                return
            key = url if not first else url + "?" + json.dumps(params)
            if key in seen:
                report.loop_detected = True
                log.warning("listing: pagination loops back to a page already read; stopping")
                return
            seen.add(key)

            def fetch(url: str = url, first: bool = first) -> tuple[list, str | None]:
                r = get_session().get(url, params=params if first else None, headers=headers,
                                      timeout=self.timeout)
                hf_raise_for_status(r)
                data = r.json()
                if not isinstance(data, list):
                    raise json.JSONDecodeError("listing page is not a JSON list", str(type(data)), 0)
                nxt = r.links.get("next", {}).get("url") if hasattr(r, "links") else None
                return data, nxt

            def count_retry() -> None:
                report.retries += 1

            try:
                page, url = self._call("listing models", fetch, count_retry)
            except HubError:
                raise
            except Exception as exc:  # a permanent HTTP error on the listing itself
                raise HubError(f"listing models: {_describe(exc)}") from None
            first = False
            report.pages += 1
            report.items += len(page)
            yield page

    # -- model info -------------------------------------------------------------------------

    def model_info(self, model_id: str, revision: str | None = None, *, files_metadata: bool = True):
        """``HfApi.model_info`` with retries; ``HubError`` (failed/skipped) if it cannot be had."""
        try:
            return self._call(f"model info {model_id}", lambda: self.api.model_info(
                model_id, revision=revision, files_metadata=files_metadata, timeout=self.timeout))
        except RevisionNotFoundError:
            raise HubError(f"{model_id}: revision {(revision or 'main')[:12]} no longer exists "
                           "(the repository changed since it was listed)") from None
        except RepositoryNotFoundError:
            raise HubError(f"{model_id}: repository not found (deleted or private)") from None
        except HubError:
            raise
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            # huggingface_hub could not build a ModelInfo from what the Hub sent.
            raise HubError(f"{model_id}: malformed Hub metadata (model info): {_describe(exc)}") from None
        except Exception as exc:
            raise HubError(f"model info {model_id}: {_describe(exc)}") from None

    # -- download ---------------------------------------------------------------------------

    def download(self, model_id: str, revision: str, cache_dir: str | os.PathLike, *,
                 max_bytes: int | None = None) -> Path:
        """Snapshot of ``model_id`` at ``revision`` (a commit sha, or a branch resolved to one
        now) into ``cache_dir``; returns the snapshot folder.

        Fetches only ``ALLOW_PATTERNS`` minus ``DENY_PATTERNS``; refuses repositories without
        safetensors weights or larger than ``max_bytes``; checks every file against the sizes
        and hashes listed for the pinned commit. Raises ``HubError`` with the model's status.
        """
        info = self.model_info(model_id, revision, files_metadata=True)
        pinned = info.sha if isinstance(info.sha, str) else None
        if pinned is None or not _SHA.match(pinned):
            raise HubError(f"{model_id}: the Hub gave no commit sha for revision {revision[:12]}")
        if _SHA.match(revision) and pinned != revision:
            raise HubError(f"{model_id}: revision changed (listed {revision[:12]}, now {pinned[:12]})")
        wanted = {s.rfilename: s for s in (info.siblings or []) if _allowed(s.rfilename)}
        if not any(name.endswith(".safetensors") for name in wanted):
            raise HubError(f"{model_id}: no safetensors weights", status=ModelStatus.skipped)
        total = sum(s.size or 0 for s in wanted.values())
        if max_bytes is not None and total > max_bytes:
            raise HubError(f"{model_id}: {total} bytes to download exceeds the budget of {max_bytes}",
                           status=ModelStatus.skipped)
        if _gated(info.gated) and not self.has_token:
            raise HubError(f"{model_id}: gated model and no token ({TOKEN_ENV})", status=ModelStatus.skipped)

        def fetch() -> str:
            return snapshot_download(
                model_id, revision=pinned, cache_dir=str(cache_dir), endpoint=self.endpoint,
                token=self._token or False, allow_patterns=list(ALLOW_PATTERNS),
                ignore_patterns=list(DENY_PATTERNS), etag_timeout=self.timeout,
                max_workers=self.max_workers, library_name="phylolm-indexer",
                tqdm_class=None if self.progress else _QuietBar)

        try:
            folder = Path(self._call(f"download {model_id}", fetch))
        except RevisionNotFoundError:
            raise HubError(f"{model_id}: revision {pinned[:12]} changed during download") from None
        except GatedRepoError:
            raise HubError(f"{model_id}: gated model, access refused", status=ModelStatus.skipped) from None
        except RepositoryNotFoundError:
            raise HubError(f"{model_id}: repository deleted before download") from None
        except HubError:
            raise
        except Exception as exc:
            raise HubError(f"download {model_id}: {_describe(exc)}") from None
        _verify(model_id, pinned, folder, wanted)
        return folder


def _verify(model_id: str, sha: str, folder: Path, wanted: dict) -> None:
    """Every expected file is there with the listed size and hash (sha256 for LFS files,
    git blob sha1 otherwise): proof that the snapshot is exactly commit ``sha``."""
    for name, sibling in wanted.items():
        path = folder / name
        if not path.is_file():
            raise HubError(f"{model_id}@{sha[:12]}: {name} missing after download")
        if sibling.size is not None and path.stat().st_size != sibling.size:
            raise HubError(f"{model_id}@{sha[:12]}: {name} has {path.stat().st_size} bytes, "
                           f"the revision lists {sibling.size} (changed during download?)")
        lfs = getattr(sibling, "lfs", None)
        expected = getattr(lfs, "sha256", None) if lfs is not None else sibling.blob_id
        if not expected:
            continue
        digest = hashlib.sha256() if lfs is not None else hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise HubError(f"{model_id}@{sha[:12]}: {name} does not match the revision's hash "
                           "(changed during download?)")


def _allowed(name: str) -> bool:
    from fnmatch import fnmatch

    return (any(fnmatch(name, p) for p in ALLOW_PATTERNS)
            and not any(fnmatch(name, p) for p in DENY_PATTERNS))


def _gated(value: Any) -> bool:
    return value not in (None, False, "false", "False", "")


def _describe(exc: BaseException) -> str:
    status = _status_of(exc)
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + (f": {text}" if text else "")


@contextlib.contextmanager
def open_hub(hub: str | os.PathLike | None, **server_options: Any) -> Iterator[str]:
    """The endpoint URL for a ``--hub`` value.

    None: ``HF_ENDPOINT`` or the public Hub. A URL (http/https) is used as is. An existing
    directory is served by an in-process ``HubServer`` on loopback for the duration of the
    ``with`` block (``server_options`` go to it). Anything else is a ``PhylolmError``.
    """
    from indexer.errors import PhylolmError

    if hub is None or str(hub) == "":
        yield (os.environ.get("HF_ENDPOINT") or PUBLIC_ENDPOINT).rstrip("/")
        return
    text = str(hub)
    if re.match(r"^https?://", text):
        yield text.rstrip("/")
        return
    path = Path(text).expanduser()
    if not path.is_dir():
        raise PhylolmError(f"--hub {text!r} is neither an http(s) URL nor an existing directory")
    from indexer.hub.server import HubServer

    with HubServer(path, **server_options) as url:
        yield url
