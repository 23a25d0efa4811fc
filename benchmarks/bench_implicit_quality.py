"""Benchmark: top-10 quality of ``RatingsNMF(feedback="implicit")`` vs the ``implicit`` package's ALS.

On a ratings CSV (e.g. MovieLens ml-latest-small) and on a generated
implicit-feedback data set (play counts with power-law popularity and a
planted taste structure), one seeded 80/20 split each
(``dnmf.train_test_split(method="random", test_size=0.2)``: every rating goes
to test with probability 0.2, so about 20% of each user's ratings), fits

- ``implicit.als.AlternatingLeastSquares(factors=20)`` with its defaults
  (``regularization=0.01``, ``alpha=1``: confidence ``c = x``, 15 iterations);
- the popularity baseline (the most-rated items);
- ``dnmf.RatingsNMF(20, feedback="implicit")`` with its default parameters,
  without the users' count power (``user_count_power=0``), with the
  defaults it had before both (``alpha=0.1, reg_scaling="none",
  user_count_power=0``) and with candidate settings: other ``alpha`` and
  ``user_count_power``, each ``confidence_form``, a ``preference_threshold``
  (ratings only);

and scores all of them with the same function, ``dnmf.evaluate`` (NDCG@10
and precision@10 over the users with test items, each user's training items
left out of the top 10). Fit times are wall-clock on this machine (rough on a
shared one; the quality numbers do not depend on the load).

    python benchmarks/bench_implicit_quality.py --ratings path/to/ml-latest-small/ratings.csv
    python benchmarks/bench_implicit_quality.py --ratings PATH --quick   # defaults only, < 2 min
    python benchmarks/bench_implicit_quality.py --ratings PATH --tuned   # k=64, both tuned: 40 min on 2 busy cores

``--tuned``: both libraries at k = 64 (``--tuned-k``), with their defaults
and tuned on one validation split of the training entries (``dnmf.tune``
for dnmf over ``DNMF_GRID``; the same split and a loop for ``implicit``
over ``IMPLICIT_GRID``), each best refitted on all the training entries and
scored on the test entries.

Without ``--ratings`` only the generated data set is used. The CSV is read
into memory and never written anywhere. ``implicit`` is optional
(``pip install implicit``); without it its rows are skipped with a note.
Writes ``implicit-quality.md`` and ``.json`` under ``--out`` (bench-results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    format_machine,
    load_ratings,
    log,
    machine_info,
    markdown_table,
    run_footer,
    write_results,
)

K = 20
IMPLICIT_HINT = "`implicit` is not installed: `pip install implicit` to add its ALS as the reference"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def generated_counts(m: int, n: int, events: float, k: int = 8, seed: int = 0) -> sp.csr_matrix:
    """Implicit feedback (play counts): each user draws about ``events`` plays.

    A user's plays follow ``p(j | u) ∝ popularity_j · (w_u · h_j)``: Zipf-like
    popularity (exponent 0.8) times a planted non-negative taste structure
    (Dirichlet(0.3) user mixtures over ``k`` tastes, Gamma(0.3) item loadings);
    plays per user are log-normal. Repeated plays of an item add up, so the
    values are counts with a heavy tail. Users and items without plays are
    dropped.
    """
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.full(k, 0.3), size=m)
    H = rng.gamma(0.3, 1.0, size=(k, n))
    popularity = (1.0 + rng.permutation(n)) ** -0.8
    P = (W @ H) * popularity
    P /= P.sum(axis=1, keepdims=True)
    plays = np.maximum(5, rng.lognormal(np.log(events), 0.8, size=m)).astype(np.int64)
    cdf = np.cumsum(P, axis=1)
    rows = np.repeat(np.arange(m), plays)
    cols = np.concatenate([np.searchsorted(cdf[u], rng.random(plays[u]), side="right") for u in range(m)])
    cols = np.minimum(cols, n - 1)
    X = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(m, n))
    X.sum_duplicates()
    X = X[np.diff(X.indptr) > 0]
    X = sp.csr_matrix(X[:, np.diff(X.tocsc().indptr) > 0])
    X.sort_indices()
    return X


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def evaluate(factors, train, test) -> dict:
    """NDCG@10 and precision@10, training items left out: the one function every model is scored with."""
    import dnmf

    r = dnmf.evaluate(factors, test, train=train, k=10, metrics=["precision", "ndcg"])
    return {"ndcg": float(r["ndcg"]), "precision": float(r["precision"]), "n_users": int(r["n_users"])}


def fit_implicit(train, seed: int, factors: int = K, **params) -> tuple | None:
    """``implicit``'s ALS (its defaults unless ``params`` says otherwise) and its factors, or None when not installed."""
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        return None
    from dnmf.recommend.factors import Factors

    model = AlternatingLeastSquares(factors=factors, random_state=seed, **params)
    t = time.perf_counter()
    model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
    seconds = time.perf_counter() - t
    user, item = model.user_factors, model.item_factors
    if hasattr(user, "to_numpy"):  # a GPU model
        user, item = user.to_numpy(), item.to_numpy()
    factors_ = Factors(W=np.asarray(user, dtype=np.float64), H=np.asarray(item, dtype=np.float64).T)
    return factors_, seconds, model.iterations


