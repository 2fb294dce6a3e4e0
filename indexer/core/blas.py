"""One BLAS thread for the insert path's small products.

An insert multiplies blocks of tens of rows (its neighbours, NNI's sampled groups) by a few
thousand allele columns. A multi-threaded BLAS only adds thread hand-offs there, and on a
busy machine they cost far more than the product (measured with 2 cores under load 6: 260
sparse-mode inserts in 166 s with OpenBLAS's default threads against 6.6 s with one). The
limit also makes the tree independent of the machine's BLAS thread count, since a BLAS
sums in another order with other thread counts. threadpoolctl is a dependency of
scikit-learn; the controller scans the loaded libraries once, so a limit costs ~35 us.
"""
from __future__ import annotations

import contextlib

_CONTROLLER = None


def one_blas_thread():
    """A context manager limiting BLAS (OpenBLAS, MKL, BLIS) to one thread while it is
    entered; the previous limits come back on exit."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # a bare install without scikit-learn's dependency
            return contextlib.nullcontext()
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
