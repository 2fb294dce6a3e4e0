"""The loopback Hub's JSON answers: model info, file trees and listing pages, shaped like the
public Hub's so that the real ``huggingface_hub`` client reads them.

What the Hub derives rather than stores is derived here the same way: tags (library, model
type, task, ``custom_code`` from ``auto_map``, ``base_model:`` lineage, license), the lineage
itself (canonical ids after renames, the relation inferred when the card declares none), and
Mongo-style ObjectIds that sort by upload time. Listings are paginated by a cursor on a
time-ordered key, so a repository added while a client pages through never shifts the pages.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Callable

from indexer.testbed.hub.repos import RepoFolder, RepoState, valid_repo_id

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000
# Every `expand` value the Hub accepts for models (huggingface_hub's ExpandModelProperty_T);
# anything else is a 400, as on the Hub.
KNOWN_EXPAND = frozenset({
    "author", "baseModels", "cardData", "childrenModelCount", "config", "createdAt", "disabled",
    "downloads", "downloadsAllTime", "evalResults", "gated", "gguf", "inference",
    "inferenceProviderMapping", "lastModified", "library_name", "likes", "mask_token", "model-index",
    "pipeline_tag", "private", "resourceGroup", "safetensors", "sha", "siblings", "spaces", "tags",
    "transformersInfo", "trendingScore", "usedStorage", "widgetData"})
# Fields of a listing item without `full`/`expand` (as on the public Hub).
_LIST_FIELDS = {"id", "modelId", "_id", "createdAt", "private", "downloads", "likes", "tags",
                "pipeline_tag", "library_name", "trendingScore"}
_FULL_FIELDS = _LIST_FIELDS | {"author", "sha", "lastModified", "gated", "disabled", "siblings"}
RELATIONS = ("adapter", "merge", "quantized", "finetune")

Query = dict[str, list[str]]  # a parsed query string (parse_qs)


class HubRequestError(Exception):
    """An HTTP error answer: status, Hub error code and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- derived metadata ---------------------------------------------------------------------------

def iso(dt: datetime) -> str:
    """A time as the Hub writes it: UTC, milliseconds, ``Z``."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def object_id(state: RepoState) -> str:
    """A Mongo-style ObjectId: 4 bytes of creation time (seconds), then 8 bytes from the id, so
    that ids sort by upload time as the Hub's do."""
    seconds = max(0, min(int(state.created_at.timestamp()), 0xFFFFFFFF))
    return f"{seconds:08x}" + hashlib.sha1(state.repo_id.encode()).hexdigest()[:16]


def pipeline_tag(state: RepoState) -> str | None:
    tag = state.card.get("pipeline_tag")
    if isinstance(tag, str):
        return tag
    archs = state.config.get("architectures")
    if isinstance(archs, list) and any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel"))
                                       for a in archs):
        return "text-generation"
    return None


def library_name(state: RepoState) -> str | None:
    lib = state.card.get("library_name")
    if isinstance(lib, str):
        return lib
    if "config.json" in state.files:
        return "transformers"
    # The Hub files a repository of GGUF files under the "gguf" library (models?library=gguf).
    return "gguf" if any(r.endswith(".gguf") for r in state.files) else None


def tags(state: RepoState, aliases: dict[str, str] | None = None) -> list[str]:
    found: list[str] = []

    def add(t: Any) -> None:
        if isinstance(t, str) and t and t not in found:
            found.append(t)

    add(library_name(state))
    if any(r.endswith(".safetensors") for r in state.files):
        add("safetensors")
    if any(r.endswith(".gguf") for r in state.files):
        add("gguf")
    add(state.config.get("model_type"))
    add(pipeline_tag(state))
    card_tags = state.card.get("tags")
    for t in card_tags if isinstance(card_tags, list) else [card_tags]:
        add(t)
    # The Hub tags custom_code from auto_map (the code a loader would run), not from
    # whatever .py files a repository happens to ship.
    if "auto_map" in state.config or "auto_map" in state.tokenizer_config:
        add("custom_code")
    bases, relation = lineage(state, aliases)
    for b in bases:
        add(f"base_model:{b}")
        add(f"base_model:{relation}:{b}")
    lic = state.card.get("license")
    if isinstance(lic, str):
        add(f"license:{lic}")
    return found


