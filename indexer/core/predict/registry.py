"""The predictors by method name, as the CLI and the catalog's ``estimates.method`` name them."""
from __future__ import annotations

from typing import Callable

from indexer.core.predict.predictors import KinshipEnsemble, PaperICA
from indexer.core.predict.stack import KinshipStack

PREDICTORS: dict[str, Callable[[], object]] = {
    PaperICA.method: PaperICA,
    KinshipEnsemble.method: KinshipEnsemble,
    KinshipStack.method: KinshipStack,
}
DEFAULT_METHOD = KinshipStack.method


def get_predictor(method: str):
    """A predictor by its method name (``paper-ica15-linear``, ``kinship-ensemble``, ``kinship-stack``)."""
    try:
        return PREDICTORS[method]()
    except KeyError:
        raise ValueError(f"unknown estimate method {method!r}; known: {', '.join(PREDICTORS)}") from None
