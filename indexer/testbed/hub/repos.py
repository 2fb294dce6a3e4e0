"""The loopback Hub's repositories: a folder of ``<owner>/<name>/`` directories, read as the
Hub would describe them.

``RepoFolder`` rescans the folder on every call (one ``stat`` per file), so what is served is
what is in the folder at request time; a ``RepoState`` is one repository's files, sidecar
(``.hub.json``), model card front matter and configs. Files are hashed (sha256 for LFS, git
blob sha1 otherwise) once per change, and a repository's commit sha is a hash of its content.
Safety: only regular files resolving inside the repository's own directory are indexed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from indexer.adapters.hub.metadata import DTYPE_BYTES, PACKED_DTYPES, quantization_bits
from schemas.records import check_model_id

log = logging.getLogger(__name__)

SIDECAR = ".hub.json"
# Files the Hub stores through LFS: weights and other large binaries.
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf", ".h5", ".msgpack",
                 ".onnx", ".npz", ".model")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_MAX_CARD_BYTES = 1 << 20
_MAX_CONFIG_BYTES = 10 << 20
_MAX_SAFETENSORS_HEADER = 100 << 20


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


def valid_repo_id(value: str) -> bool:
    """An ``owner/name`` id the Hub would accept (a bare name is not a repository here)."""
    try:
        check_model_id(value)
    except ValueError:
        return False
    return "/" in value


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
            renamed_from=tuple(r for r in renamed if isinstance(r, str) and valid_repo_id(r)),
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
                olds = tuple(r for r in raw if isinstance(r, str) and valid_repo_id(r))
                with self._lock:
                    self._alias_cache[key] = olds
            for old in olds:
                found.setdefault(old, repo_id)
        return found

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
            bits = quantization_bits(state.config)
            params: dict[str, int] = {}
            for rel, entry in state.files.items():
                if rel.endswith(".safetensors"):
                    for dtype, n in _safetensors_params(entry.path).items():
                        if bits is not None and dtype in PACKED_DTYPES:
                            n = int(n * DTYPE_BYTES[dtype] * 8 / bits)
                        params[dtype] = params.get(dtype, 0) + n
            state._safetensors = {"parameters": params, "total": sum(params.values())} if params else {}
        return state._safetensors or None
