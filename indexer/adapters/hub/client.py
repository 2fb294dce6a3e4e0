"""The Hub client side: listing pages, model info and snapshot downloads through the real
``huggingface_hub`` client, with bounded retries and no secret ever leaking.

Every call to the Hub goes through ``HubClient._call``: transient failures (HTTP 408/429/5xx,
timeouts, connection resets, malformed JSON) are retried with exponential backoff and full
jitter for at most ``RetryPolicy.attempts`` attempts; permanent ones (repository or revision
not found, gated, a refused request) are not. What cannot be done ends as a ``HubError``
carrying the model's status (skipped | failed) and a one-line reason.

Rate limits as the Hub announces them (hub-docs docs/hub/rate-limits.md): every answer carries
``RateLimit: "api";r=<remaining>;t=<seconds to reset>`` and ``RateLimit-Policy: "fixed
window";"api";q=<quota>;w=<window>``, and a 429 carries no ``Retry-After``. A 429 waits for the
announced reset (``t``; ``Retry-After`` where a proxy sends one instead); and ``RatePacer``
spreads the requests left in a window over the time left once half the quota is used, and
waits for the reset rather than spend the last request, so a long listing does not hit the wall.

The token comes from the environment only (``HF_TOKEN``; never the login file) and is scrubbed
from every message this module produces or passes on.

Downloads are safe by construction: only safetensors, JSON, tokenizer files and the model card
are fetched (never ``*.py``, never pickle), at a pinned commit sha, and every file is checked
against the hashes the Hub lists for that commit, so a repository that changes while it is
being downloaded is detected, never mixed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import quote

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    BadRequestError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import tqdm as _hf_tqdm

from indexer.adapters.http_retry import retry_after_seconds
from indexer.adapters.hub.metadata import file_size, is_gated
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


for _name in ("indexer.adapters.hub", "huggingface_hub"):
    logging.getLogger(_name).addFilter(_ScrubFilter())


class _QuietBar(_hf_tqdm):
    """Download progress bars, switched off (a scheduled job's logs are not a terminal)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class HubError(Exception):
    """A Hub operation that failed for one model. ``status`` is what the model's record says
    (skipped: refused by policy; failed: an error), ``reason`` a scrubbed one-line reason."""

    def __init__(self, reason: str, *, status: ModelStatus = ModelStatus.failed, transient: bool = False,
                 missing: bool = False):
        self.reason = scrub(reason)
        self.status = status
        self.transient = transient
        self.missing = missing  # the Hub answered that the repository does not exist (401/404)
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


_RATELIMIT = re.compile(r'"(?P<bucket>[^"]+)"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)')
_RATELIMIT_POLICY = re.compile(r"q\s*=\s*(?P<q>\d+)\s*;\s*w\s*=\s*(?P<w>\d+)")


@dataclass(frozen=True)
class RateLimit:
    """What a ``RateLimit`` / ``RateLimit-Policy`` header pair says (IETF draft v9, as the Hub
    sends it): ``remaining`` requests in a window that resets in ``reset`` seconds; the policy's
    ``quota`` per ``window`` seconds when given."""

    bucket: str
    remaining: int
    reset: int
    quota: int | None = None
    window: int | None = None


def parse_rate_limit(headers: Mapping[str, str] | None) -> RateLimit | None:
    if headers is None:
        return None
    value = headers.get("RateLimit") or headers.get("ratelimit")
    m = _RATELIMIT.search(value or "")
    if not m:
        return None
    p = _RATELIMIT_POLICY.search(headers.get("RateLimit-Policy") or headers.get("ratelimit-policy") or "")
    return RateLimit(m["bucket"], int(m["r"]), int(m["t"]), int(p["q"]) if p else None, int(p["w"]) if p else None)


def _headers(exc: BaseException):
    return getattr(getattr(exc, "response", None), "headers", None)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asks to wait: the reset of an exhausted RateLimit window (the Hub's
    429), else ``Retry-After``; None when it says neither."""
    headers = _headers(exc)
    if headers is None:
        return None
    rl = parse_rate_limit(headers)
    if rl is not None and rl.remaining == 0 and _status_of(exc) == 429:
        return rl.reset + RatePacer.MARGIN
    return retry_after_seconds(headers.get("Retry-After"))


class RatePacer:
    """Keeps a client inside the Hub's announced window: fed every answer's headers, it says
    how long to wait before the next request of the same bucket.

    Remaining requests <= ``reserve``: wait for the reset. Under half the quota left: spread the
    remaining requests evenly over the time left. Otherwise: no wait. ``waited`` adds up."""

    MARGIN = 0.25  # the server rounds the reset up to whole seconds; this covers clock skew

    def __init__(self, reserve: int = 1):
        self.reserve = reserve
        self.waited = 0.0
        self._state: dict[str, tuple[RateLimit, float]] = {}

    def update(self, headers: Mapping[str, str] | None, bucket: str = "api") -> None:
        rl = parse_rate_limit(headers)
        if rl is not None:
            self._state[bucket] = (rl, time.monotonic())

    def delay(self, bucket: str = "api") -> float:
        if bucket not in self._state:
            return 0.0
        rl, seen = self._state[bucket]
        left = rl.reset - (time.monotonic() - seen)
        if left <= 0:
            return 0.0
        usable = rl.remaining - self.reserve
        if usable <= 0:
            return left + self.MARGIN
        if rl.quota and rl.remaining < rl.quota / 2:
            return left / usable
        return 0.0


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
    """What one listing did: pages read, items seen, and what went wrong. ``next_url`` is the
    page to read next when the listing stopped before its end (the cursor to resume from)."""

    pages: int = 0
    items: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429s met
    waited: float = 0.0  # seconds waited for rate limits (429s and pacing)
    next_url: str | None = None
    loop_detected: bool = False
    truncated_pages: bool = False  # stopped at max_pages
    truncated: bool = False  # more new models than one poll keeps
    error: str | None = None
    invalid_items: list[str] = field(default_factory=list)


class HubClient:
    """The real ``huggingface_hub`` client for one endpoint, with timeouts and retries.

    ``endpoint``: a Hub URL (default ``HF_ENDPOINT`` or the public Hub). The token is read from
    the environment variable ``token_env`` (``HF_TOKEN``) and nowhere else. ``timeout`` bounds
    each request (seconds; the job's default is ``indexer.app.defaults.HUB_TIMEOUT``); ``retry``
    sets the backoff; ``sleep`` is how waiting is done;
    ``progress`` shows download progress bars.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float, token_env: str = TOKEN_ENV,
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
        self.pacer = RatePacer()
        self._headers = build_hf_headers(token=self._token or False, library_name="phylolm-indexer")
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
                limited = _status_of(exc) == 429
                log.warning("%s: %s (attempt %d/%d), retrying in %.2fs%s", what,
                            self.scrub(describe_error(exc)), attempt + 1, self.retry.attempts, wait,
                            " (rate limited: waiting for the window to reset)" if limited else "")
                if on_retry:
                    on_retry(exc, wait)
                self.sleep(wait)
        raise HubError(f"{what}: gave up after {self.retry.attempts} attempts: {describe_error(last)}",
                       transient=True) from None

    def _get(self, url: str, params: Any = None, bucket: str = "api"):
        """One GET through huggingface_hub's session, paced to the announced rate limit; raises
        huggingface_hub's errors for error answers."""
        wait = self.pacer.delay(bucket)
        if wait > 0:
            log.info("rate limit: %.2fs before the next request (window nearly used)", wait)
            self.pacer.waited += wait
            self.sleep(wait)
        r = get_session().get(url, params=params, headers=self._headers, timeout=self.timeout)
        self.pacer.update(r.headers, bucket)
        hf_raise_for_status(r)
        return r

    # -- listing ----------------------------------------------------------------------------

    def iter_listing(self, *, sort: str = "createdAt", author: str | None = None, search: str | None = None,
                     filter: list[str] | None = None, expand: list[str] | None = None,  # noqa: A002
                     page_size: int | None = None, max_pages: int = 1000,
                     report: ListingReport | None = None, start_url: str | None = None) -> Iterator[list[dict]]:
        """Pages of raw listing items (``GET /api/models``), newest first for ``createdAt``.

        Follows ``Link: rel="next"``; stops on a link already followed (a loop) or after
        ``max_pages``; retries each page; raises ``HubError`` if a page cannot be had, with
        ``report.next_url`` the page to resume from. ``start_url``: resume at that page (a
        ``next_url`` of an earlier listing) instead of the first.
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
        url: str | None = start_url or f"{self.endpoint}/api/models"
        seen: set[str] = set()
        first = start_url is None
        while url is not None:
            report.next_url = url
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
                r = self._get(url, params=params if first else None)
                data = r.json()
                if not isinstance(data, list):
                    raise json.JSONDecodeError("listing page is not a JSON list", str(type(data)), 0)
                nxt = r.links.get("next", {}).get("url") if hasattr(r, "links") else None
                return data, nxt

            def count_retry(exc: BaseException, wait: float) -> None:
                report.retries += 1
                if _status_of(exc) == 429:
                    report.rate_limited += 1
                    report.waited += wait

            try:
                page, url = self._call("listing models", fetch, count_retry)
            except HubError:
                raise
            except BadRequestError as exc:  # e.g. an expand value this Hub does not know
                raise HubError(f"listing models: the Hub refused the request: {describe_error(exc)}") from None
            except Exception as exc:  # a permanent HTTP error on the listing itself
                raise HubError(f"listing models: {describe_error(exc)}") from None
            first = False
            report.pages += 1
            report.items += len(page)
            report.next_url = url
            yield page

    # -- model info -------------------------------------------------------------------------

    def model_info(self, model_id: str, revision: str | None = None, *, files_metadata: bool = True):
        """The model's info (``GET /api/models/{id}[/revision/{rev}]``, with ``blobs=true`` for
        file sizes) with retries; ``HubError`` (failed/skipped) if it cannot be had.

        A renamed repository answers 307 to its new id, which is followed: the returned info's
        ``id`` is then the new id (callers compare it with ``model_id``)."""
        url = f"{self.endpoint}/api/models/{model_id}"
        if revision is not None:
            url += f"/revision/{quote(revision, safe='')}"
        params = {"blobs": "true"} if files_metadata else None

        def fetch():
            data = self._get(url, params=params).json()
            if not isinstance(data, dict):
                raise json.JSONDecodeError("model info is not a JSON object", str(type(data)), 0)
            return ModelInfo(**data)

        try:
            return self._call(f"model info {model_id}", fetch)
        except RevisionNotFoundError:
            raise HubError(f"{model_id}: revision {(revision or 'main')[:12]} no longer exists "
                           "(the repository changed since it was listed)") from None
        except GatedRepoError as exc:
            raise _gated_error(model_id, exc, self.has_token) from None
        except (RepositoryNotFoundError, HfHubHTTPError) as exc:
            status = _status_of(exc)
            if isinstance(exc, RepositoryNotFoundError) or status in (401, 404):
                raise HubError(f"{model_id}: repository not found ({status or 404}: deleted, private"
                               + (", or gated and no token)" if status == 401 and not self.has_token else ")"),
                               missing=True) from None
            if status == 400:
                raise HubError(f"model info {model_id}: the Hub refused the request: {describe_error(exc)}") from None
            raise HubError(f"model info {model_id}: {describe_error(exc)}") from None
        except HubError:
            raise
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            # huggingface_hub could not build a ModelInfo from what the Hub sent.
            raise HubError(f"{model_id}: malformed Hub metadata (model info): {describe_error(exc)}") from None
        except Exception as exc:
            raise HubError(f"model info {model_id}: {describe_error(exc)}") from None

    # -- download ---------------------------------------------------------------------------

    def download(self, model_id: str, revision: str, cache_dir: str | os.PathLike, *,
                 max_bytes: int | None = None, gguf_file: str | None = None) -> Path:
        """Snapshot of ``model_id`` at ``revision`` (a commit sha, or a branch resolved to one
        now) into ``cache_dir``; returns the snapshot folder.

        Fetches only ``ALLOW_PATTERNS`` minus ``DENY_PATTERNS``; refuses repositories without
        safetensors weights or larger than ``max_bytes``; checks every file against the sizes
        and hashes listed for the pinned commit. Raises ``HubError`` with the model's status.
        ``gguf_file``: a GGUF-only repository's chosen file, fetched (alone of its weights)
        in place of safetensors.
        """
        info = self.model_info(model_id, revision, files_metadata=True)
        pinned = info.sha if isinstance(info.sha, str) else None
        if pinned is None or not _SHA.match(pinned):
            raise HubError(f"{model_id}: the Hub gave no commit sha for revision {revision[:12]}")
        if _SHA.match(revision) and pinned != revision:
            raise HubError(f"{model_id}: revision changed (listed {revision[:12]}, now {pinned[:12]})")
        if info.id != model_id:
            raise HubError(f"{model_id}: renamed on the Hub to {info.id}")
        # Root-level files only: weights in subfolders (a GGUF repository's `qad/...`, a
        # checkpoint folder) are not this model's, and a loader reads the root.
        wanted = {s.rfilename: s for s in (info.siblings or [])
                  if "/" not in s.rfilename and (_allowed(s.rfilename) or s.rfilename == gguf_file)}
        weights = (gguf_file,) if gguf_file else tuple(n for n in wanted if n.endswith(".safetensors"))
        if gguf_file is not None and (not gguf_file.endswith(".gguf") or gguf_file not in wanted):
            raise HubError(f"{model_id}: no GGUF file {gguf_file!r} at the root", status=ModelStatus.skipped)
        if not weights:
            raise HubError(f"{model_id}: no safetensors weights", status=ModelStatus.skipped)
        if gguf_file:  # GGUF-only: the one chosen file, no safetensors from elsewhere
            wanted = {n: s for n, s in wanted.items() if not n.endswith(".safetensors")}
        total = sum(file_size(wanted[n]) or 0 for n in weights)
        if max_bytes is not None and total > max_bytes:
            raise HubError(f"{model_id}: {total} bytes to download exceeds the budget of {max_bytes}",
                           status=ModelStatus.skipped)
        if is_gated(info.gated) and not self.has_token:
            raise HubError(f"{model_id}: gated model and no token ({TOKEN_ENV})", status=ModelStatus.skipped)

        def fetch() -> str:
            return snapshot_download(
                model_id, revision=pinned, cache_dir=str(cache_dir), endpoint=self.endpoint,
                token=self._token or False, allow_patterns=sorted(wanted),
                ignore_patterns=list(DENY_PATTERNS), etag_timeout=self.timeout,
                max_workers=self.max_workers, library_name="phylolm-indexer",
                tqdm_class=None if self.progress else _QuietBar)

        try:
            folder = Path(self._call(f"download {model_id}", fetch))
        except RevisionNotFoundError:
            raise HubError(f"{model_id}: revision {pinned[:12]} changed during download") from None
        except GatedRepoError as exc:
            raise _gated_error(model_id, exc, self.has_token) from None
        except RepositoryNotFoundError:
            raise HubError(f"{model_id}: repository deleted before download") from None
        except HfHubHTTPError as exc:
            if _status_of(exc) in (401, 404):
                raise HubError(f"{model_id}: repository deleted before download "
                               f"({_status_of(exc)})") from None
            raise HubError(f"download {model_id}: {describe_error(exc)}") from None
        except HubError:
            raise
        except Exception as exc:
            raise HubError(f"download {model_id}: {describe_error(exc)}") from None
        _verify(model_id, pinned, folder, wanted)
        return folder


def _gated_error(model_id: str, exc: BaseException, has_token: bool) -> HubError:
    """401: no token; 403: a token that is not on the repository's access list."""
    if _status_of(exc) == 403 or has_token:
        return HubError(f"{model_id}: gated model, and the token ({TOKEN_ENV}) is not on its access list",
                        status=ModelStatus.skipped)
    return HubError(f"{model_id}: gated model and no token ({TOKEN_ENV})", status=ModelStatus.skipped)


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


def describe_error(exc: BaseException) -> str:
    """An exception in one line for a record or a log: its type, the HTTP status when it has
    one, and its message (cut at 300 characters; not scrubbed: callers scrub)."""
    status = _status_of(exc)
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + (f": {text}" if text else "")
