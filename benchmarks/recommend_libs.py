"""Other recommendation libraries behind one interface, for the suite's side-by-side sections.

Each ``fit_*`` function fits one model on a training CSR matrix (users x
items, positions as IDs) and returns its factors as a :class:`dnmf.Factors`,
so that every library is scored by the same function (``dnmf.evaluate``):

- :func:`fit_dnmf`: ``dnmf.RatingsNMF`` (explicit or implicit);
- :func:`fit_implicit_als`: the ``implicit`` package's ALS (``c = alpha·x``);
- :func:`fit_spark_als`: Spark ML's ``ALS`` (``nonnegative=True``; explicit,
  or ``implicitPrefs=True``), on a :class:`SparkRunner`'s local session.

A missing package raises :class:`Missing` with the line to install it.
Also the data helpers of those sections: :func:`kfold` (seeded folds of the
ratings) and :func:`known_only` (test entries whose user and item were seen
in training).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

INSTALL = "pip install '.[bench]' in dnmf's checkout"


class Missing(RuntimeError):
    """An optional package (or Java) a model needs is not there; the message says what to install."""


@dataclass
class Fitted:
    """One fitted model: its factors, fit time and the iterations it ran."""

    factors: object
    fit_s: float
    n_iter: int


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def kfold(X: sp.csr_matrix, folds: int, seed: int = 0) -> list[tuple[sp.csr_matrix, sp.csr_matrix]]:
    """``folds`` (train, test) pairs: the ratings shuffled with ``seed`` and cut into equal parts.

    Every rating is in exactly one test part; train is all the others.
    """
    C = X.tocoo()
    order = np.random.default_rng(seed).permutation(C.nnz)
    part = np.empty(C.nnz, dtype=np.int64)
    part[order] = np.arange(C.nnz) % folds
    out = []
    for f in range(folds):
        sel = part == f
        test = sp.csr_matrix((C.data[sel], (C.row[sel], C.col[sel])), shape=X.shape)
        train = sp.csr_matrix((C.data[~sel], (C.row[~sel], C.col[~sel])), shape=X.shape)
        out.append((train, test))
    return out


def known_only(test: sp.csr_matrix, train: sp.csr_matrix) -> sp.csr_matrix:
    """The test entries whose user and item have training ratings.

    The others have no factors in Spark's model (it drops them,
    ``coldStartStrategy="drop"``), so every model is scored on this same set.
    """
    users = np.diff(train.tocsr().indptr) > 0
    items = np.bincount(train.tocsr().indices, minlength=train.shape[1]) > 0
    C = test.tocoo()
    keep = users[C.row] & items[C.col]
    return sp.csr_matrix((C.data[keep], (C.row[keep], C.col[keep])), shape=test.shape)


def carve(train: sp.csr_matrix, share: float = 0.2, seed: int = 1) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A validation split of ``train``: (the rest, a seeded ``share`` of its ratings)."""
    C = train.tocoo()
    val = np.random.default_rng(seed).random(C.nnz) < share
    fit = sp.csr_matrix((C.data[~val], (C.row[~val], C.col[~val])), shape=train.shape)
    held = sp.csr_matrix((C.data[val], (C.row[val], C.col[val])), shape=train.shape)
    return fit, held


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def fit_dnmf(train: sp.csr_matrix, k: int, **params) -> Fitted:
    """``dnmf.RatingsNMF(k, random_state=0, **params)`` on ``train``."""
    from dnmf import RatingsNMF

    est = RatingsNMF(k, random_state=0, **params)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of a max_iter cap
        est.fit(train)
    return Fitted(est.factors_, time.perf_counter() - t, int(est.n_iter_))


