"""A Hub-compatible HTTP endpoint over a folder of model repositories.

The folder holds ``DIR/<owner>/<name>/`` repositories (config.json, *.safetensors, tokenizer
files, a README.md model card with YAML front matter) and optionally a sidecar
``DIR/<owner>/<name>/.hub.json`` ``{"created_at": ISO-8601, "author": str, "gated": bool,
"downloads": int, "likes": int, "renamed_from": [old ids]}`` (never served as a file; without it
``created_at`` is the directory's modification time).

What is served is what is in the folder *at request time*: copying (or symlinking) a
repository into the folder publishes it, removing it deletes it. To publish a repository
atomically, build it under a name starting with ``.`` and rename it into place (names
starting with ``.`` are never served).

Routes, shaped like the public Hub's so that the real ``huggingface_hub`` client works:

- ``GET /api/models`` — listing; ``search``, ``author``, ``filter`` (tags, all must match),
  ``pipeline_tag``, ``sort`` (createdAt | lastModified | id), ``direction`` (-1 newest first,
  the default, or 1), ``limit``, ``full``, ``cardData``, ``config``, ``expand`` (repeatable);
  keyset pagination through a ``Link: <...>; rel="next"`` header carrying a cursor, so a
  repository added while a client pages through never shifts the pages.
- ``GET /api/models/{id}`` and ``/api/models/{id}/revision/{rev}`` — model info.
- ``GET /api/models/{id}/tree/{rev}[/{path}]`` — files, with sizes and LFS sha256.
- ``HEAD|GET /{id}/resolve/{rev}/{path}`` — file download with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``/``X-Linked-Size`` (weights), ``Content-Length``; single byte ranges.

Behaving as the public Hub does (each point says where the behaviour is documented or
recorded, so that the tests built on this server meet what the real client meets):

- Rate limits in fixed windows per client (token, else address) and bucket (``api`` for
  ``/api/...``, ``resolvers`` for ``/resolve/``), announced on every answer by
  ``RateLimit: "api";r=<remaining>;t=<seconds to reset>`` and
  ``RateLimit-Policy: "fixed window";"api";q=<quota>;w=<window>``; over quota, 429 with those
  headers and no ``Retry-After`` (hub-docs docs/hub/rate-limits.md: IETF draft
  ratelimit-headers v9, 5-minute windows, anonymous API quota 500; huggingface_hub
  ``parse_ratelimit_headers``). ``rate_window`` and ``rate_quotas`` shrink them for tests.
- The listing's cursor is on a time-ordered key: (createdAt, ``_id``), where ``_id`` is an
  ObjectId whose first four bytes are the creation time, as the Hub's Mongo ids are.
- ``siblings`` carry sizes, blob ids and LFS sizes only with ``blobs=true`` (what
  ``HfApi.model_info(files_metadata=True)`` sends); listings never carry sizes.
- An ``expand`` value the Hub does not know is a 400 (the set is huggingface_hub's
  ``ExpandModelProperty_T``).
- Unknown repositories: 401 without an error code to an anonymous client, 404 ``RepoNotFound``
  with an accepted token (the Hub hides whether a private repository exists; huggingface_hub's
  ``hf_raise_for_status`` comments on it). Gated files: 401 ``GatedRepo`` without a token,
  403 ``GatedRepo`` for a token not on the repository's list (``tokens``); metadata of a gated
  repository is public.
- Renamed repositories (``renamed_from`` in the sidecar): the old id answers 307 with a
  relative ``Location`` to the new one, as the Hub redirects after a rename.
- Lineage derived by the Hub: ``base_model:<id>`` and ``base_model:<relation>:<id>`` tags and
  the ``baseModels`` expand field ``{"relation", "models": [{"_id", "id"}]}``, with canonical ids
  (renames resolved) and the relation inferred when the card declares none: adapter
  (``adapter_config.json``), quantized (``quantization_config`` or GGUF files), merge (several
  bases), else finetune (hub-docs docs/hub/model-cards.md, "Specifying a base model").
- ``config`` carries ``architectures``, ``model_type``, ``auto_map``, ``quantization_config``
  and a ``tokenizer_config`` with its ``auto_map``; ``custom_code`` is tagged from ``auto_map``
  (a repository that merely ships ``.py`` files is not custom code).

Revisions: the commit sha of a repository is a hash of its content (every served file's path,
size and sha256), so it changes exactly when the files change and two copies of one
repository have the same sha. ``main`` or the current sha are accepted; an older sha is a
``RevisionNotFound`` (the folder keeps no history). Errors carry ``X-Error-Code``
(RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) as the Hub's do.

Safety: request paths are validated component by component (no ``..``, no absolute paths, no
backslashes or NULs) and a file is served only if it is in the repository's file index, which
holds regular files resolving inside the repository's own directory (symlinks pointing out of
it are left out). Binds to loopback by default.

Cost: a request scans the folder (one ``stat`` per file); file hashes are cached by
(path, size, mtime), so content is hashed once per change.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

from indexer.testbed.hub_faults import Fault, FaultPlan
from schemas.records import check_model_id

log = logging.getLogger(__name__)

SIDECAR = ".hub.json"
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000
# Files the Hub stores through LFS: weights and other large binaries.
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf", ".h5", ".msgpack",
                 ".onnx", ".npz", ".model")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_MAX_CARD_BYTES = 1 << 20
_MAX_CONFIG_BYTES = 10 << 20
_MAX_SAFETENSORS_HEADER = 100 << 20
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}

# Every `expand` value the Hub accepts for models (huggingface_hub's ExpandModelProperty_T);
# anything else is a 400, as on the Hub.
KNOWN_EXPAND = frozenset({
    "author", "baseModels", "cardData", "childrenModelCount", "config", "createdAt", "disabled",
    "downloads", "downloadsAllTime", "evalResults", "gated", "gguf", "inference",
    "inferenceProviderMapping", "lastModified", "library_name", "likes", "mask_token", "model-index",
    "pipeline_tag", "private", "resourceGroup", "safetensors", "sha", "siblings", "spaces", "tags",
    "transformersInfo", "trendingScore", "usedStorage", "widgetData"})
# Anonymous and token quotas per fixed window (hub-docs rate-limits.md, "Rate limit Tiers":
# anonymous 500 API / 3,000 resolver requests, free user 1,000 / 5,000, per 5 minutes).
DEFAULT_RATE_WINDOW = 300.0
DEFAULT_RATE_QUOTAS = {("api", False): 500, ("api", True): 1000,
                       ("resolvers", False): 3000, ("resolvers", True): 5000}
# Fields of a listing item without `full`/`expand` (as on the public Hub).
_LIST_FIELDS = {"id", "modelId", "_id", "createdAt", "private", "downloads", "likes", "tags",
                "pipeline_tag", "library_name", "trendingScore"}
_FULL_FIELDS = _LIST_FIELDS | {"author", "sha", "lastModified", "gated", "disabled", "siblings"}


class HubRequestError(Exception):
    """An HTTP error answer: status, Hub error code and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ---------------------------------------------------------------------------------------------
