"""Crash points for the fault suite (``PHYLOLM_FAILPOINT``).
"""
from __future__ import annotations

import os
import signal


_FAILPOINT_HITS: dict[str, int] = {}


def failpoint(stage: str) -> None:
    """Crash here, for real (SIGKILL), when ``PHYLOLM_FAILPOINT=<stage>:<n>`` names this stage
    and this is its n-th hit in the process. How the fault suite kills a writer at an exact
    point of an update (before, during, after the catalog write, while publishing); unset,
    it costs one dictionary lookup.
    """
    spec = os.environ.get("PHYLOLM_FAILPOINT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != stage:
        return
    _FAILPOINT_HITS[stage] = _FAILPOINT_HITS.get(stage, 0) + 1
    if _FAILPOINT_HITS[stage] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

