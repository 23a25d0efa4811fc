"""Suite sections "recommend" and "rmse-cv": dnmf, ``implicit`` and Spark side by side on a ratings CSV.

Both need ``--ratings PATH``; ``dnmf.ingest`` turns the CSV into a matrix
store, read into memory once for both. Every model's factors go through
:mod:`benchmarks.recommend_libs` into a :class:`dnmf.Factors` and are scored
by the same function, ``dnmf.evaluate``.

recommend: one seeded random 80/20 split of the ratings
(``dnmf.train_test_split(method="random", test_size=0.2, random_state=0)``);
at k = 20 and 64 (``--quick``: 20),

- ``RatingsNMF(k)`` explicit (masked ALS, biases, ALS-WR; also with
  ``solver="ccd"``) and Spark ALS
  ``nonnegative=True`` (regParam 0.1, 10 iterations): test RMSE, over the
  test ratings whose user and item have training ratings (Spark has no
  factors for the others);
- ``RatingsNMF(k, feedback="implicit")``, plain ``dnmf.NMF(k)`` (missing =
  0), ``implicit``'s ALS (its defaults) and Spark ALS ``implicitPrefs=True``
  (``nonnegative=True``, regParam 0.1, alpha 1, 10 iterations): precision
  and NDCG @ 10 over all test items, each user's training items left out;
- fit time and fit time per iteration (setup included) for all.

rmse-cv (acceptance of issue 16): ``--folds`` (default 5) seeded folds of the
ratings, the same for both models; on each, test RMSE of ``RatingsNMF(20)``
with its explicit defaults (untuned) and of Spark ALS ``nonnegative=True``
(rank 20, 10 iterations) with the regParam that scored best on a validation
split (a seeded 20% of the first fold's training ratings) among
:data:`SPARK_REGS`.

A library that is not installed gives a row saying what to install.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np

from benchmarks import recommend_libs as libs
from benchmarks._common import log, seconds

RANKS = (20, 64)
CV_RANK = 20
#: Spark ALS regParam candidates for the rmse-cv section (its own default is 0.1).
SPARK_REGS = (0.05, 0.1, 0.15, 0.2)
SPARK_ITERS = 10


def _short(path: str) -> str:
    """The file and its folder (``ml-latest-small/ratings.csv``): names the data set, not the machine."""
    parts = os.path.abspath(path).split(os.sep)
    return "/".join(parts[-2:])


def _ratings(args, cache: dict) -> dict:
    """Ingest the CSV once (``X``, ``dataset``, ``ingest_s``); shared by both sections."""
    if "X" in cache:
        return cache
    import dnmf

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
    cache.update(
        X=X,
        ingest_s=ingest_s,
        dataset=f"{_short(args.ratings)}: {X.shape[0]:,} users x {X.shape[1]:,} items, {X.nnz:,} ratings",
    )
    log(f"[recommend] {cache['dataset']}; ingest {seconds(ingest_s)}")
    return cache


def _spark(cache: dict):
    """The run's Spark session (started on first use), or the :class:`libs.Missing` that stops it."""
    if "spark" not in cache:
        try:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # pyspark on pandas 3
                cache["spark"] = libs.SparkRunner()
                cache["spark"].warm_up()
            log(f"[recommend] Spark session started in {seconds(time.perf_counter() - t)}")
        except libs.Missing as exc:
            cache["spark"] = exc
    return cache["spark"]


def stop(cache: dict) -> None:
    """End the Spark session the sections started, if any."""
    _drop_frames(cache)
    runner = cache.pop("spark", None)
    if isinstance(runner, libs.SparkRunner):
        runner.stop()


def _drop_frames(cache: dict) -> None:
    """Unpersist the Spark DataFrames of earlier training matrices."""
    for _train, frame in cache.pop("frames", {}).values():
        frame.unpersist()


def _spark_fit(cache: dict, train, k: int, **params) -> libs.Fitted:
    runner = _spark(cache)
    if isinstance(runner, libs.Missing):
        raise runner
    frames = cache.setdefault("frames", {})
    key = id(train)
    if key not in frames:  # one cached DataFrame per training matrix
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            frames[key] = (train, runner.frame(train))
    return libs.fit_spark_als(runner, train, k, frame=frames[key][1], **params)