# Repositories on disk
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileEntry:
    rel: str
    path: str  # a path inside the repository's real directory
    size: int
    mtime_ns: int

    @property
    def is_lfs(self) -> bool:
        return self.rel.endswith(_LFS_SUFFIXES) or self.size >= _LFS_MIN_SIZE


@dataclass
class RepoState:
    """Everything the endpoint says about one repository, computed from its folder."""

    repo_id: str
    root: Path
    files: dict[str, FileEntry]
    created_at: datetime
    last_modified: datetime
    author: str
    gated: bool | str
    card: dict
    config: dict
    tokenizer_config: dict = field(default_factory=dict)
    downloads: int = 0
    likes: int = 0
    renamed_from: tuple[str, ...] = ()
    _sha: str | None = field(default=None, repr=False)
    _safetensors: dict | None = field(default=None, repr=False)


class _HashCache:
    """sha256 and git-blob sha1 of file contents, cached by (path, size, mtime, inode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple[str, str]] = {}

    def get(self, entry: FileEntry) -> tuple[str, str]:
        st = os.stat(entry.path)
        key = (entry.path, st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            hit = self._cache.get(key)
        if hit:
            return hit
        sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {st.st_size}\0".encode())
        with open(entry.path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha256.update(chunk)
                blob.update(chunk)
        value = (sha256.hexdigest(), blob.hexdigest())
        with self._lock:
            self._cache[key] = value
        return value


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _valid_id(value: str) -> bool:
    try:
        check_model_id(value)
    except ValueError:
        return False
    return "/" in value


def object_id(state: "RepoState") -> str:
    """A Mongo-style ObjectId: 4 bytes of creation time (seconds), then 8 bytes from the id, so
    that ids sort by upload time as the Hub's do."""
    seconds = max(0, min(int(state.created_at.timestamp()), 0xFFFFFFFF))
    return f"{seconds:08x}" + hashlib.sha1(state.repo_id.encode()).hexdigest()[:16]


