"""The Hub as the job sees it: an endpoint for a ``--hub`` value, and the watcher set up once.

``open_hub`` turns a ``--hub`` value into an endpoint URL, serving a folder with the testbed's
loopback Hub for the duration of a ``with`` block. ``hub_watcher`` builds the Hub client, its
screen policy and the watcher from explicit values; ``watcher_for`` does it from a job's
configuration. The listing step, the probe step and ``phylolm hub list`` all build their
watcher here, so they screen alike.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from indexer.errors import PhylolmError

if TYPE_CHECKING:  # the adapters load when a watcher is built, not when this module is imported
    from indexer.adapters.hub.client import HubClient
    from indexer.adapters.hub.watcher import Watcher
    from indexer.app.job import JobConfig


@contextlib.contextmanager
def open_hub(hub: str | os.PathLike | None, **server_options: Any) -> Iterator[str]:
    """The endpoint URL for a ``--hub`` value.

    None: ``HF_ENDPOINT`` or the public Hub. A URL (http/https) is used as is. An existing
    directory is served by an in-process loopback Hub (``indexer.testbed.hub.HubServer``) for
    the duration of the ``with`` block (``server_options`` go to it; a folder served in-process
    to one job has no quota to protect, so rate limiting is off unless ``rate_window`` is given:
    a backfill of a few thousand local repositories is not paced to the public Hub's 500 calls
    per 5 minutes). Anything else is a ``PhylolmError``.
    """
    if hub is None or str(hub) == "":
        from indexer.adapters.hub.client import PUBLIC_ENDPOINT

        yield (os.environ.get("HF_ENDPOINT") or PUBLIC_ENDPOINT).rstrip("/")
        return
    text = str(hub)
    if re.match(r"^https?://", text):
        yield text.rstrip("/")
        return
    path = Path(text).expanduser()
    if not path.is_dir():
        raise PhylolmError(f"--hub {text!r} is neither an http(s) URL nor an existing directory")
    from indexer.testbed.hub import HubServer

    server_options.setdefault("rate_window", None)
    with HubServer(path, **server_options) as url:
        yield url


def hub_watcher(endpoint: str | None, *, timeout: float, max_bytes: int,
                quant_methods: frozenset[str] = frozenset()) -> "Watcher":
    """A watcher over a Hub client for ``endpoint`` (None: ``HF_ENDPOINT`` or the public Hub).

    ``timeout``: seconds per request; ``max_bytes``: the weights budget of the screen;
    ``quant_methods``: the pre-quantization methods the backend runs (others are deferred).
    Whether gated models can be fetched follows from the client: a token in the environment."""
    from indexer.adapters.hub.client import HubClient

    return _watcher(HubClient(endpoint, timeout=timeout), max_bytes, quant_methods, None)


def watcher_for(config: "JobConfig", *, resume_listing: bool = False) -> "Watcher":
    """The job's watcher: its endpoint, request timeout, weights budget and the quantization
    methods of its backend (``config.quant_methods``, else what the backend runs here).

    ``resume_listing`` (the listing step): an interrupted listing's cursor is kept beside the
    downloads, per endpoint and filters, so that the next poll (in this process or the next
    cron run) resumes from it."""
    import hashlib

    from indexer.adapters.hub.client import HubClient

    client = HubClient(config.hub, timeout=config.hub_timeout)
    cursor = None
    if resume_listing:
        tag = hashlib.sha1(f"{client.endpoint}|{config.author}|{config.search}".encode()).hexdigest()[:16]
        cursor = config.cache_dir / "listing" / f"{tag}.json"
    return _watcher(client, int(config.max_bytes), _job_quant_methods(config), cursor)


def _job_quant_methods(config: "JobConfig") -> frozenset[str]:
    """The pre-quantization methods the job's backend runs: ``config.quant_methods`` when set,
    else what ``indexer.adapters.probers.base.quant_methods`` finds for the backend and device."""
    from indexer.adapters.probers.base import quant_methods

    if config.quant_methods is not None:
        return frozenset(config.quant_methods)
    return quant_methods(config.backend, dict(config.backend_options).get("device"))


def _watcher(client: "HubClient", max_bytes: int, quant_methods: frozenset[str], resume_path: Path | None) -> "Watcher":
    from indexer.adapters.hub.watcher import ScreenPolicy, Watcher

    policy = ScreenPolicy(max_bytes=max_bytes, has_token=client.has_token, quant_methods=quant_methods)
    return Watcher(client, policy, resume_path=resume_path)
