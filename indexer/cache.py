"""The one cache folder: downloads, probes, listing cursors, the zoo's builds and probes.

``PHYLOLM_CACHE_DIR`` (the settings' ``cache_dir``), else ``PHYLOLM_CACHE`` (the zoo's older
name for the same folder, still honoured), else ``~/.cache/phylolm``. It sits outside the
layers, like ``indexer.errors``, because the job's settings and the testbed's zoo both start
from it and must never disagree.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VARS = ("PHYLOLM_CACHE_DIR", "PHYLOLM_CACHE")


def default_cache_dir() -> Path:
    for name in ENV_VARS:
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".cache" / "phylolm"
