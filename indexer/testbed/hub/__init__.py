"""The loopback Hub: a Hub-compatible HTTP endpoint over a folder of model repositories.

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

Layout: ``repos`` (the repositories on disk: files, sidecars, hashes, commit shas), ``api``
(the JSON answers: model info, trees, listing pages), ``quotas`` (the rate-limit windows),
``faults`` (fault injection), ``server`` (HTTP routing and ``HubServer``).
"""
from indexer.testbed.hub.server import HubServer

__all__ = ["HubServer"]