def fit_dnmf(train, seed: int, params: dict, k: int = K) -> tuple:
    import dnmf

    model = dnmf.RatingsNMF(k, feedback="implicit", random_state=seed, **params)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train)
    return model, time.perf_counter() - t


def candidates(kind: str, quick: bool) -> list[tuple[str, dict]]:
    """The dnmf settings to fit: (label, RatingsNMF parameters)."""
    rows = [
        ("dnmf, defaults", {}),
        ("dnmf, user_count_power=0 (the defaults before it)", {"user_count_power": 0.0}),
        (
            'dnmf, old defaults (alpha=0.1, reg_scaling="none", user_count_power=0)',
            {"alpha": 0.1, "reg_scaling": "none", "user_count_power": 0.0},
        ),
    ]
    if quick:
        return rows
    rows += [
        ("dnmf, user_count_power=0.5", {"user_count_power": 0.5}),
        ("dnmf, user_count_power=1 (ALS-WR's full count)", {"user_count_power": 1.0}),
        ("dnmf, alpha=0.15 (half the default)", {"alpha": 0.15}),
        ("dnmf, alpha=0.6 (twice the default)", {"alpha": 0.6}),
        ('dnmf, alpha=30, reg_scaling="none" (issue 16\'s tuned penalty)', {"alpha": 30.0, "reg_scaling": "none"}),
        ('dnmf, confidence_form="log" (c = 1 + log(1 + x))', {"confidence_form": "log"}),
        ('dnmf, confidence_form="proportional" (c = x)', {"confidence_form": "proportional"}),
    ]
    if kind == "ratings":
        rows += [
            ("dnmf, confidence=3", {"confidence": 3.0}),
            ("dnmf, preference_threshold=2 (ratings < 2: not preferred)", {"preference_threshold": 2.0}),
            (
                'dnmf, confidence_form="proportional", preference_threshold=2',
                {"confidence_form": "proportional", "preference_threshold": 2.0},
            ),
        ]
    else:
        rows += [
            ('dnmf, confidence_form="log", confidence=3', {"confidence_form": "log", "confidence": 3.0}),
            ("dnmf, confidence=40 (Hu et al.'s play counts)", {"confidence": 40.0}),
        ]
    return rows


def run_dataset(name: str, kind: str, X, args) -> dict:
    import dnmf

    train, test = dnmf.train_test_split(X, method="random", test_size=0.2, random_state=args.seed)
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    title = f"{name}: {X.shape[0]:,} users x {X.shape[1]:,} items, {X.nnz:,} entries (train {train.nnz:,})"
    log(f"== {title}")
    rows = []
    fitted = fit_implicit(train, args.seed)
    if fitted is None:
        log(IMPLICIT_HINT)
        rows.append({"model": "implicit ALS, defaults (factors=20)", "skipped": IMPLICIT_HINT})
    else:
        factors, seconds, iterations = fitted
        r = evaluate(factors, train, test)
        rows.append({"model": "implicit ALS, defaults (factors=20)", "fit_s": seconds, "n_iter": iterations, **r})
        log(f"   implicit ALS: {r}")
    from dnmf.recommend.factors import popularity_baseline

    r = evaluate(popularity_baseline(train), train, test)
    rows.append({"model": "popularity (most-rated items)", "fit_s": None, "n_iter": None, **r})
    log(f"   popularity: {r}")
    for label, params in candidates(kind, args.quick):
        model, seconds = fit_dnmf(train, args.seed, params)
        r = evaluate(model, train, test)
        p = model._fitted_params()
        rows.append(
            {
                "model": label,
                "params": params,
                "fit_s": seconds,
                "n_iter": int(model.n_iter_),
                "penalty": p.l2 + p.l1,
                "confidence_mean": float(model.confidence_mean_),
                **r,
            }
        )
        log(f"   {label}: {r}, penalty {p.l2 + p.l1:.4g}, {model.n_iter_} iterations, {seconds:.1f} s")
    return {"name": name, "title": title, "shape": list(X.shape), "nnz": int(X.nnz), "rows": rows}