def lineage(state: RepoState, aliases: dict[str, str] | None = None) -> tuple[list[str], str | None]:
    """The base models as the Hub derives them: the card's ``base_model`` ids made canonical
    (renames followed) and the relation, the card's if it declares a known one, else
    inferred: adapter, quantized, merge (several bases), finetune."""
    raw = state.card.get("base_model")
    raw = raw if isinstance(raw, list) else [raw]
    bases: list[str] = []
    for b in raw:
        if isinstance(b, str) and valid_repo_id(b):
            b = (aliases or {}).get(b, b)
            if b not in bases:
                bases.append(b)
    if not bases:
        return [], None
    declared = state.card.get("base_model_relation")
    if declared in RELATIONS:
        return bases, declared
    if "adapter_config.json" in state.files:
        return bases, "adapter"
    if "quantization_config" in state.config or any(r.endswith(".gguf") for r in state.files):
        return bases, "quantized"
    return bases, "merge" if len(bases) > 1 else "finetune"


# -- answers ------------------------------------------------------------------------------------

def siblings(folder: RepoFolder, state: RepoState, sizes: bool) -> list[dict]:
    """The ``siblings`` of a model info: sizes, blob ids and LFS sizes only with ``sizes``
    (``blobs=true``, what ``model_info(files_metadata=True)`` sends)."""
    out = []
    for rel, entry in sorted(state.files.items()):
        item: dict[str, Any] = {"rfilename": rel}
        if sizes:
            sha256, blob = folder.hashes.get(entry)
            item.update(size=entry.size, blobId=blob)
            if entry.is_lfs:
                item["lfs"] = {"size": entry.size, "sha256": sha256, "pointerSize": 134}
        out.append(item)
    return out


def model_info(folder: RepoFolder, state: RepoState, fields: set[str] | None, *, sizes: bool = False,
               aliases: dict[str, str] | None = None) -> dict:
    """The model-info JSON with ``fields`` (None: all of them)."""
    want = (lambda f: True) if fields is None else (lambda f: f in fields)
    d: dict[str, Any] = {"_id": object_id(state), "id": state.repo_id}
    if want("modelId"):
        d["modelId"] = state.repo_id
    if want("author"):
        d["author"] = state.author
    if want("sha"):
        d["sha"] = folder.sha(state)
    if want("createdAt"):
        d["createdAt"] = iso(state.created_at)
    if want("lastModified"):
        d["lastModified"] = iso(state.last_modified)
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
        d["library_name"] = library_name(state)
    if want("pipeline_tag"):
        d["pipeline_tag"] = pipeline_tag(state)
    if want("tags"):
        d["tags"] = tags(state, aliases)
    if want("baseModels"):
        bases, relation = lineage(state, aliases)
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
        d["siblings"] = siblings(folder, state, sizes)
    if want("safetensors"):
        st = folder.safetensors(state)
        if st is not None:
            d["safetensors"] = st
    if want("usedStorage"):
        d["usedStorage"] = sum(f.size for f in state.files.values())
    if want("spaces"):
        d["spaces"] = []
    return d


def info_fields(q: Query) -> set[str] | None:
    """The fields a model-info request asks for (``expand``), None for all of them."""
    expand = expand_values(q)
    return {"id", "_id", *expand} if expand else None


def tree(folder: RepoFolder, state: RepoState, sub: str, recursive: bool) -> list[dict]:
    """``GET /api/models/{id}/tree/{rev}[/{sub}]``: folders, then files with sizes and LFS sha256."""
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
        sha256, blob = folder.hashes.get(entry)
        item: dict[str, Any] = {"type": "file", "oid": blob, "size": entry.size, "path": rel}
        if entry.is_lfs:
            item["lfs"] = {"oid": sha256, "size": entry.size, "pointerSize": 134}
        entries.append(item)
    dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(folders)]
    return dirs + entries


