"""The loopback Hub's HTTP side: routing, error answers, downloads with byte ranges, renames
answered with redirects, faults injected per request, and ``HubServer``, which serves a
folder from a background thread (see the package's docstring for what is served and how).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from indexer.testbed.hub import api
from indexer.testbed.hub.api import DEFAULT_PAGE_SIZE, HubRequestError, Query
from indexer.testbed.hub.faults import FaultPlan, corrupt
from indexer.testbed.hub.quotas import DEFAULT_RATE_WINDOW, Rate, RateWindows, bucket_of, quotas_with, rate_headers
from indexer.testbed.hub.repos import RepoFolder, RepoState

log = logging.getLogger(__name__)


def _split_path(raw: str) -> list[str]:
    """URL path -> unquoted components; refuses anything that could walk out of a folder."""
    parts = raw.split("/")[1:]
    out = []
    for p in parts:
        c = unquote(p)
        if c in ("", ".", "..") or "/" in c or "\\" in c or "\0" in c:
            raise HubRequestError(400, None, "invalid path")
        out.append(c)
    return out


class _Answered(Exception):
    """The handler has already sent its answer."""


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "phylolm-hub/1"

    # -- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (signature of the base)
        # The request line only (never headers: they carry tokens).
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._send_rate_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        if self._fault is not None and self._fault.kind == "malformed_json":
            body = body[: max(1, len(body) // 2)]
        self._send(200, body, headers=headers)

    def _send_error(self, e: HubRequestError) -> None:
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._send(e.status, json.dumps({"error": e.message}).encode(), headers=headers)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True
        self.wfile = _Sink()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def _send_rate_headers(self) -> None:
        rate = getattr(self, "_rate", None)
        if rate is not None:
            for k, v in rate_headers(rate).items():
                self.send_header(k, v)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self._rate = None
        self._fault = self.server.faults.take(self.command, url.path) if self.server.faults else None
        f = self._fault
        try:
            bucket = bucket_of(url.path)
            if bucket is not None:
                self._rate = self.server.count_request(bucket, self.client_address[0],
                                                       self.headers.get("Authorization"))
                if self._rate is not None and self._rate.remaining < 0:
                    # Over quota: 429 with the RateLimit headers (r=0, t=reset) and no
                    # Retry-After, as the Hub answers (hub-docs rate-limits.md).
                    self._rate = self._rate._replace(remaining=0)
                    self.server.stats["announced_resets"].append(self._rate.reset)
                    self._send(429, json.dumps({"error": "You have exceeded our hourly quotas for action: "
                                                         f"{bucket}. Retry later."}).encode(),
                               headers={"X-Error-Message": "rate limited"})
                    return
            if f is not None:
                if f.kind == "status":
                    raise HubRequestError(f.status, None, f"injected {f.status}")
                if f.kind == "rate_limit":
                    if f.hub_headers:  # the Hub's own way: RateLimit headers, no Retry-After
                        self._rate = Rate("api", 0, f.retry_after, 500, 300)
                        headers = {"X-Error-Message": "rate limited"}
                    else:  # a proxy or mirror's way
                        headers = {"Retry-After": str(f.retry_after), "X-Error-Message": "rate limited"}
                    self._send(429, b'{"error":"rate limited"}', headers=headers)
                    return
                if f.kind == "reset":
                    self._reset()
                    return
                if f.kind == "stall":
                    if self.server.stopping.wait(f.seconds):
                        self._reset()
                        return
                if f.kind == "vanish":
                    raise HubRequestError(404, "RepoNotFound", "Repository not found")
                if f.kind == "mutate_revision" and f.repo_id:
                    self.server.mutate(f.repo_id)
            self._route(url.path, parse_qs(url.query, keep_blank_values=True), url.query)
        except _Answered:
            pass
        except HubRequestError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _redirect_renamed(self, parts: list[str], query: str) -> None:
        """307 to the repository's new id when ``parts`` names an old one (the Hub keeps
        redirecting an old id after a rename, with a relative Location)."""
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            at = 2
        elif len(parts) >= 5 and parts[2] == "resolve":
            at = 0
        else:
            return
        old = f"{parts[at]}/{parts[at + 1]}"
        if self.server.folder.repo_dir(old) is not None:
            return
        new = self.server.folder.aliases().get(old)
        if new is None:
            return
        rest = parts[:at] + new.split("/") + parts[at + 2:]
        location = "/" + "/".join(quote(p, safe="") for p in rest) + (f"?{query}" if query else "")
        self._send(307, json.dumps({"error": "Moved"}).encode(), headers={"Location": location})
        raise _Answered()

    def _route(self, path: str, q: Query, query: str = "") -> None:
        parts = _split_path(path)
        self._redirect_renamed(parts, query)
        if parts[:2] == ["api", "models"]:
            if self.command != "GET":
                raise HubRequestError(405, None, "method not allowed")
            if len(parts) == 2:
                return self._listing(q)
            if len(parts) < 4:
                raise HubRequestError(404, "RepoNotFound", "Repository not found")
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            if not rest:
                return self._info(repo_id, "main", q)
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo_id, rest[1], q)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), q)
            raise HubRequestError(404, None, "not found")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubRequestError(404, None, "not found")

    # -- endpoints --------------------------------------------------------------------------

    def _state_at(self, repo_id: str, revision: str) -> RepoState:
        state = self.server.visible_state(repo_id)
        if state is None:
            if self.server.access(self.headers.get("Authorization")) == "anonymous":
                # The Hub answers an anonymous client 401 with no error code (it will not say
                # whether a private repository exists); huggingface_hub maps it to
                # RepositoryNotFoundError on https endpoints.
                raise HubRequestError(401, None, "Invalid username or password.")
            raise HubRequestError(404, "RepoNotFound", "Repository not found")
        if revision not in ("main", self.server.folder.sha(state)):
            raise HubRequestError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return state

    def _fault_items(self, items: list[dict]) -> list[dict]:
        f = self._fault
        if f is not None and f.kind in ("wrong_types", "missing_fields"):
            return [corrupt(i, f) for i in items]
        return items

    def _info(self, repo_id: str, revision: str, q: Query) -> None:
        state = self._state_at(repo_id, revision)
        fields = api.info_fields(q)
        info = api.model_info(self.server.folder, state, fields, sizes=api.truthy(q.get("blobs")),
                              aliases=self.server.folder.aliases())
        self._send_json(self._fault_items([info])[0])

    def _tree(self, repo_id: str, revision: str, sub: str, q: Query) -> None:
        state = self._state_at(repo_id, revision)
        self._send_json(api.tree(self.server.folder, state, sub, api.truthy(q.get("recursive"))))

    def _resolve(self, repo_id: str, revision: str, rel: str) -> None:
        state = self._state_at(repo_id, revision)
        entry = state.files.get(rel)
        if entry is None:
            raise HubRequestError(404, "EntryNotFound", f"{rel} does not exist on \"{revision}\"")
        if state.gated:
            access = self.server.access(self.headers.get("Authorization"))
            if access == "anonymous":
                raise HubRequestError(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                                        "access to it and be authenticated to access it. Please log in.")
            if access != "granted":
                raise HubRequestError(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not "
                                                        "in the authorized list.")
        sha256, blob = self.server.folder.hashes.get(entry)
        if self.command == "GET":  # a HEAD only asks for metadata; tests count real downloads
            self.server.stats["downloads"].append((repo_id, rel))
        size = entry.size
        etag = sha256 if entry.is_lfs else blob
        headers = {"X-Repo-Commit": self.server.folder.sha(state), "ETag": f'"{etag}"',
                   "Accept-Ranges": "bytes"}
        if entry.is_lfs:
            headers.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].partition("-")
            try:
                start = int(a) if a else max(0, size - int(b))
                end = min(int(b), size - 1) if (a and b) else size - 1
            except ValueError:
                raise HubRequestError(416, None, "bad range") from None
            if start > end or start >= size:
                self._send(416, b"", headers={"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        for k, v in headers.items():
            self.send_header(k, v)
        self._send_rate_headers()
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(entry.path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(1 << 20, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _listing(self, q: Query) -> None:
        f = self._fault
        if f is not None and f.kind == "huge_listing":
            items, after = api.synthetic_listing_page(f.count, q, self.server.page_size, time.time())
        else:
            items, after = api.listing_page(self.server.folder, self.server.visible_states(), q,
                                            self.server.page_size, self._fault_items)
            self.server.stats["listing_requests"] += 1
            self.server.stats["listing_items"] += len(items)
        headers = {}
        if f is not None and f.kind == "looping_link":
            # The "next" page is the first page, again.
            headers["Link"] = f'<{self._self_url(q, None)}>; rel="next"'
        elif after is not None:
            headers["Link"] = f'<{self._self_url(q, api.encode_cursor(after))}>; rel="next"'
        self._send_json(items, headers)

    def _self_url(self, q: Query, cursor: str | None) -> str:
        params = [(k, v) for k, vs in q.items() if k != "cursor" for v in vs]
        if cursor:
            params.append(("cursor", cursor))
        return f"{self.server.base_url}/api/models" + ("?" + urlencode(params) if params else "")


class _Sink:
    """Where a handler writes after its connection was reset: nowhere."""

    closed = True

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], folder: RepoFolder, *, faults: FaultPlan | None,
                 page_size: int, tokens: frozenset[str] | None,
                 created_before: Callable[[], datetime | None] | None,
                 rate_window: float | None, rate_quotas: dict):
        super().__init__(addr, _Handler)
        self.folder = folder
        self.faults = faults
        self.page_size = page_size
        self.tokens = tokens
        self.created_before = created_before
        self.rates = RateWindows(rate_window, rate_quotas) if rate_window is not None else None
        self.stats: dict[str, Any] = {"listing_requests": 0, "listing_items": 0, "rate_limited": 0,
                                      "announced_resets": [], "downloads": []}
        self._stats_lock = threading.Lock()
        self.stopping = threading.Event()
        host, port = self.server_address[:2]
        self.base_url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def _visible(self, s: RepoState) -> bool:
        cutoff = self.created_before() if self.created_before else None
        return cutoff is None or s.created_at <= cutoff

    def visible_states(self) -> list[RepoState]:
        return [s for s in self.folder.states() if self._visible(s)]

    def visible_state(self, repo_id: str) -> RepoState | None:
        s = self.folder.state(repo_id)
        return s if s is not None and self._visible(s) else None

    def access(self, header: str | None) -> str:
        """anonymous (no bearer token) | granted (a token with access: any, or one of
        ``tokens``) | refused (a token not on the list)."""
        if not header or not header.startswith("Bearer ") or len(header) <= 7:
            return "anonymous"
        return "granted" if self.tokens is None or header[7:] in self.tokens else "refused"

    def count_request(self, bucket: str, address: str, auth: str | None) -> Rate | None:
        """Count one request of a client (its token, else its address) in its fixed window;
        None when rate limiting is off."""
        if self.rates is None:
            return None
        authed = self.access(auth) != "anonymous"
        rate = self.rates.count(bucket, auth if authed else address, authed)
        if rate is not None and rate.remaining < 0:
            with self._stats_lock:
                self.stats["rate_limited"] += 1
        return rate

    def mutate(self, repo_id: str) -> None:
        """Change the repository on disk (a new commit): append to its model card."""
        d = self.folder.repo_dir(repo_id)
        if d is None:
            return
        card = d / "README.md"
        with open(card, "a", encoding="utf-8") as fh:
            fh.write(f"\n<!-- revised {time.time_ns()} -->\n")


class HubServer:
    """The Hub-compatible endpoint over ``root``, served from a background thread.

    >>> with HubServer(folder) as url:             # doctest: +SKIP
    ...     HfApi(endpoint=url).list_models()

    ``port=0`` picks a free port. ``faults`` injects failures (see ``indexer.testbed.hub.faults``).
    ``page_size`` is the listing page size when the client gives no ``limit``.
    ``tokens``: bearer tokens on gated repositories' access lists (None: any bearer token);
    another token gets 403 on a gated file. ``created_before``: a callable returning a cutoff;
    repositories created after it are not served (None: everything in the folder is served).
    ``rate_window``: seconds of a fixed rate-limit window (None: no rate limiting);
    ``rate_quotas``: requests per window by (bucket, with a token), the Hub's by default.
    ``stats``: what was served (listing requests and items, 429s, file downloads by (repo, file)), for tests.
    """

    def __init__(self, root: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
                 faults: FaultPlan | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                 tokens: set[str] | None = None,
                 created_before: Callable[[], datetime | None] | None = None,
                 rate_window: float | None = DEFAULT_RATE_WINDOW, rate_quotas: dict | None = None):
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        if rate_window is not None and rate_window <= 0:
            raise ValueError("rate_window must be > 0")
        quotas = quotas_with(rate_quotas)
        self.folder = RepoFolder(root)
        self._server = _Server((host, port), self.folder, faults=faults, page_size=page_size,
                               tokens=frozenset(tokens) if tokens is not None else None,
                               created_before=created_before, rate_window=rate_window, rate_quotas=quotas)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self._server.base_url

    @property
    def faults(self) -> FaultPlan | None:
        return self._server.faults

    @property
    def stats(self) -> dict:
        return self._server.stats

    def start(self) -> str:
        """Serve from a daemon thread; returns the endpoint URL."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"hub-server:{self._server.server_address[1]}", daemon=True)
            self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def stop(self) -> None:
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

