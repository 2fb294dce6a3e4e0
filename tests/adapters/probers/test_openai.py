"""The OpenAI-compatible prober.

Hosted APIs cannot be reached from here, so the protocol behaviour (n per request, servers
that ignore n, retries on 429/5xx with Retry-After, the API key taken from the environment
and never shown) is tested against a small loopback HTTP server that speaks the completions
and chat protocols with deterministic texts: a stand-in for a hosted API, and said so. The
real thing, `vllm serve` with a zoo model, is in tests/adapters/probers/test_vllm.py.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexer.adapters.genome_files import builtin
from indexer.adapters.probers.base import ModelSource, ProbeError, get_prober
from indexer.adapters.http_retry import retry_after_seconds as _retry_after
from indexer.adapters.probers.openai_backend import OpenAIProber
from schemas.records import ProbeParams

KEY = "sk-test-0123456789abcdef"


class _API(BaseHTTPRequestHandler):
    """A stand-in for a hosted API. Behaviour per server: ``fail_first`` statuses are served
    before succeeding (per request body), ``max_n`` caps the choices returned, ``need_key``
    requires the bearer key."""

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append((self.path, body, self.headers.get("Authorization")))
            pending = srv.fail_first.pop(0) if srv.fail_first else None
        if srv.need_key and self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if pending is not None:
            return self._send(pending, {"error": {"message": "busy"}}, {"Retry-After": "0"})
        n = min(body.get("n", 1), srv.max_n)
        if self.path.endswith("/chat/completions"):
            text = body["messages"][0]["content"]
            choices = [{"index": i, "message": {"role": "assistant", "content": f" chat:{text[:2]}{i % 3}"}}
                       for i in range(n)]
        else:
            text = body["prompt"]
            choices = [{"index": i, "text": f"\n {text[:3]}{i % 2}xyz"} for i in range(n)]
        self._send(200, {"object": "text_completion", "choices": choices})

    def _send(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _API)
    srv.lock, srv.requests, srv.fail_first, srv.max_n, srv.need_key = threading.Lock(), [], [], 1000, False
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_completions_n_per_request_and_alleles(api):
    genome = builtin("math").subset(3)
    prober = get_prober("openai", base_url=api.url, backoff=0.01)
    rec = prober.probe(ModelSource("org/model"), genome, ProbeParams(n_samples=8, seed=5))
    assert len(api.requests) == 3  # one request per gene, all N samples in it
    path, body, auth = api.requests[0]
    assert path == "/v1/completions" and body["n"] == 8 and body["max_tokens"] == 5
    assert body["temperature"] == 0.7 and body["top_p"] == 1.0 and body["model"] == "org/model"
    assert auth is None  # no key in the environment: none sent
    for gene, counts in zip(genome.genes, rec.alleles.counts):
        # "\n {gene[:3]}{0|1}xyz" -> allele " " + gene[:3]: spaces are stripped before newlines
        assert counts == {" " + gene[:3]: 8}
    host = f"127.0.0.1:{api.server_address[1]}"
    assert rec.backend == "openai" and rec.backend_version == f"openai-compatible completions API at {host}"
    seeds = {b["seed"] for _, b, _ in api.requests}
    assert len(seeds) == 3  # each gene its own seed


def test_servers_that_cap_n_are_asked_again(api):
    api.max_n = 3  # the server ignores n beyond 3
    prober = OpenAIProber(base_url=api.url, backoff=0.01)
    rec = prober.probe(ModelSource("m"), builtin("math").subset(2), ProbeParams(n_samples=8))
    assert all(sum(c.values()) == 8 for c in rec.alleles.counts)
    assert len(api.requests) == 2 * 3  # 3 + 3 + 2 per gene
    # and batching of requests when the server takes one sample per request
    api.requests.clear()
    one = OpenAIProber(base_url=api.url, max_n_per_request=1, concurrency=4)
    one.probe(ModelSource("m"), builtin("math").subset(2), ProbeParams(n_samples=5))
    assert len(api.requests) == 10 and all(b["n"] == 1 for _, b, _ in api.requests)


def test_chat_models_get_the_gene_as_the_single_user_message(api):
    genome = builtin("math").subset(2)
    rec = OpenAIProber(base_url=api.url, api="chat").probe(ModelSource("chat-model"), genome,
                                                            ProbeParams(n_samples=6))
    # the genes are asked concurrently: the requests arrive in either order
    assert {path for path, _, _ in api.requests} == {"/v1/chat/completions"}
    messages = [body["messages"] for _, body, _ in api.requests]
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in messages)
    assert sorted(m[0]["content"] for m in messages) == sorted(genome.genes)
    assert sum(rec.alleles.counts[0].values()) == 6


def test_retries_on_429_and_5xx_then_succeeds(api):
    api.fail_first = [429, 503, 502]
    prober = OpenAIProber(base_url=api.url, backoff=0.01, concurrency=1)
    rec = prober.probe(ModelSource("m"), builtin("math").subset(1), ProbeParams(n_samples=4))
    assert sum(rec.alleles.counts[0].values()) == 4
    assert prober.retries == 3 and len(api.requests) == 4


def test_gives_up_after_bounded_attempts(api):
    api.fail_first = [500] * 10
    prober = OpenAIProber(base_url=api.url, backoff=0.01, attempts=3, concurrency=1)
    with pytest.raises(ProbeError, match="after 3 attempts"):
        prober.probe(ModelSource("m"), builtin("math").subset(1), ProbeParams(n_samples=2))
    assert len(api.requests) == 3


def test_key_from_environment_only_and_never_shown(api, monkeypatch):
    api.need_key = True
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProbeError) as err:
        OpenAIProber(base_url=api.url).probe(ModelSource("m"), builtin("math").subset(1), ProbeParams(n_samples=2))
    assert "401" in str(err.value) and "OPENAI_API_KEY" in str(err.value)
    assert not err.value.skip
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prober = OpenAIProber(base_url=api.url)
    rec = prober.probe(ModelSource("m"), builtin("math").subset(1), ProbeParams(n_samples=2))
    assert api.requests[-1][2] == f"Bearer {KEY}"
    assert KEY not in rec.model_dump_json() and KEY not in prober.version()


def test_unreachable_server_is_a_probe_error():
    prober = OpenAIProber(base_url="http://127.0.0.1:9/v1", attempts=2, backoff=0.01, timeout=2)
    with pytest.raises(ProbeError, match="kept failing"):
        prober.probe(ModelSource("m"), builtin("math").subset(1), ProbeParams(n_samples=1))


def test_retry_after_header_forms():
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