def _read_card(path: str) -> dict:
    """YAML front matter of a model card (``---`` ... ``---``), or {}."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(_MAX_CARD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_json(path: str | Path, limit: int) -> dict:
    try:
        if os.stat(path).st_size > limit:
            return {}
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _safetensors_params(path: str) -> dict[str, int]:
    """Parameter count per dtype from a safetensors header (8-byte length + JSON); no tensor read."""
    counts: dict[str, int] = {}
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return counts
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_SAFETENSORS_HEADER:
                return counts
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return counts
    if not isinstance(header, dict):
        return counts
    for name, spec in header.items():
        if name == "__metadata__" or not isinstance(spec, dict):
            continue
        dtype, shape = spec.get("dtype"), spec.get("shape")
        if not isinstance(dtype, str) or not isinstance(shape, list):
            continue
        numel = 1
        for d in shape:
            numel *= int(d)
        counts[dtype] = counts.get(dtype, 0) + numel
    return counts


class RepoFolder:
    """The repositories of a folder, rescanned on every call (cheap: stats only)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a directory: {root}")
        self.hashes = _HashCache()
        self._lock = threading.Lock()
        self._states: dict[str, tuple[tuple, RepoState]] = {}
        self._alias_cache: dict[tuple, tuple[str, ...]] = {}

    def repo_dirs(self) -> dict[str, Path]:
        """repo id -> directory, for every ``owner/name`` directory present now."""
        found: dict[str, Path] = {}
        try:
            owners = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return found
        for owner in owners:
            if owner.name.startswith(".") or not owner.is_dir():
                continue
            try:
                names = sorted(os.scandir(owner.path), key=lambda e: e.name)
            except OSError:
                continue
            for name in names:
                if name.name.startswith(".") or not name.is_dir():
                    continue
                repo_id = f"{owner.name}/{name.name}"
                try:
                    check_model_id(repo_id)
                except ValueError:
                    continue
                found[repo_id] = Path(name.path)
        return found

    def repo_dir(self, repo_id: str) -> Path | None:
        try:
            check_model_id(repo_id)
        except ValueError:
            return None
        if "/" not in repo_id:
            return None
        owner, name = repo_id.split("/")
        if owner.startswith(".") or name.startswith("."):
            return None
        d = self.root / owner / name
        return d if d.is_dir() else None

    def _scan_files(self, directory: Path) -> dict[str, FileEntry]:
        """Served files of a repository: one stat each. Subdirectory links are not followed;
        file links are resolved and kept only if they stay inside the repository's real
        directory."""
        real_root: Path | None = None
        files: dict[str, FileEntry] = {}
        stack = [(str(directory), "")]
        while stack:
            here, prefix = stack.pop()
            try:
                entries = list(os.scandir(here))
            except OSError:
                continue
            for e in entries:
                name = e.name
                if name.startswith(".") and name != ".gitattributes":
                    continue
                rel = prefix + name
                try:
                    if e.is_symlink():
                        real_root = real_root or directory.resolve()
                        real = Path(e.path).resolve(strict=True)
                        if not real.is_relative_to(real_root) or not real.is_file():
                            log.warning("not serving %s: it resolves outside its repository", e.path)
                            continue
                        path, st = str(real), real.stat()
                    elif e.is_dir(follow_symlinks=False):
                        stack.append((e.path, rel + "/"))
                        continue
                    elif e.is_file(follow_symlinks=False):
                        path, st = e.path, e.stat(follow_symlinks=False)
                    else:
                        continue
                except (OSError, RuntimeError):
                    continue
                files[rel] = FileEntry(rel, path, st.st_size, st.st_mtime_ns)
        return dict(sorted(files.items()))

    def state(self, repo_id: str, directory: Path | None = None) -> RepoState | None:
        """The repository's current state (None if it is not in the folder now)."""
        directory = directory or self.repo_dir(repo_id)
        if directory is None:
            return None
        try:
            files = self._scan_files(directory)
            dir_stat = directory.stat()
        except OSError:
            return None
        sidecar_path = directory / SIDECAR
        try:
            sst = sidecar_path.stat()
            side_key: tuple = (sst.st_size, sst.st_mtime_ns)
        except OSError:
            side_key = ()
        key = (tuple((f.rel, f.size, f.mtime_ns) for f in files.values()), side_key, dir_stat.st_mtime_ns)
        with self._lock:
            cached = self._states.get(repo_id)
        if cached and cached[0] == key:
            return cached[1]
        sidecar = _read_json(sidecar_path, 1 << 20) if side_key else {}
        card = _read_card(files["README.md"].path) if "README.md" in files else {}
        config = _read_json(files["config.json"].path, _MAX_CONFIG_BYTES) if "config.json" in files else {}
        tok_config = (_read_json(files["tokenizer_config.json"].path, _MAX_CONFIG_BYTES)
                      if "tokenizer_config.json" in files else {})
        created = _parse_time(sidecar.get("created_at")) or datetime.fromtimestamp(
            dir_stat.st_mtime, tz=timezone.utc)
        newest = max([f.mtime_ns for f in files.values()] + [dir_stat.st_mtime_ns])
        gated = sidecar.get("gated", card.get("gated", False))
        if gated is True:
            gated = "auto"
        if not isinstance(gated, (bool, str)):
            gated = False
        author = sidecar.get("author")
        renamed = sidecar.get("renamed_from")
        renamed = [renamed] if isinstance(renamed, str) else renamed if isinstance(renamed, list) else []
        state = RepoState(
            repo_id=repo_id, root=directory, files=files, created_at=created,
            last_modified=datetime.fromtimestamp(newest / 1e9, tz=timezone.utc),
            author=author if isinstance(author, str) and author else repo_id.split("/")[0],
            gated=gated, card=card, config=config, tokenizer_config=tok_config,
            downloads=_count(sidecar.get("downloads")), likes=_count(sidecar.get("likes")),
            renamed_from=tuple(r for r in renamed if isinstance(r, str) and _valid_id(r)),
        )
        with self._lock:
            self._states[repo_id] = (key, state)
        return state

    def states(self) -> list[RepoState]:
        out = []
        for repo_id, d in self.repo_dirs().items():
            s = self.state(repo_id, d)
            if s is not None:
                out.append(s)
        return out

    def aliases(self) -> dict[str, str]:
        """Old id -> current id, from the sidecars' ``renamed_from`` (one stat per repository,
        a sidecar read only when it changed)."""
        found: dict[str, str] = {}
        for repo_id, d in self.repo_dirs().items():
            path = d / SIDECAR
            try:
                st = path.stat()
            except OSError:
                continue
            key = (str(path), st.st_size, st.st_mtime_ns)
            with self._lock:
                olds = self._alias_cache.get(key)
            if olds is None:
                data = _read_json(path, 1 << 20)
                raw = data.get("renamed_from")
                raw = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
                olds = tuple(r for r in raw if isinstance(r, str) and _valid_id(r))
                with self._lock:
                    self._alias_cache[key] = olds
            for old in olds:
                found.setdefault(old, repo_id)
        return found

    # -- derived metadata -------------------------------------------------------------------

    def sha(self, state: RepoState) -> str:
        if state._sha is None:
            h = hashlib.sha1()
            for rel, entry in sorted(state.files.items()):
                h.update(f"{rel}\0{entry.size}\0{self.hashes.get(entry)[0]}\n".encode())
            state._sha = h.hexdigest()
        return state._sha

    def safetensors(self, state: RepoState) -> dict | None:
        """Parameters per dtype, as the Hub reports them: of a quantized checkpoint, the packed
        integer tensors count the logical parameters they hold (a GPTQ 4-bit ``I32`` element is
        8 parameters, a bitsandbytes 4-bit ``U8`` element 2), which is why ``parameters`` x
        dtype size overstates such a repository's bytes several times over."""
        if state._safetensors is None:
            from indexer.adapters.hub.watcher import _PACKED_DTYPES, quantization_bits

            bits = quantization_bits(state.config)
            params: dict[str, int] = {}
            for rel, entry in state.files.items():
                if rel.endswith(".safetensors"):
                    for dtype, n in _safetensors_params(entry.path).items():
                        if bits is not None and dtype in _PACKED_DTYPES:
                            n = int(n * _DTYPE_BYTES[dtype] * 8 / bits)
                        params[dtype] = params.get(dtype, 0) + n
            state._safetensors = {"parameters": params, "total": sum(params.values())} if params else {}
        return state._safetensors or None

    @staticmethod
    def pipeline_tag(state: RepoState) -> str | None:
        tag = state.card.get("pipeline_tag")
        if isinstance(tag, str):
            return tag
        archs = state.config.get("architectures")
        if isinstance(archs, list) and any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel"))
                                           for a in archs):
            return "text-generation"
        return None

    @staticmethod
    def library_name(state: RepoState) -> str | None:
        lib = state.card.get("library_name")
        if isinstance(lib, str):
            return lib
        return "transformers" if "config.json" in state.files else None

    def tags(self, state: RepoState, aliases: dict[str, str] | None = None) -> list[str]:
        tags: list[str] = []

        def add(t: Any) -> None:
            if isinstance(t, str) and t and t not in tags:
                tags.append(t)

        add(self.library_name(state))
        if any(r.endswith(".safetensors") for r in state.files):
            add("safetensors")
        add(state.config.get("model_type"))
        add(self.pipeline_tag(state))
        card_tags = state.card.get("tags")
        for t in card_tags if isinstance(card_tags, list) else [card_tags]:
            add(t)
        # The Hub tags custom_code from auto_map (the code a loader would run), not from
        # whatever .py files a repository happens to ship.
        if "auto_map" in state.config or "auto_map" in state.tokenizer_config:
            add("custom_code")
        bases, relation = self.lineage(state, aliases)
        for b in bases:
            add(f"base_model:{b}")
            add(f"base_model:{relation}:{b}")
        lic = state.card.get("license")
        if isinstance(lic, str):
            add(f"license:{lic}")
        return tags

    @staticmethod
    def lineage(state: RepoState, aliases: dict[str, str] | None = None) -> tuple[list[str], str | None]:
        """The base models as the Hub derives them: the card's ``base_model`` ids made canonical
        (renames followed) and the relation, the card's if it declares a known one, else
        inferred: adapter, quantized, merge (several bases), finetune."""
        raw = state.card.get("base_model")
        raw = raw if isinstance(raw, list) else [raw]
        bases: list[str] = []
        for b in raw:
            if isinstance(b, str) and _valid_id(b):
                b = (aliases or {}).get(b, b)
                if b not in bases:
                    bases.append(b)
        if not bases:
            return [], None
        declared = state.card.get("base_model_relation")
        if declared in ("adapter", "merge", "quantized", "finetune"):
            return bases, declared
        if "adapter_config.json" in state.files:
            return bases, "adapter"
        if "quantization_config" in state.config or any(r.endswith(".gguf") for r in state.files):
            return bases, "quantized"
        return bases, "merge" if len(bases) > 1 else "finetune"

    def siblings(self, state: RepoState, sizes: bool) -> list[dict]:
        out = []
        for rel, entry in sorted(state.files.items()):
            item: dict[str, Any] = {"rfilename": rel}
            if sizes:
                sha256, blob = self.hashes.get(entry)
                item.update(size=entry.size, blobId=blob)
                if entry.is_lfs:
                    item["lfs"] = {"size": entry.size, "sha256": sha256, "pointerSize": 134}
            out.append(item)
        return out

    def info(self, state: RepoState, fields: set[str] | None, *, sizes: bool = False,
             aliases: dict[str, str] | None = None) -> dict:
        """The model-info JSON with ``fields`` (None: all of them)."""
        want = (lambda f: True) if fields is None else (lambda f: f in fields)
        d: dict[str, Any] = {"_id": object_id(state), "id": state.repo_id}
        if want("modelId"):
            d["modelId"] = state.repo_id
        if want("author"):
            d["author"] = state.author
        if want("sha"):
            d["sha"] = self.sha(state)
        if want("createdAt"):
            d["createdAt"] = _iso(state.created_at)
        if want("lastModified"):
            d["lastModified"] = _iso(state.last_modified)
        if want("private"):
            d["private"] = False
        if want("gated"):
            d["gated"] = state.gated
        if want("disabled"):
            d["disabled"] = False
        if want("downloads"):
            d["downloads"] = state.downloads
        if want("likes"):
            d["likes"] = state.likes
        if want("trendingScore"):
            d["trendingScore"] = 0
        if want("library_name"):
            d["library_name"] = self.library_name(state)
        if want("pipeline_tag"):
            d["pipeline_tag"] = self.pipeline_tag(state)
        if want("tags"):
            d["tags"] = self.tags(state, aliases)
        if want("baseModels"):
            bases, relation = self.lineage(state, aliases)
            if bases:
                d["baseModels"] = {"relation": relation, "models": [
                    {"_id": hashlib.sha1(b.encode()).hexdigest()[:24], "id": b} for b in bases]}
        if want("cardData"):
            d["cardData"] = state.card
        if want("config"):
            cfg = {k: state.config[k] for k in ("architectures", "model_type", "auto_map", "torch_dtype",
                                                "quantization_config") if k in state.config}
            tok = {k: state.tokenizer_config[k] for k in ("auto_map", "chat_template", "eos_token")
                   if k in state.tokenizer_config}
            if tok:
                cfg["tokenizer_config"] = tok
            d["config"] = cfg
        if want("siblings"):
            d["siblings"] = self.siblings(state, sizes)
        if want("safetensors"):
            st = self.safetensors(state)
            if st is not None:
                d["safetensors"] = st
        if want("usedStorage"):
            d["usedStorage"] = sum(f.size for f in state.files.values())
        if want("spaces"):
            d["spaces"] = []
        return d


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes", "on")


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