# ---------------------------------------------------------------------------
# recommend: one split, every library
# ---------------------------------------------------------------------------


#: (library, model label, kind, fit function(train, k, cache)); kind "explicit" rows get RMSE.
def _models():
    import dnmf

    def plain_nmf(train, k, cache):
        from dnmf.recommend.factors import Factors

        nmf = dnmf.NMF(k, init="nndsvda", solver="cd", max_iter=200, random_state=0)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W = nmf.fit_transform(train)
        return libs.Fitted(Factors.from_model(nmf, W=W), time.perf_counter() - t, int(nmf.n_iter_))

    return [
        ("dnmf", "RatingsNMF explicit (masked ALS, biases)", "explicit",
         lambda tr, k, c: libs.fit_dnmf(tr, k, feedback="explicit")),
        ("dnmf", "RatingsNMF explicit, solver=\"ccd\" (coordinate descent)", "explicit",
         lambda tr, k, c: libs.fit_dnmf(tr, k, feedback="explicit", solver="ccd")),
        ("Spark", f"ALS nonnegative, regParam 0.1, {SPARK_ITERS} its", "explicit",
         lambda tr, k, c: _spark_fit(c, tr, k, reg=0.1, iterations=SPARK_ITERS)),
        ("dnmf", "RatingsNMF implicit", "implicit",
         lambda tr, k, c: libs.fit_dnmf(tr, k, feedback="implicit")),
        ("dnmf", "NMF cd (missing = 0)", "implicit", plain_nmf),
        ("implicit", "ALS, its defaults (reg 0.01, alpha 1)", "implicit",
         lambda tr, k, c: libs.fit_implicit_als(tr, k)),
        ("Spark", f"ALS nonnegative implicitPrefs, regParam 0.1, alpha 1, {SPARK_ITERS} its", "implicit",
         lambda tr, k, c: _spark_fit(c, tr, k, reg=0.1, iterations=SPARK_ITERS, implicit_prefs=True)),
    ]  # fmt: skip


def run_recommend(args, cache: dict) -> dict:
    if not args.ratings:
        return {"skipped": "skipped: no ratings file given (`--ratings PATH`, e.g. MovieLens' ratings.csv)"}
    from dnmf.recommend.evaluation import evaluate, train_test_split

    data = _ratings(args, cache)
    train, test = train_test_split(data["X"], method="random", test_size=0.2, random_state=0)
    train, test = train.tocsr(), test.tocsr()
    known = libs.known_only(test, train)
    log(f"[recommend] train {train.nnz:,} / test {test.nnz:,} ratings ({known.nnz:,} with a known user and item)")
    ranks = RANKS[:1] if args.quick else RANKS
    rows = []
    for k in ranks:
        for library, label, kind, fit in _models():
            row = {"library": library, "model": label, "k": k, "kind": kind}
            try:
                f = fit(train, k, cache)
            except libs.Missing as exc:
                rows.append({**row, "missing": str(exc)})
                log(f"[recommend] {library} {label}: {exc}")
                continue
            scores = evaluate(f.factors, test, train=train, k=10, metrics=["precision", "ndcg"])
            if kind == "explicit":
                scores["rmse"] = evaluate(f.factors, known, metrics=["rmse"])["rmse"]
            row.update(
                fit_s=f.fit_s,
                n_iter=f.n_iter,
                per_iter_s=f.fit_s / max(f.n_iter, 1),
                **{m: float(v) for m, v in scores.items() if m in ("rmse", "precision", "ndcg")},
            )
            rows.append(row)
            log(
                f"[recommend] k={k} {library} {label}: fit {seconds(f.fit_s)} ({f.n_iter} its), "
                + ", ".join(f"{m} {row[m]:.4f}" for m in ("rmse", "precision", "ndcg") if m in row)
            )
    return {
        "dataset": data["dataset"],
        "description": (
            f"{data['dataset']}; ingest {seconds(data['ingest_s'])}. One seeded random 80/20 split "
            f"(train {train.nnz:,}, test {test.nnz:,} ratings), every model scored by `dnmf.evaluate`. "
            f"RMSE over the {known.nnz:,} test ratings whose user and item have training ratings (Spark "
            "has no factors for the others); P@10 and NDCG@10 over all test items of each user with "
            "test items, the user's training items left out. Fit: wall time of `fit` (setup included; "
            "Spark's from a cached DataFrame, the JVM started); per iteration: fit / iterations. "
            "dnmf on local threads, implicit on its own threads, Spark `local[2]`."
        ),
        "rows": rows,
    }


