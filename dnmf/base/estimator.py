"""The base class of every dnmf estimator, and the registry that loads saved models.

:class:`DnmfEstimator` holds what ``dnmf.NMF`` and ``dnmf.RatingsNMF`` share:
the constraints of the parameters that say where and how long a fit runs
(``RUN_CONSTRAINTS``), the Client a fit runs on, the parameters a resumed fit
may change, and the attributes every saved model carries. :func:`load` opens
any saved model through :data:`MODEL_KINDS`, so that no estimator module
imports another.
"""

from __future__ import annotations

import importlib
import os
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval

#: Constraints of the parameters that say where and how long a fit runs and how it
#: checkpoints; shared by every dnmf estimator.
RUN_CONSTRAINTS: dict = {
    "max_time": [Interval(Real, 0, None, closed="neither"), None],
    "chunks": "no_validation",
    "client": "no_validation",
    "checkpoint": [str, os.PathLike, None],
    "checkpoint_every": [Interval(Integral, 1, None, closed="left"), None],
    "checkpoint_seconds": [Interval(Real, 0, None, closed="neither"), None],
    "keep_checkpoints": [Interval(Integral, 1, None, closed="left")],
    "max_retries": [Interval(Integral, 0, None, closed="left")],
    "storage_options": [dict, None],
}

#: Saved model kinds: the ``estimator`` attribute of a model store -> the
#: ``"module:function"`` that loads it (imported only when such a model is loaded).
MODEL_KINDS: dict[str, str] = {
    "NMF": "dnmf.nmf.estimator:load_model",
    "RatingsNMF": "dnmf.masked.estimator:load_model",
}


def current_client():
    """The default distributed Client, if one is active (else None)."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def jsonable_params(params: dict) -> dict:
    """Estimator parameters as JSON values (the Client is left out)."""
    out = {}
    for name, value in params.items():
        if name in ("client",):
            continue
        if isinstance(value, np.random.RandomState):
            value = None  # a RandomState's stream cannot be stored faithfully
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        elif isinstance(value, np.generic):
            value = value.item()
        out[name] = value
    return out


def params_from_json(params: dict) -> dict:
    """The inverse of :func:`jsonable_params` where JSON lost a type (chunk tuples)."""
    params = dict(params)
    if isinstance(params.get("chunks"), list):
        params["chunks"] = tuple(tuple(c) if isinstance(c, list) else c for c in params["chunks"])
    return params


class DnmfEstimator(BaseEstimator):
    """Base class of dnmf's estimators (not used directly).

    Subclasses declare ``_parameter_constraints`` including
    :data:`RUN_CONSTRAINTS`, and have the run parameters ``client``,
    ``checkpoint*``, ``max_retries``, ``storage_options`` and ``chunks``.
    """

    #: The ``estimator`` attribute of saved models and checkpoints (a key of MODEL_KINDS).
    _MODEL_KIND = ""

    #: Parameters a fit resumed from a checkpoint may change.
    _RESUMABLE = (
        "max_iter",
        "tol",
        "max_time",
        "verbose",
        "client",
        "checkpoint",
        "checkpoint_every",
        "checkpoint_seconds",
        "keep_checkpoints",
        "max_retries",
        "storage_options",
        "chunks",
    )

    def _client(self):
        """The Client to run on: the ``client`` parameter, else the default Client, else None."""
        client = getattr(self, "client", None)
        return client if client is not None else current_client()

    def _resume_params(self) -> dict:
        """The parameters a checkpoint records and a resumed fit must match."""
        params = jsonable_params(self.get_params(deep=False))
        return {k: v for k, v in params.items() if k not in self._RESUMABLE}

    def _model_attrs(self) -> dict[str, Any]:
        """The attributes every saved model starts with."""
        from .._version import __version__

        return {
            "library": "dnmf",
            "library_version": __version__,
            "estimator": self._MODEL_KIND,
            "params": jsonable_params(self.get_params(deep=False)),
        }


def load(path) -> Any:
    """Load a model saved with ``NMF.save`` or ``RatingsNMF.save``.

    Factors too large for memory come back as Dask arrays that read their
    blocks lazily; ``transform``, ``recommend`` and ``save`` work at once.

    Parameters
    ----------
    path : str or os.PathLike
        The model store.

    Returns
    -------
    NMF or RatingsNMF
    """
    from ..storage import arrays as io
    from ..storage.errors import StoreError

    arrays, attrs = io.load_factors(path)
    kind = attrs.get("estimator", "NMF") if attrs.get("library") == "dnmf" else None
    target = MODEL_KINDS.get(kind) if kind is not None else None
    if target is None or "params" not in attrs:
        known = ", ".join(sorted(MODEL_KINDS))
        raise StoreError(
            os.fspath(path),
            f"it is a model store but not a dnmf model of a known kind ({known}); its attributes are {sorted(attrs)}",
            "Load it with dnmf.storage.arrays.load_factors, or point at a model saved by NMF.save or RatingsNMF.save.",
        )
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)(arrays, attrs, path)
