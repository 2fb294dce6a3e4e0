"""Fault injection for the loopback Hub: the failures a real Hub shows, on demand.

A ``FaultPlan`` is a list of ``Fault`` rules. Each rule matches requests by HTTP method and a
regular expression on the URL path, lets ``skip`` matching requests through, then fires on the
next ``times`` matching requests (``times=-1``: forever). The server asks the plan, once per
request, which fault (if any) to inject; the plan counts thread-safely and keeps a log of what
it injected, so tests can check that a fault really happened and what the client did next.

The constructors below name the faults the reliability suite exercises:
``http_error`` (500/502/503...), ``rate_limit`` (429 with Retry-After, or the Hub's RateLimit headers), ``connection_reset``,
``stall`` (answer later than the client's timeout), ``malformed_json``, ``looping_link``
(a pagination ``Link`` that points back to the first page), ``huge_listing`` (a listing that
never ends), ``wrong_types`` / ``missing_fields`` (model metadata with fields of the wrong
type or absent), ``vanish`` (a repository deleted after it was listed) and
``mutate_revision`` (the repository changes while it is being downloaded).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

KINDS = (
    "status", "rate_limit", "reset", "stall", "malformed_json", "looping_link",
    "huge_listing", "wrong_types", "missing_fields", "vanish", "mutate_revision",
)


@dataclass
class Fault:
    """One rule: inject ``kind`` on requests whose path matches ``path`` (a regex, searched)."""

    kind: str
    path: str = ""
    method: str | None = None  # "GET" / "HEAD"; None matches both
    times: int = 1  # how many matching requests are hit; -1 = every one
    skip: int = 0  # matching requests let through before the first hit
    status: int = 503
    retry_after: int = 1  # rate_limit: seconds to wait (Retry-After, or the RateLimit header's t)
    hub_headers: bool = False  # rate_limit: the Hub's RateLimit headers instead of Retry-After
    seconds: float = 5.0  # stall duration
    count: int = 100_000  # huge_listing: number of synthetic entries
    fields: tuple[str, ...] = ("createdAt", "siblings", "safetensors", "tags")
    repo_id: str | None = None  # vanish / mutate_revision: the repository concerned
    _seen: int = field(default=0, repr=False)
    _fired: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        self._rx = re.compile(self.path)

    def _matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and bool(self._rx.search(path))


class FaultPlan:
    """The faults a ``HubServer`` injects; thread-safe, with a log of injections."""

    def __init__(self, *faults: Fault):
        self.faults = list(faults)
        self.log: list[tuple[str, str, str]] = []  # (kind, method, path) of every injection
        self._lock = threading.Lock()

    def take(self, method: str, path: str) -> Fault | None:
        """The fault to inject into this request, or None; counts the request against rules."""
        with self._lock:
            for f in self.faults:
                if not f._matches(method, path):
                    continue
                f._seen += 1
                if f._seen <= f.skip or (f.times >= 0 and f._fired >= f.times):
                    continue
                f._fired += 1
                self.log.append((f.kind, method, path))
                return f
        return None

    def fired(self, kind: str | None = None) -> int:
        """How many injections happened (of ``kind``, or of any kind)."""
        with self._lock:
            return sum(1 for k, _, _ in self.log if kind is None or k == kind)


# -- constructors, one per fault class ------------------------------------------------------

def http_error(status: int = 503, path: str = "", *, times: int = 1, skip: int = 0,
               method: str | None = None) -> Fault:
    """Answer ``status`` (500, 502, 503, ...) with a JSON error body."""
    return Fault("status", path, method, times, skip, status=status)


def rate_limit(retry_after: int = 1, path: str = "", *, times: int = 1, skip: int = 0,
               method: str | None = None, hub_headers: bool = False) -> Fault:
    """Answer 429 Too Many Requests with ``Retry-After: retry_after`` (seconds), or, with
    ``hub_headers``, as the Hub does: ``RateLimit: "api";r=0;t=retry_after`` and no Retry-After."""
    return Fault("rate_limit", path, method, times, skip, status=429, retry_after=retry_after,
                 hub_headers=hub_headers)


def connection_reset(path: str = "", *, times: int = 1, skip: int = 0, method: str | None = None) -> Fault:
    """Close the TCP connection with a reset (RST) before answering."""
    return Fault("reset", path, method, times, skip)


def stall(seconds: float, path: str = "", *, times: int = 1, skip: int = 0,
          method: str | None = None) -> Fault:
    """Wait ``seconds`` before answering (set it beyond the client's timeout)."""
    return Fault("stall", path, method, times, skip, seconds=seconds)


def malformed_json(path: str = "", *, times: int = 1, skip: int = 0) -> Fault:
    """Answer 200 with a truncated JSON body (JSON endpoints only)."""
    return Fault("malformed_json", path, "GET", times, skip)


def looping_link(path: str = r"^/api/models$", *, times: int = -1, skip: int = 0) -> Fault:
    """Listing pages whose ``Link: rel="next"`` points back to the first page, forever."""
    return Fault("looping_link", path, "GET", times, skip)


def huge_listing(count: int = 100_000, path: str = r"^/api/models$", *, times: int = -1,
                 skip: int = 0) -> Fault:
    """A listing of ``count`` synthetic, ever newer models, paginated normally."""
    return Fault("huge_listing", path, "GET", times, skip, count=count)


def wrong_types(fields: tuple[str, ...] = ("createdAt", "siblings", "safetensors", "tags"),
                path: str = "", *, times: int = 1, skip: int = 0) -> Fault:
    """Model metadata whose ``fields`` hold values of the wrong type (in listings: every item)."""
    return Fault("wrong_types", path, "GET", times, skip, fields=tuple(fields))


def missing_fields(fields: tuple[str, ...] = ("createdAt", "siblings", "safetensors"),
                   path: str = "", *, times: int = 1, skip: int = 0) -> Fault:
    """Model metadata without ``fields`` (in listings: every item)."""
    return Fault("missing_fields", path, "GET", times, skip, fields=tuple(fields))


def vanish(repo_id: str, *, skip: int = 0) -> Fault:
    """After ``skip`` requests about ``repo_id``, the repository no longer exists (404)."""
    return Fault("vanish", "^/(api/models/)?" + re.escape(repo_id) + "(/|$)", None, -1, skip,
                 repo_id=repo_id)


def mutate_revision(repo_id: str, *, skip: int = 1) -> Fault:
    """After ``skip`` file downloads from ``repo_id``, change a file of the repository on disk
    (so its commit sha changes in the middle of a snapshot download)."""
    return Fault("mutate_revision", "^/" + re.escape(repo_id) + "/resolve/", "GET", 1, skip,
                 repo_id=repo_id)


# -- what a fault does to an answer -----------------------------------------------------------

def corrupt(item: dict, fault: Fault) -> dict:
    """One model-info dict as a ``wrong_types`` / ``missing_fields`` fault serves it."""
    wrong = {"createdAt": 12345, "siblings": "model.safetensors", "safetensors": {"total": "large"},
             "tags": 7, "id": 42, "sha": ["not", "a", "sha"], "gated": {"maybe": 1},
             "config": "remote", "cardData": ["x"], "pipeline_tag": 3, "author": 5}
    item = dict(item)
    for f in fault.fields:
        if fault.kind == "missing_fields":
            item.pop(f, None)
        else:
            item[f] = wrong.get(f, None)
    return item
