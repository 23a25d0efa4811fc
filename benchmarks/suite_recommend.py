"""Suite sections "recommend" and "spark": a ratings CSV, one seeded split,
several models.

recommend (needs ``--ratings PATH`` and ``dnmf.RatingsNMF``): ``dnmf.ingest``
turns the CSV into a matrix store; ``dnmf.train_test_split(method="random",
test_size=0.2, random_state=0)`` splits its ratings; then

- ``RatingsNMF(feedback="explicit")`` (masked: observed ratings only, biases,
  ALS-WR penalty): test RMSE and MAE, and its top-10 lists;
- ``RatingsNMF(feedback="implicit")`` and plain ``dnmf.NMF`` (missing = 0):
  precision / recall / NDCG @ 10 with the training items left out.

spark (needs ``pyspark`` and a Java runtime): Spark's ALS with
``nonnegative=True``, rank 20, ``regParam=0.1``, 10 iterations, on the same
split (``local[2]``, a checkpoint directory set): test RMSE and fit time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings

import numpy as np

from benchmarks._common import log, seconds

K = 20


def _short(path: str) -> str:
    """The file and its folder (``ml-latest-small/ratings.csv``): names the data set, not the machine."""
    parts = os.path.abspath(path).split(os.sep)
    return "/".join(parts[-2:])


def _split(args, cache: dict) -> dict:
    """Ingest the CSV and split it once; shared by both sections."""
    if cache:
        return cache
    import dnmf
    from dnmf.recommend.evaluation import train_test_split

    work = tempfile.mkdtemp(prefix="dnmf-bench-ratings-")
    try:
        t = time.perf_counter()
        store = dnmf.ingest(
            args.ratings,
            os.path.join(work, "ratings.zarr"),
            user_col=args.user_col,
            item_col=args.item_col,
            value_col=args.value_col,
            dtype=np.float64,
        )
        ingest_s = time.perf_counter() - t
        X = store.data.compute().tocsr()  # a ratings file of this benchmark's size fits in memory
    finally:
        shutil.rmtree(work, ignore_errors=True)
    train, test = train_test_split(X, method="random", test_size=0.2, random_state=0)
    cache.update(
        X=X,
        train=train.tocsr(),
        test=test.tocsr(),
        ingest_s=ingest_s,
        dataset=f"{_short(args.ratings)}: {X.shape[0]:,} users x {X.shape[1]:,} items, {X.nnz:,} ratings",
    )
    log(f"[recommend] {cache['dataset']}; ingest {seconds(ingest_s)}; train {train.nnz:,} / test {test.nnz:,}")
    return cache


def run_recommend(args, cache: dict) -> dict:
    if not args.ratings:
        return {"skipped": "skipped: no ratings file given (`--ratings PATH`, e.g. MovieLens' ratings.csv)"}
    try:
        from dnmf import RatingsNMF
        from dnmf.recommend.evaluation import evaluate
        from dnmf.recommend.factors import Factors
    except ImportError as exc:
        return {"skipped": f"skipped: dnmf's recommendation modules are not available ({exc})"}
    import dnmf

    data = _split(args, cache)
    train, test = data["train"], data["test"]
    models = []
    metrics = ["precision", "recall", "ndcg"]

    def timed_fit(name, est):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = est.fit(train)
        fit_s = time.perf_counter() - t
        log(f"[recommend] {name}: fit {seconds(fit_s)}, {est.n_iter_} iterations")
        return out, fit_s

    est, fit_s = timed_fit("RatingsNMF explicit", RatingsNMF(K, feedback="explicit", random_state=0))
    scores = evaluate(est, test, train=train, k=10, metrics=["rmse", "mae", *metrics])
    models.append(
        {
            "model": f"RatingsNMF(k={K}, explicit, ALS)",
            "fit_s": fit_s,
            "n_iter": int(est.n_iter_),
            **{m: float(scores[m]) for m in ["rmse", "mae", *metrics]},
        }
    )

    est, fit_s = timed_fit("RatingsNMF implicit", RatingsNMF(K, feedback="implicit", random_state=0))
    scores = evaluate(est, test, train=train, k=10, metrics=metrics)
    models.append(
        {
            "model": f"RatingsNMF(k={K}, implicit)",
            "fit_s": fit_s,
            "n_iter": int(est.n_iter_),
            **{m: float(scores[m]) for m in metrics},
        }
    )

    nmf = dnmf.NMF(K, init="nndsvda", solver="cd", max_iter=200, random_state=0)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = nmf.fit_transform(train)
    fit_s = time.perf_counter() - t
    scores = evaluate(Factors.from_model(nmf, W=W), test, train=train, k=10, metrics=metrics)
    models.append(
        {
            "model": f"NMF(k={K}, cd; missing = 0)",
            "fit_s": fit_s,
            "n_iter": int(nmf.n_iter_),
            **{m: float(scores[m]) for m in metrics},
        }
    )
    for m in models:
        log(
            f"[recommend] {m['model']}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k in ("rmse", "mae", *metrics))
        )
    return {
        "dataset": data["dataset"],
        "description": (
            f"{data['dataset']}; ingest {seconds(data['ingest_s'])}. Seeded random 80/20 split of the "
            "ratings; ranking metrics @10 with each user's training items left out, over users with "
            "test items. Local threads."
        ),
        "models": models,
    }


def run_spark(args, cache: dict) -> dict:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return {
            "skipped": "skipped: pyspark is not installed (`pip install pyspark`, with a Java runtime, to "
            "compare with Spark ALS nonnegative=True)"
        }
    if not args.ratings:
        return {"skipped": "skipped: no ratings file given (`--ratings PATH`)"}
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    data = _split(args, cache)
    ckpt = tempfile.mkdtemp(prefix="dnmf-bench-spark-")
    spark = SparkSession.builder.master("local[2]").appName("dnmf-bench").getOrCreate()
    try:
        spark.sparkContext.setCheckpointDir(ckpt)  # without it long ALS lineages overflow the stack

        def frame(M):
            M = M.tocoo()
            rows = list(zip(M.row.tolist(), M.col.tolist(), M.data.astype(float).tolist(), strict=True))
            return spark.createDataFrame(rows, ["user", "item", "rating"])

        train, test = frame(data["train"]), frame(data["test"])
        als = ALS(
            rank=K,
            maxIter=10,
            regParam=0.1,
            nonnegative=True,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            coldStartStrategy="drop",
            seed=0,
        )
        t = time.perf_counter()
        model = als.fit(train)
        fit_s = time.perf_counter() - t
        rmse = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction").evaluate(
            model.transform(test)
        )
    finally:
        spark.stop()
        shutil.rmtree(ckpt, ignore_errors=True)
    log(f"[spark] ALS nonnegative: RMSE {rmse:.4f}, fit {seconds(fit_s)}")
    return {
        "setting": f"{data['dataset']}, rank {K}, regParam 0.1, 10 iterations, local[2]",
        "rmse": float(rmse),
        "fit_s": fit_s,
    }