def listing_page(folder: RepoFolder, states: list[RepoState], q: Query, page_size: int,
                 corrupt: Callable[[list[dict]], list[dict]] = lambda items: items) -> tuple[list[dict], tuple | None]:
    """One page of ``GET /api/models`` over ``states``: the items (passed through ``corrupt``,
    where a fault spoils them) and the cursor key of the next page (None: the last page).

    ``search``, ``author``, ``filter`` (tags, all must match), ``pipeline_tag``, ``sort``
    (createdAt | lastModified | id), ``direction`` (-1 newest first, the default, or 1),
    ``limit`` (else ``page_size``, at most ``MAX_PAGE_SIZE``), ``full``, ``cardData``,
    ``config``, ``expand``; ``cursor`` resumes after a key."""
    search = (q.get("search") or [""])[-1].lower()
    author = (q.get("author") or [None])[-1]
    filters = q.get("filter", []) + q.get("filter[]", [])
    pipeline = (q.get("pipeline_tag") or [None])[-1]
    sort = (q.get("sort") or ["createdAt"])[-1]
    descending = (q.get("direction") or ["-1"])[-1] == "-1"
    page = page_length(q, page_size)
    expand = expand_values(q)
    if expand:
        fields = {"id", "_id", *expand}
    else:
        fields = set(_FULL_FIELDS if truthy(q.get("full")) else _LIST_FIELDS)
        if truthy(q.get("cardData")):
            fields.add("cardData")
        if truthy(q.get("config")):
            fields.add("config")

    # The cursor is the last item's sort key; for times, (time, ObjectId): time-ordered
    # and unique, so pages neither repeat nor skip when uploads arrive meanwhile.
    def sort_key(s: RepoState) -> tuple[str, str]:
        if sort == "lastModified":
            return (iso(s.last_modified), object_id(s))
        if sort == "id":
            return (s.repo_id, s.repo_id)
        return (iso(s.created_at), object_id(s))

    chosen = []
    for s in states:
        if search and search not in s.repo_id.lower():
            continue
        if author and s.repo_id.split("/")[0] != author and s.author != author:
            continue
        if filters or pipeline:
            have = set(tags(s))
            if any(t not in have for t in filters) or (pipeline and pipeline_tag(s) != pipeline):
                continue
        chosen.append((sort_key(s), s))
    chosen.sort(key=lambda kv: kv[0], reverse=descending)
    cursor = (q.get("cursor") or [None])[-1]
    if cursor:
        after = decode_cursor(cursor)
        chosen = [kv for kv in chosen if (kv[0] < after if descending else kv[0] > after)]
    batch = chosen[:page]
    aliases = folder.aliases() if fields & {"tags", "baseModels"} else {}
    items = corrupt([model_info(folder, s, fields, aliases=aliases) for _, s in batch])
    more = len(chosen) > page and batch
    return items, batch[-1][0] if more else None


def synthetic_listing_page(count: int, q: Query, page_size: int, now: float) -> tuple[list[dict], tuple | None]:
    """A page of a listing of ``count`` synthetic models, newest first, created a second apart
    up to an hour after ``now`` (the ``huge_listing`` fault); the cursor key of the next page."""
    page = min(int((q.get("limit") or [0])[-1] or page_size), MAX_PAGE_SIZE)
    cursor = (q.get("cursor") or [None])[-1]
    start = int(decode_cursor(cursor)[1]) if cursor else 0
    items = []
    for i in range(start, min(start + page, count)):
        created = datetime.fromtimestamp(now + 3600 - i, tz=timezone.utc)
        items.append({"_id": f"{i:024x}", "id": f"huge/model-{i}", "modelId": f"huge/model-{i}",
                      "createdAt": iso(created), "author": "huge", "private": False,
                      "pipeline_tag": "text-generation", "library_name": "transformers",
                      "tags": ["transformers", "text-generation"], "downloads": 0, "likes": 0})
    return items, ("huge", str(start + page)) if start + page < count else None


# -- query parameters -----------------------------------------------------------------------------

def truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes", "on")


def page_length(q: Query, page_size: int) -> int:
    """Items per listing page: ``limit``, else ``page_size``, at most ``MAX_PAGE_SIZE``."""
    try:
        limit = int((q.get("limit") or [0])[-1])
    except ValueError:
        raise HubRequestError(400, None, "limit must be an integer") from None
    return min(limit or page_size, MAX_PAGE_SIZE)


def expand_values(q: Query) -> list[str]:
    values = q.get("expand", []) + q.get("expand[]", [])
    unknown = [v for v in values if v not in KNOWN_EXPAND]
    if unknown:
        raise HubRequestError(400, None, f'"expand" must be one of {sorted(KNOWN_EXPAND)}, got {unknown[0]!r}')
    return values


def encode_cursor(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return tuple(value)
    except ValueError:
        pass
    raise HubRequestError(400, None, "invalid cursor")
