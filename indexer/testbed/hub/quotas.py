"""The loopback Hub's rate limits: fixed windows per client and bucket, announced as the Hub
announces them.

Buckets: ``api`` for ``/api/...``, ``resolvers`` for ``/resolve/`` downloads. A client is its
token, else its address. Every answer carries ``RateLimit: "api";r=<remaining>;t=<seconds to
reset>`` and ``RateLimit-Policy: "fixed window";"api";q=<quota>;w=<window>``; over quota the
server answers 429 with those headers and no ``Retry-After`` (hub-docs docs/hub/rate-limits.md:
IETF draft ratelimit-headers v9, 5-minute windows, anonymous API quota 500; huggingface_hub
``parse_ratelimit_headers``).
"""
from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple

# Anonymous and token quotas per fixed window (hub-docs rate-limits.md, "Rate limit Tiers":
# anonymous 500 API / 3,000 resolver requests, free user 1,000 / 5,000, per 5 minutes).
DEFAULT_RATE_WINDOW = 300.0
DEFAULT_RATE_QUOTAS = {("api", False): 500, ("api", True): 1000,
                       ("resolvers", False): 3000, ("resolvers", True): 5000}


class Rate(NamedTuple):
    """Where one request leaves its client's window: ``remaining`` < 0 when over quota."""

    bucket: str
    remaining: int
    reset: int  # seconds until the window resets
    quota: int
    window: int  # seconds


def bucket_of(path: str) -> str | None:
    """The rate-limit bucket of a request path (None: not rate limited)."""
    return "resolvers" if "/resolve/" in path else "api" if path.startswith("/api/") else None


def quotas_with(overrides: dict | None) -> dict[tuple[str, bool], int]:
    """The Hub's quotas with ``overrides``: by (bucket, with a token), or by bucket for both."""
    quotas = dict(DEFAULT_RATE_QUOTAS)
    for k, v in (overrides or {}).items():
        quotas.update({(k, False): v, (k, True): v} if isinstance(k, str) else {k: v})
    return quotas


def rate_headers(rate: Rate) -> dict[str, str]:
    return {"RateLimit": f'"{rate.bucket}";r={rate.remaining};t={rate.reset}',
            "RateLimit-Policy": f'"fixed window";"{rate.bucket}";q={rate.quota};w={rate.window}'}


class RateWindows:
    """Request counts in fixed windows of ``window`` seconds, per (bucket, client)."""

    def __init__(self, window: float, quotas: dict[tuple[str, bool], int]):
        self.window = window
        self.quotas = quotas
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = {}

    def count(self, bucket: str, who: str, authed: bool) -> Rate | None:
        """Count one request of ``who`` in its window; None when the bucket has no quota."""
        quota = self.quotas.get((bucket, authed))
        if quota is None:
            return None
        now = time.time()
        window_no = int(now // self.window)
        with self._lock:
            key = (bucket, who, window_no)
            used = self._counts.get(key, 0) + 1
            self._counts[key] = used
            if len(self._counts) > 10_000:  # forget windows gone by
                self._counts = {k: v for k, v in self._counts.items() if k[2] >= window_no}
        reset = max(1, math.ceil((window_no + 1) * self.window - now))
        return Rate(bucket, quota - used, reset, quota, max(1, math.ceil(self.window)))