#: ``--tuned``: the grids searched on the validation split (a handful of candidates each).
DNMF_GRID = {"alpha": [0.15, 0.3, 0.6], "confidence_form": ["linear", "log"]}
IMPLICIT_GRID = {"regularization": [0.1, 1.0, 10.0, 30.0, 100.0], "alpha": [0.25, 0.5, 1.0, 2.0, 5.0]}


def tune_implicit(fit_part, valid, seed: int, k: int) -> tuple[dict, float, list]:
    """implicit's ALS over IMPLICIT_GRID, scored on the validation split: (best params, its score, all rows)."""
    from sklearn.model_selection import ParameterGrid

    rows = []
    for params in ParameterGrid(IMPLICIT_GRID):
        fitted = fit_implicit(fit_part, seed, k, **params)
        assert fitted is not None
        rows.append((evaluate(fitted[0], fit_part, valid)["ndcg"], dict(params)))
    best = max(range(len(rows)), key=lambda i: (rows[i][0], -i))  # the first of equal scores
    return rows[best][1], rows[best][0], rows


def run_tuned(name: str, kind: str, X, args) -> dict:
    """Both libraries at k = ``--tuned-k``, defaults and tuned on one validation split of the training data.

    The validation split is the one ``dnmf.tune`` carves (``validation_split(train, 0.2,
    random_state=seed)``); implicit's grid is searched on the same one by hand; each best setting is
    refitted on the whole training part and scored on the test part. ``kind`` (ratings or counts)
    does not change the grids: the same search for every data set.
    """
    import dnmf

    k = args.tuned_k
    train, test = dnmf.train_test_split(X, method="random", test_size=0.2, random_state=args.seed)
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    from dnmf.recommend.tuning import validation_split

    fit_part, valid = validation_split(train, 0.2, random_state=args.seed)
    title = f"{name}: {X.shape[0]:,} users x {X.shape[1]:,} items, {X.nnz:,} entries (train {train.nnz:,})"
    log(f"== {title} (tuned, k={k})")
    rows = []
    defaults = fit_implicit(train, args.seed, k)
    if defaults is None:
        log(IMPLICIT_HINT)
        rows.append({"model": f"implicit ALS (factors={k})", "skipped": IMPLICIT_HINT})
    else:
        r = evaluate(defaults[0], train, test)
        rows.append({"model": f"implicit ALS (factors={k}), defaults", "params": {}, "tune_s": None, **r})
        log(f"   implicit defaults: {r}")
        t = time.perf_counter()
        best, score, _ = tune_implicit(fit_part, valid, args.seed, k)
        refit = fit_implicit(train, args.seed, k, **best)
        assert refit is not None
        seconds = time.perf_counter() - t
        r = evaluate(refit[0], train, test)
        rows.append(
            {"model": f"implicit ALS (factors={k}), tuned", "params": best, "valid": score, "tune_s": seconds, **r}
        )
        log(f"   implicit tuned {best} (validation {score:.4f}): {r}, {seconds:.0f} s")
    model, seconds = fit_dnmf(train, args.seed, {}, k)
    r = evaluate(model, train, test)
    rows.append({"model": f"dnmf RatingsNMF({k}), defaults", "params": {}, "tune_s": None, **r})
    log(f"   dnmf defaults: {r}, {seconds:.0f} s")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dnmf.tune(
            dnmf.RatingsNMF(k, feedback="implicit", random_state=args.seed),
            train,
            DNMF_GRID,
            metric="ndcg@10",
            validation_size=0.2,
            random_state=args.seed,
        )
    seconds = time.perf_counter() - t
    r = evaluate(result.best_estimator_, train, test)
    rows.append(
        {
            "model": f"dnmf RatingsNMF({k}), tuned with dnmf.tune",
            "params": result.best_params_,
            "valid": result.best_score_,
            "tune_s": seconds,
            **r,
        }
    )
    log(f"   dnmf tuned {result.best_params_} (validation {result.best_score_:.4f}): {r}, {seconds:.0f} s")
    log(result.results_.drop(columns=["params"]).to_string())
    return {"name": name, "title": title, "shape": list(X.shape), "nnz": int(X.nnz), "rows": rows}