# ---------------------------------------------------------------------------
# rmse-cv: k-fold RMSE, dnmf's explicit defaults against Spark ALS with its best regParam
# ---------------------------------------------------------------------------


def run_rmse_cv(args, cache: dict) -> dict:
    if not args.ratings:
        return {"skipped": "skipped: no ratings file given (`--ratings PATH`, e.g. MovieLens' ratings.csv)"}
    from dnmf.recommend.evaluation import rmse

    data = _ratings(args, cache)
    runner = _spark(cache)
    if isinstance(runner, libs.Missing):
        return {"skipped": f"skipped: {runner}"}
    folds = libs.kfold(data["X"], args.folds, seed=0)

    # Spark's regParam: best validation RMSE on a seeded 20% of the first fold's training ratings.
    fit_part, val = libs.carve(folds[0][0], share=0.2, seed=1)
    val = libs.known_only(val, fit_part)
    regs = (0.1,) if args.quick else SPARK_REGS
    validation = {}
    for reg in regs:
        f = _spark_fit(cache, fit_part, CV_RANK, reg=reg, iterations=SPARK_ITERS)
        validation[reg] = rmse(f.factors, val)
        log(f"[rmse-cv] Spark regParam {reg}: validation RMSE {validation[reg]:.4f}")
    best = min(validation, key=validation.get)
    _drop_frames(cache)

    rows = []
    for i, (train, test) in enumerate(folds):
        test = libs.known_only(test, train)
        d = libs.fit_dnmf(train, CV_RANK, feedback="explicit")
        s = _spark_fit(cache, train, CV_RANK, reg=best, iterations=SPARK_ITERS)
        _drop_frames(cache)  # one fold's DataFrame at a time
        row = {
            "fold": i + 1,
            "n_test": int(test.nnz),
            "dnmf_rmse": rmse(d.factors, test),
            "spark_rmse": rmse(s.factors, test),
            "dnmf_fit_s": d.fit_s,
            "dnmf_iter": d.n_iter,
            "spark_fit_s": s.fit_s,
        }
        rows.append(row)
        log(f"[rmse-cv] fold {i + 1}: dnmf {row['dnmf_rmse']:.4f}, Spark {row['spark_rmse']:.4f}")
    dnmf_mean = statistics.fmean(r["dnmf_rmse"] for r in rows)
    spark_mean = statistics.fmean(r["spark_rmse"] for r in rows)
    return {
        "dataset": data["dataset"],
        "folds": args.folds,
        "k": CV_RANK,
        "spark_regs": [[reg, v] for reg, v in validation.items()],
        "spark_reg": best,
        "rows": rows,
        "dnmf_mean": dnmf_mean,
        "spark_mean": spark_mean,
        "dnmf_sd": statistics.stdev(r["dnmf_rmse"] for r in rows) if len(rows) > 1 else 0.0,
        "spark_sd": statistics.stdev(r["spark_rmse"] for r in rows) if len(rows) > 1 else 0.0,
        "dnmf_wins_folds": sum(r["dnmf_rmse"] <= r["spark_rmse"] for r in rows),
    }


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _num(v, fmt: str = ".4f") -> str:
    return "–" if v is None else format(v, fmt)