def fit_implicit_als(
    train: sp.csr_matrix, k: int, *, regularization: float = 0.01, alpha: float = 1.0, iterations: int = 15
) -> Fitted:
    """``implicit.als.AlternatingLeastSquares`` (its defaults but ``factors=k``), confidence ``alpha·x``."""
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError as exc:
        raise Missing(f"implicit is not installed ({INSTALL}, or pip install implicit)") from exc
    from dnmf.recommend.factors import Factors

    model = AlternatingLeastSquares(
        factors=k, regularization=regularization, alpha=alpha, iterations=iterations, random_state=0
    )
    t = time.perf_counter()
    model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
    fit_s = time.perf_counter() - t
    user, item = model.user_factors, model.item_factors
    if hasattr(user, "to_numpy"):  # a GPU model
        user, item = user.to_numpy(), item.to_numpy()
    factors = Factors(W=np.asarray(user, dtype=np.float64), H=np.asarray(item, dtype=np.float64).T)
    return Fitted(factors, fit_s, iterations)


def java_home() -> str | None:
    """JAVA_HOME, or the folder above the ``java`` on PATH (``.../bin/java``), or None without Java."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java is None:
        return None
    return os.path.dirname(os.path.dirname(os.path.realpath(java)))


class SparkRunner:
    """One local Spark session (``local[2]``) for all the Spark fits of a run; :meth:`stop` ends it.

    A checkpoint directory is set: without one ALS's lineage grows with
    every iteration and overflows the JVM's stack (StackOverflowError).
    """

    def __init__(self, master: str = "local[2]"):
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise Missing(f"pyspark is not installed ({INSTALL}, or pip install pyspark; it needs Java)") from exc
        home = java_home()
        if home is None:
            raise Missing("Java is not installed (Spark needs a Java runtime, 17 or newer; or set JAVA_HOME)")
        os.environ["JAVA_HOME"] = home
        self.ckpt = tempfile.mkdtemp(prefix="dnmf-bench-spark-")
        self.spark = (
            SparkSession.builder.master(master)
            .appName("dnmf-bench")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.driver.memory", "2g")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        self.spark.sparkContext.setCheckpointDir(self.ckpt)

    def frame(self, M: sp.spmatrix):
        """A (user, item, rating) DataFrame of M's stored entries."""
        import pandas as pd

        C = M.tocoo()
        pdf = pd.DataFrame({"user": C.row.astype(np.int32), "item": C.col.astype(np.int32), "rating": C.data})
        return self.spark.createDataFrame(pdf).cache()

    def warm_up(self) -> None:
        """One small untimed ALS fit: the JVM compiles ALS's code paths before the timed fits."""
        rng = np.random.default_rng(0)
        M = sp.random(200, 100, density=0.1, format="csr", random_state=rng, data_rvs=lambda n: rng.integers(1, 6, n))
        fit_spark_als(self, M, 4, iterations=3)

    def stop(self) -> None:
        self.spark.stop()
        shutil.rmtree(self.ckpt, ignore_errors=True)


def _factor_array(df, size: int, k: int) -> np.ndarray:
    """Spark's (id, features) factor rows as a (size, k) array; rows it has none for are 0."""
    out = np.zeros((size, k))
    for row in df.collect():
        out[row["id"]] = row["features"]
    return out


def fit_spark_als(
    runner: SparkRunner,
    train: sp.csr_matrix,
    k: int,
    *,
    reg: float = 0.1,
    iterations: int = 10,
    implicit_prefs: bool = False,
    alpha: float = 1.0,
    frame=None,
) -> Fitted:
    """Spark ML's ALS, ``nonnegative=True``, seed 0; ``frame``: ``runner.frame(train)`` made already."""
    from pyspark.ml.recommendation import ALS

    from dnmf.recommend.factors import Factors

    df = runner.frame(train) if frame is None else frame
    df.count()  # materialise the cached frame outside the timed fit
    als = ALS(
        rank=k,
        maxIter=iterations,
        regParam=reg,
        nonnegative=True,
        implicitPrefs=implicit_prefs,
        alpha=alpha,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        coldStartStrategy="drop",
        seed=0,
    )
    t = time.perf_counter()
    model = als.fit(df)
    model.userFactors.count()  # the factors are lazily computed: force them inside the timed part
    fit_s = time.perf_counter() - t
    W = _factor_array(model.userFactors, train.shape[0], k)
    H = _factor_array(model.itemFactors, train.shape[1], k).T
    return Fitted(Factors(W=W, H=H), fit_s, iterations)