def render_tuned(results) -> str:
    out = ["# Implicit feedback: tuned top-10 quality", "", "```", format_machine(results["machine"]), "```"]
    out += [
        "",
        f"Grids: dnmf {DNMF_GRID} (with `dnmf.tune`); implicit {IMPLICIT_GRID}. Both on the same validation "
        "split (20% of the training entries), best refitted on all the training entries.",
    ]
    for d in results["datasets"]:
        out += ["", f"{d['title']}; seeded 80/20 split (seed {results['seed']}); @10, training items left out:", ""]
        body = []
        for r in d["rows"]:
            if "skipped" in r:
                body.append([r["model"], "–", "–", "–", "–", r["skipped"]])
                continue
            body.append(
                [
                    r["model"],
                    ", ".join(f"{key}={value}" for key, value in r["params"].items()) or "–",
                    "–" if r.get("valid") is None else f"{r['valid']:.4f}",
                    f"{r['ndcg']:.4f}",
                    f"{r['precision']:.4f}",
                    "–" if r["tune_s"] is None else f"{r['tune_s']:.0f} s",
                ]
            )
        out.append(markdown_table(["model", "parameters", "validation NDCG@10", "NDCG@10", "P@10", "tuning"], body))
    out += ["", run_footer(results)]
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", default=None, help="ratings CSV, e.g. ml-latest-small/ratings.csv (never copied)")
    p.add_argument("--user-col", default="userId")
    p.add_argument("--item-col", default="movieId")
    p.add_argument("--value-col", default="rating")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every model")
    p.add_argument("--quick", action="store_true", help="the defaults only (implicit, dnmf new and old)")
    p.add_argument("--no-generated", action="store_true", help="skip the generated data set")
    p.add_argument(
        "--tuned",
        action="store_true",
        help="instead: both libraries at --tuned-k, defaults and tuned on a validation split (dnmf.tune)",
    )
    p.add_argument("--tuned-k", type=int, default=64, help="factors of the --tuned comparison")
    p.add_argument("--out", default="bench-results")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    log(format_machine(info))
    started = time.perf_counter()
    results = {"machine": info, "seed": args.seed, "quick": args.quick, "tuned": args.tuned, "datasets": []}
    run = run_tuned if args.tuned else run_dataset
    if args.ratings:
        X = load_ratings(args.ratings, args.user_col, args.item_col, args.value_col)
        label = "/".join(os.path.abspath(args.ratings).split(os.sep)[-2:])
        results["datasets"].append(run(label, "ratings", X, args))
    if not args.no_generated:
        m, n, events = (600, 900, 30) if args.quick else (2000, 3000, 40)
        X = generated_counts(m, n, events, seed=args.seed)
        label = f"generated play counts (seed {args.seed})"
        results["datasets"].append(run(label, "counts", X, args))
    results["elapsed_s"] = time.perf_counter() - started
    results["loadavg_at_end"] = os.getloadavg()
    md = render_tuned(results) if args.tuned else render(results)
    print(md)
    stem = "implicit-quality" + ("-tuned" if args.tuned else "") + ("-quick" if args.quick else "")
    paths = write_results(args.out, stem, md, results)
    log(f"\nwrote {paths[0]} and {paths[1]}")
    return results


def render(results) -> str:
    out = ["# Implicit feedback: top-10 quality", "", "```", format_machine(results["machine"]), "```"]
    for d in results["datasets"]:
        out += ["", f"{d['title']}; seeded 80/20 split (seed {results['seed']}); @10, training items left out:", ""]
        body = []
        for r in d["rows"]:
            if "skipped" in r:
                body.append([r["model"], "–", "–", "–", "–", r["skipped"]])
                continue
            body.append(
                [
                    r["model"],
                    f"{r['ndcg']:.4f}",
                    f"{r['precision']:.4f}",
                    "–" if r["fit_s"] is None else f"{r['fit_s']:.1f} s",
                    "–" if r["n_iter"] is None else r["n_iter"],
                    "" if "penalty" not in r else f"{r['penalty']:.3g}",
                ]
            )
        out.append(markdown_table(["model", "NDCG@10", "P@10", "fit", "iterations", "penalty weight"], body))
    out += [
        "",
        "Penalty weight: the L2 weight per user and item the dnmf fit used (alpha times the scale of "
        "reg_scaling, (users·items)^(1/4)·c̄^(2/3) by default). Fit times are rough (wall clock on this machine, other processes included).",
        "",
        run_footer(results),
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