def _expand(q: dict[str, list[str]]) -> list[str]:
    values = q.get("expand", []) + q.get("expand[]", [])
    unknown = [v for v in values if v not in KNOWN_EXPAND]
    if unknown:
        raise HubRequestError(400, None, f'"expand" must be one of {sorted(KNOWN_EXPAND)}, got {unknown[0]!r}')
    return values


def _encode_cursor(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return tuple(value)
    except ValueError:
        pass
    raise HubRequestError(400, None, "invalid cursor")


def _corrupt(item: dict, fault: Fault) -> dict:
    """Apply a wrong_types / missing_fields fault to one model-info dict."""
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
            bucket, remaining, reset, quota, window = rate
            self.send_header("RateLimit", f'"{bucket}";r={remaining};t={reset}')
            self.send_header("RateLimit-Policy", f'"fixed window";"{bucket}";q={quota};w={window}')

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self._rate = None
        self._fault = self.server.faults.take(self.command, url.path) if self.server.faults else None
        f = self._fault
        try:
            bucket = "resolvers" if "/resolve/" in url.path else "api" if url.path.startswith("/api/") else None
            if bucket is not None:
                self._rate = self.server.count_request(bucket, self.client_address[0],
                                                       self.headers.get("Authorization"))
                if self._rate is not None and self._rate[1] < 0:
                    # Over quota: 429 with the RateLimit headers (r=0, t=reset) and no
                    # Retry-After, as the Hub answers (hub-docs rate-limits.md).
                    self._rate = (self._rate[0], 0, *self._rate[2:])
                    self.server.stats["announced_resets"].append(self._rate[2])
                    self._send(429, json.dumps({"error": "You have exceeded our hourly quotas for action: "
                                                         f"{bucket}. Retry later."}).encode(),
                               headers={"X-Error-Message": "rate limited"})
                    return
            if f is not None:
                if f.kind == "status":
                    raise HubRequestError(f.status, None, f"injected {f.status}")
                if f.kind == "rate_limit":
                    if f.hub_headers:  # the Hub's own way: RateLimit headers, no Retry-After
                        self._rate = ("api", 0, f.retry_after, 500, 300)
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

    def _route(self, path: str, q: dict[str, list[str]], query: str = "") -> None:
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
            return [_corrupt(i, f) for i in items]
        return items

    def _info(self, repo_id: str, revision: str, q: dict[str, list[str]]) -> None:
        state = self._state_at(repo_id, revision)
        expand = _expand(q)
        fields = ({"id", "_id", *expand}) if expand else None
        info = self.server.folder.info(state, fields, sizes=_truthy(q.get("blobs")),
                                       aliases=self.server.folder.aliases())
        self._send_json(self._fault_items([info])[0])

    def _tree(self, repo_id: str, revision: str, sub: str, q: dict[str, list[str]]) -> None:
        state = self._state_at(repo_id, revision)
        recursive = _truthy(q.get("recursive"))
        prefix = sub.rstrip("/") + "/" if sub else ""
        if sub and sub not in state.files and not any(r.startswith(prefix) for r in state.files):
            raise HubRequestError(404, "EntryNotFound", f"{sub} does not exist")
        entries: list[dict] = []
        folders: set[str] = set()
        for rel, entry in sorted(state.files.items()):
            if not rel.startswith(prefix):
                continue
            tail = rel[len(prefix):]
            if "/" in tail and not recursive:
                folders.add(prefix + tail.split("/")[0])
                continue
            if recursive:
                parts = tail.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folders.add(prefix + "/".join(parts[:i]))
            sha256, blob = self.server.folder.hashes.get(entry)
            item: dict[str, Any] = {"type": "file", "oid": blob, "size": entry.size, "path": rel}
            if entry.is_lfs:
                item["lfs"] = {"oid": sha256, "size": entry.size, "pointerSize": 134}
            entries.append(item)
        dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(folders)]
        self._send_json(dirs + entries)

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

    def _listing(self, q: dict[str, list[str]]) -> None:
        f = self._fault
        if f is not None and f.kind == "huge_listing":
            return self._huge_listing(q, f)
        folder = self.server.folder
        search = (q.get("search") or [""])[-1].lower()
        author = (q.get("author") or [None])[-1]
        filters = q.get("filter", []) + q.get("filter[]", [])
        pipeline = (q.get("pipeline_tag") or [None])[-1]
        sort = (q.get("sort") or ["createdAt"])[-1]
        descending = (q.get("direction") or ["-1"])[-1] == "-1"
        try:
            limit = int((q.get("limit") or [0])[-1])
        except ValueError:
            raise HubRequestError(400, None, "limit must be an integer") from None
        page = min(limit or self.server.page_size, MAX_PAGE_SIZE)
        expand = _expand(q)
        if expand:
            fields = {"id", "_id", *expand}
        else:
            fields = set(_FULL_FIELDS if _truthy(q.get("full")) else _LIST_FIELDS)
            if _truthy(q.get("cardData")):
                fields.add("cardData")
            if _truthy(q.get("config")):
                fields.add("config")

        # The cursor is the last item's sort key; for times, (time, ObjectId): time-ordered
        # and unique, so pages neither repeat nor skip when uploads arrive meanwhile.
        def sort_key(s: RepoState) -> tuple[str, str]:
            if sort == "lastModified":
                return (_iso(s.last_modified), object_id(s))
            if sort == "id":
                return (s.repo_id, s.repo_id)
            return (_iso(s.created_at), object_id(s))

        chosen = []
        for s in self.server.visible_states():
            if search and search not in s.repo_id.lower():
                continue
            if author and s.repo_id.split("/")[0] != author and s.author != author:
                continue
            if filters or pipeline:
                tags = set(folder.tags(s))
                if any(t not in tags for t in filters) or (pipeline and folder.pipeline_tag(s) != pipeline):
                    continue
            chosen.append((sort_key(s), s))
        chosen.sort(key=lambda kv: kv[0], reverse=descending)
        cursor = (q.get("cursor") or [None])[-1]
        if cursor:
            after = _decode_cursor(cursor)
            chosen = [kv for kv in chosen if (kv[0] < after if descending else kv[0] > after)]
        batch = chosen[:page]
        aliases = folder.aliases() if fields & {"tags", "baseModels"} else {}
        items = self._fault_items([folder.info(s, fields, aliases=aliases) for _, s in batch])
        self.server.stats["listing_requests"] += 1
        self.server.stats["listing_items"] += len(items)
        headers = {}
        if f is not None and f.kind == "looping_link":
            # The "next" page is the first page, again.
            headers["Link"] = f'<{self._self_url(q, None)}>; rel="next"'
        elif len(chosen) > page and batch:
            headers["Link"] = f'<{self._self_url(q, _encode_cursor(batch[-1][0]))}>; rel="next"'
        self._send_json(items, headers)

    def _huge_listing(self, q: dict[str, list[str]], f: Fault) -> None:
        """``f.count`` synthetic models, newest first, created a second apart up to now."""
        page = min(int((q.get("limit") or [0])[-1] or self.server.page_size), MAX_PAGE_SIZE)
        cursor = (q.get("cursor") or [None])[-1]
        start = int(_decode_cursor(cursor)[1]) if cursor else 0
        now = time.time()
        items = []
        for i in range(start, min(start + page, f.count)):
            created = datetime.fromtimestamp(now + 3600 - i, tz=timezone.utc)
            items.append({"_id": f"{i:024x}", "id": f"huge/model-{i}", "modelId": f"huge/model-{i}",
                          "createdAt": _iso(created), "author": "huge", "private": False,
                          "pipeline_tag": "text-generation", "library_name": "transformers",
                          "tags": ["transformers", "text-generation"], "downloads": 0, "likes": 0})
        headers = {}
        if start + page < f.count:
            headers["Link"] = f'<{self._self_url(q, _encode_cursor(("huge", str(start + page))))}>; rel="next"'
        self._send_json(items, headers)

    def _self_url(self, q: dict[str, list[str]], cursor: str | None) -> str:
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
        self.rate_window = rate_window
        self.rate_quotas = rate_quotas
        self._rate_lock = threading.Lock()
        self._rate_counts: dict[tuple, int] = {}
        self.stats: dict[str, Any] = {"listing_requests": 0, "listing_items": 0, "rate_limited": 0,
                                      "announced_resets": [], "downloads": []}
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

    def count_request(self, bucket: str, address: str, auth: str | None) -> tuple | None:
        """Count one request in its fixed window; (bucket, remaining, seconds to reset, quota,
        window) with remaining < 0 when over quota; None when rate limiting is off."""
        if self.rate_window is None:
            return None
        authed = self.access(auth) != "anonymous"
        quota = self.rate_quotas.get((bucket, authed))
        if quota is None:
            return None
        now = time.time()
        window_no = int(now // self.rate_window)
        who = auth if authed else address
        with self._rate_lock:
            key = (bucket, who, window_no)
            used = self._rate_counts.get(key, 0) + 1
            self._rate_counts[key] = used
            if len(self._rate_counts) > 10_000:  # forget windows gone by
                self._rate_counts = {k: v for k, v in self._rate_counts.items() if k[2] >= window_no}
            if used > quota:
                self.stats["rate_limited"] += 1
        reset = max(1, math.ceil((window_no + 1) * self.rate_window - now))
        window = max(1, math.ceil(self.rate_window))
        return (bucket, quota - used, reset, quota, window)

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

    ``port=0`` picks a free port. ``faults`` injects failures (see ``indexer.testbed.hub_faults``).
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
        quotas = dict(DEFAULT_RATE_QUOTAS)
        for k, v in (rate_quotas or {}).items():
            quotas.update({(k, False): v, (k, True): v} if isinstance(k, str) else {k: v})
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


def resolve_url(base: str, repo_id: str, revision: str, filename: str) -> str:
    """The download URL of a file (as the Hub spells it)."""
    return f"{base}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
