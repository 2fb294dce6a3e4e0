"""The ``openai`` prober: models behind an OpenAI-compatible HTTP API.

Two endpoints, as the paper probed its closed models:

- ``completions`` (``POST {base_url}/completions``): the gene is the raw prompt, exactly as
  the local backends send it (a vLLM server, completion-style hosted models);
- ``chat`` (``POST {base_url}/chat/completions``): chat-only models get the gene as the single
  user message.

Each gene asks for ``n`` samples in one request where the server allows it
(``max_n_per_request``); a server that returns fewer choices than asked (some ignore ``n``) is
asked again for the rest, and ``max_n_per_request=1`` splits every gene into N requests.
Requests run ``concurrency`` at a time. Transient failures (HTTP 408/409/425/429/5xx,
timeouts, refused or reset connections) are retried with exponential backoff and full
jitter, honouring ``Retry-After``; anything else fails the probe with the server's reason.

The API key is read from the environment only (``api_key_env``, default ``OPENAI_API_KEY``;
none is sent when it is unset, as a local server needs none) and never appears in a message.
Standard library HTTP only (``urllib``): no client library to pin.

Cost: G * ceil(N / max_n_per_request) requests, ``concurrency`` in flight.
"""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from indexer.core.alleles import allele_of
from indexer.core.genomes import Genome
from indexer.adapters.http_retry import retry_after_seconds
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError, gene_seed
from schemas.records import AlleleCounts, ProbeParams

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
APIS = ("completions", "chat")


class OpenAIProber(Prober):
    """Probe a model served behind an OpenAI-compatible API (see the module docstring).

    Options: ``base_url`` (default ``$OPENAI_BASE_URL`` or OpenAI's), ``api``
    ("completions" | "chat"), ``served_model`` (the API's model name; default the model
    id), ``api_key_env``, ``max_n_per_request`` (None: all N at once), ``concurrency``,
    ``attempts`` and ``backoff`` (first retry delay, seconds, doubling, capped at
    ``max_backoff``), ``timeout`` (seconds per request), ``send_seed``.
    """

    backend = "openai"

    def __init__(self, base_url: str | None = None, api: str = "completions", served_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_n_per_request: int | None = None,
                 concurrency: int = 8, attempts: int = 6, backoff: float = 1.0, max_backoff: float = 30.0,
                 timeout: float = 120.0, send_seed: bool = True):
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}")
        base = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if urlsplit(base).scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http(s) URL, not {base!r}")
        if max_n_per_request is not None and max_n_per_request < 1:
            raise ValueError("max_n_per_request must be >= 1")
        self.base_url, self.api, self.served_model = base, api, served_model
        self.api_key_env, self.max_n = api_key_env, max_n_per_request
        self.concurrency, self.attempts = max(1, concurrency), max(1, attempts)
        self.backoff, self.max_backoff, self.timeout = backoff, max_backoff, timeout
        self.send_seed = send_seed
        self._rng = random.Random()  # jitter only: never part of what is sampled
        self._lock = threading.Lock()
        self.requests_sent = 0  # counters, for benchmarks and tests
        self.retries = 0

    def version(self) -> str:
        host = urlsplit(self.base_url).netloc
        return f"openai-compatible {self.api} API at {host}"

    def generate(self, model: ModelSource, genome: Genome, params: ProbeParams) -> AlleleCounts:
        name = self.served_model or model.model_id
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            per_gene = list(pool.map(lambda g: self._sample_gene(name, g, genome.genes[g], params),
                                     range(len(genome.genes))))
        return AlleleCounts(genome_hash=genome.hash, n_samples=params.n_samples, counts=tuple(per_gene))

    # -- one gene ------------------------------------------------------------------------
    def _sample_gene(self, name: str, g: int, gene: str, params: ProbeParams) -> dict[str, int]:
        texts: list[str] = []
        request_no = 0
        while len(texts) < params.n_samples:
            want = params.n_samples - len(texts)
            if self.max_n is not None:
                want = min(want, self.max_n)
            got = self._complete(name, gene, want, params, gene_seed(params.seed, g) + 7919 * request_no)
            request_no += 1
            if not got:
                raise ProbeError(f"{name}: the server returned no choices for gene {g}")
            texts.extend(got[:want])
            if request_no > 4 * params.n_samples:  # a server that keeps answering one choice at a time
                raise ProbeError(f"{name}: too many requests for gene {g}")
        counts: dict[str, int] = {}
        for t in texts:
            a = allele_of(t)
            counts[a] = counts.get(a, 0) + 1
        return counts

    def _complete(self, name: str, gene: str, n: int, params: ProbeParams, seed: int) -> list[str]:
        body: dict[str, Any] = {"model": name, "n": n, "temperature": params.temperature,
                                "top_p": params.top_p, "max_tokens": params.max_tokens}
        if self.send_seed:
            body["seed"] = seed % (1 << 31)
        if self.api == "completions":
            body["prompt"] = gene
            answer = self._post("/completions", body)
            choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
            return [str(c.get("text") or "") for c in choices]
        body["messages"] = [{"role": "user", "content": gene}]
        answer = self._post("/chat/completions", body)
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        return [str((c.get("message") or {}).get("content") or "") for c in choices]

    # -- HTTP ----------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "phylolm-indexer"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.base_url + path
        last = ""
        for attempt in range(self.attempts):
            with self._lock:
                self.requests_sent += 1
            retry_after: float | None = None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in RETRY_STATUS:
                    hint = " (check the API key in $" + self.api_key_env + ")" if e.code in (401, 403) else ""
                    raise ProbeError(f"{body['model']}: HTTP {e.code} from the API: {detail}{hint}") from None
                last = f"HTTP {e.code}: {detail}"
                retry_after = retry_after_seconds(e.headers.get("Retry-After"))
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except ValueError as e:  # a body that is not JSON: a proxy's error page, a cut stream
                last = f"malformed response ({e})"
            if attempt + 1 == self.attempts:
                break
            with self._lock:
                self.retries += 1
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * self._rng.random()
            time.sleep(min(self.max_backoff, retry_after) if retry_after is not None else delay)
        raise ProbeError(f"{body['model']}: the API kept failing after {self.attempts} attempts ({last})")


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read(2000).decode("utf-8", "replace")
        obj = json.loads(raw)
        msg = (obj.get("error") or {}).get("message") if isinstance(obj.get("error"), dict) else obj.get("error")
        return " ".join(str(msg or obj.get("message") or raw).split())[:300]
    except (ValueError, AttributeError, OSError):
        return e.reason if isinstance(e.reason, str) else "no detail"