def recommend_summary_rows(rec: dict) -> list[list[str]]:
    """The suite summary's rows of the recommend section: dnmf against each other library, per k."""
    out = []
    pairs = [
        ("explicit: test RMSE", "rmse", "RatingsNMF explicit", ("Spark", "ALS nonnegative,")),
        ("implicit: NDCG@10", "ndcg", "RatingsNMF implicit", ("implicit", "ALS")),
        ("implicit: NDCG@10", "ndcg", "RatingsNMF implicit", ("Spark", "ALS nonnegative implicitPrefs")),
    ]
    for k in sorted({m["k"] for m in rec["rows"]}):
        at_k = [m for m in rec["rows"] if m["k"] == k and "missing" not in m]
        for what, metric, ours, (library, prefix) in pairs:
            mine = next((m for m in at_k if m["library"] == "dnmf" and m["model"].startswith(ours)), None)
            theirs = next((m for m in at_k if m["library"] == library and m["model"].startswith(prefix)), None)
            if mine is None or theirs is None:
                continue
            out.append(
                [
                    f"recommendation, {what}",
                    f"k={k}, {ours} vs {library} {theirs['model']}",
                    f"{mine[metric]:.4f} (fit {seconds(mine['fit_s'])})",
                    f"{theirs[metric]:.4f} (fit {seconds(theirs['fit_s'])})",
                    f"{mine[metric] / theirs[metric]:.3f}x",
                ]
            )
    return out


def render_recommend(res: dict) -> list[str]:
    """The Markdown of both sections (empty when neither ran)."""
    from benchmarks._common import markdown_table

    lines: list[str] = []
    rec = res.get("recommend")
    if rec:
        lines += ["## Recommendation: dnmf, implicit and Spark side by side", ""]
        if "rows" in rec:
            lines += [rec["description"], ""]
            body = []
            for m in rec["rows"]:
                head = [m["library"], m["model"], m["k"]]
                if "missing" in m:
                    body.append([*head, f"not run: {m['missing']}", "", "", "", "", ""])
                    continue
                body.append(
                    [
                        *head,
                        seconds(m["fit_s"]),
                        m["n_iter"],
                        seconds(m["per_iter_s"]),
                        _num(m.get("rmse")),
                        _num(m.get("precision")),
                        _num(m.get("ndcg")),
                    ]
                )
            cols = ["library", "model", "k", "fit", "iterations", "fit / iteration", "RMSE", "P@10", "NDCG@10"]
            lines += [markdown_table(cols, body, align="llr" + "r" * 6), ""]
        else:
            lines += [rec.get("skipped") or f"failed: {rec.get('error')}", ""]
    cv = res.get("rmse-cv")
    if cv:
        lines += ["## Explicit ratings: k-fold RMSE against Spark ALS", ""]
        if "rows" in cv:
            regs = ", ".join(f"{r:g}: {v:.4f}" for r, v in cv["spark_regs"])
            lines += [
                f"{cv['dataset']}; {cv['folds']} seeded folds of the ratings (the same for both), rank "
                f"{cv['k']}; RMSE over each test fold's ratings whose user and item have training ratings, "
                f"by `dnmf.rmse`. dnmf: `RatingsNMF({cv['k']})`, its explicit defaults (not tuned). Spark: "
                f"ALS `nonnegative=True`, {SPARK_ITERS} iterations, regParam {cv['spark_reg']:g}, the best "
                f"validation RMSE on a seeded 20% of the first fold's training ratings ({regs}).",
                "",
            ]
            body = [
                [
                    r["fold"],
                    f"{r['n_test']:,}",
                    f"{r['dnmf_rmse']:.4f}",
                    f"{r['spark_rmse']:.4f}",
                    seconds(r["dnmf_fit_s"]),
                    r["dnmf_iter"],
                    seconds(r["spark_fit_s"]),
                ]
                for r in cv["rows"]
            ]
            body.append(
                [
                    "mean ± sd",
                    "",
                    f"**{cv['dnmf_mean']:.4f}** ± {cv['dnmf_sd']:.4f}",
                    f"**{cv['spark_mean']:.4f}** ± {cv['spark_sd']:.4f}",
                    "",
                    "",
                    "",
                ]
            )
            cols = ["fold", "test ratings", "dnmf RMSE", "Spark RMSE", "dnmf fit", "dnmf its", "Spark fit"]
            lines += [
                markdown_table(cols, body),
                "",
                f"dnmf's RMSE is at most Spark's on {cv['dnmf_wins_folds']} of {cv['folds']} folds; "
                f"mean ratio {cv['dnmf_mean'] / cv['spark_mean']:.4f}.",
                "",
            ]
        else:
            lines += [cv.get("skipped") or f"failed: {cv.get('error')}", ""]
    return lines
