"""Recommendations from a ratings CSV: ingest, fit, evaluate, recommend.

1. ``dnmf.ingest`` streams the CSV into a sparse matrix store (users x items)
   with ID maps (any user/item IDs).
2. A seeded 80/20 split of the ratings (``dnmf.train_test_split``) scores three
   models on the held-out ratings: the masked ``RatingsNMF`` (observed ratings
   only: predicts ratings, RMSE/MAE), ``RatingsNMF(feedback="implicit")`` and
   plain ``dnmf.NMF`` (missing = 0: rank items, precision/recall/NDCG@10).
3. The ranking model is refitted on every rating, from the store (so it keeps
   the IDs), and recommends 10 unseen items for one user, printed as a table
   next to what that user rated.

By default the ratings are generated: 8 genres of items ("scifi-017" is a
science-fiction item), each user likes one or two genres and rates mostly
those, highly; a good recommender suggests unseen items of those genres.

    python examples/recommend.py                          # generated ratings (~30 s)
    python examples/recommend.py --quick                  # smaller (CI)
    python examples/recommend.py --ratings ml-latest-small/ratings.csv --user 414
        # MovieLens-style CSV (userId, movieId, rating); titles are shown when a
        # movies.csv (movieId, title, ...) lies next to it, or with --titles PATH
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

GENRES = ("action", "comedy", "drama", "horror", "scifi", "romance", "documentary", "animation")


def generate_ratings(path: str, n_users: int, n_items: int, per_user: int, seed: int = 0) -> None:
    """A ratings CSV (userId, movieId, rating, timestamp) with genre tastes."""
    rng = np.random.default_rng(seed)
    genre_of = np.arange(n_items) % len(GENRES)
    items = np.array([f"{GENRES[g]}-{j // len(GENRES):03d}" for j, g in enumerate(genre_of)])
    quality = rng.normal(0, 0.4, n_items)
    popularity = rng.zipf(1.6, n_items).astype(float)  # a few blockbusters per genre
    rows = []
    for u in range(n_users):
        liked = rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False)
        count = max(5, int(rng.poisson(per_user)))
        fav = np.isin(genre_of, liked)
        weight = popularity * np.where(fav, 8.0, 1.0)  # mostly, not only, the liked genres
        chosen = rng.choice(n_items, size=min(count, n_items), replace=False, p=weight / weight.sum())
        base = np.where(fav[chosen], 4.1, 2.4)
        rating = np.clip(np.round(2 * (base + quality[chosen] + rng.normal(0, 0.5, chosen.size))) / 2, 0.5, 5.0)
        for j, r in zip(chosen, rating, strict=True):
            rows.append((f"u{u:05d}", items[j], float(r), 1_600_000_000 + len(rows)))
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(path, index=False)


def _titles(args) -> dict | None:
    path = args.titles
    if path is None and args.ratings:
        guess = os.path.join(os.path.dirname(os.path.abspath(args.ratings)), "movies.csv")
        path = guess if os.path.exists(guess) else None
    if path is None:
        return None
    movies = pd.read_csv(path)
    return dict(
        zip(movies.iloc[:, 0].astype(str), movies["title"] if "title" in movies else movies.iloc[:, 1], strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", default=None, help="ratings CSV (default: generated)")
    p.add_argument("--user-col", default="userId")
    p.add_argument("--item-col", default="movieId")
    p.add_argument("--value-col", default="rating")
    p.add_argument("--titles", default=None, help="CSV of item ID, title (default: movies.csv next to --ratings)")
    p.add_argument("--user", default=None, help="user ID to recommend for (default: the first user)")
    p.add_argument("-k", "--n-components", type=int, default=None, help="factors (default 20; 8 with --quick)")
    p.add_argument("-n", "--top", type=int, default=10, help="items to recommend")
    p.add_argument(
        "--recommender",
        choices=("auto", "implicit", "nmf"),
        default="auto",
        help="model that recommends: the better ranking model on the split (auto), "
        "RatingsNMF(feedback='implicit') or plain NMF",
    )
    p.add_argument("--quick", action="store_true", help="small generated data (CI)")
    p.add_argument("--dir", default=None, help="working folder for the CSV and store (default: temporary)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    k = args.n_components or (8 if args.quick else 20)

    import dnmf
    from dnmf import RatingsNMF
    from dnmf.recommend.evaluation import evaluate, train_test_split
    from dnmf.recommend.factors import Factors

    warnings.simplefilter("ignore")  # ConvergenceWarnings of the short fits are expected here
    work = args.dir or tempfile.mkdtemp(prefix="dnmf-recommend-")
    os.makedirs(work, exist_ok=True)
    try:
        # 1. Ingest.
        csv = args.ratings
        if csv is None:
            csv = os.path.join(work, "ratings.csv")
            n_users, n_items, per_user = (400, 160, 25) if args.quick else (3000, 800, 40)
            generate_ratings(csv, n_users, n_items, per_user, seed=args.seed)
        t = time.perf_counter()
        store_path = os.path.join(work, "ratings.zarr")
        store = dnmf.ingest(
            csv, store_path, user_col=args.user_col, item_col=args.item_col, value_col=args.value_col, overwrite=True
        )
        print(
            f"ingested {csv}: {store.shape[0]:,} users x {store.shape[1]:,} items, {store.nnz:,} ratings "
            f"({time.perf_counter() - t:.1f} s)"
        )

        # 2. Split and evaluate on held-out ratings.
        X = store.data.compute().tocsr()
        train, test = train_test_split(X, method="random", test_size=0.2, random_state=args.seed)
        print(f"split: {train.nnz:,} training / {test.nnz:,} test ratings (seeded, random)\n")
        results = []
        ranking = ["precision", "recall", "ndcg"]

        def fit(est, data):
            t0 = time.perf_counter()
            out = est.fit_transform(data) if isinstance(est, dnmf.NMF) else est.fit(data)
            return out, time.perf_counter() - t0

        explicit = RatingsNMF(k, feedback="explicit", max_iter=20, random_state=args.seed)
        _, secs = fit(explicit, train)
        results.append(
            (
                "RatingsNMF explicit (masked)",
                secs,
                evaluate(explicit, test, train=train, k=10, metrics=["rmse", "mae", *ranking]),
            )
        )
        implicit = RatingsNMF(k, feedback="implicit", max_iter=20, random_state=args.seed)
        _, secs = fit(implicit, train)
        results.append(("RatingsNMF implicit", secs, evaluate(implicit, test, train=train, k=10, metrics=ranking)))
        nmf = dnmf.NMF(k, init="nndsvda", max_iter=100, random_state=args.seed)
        W, secs = fit(nmf, train)
        results.append(
            (
                "NMF (missing = 0)",
                secs,
                evaluate(Factors.from_model(nmf, W=W), test, train=train, k=10, metrics=ranking),
            )
        )

        print(f"{'model':<30} {'fit':>7} {'RMSE':>7} {'MAE':>7} {'P@10':>7} {'R@10':>7} {'NDCG@10':>8}")
        for name, secs, m in results:
            cells = [f"{m[key]:.4f}" if key in m else "–" for key in ("rmse", "mae", "precision", "recall", "ndcg")]
            print(f"{name:<30} {secs:>6.1f}s {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} {cells[3]:>7} {cells[4]:>8}")
        if args.recommender == "auto":
            best = max(results[1:], key=lambda r: r[2]["ndcg"])
            why = "best NDCG@10"
        else:
            best = results[1] if args.recommender == "implicit" else results[2]
            why = "--recommender"
        print(f"\nranking model: {best[0]} ({why}); refitted on all ratings from the store")

        # 3. Refit the ranking model on everything (from the store: it keeps the IDs) and recommend.
        if best[0].startswith("RatingsNMF"):
            model = RatingsNMF(k, feedback="implicit", max_iter=20, random_state=args.seed).fit(store_path)
            user = args.user if args.user is not None else model.user_ids_[0]
            user = _as_id(user, model.user_ids_)
            recs = model.recommend([user], n=args.top)
            items, scores = list(recs["item"]), list(recs["score"])
        else:
            full = dnmf.NMF(k, init="nndsvda", max_iter=100, random_state=args.seed)
            W_full = full.fit_transform(store_path)  # streamed from the store: W comes back as a Dask array
            factors = Factors.from_model(full, W=np.asarray(W_full.compute()))
            factors.row_ids = full.sample_ids_  # the store's user IDs (item IDs come with from_model)
            user = _as_id(args.user if args.user is not None else store.row_ids[0], store.row_ids)
            from dnmf.recommend.factors import recommend

            row = int(factors.row_index([user])[0])
            idx, sc = recommend(factors, np.array([row]), n=args.top, exclude=X[[row]])
            items, scores = list(store.col_ids[idx[0]]), list(sc[0])

        row = int(store.row_ids.get_loc(user))
        seen = X[row]
        seen_ids = store.col_ids[seen.indices]
        titles = _titles(args)

        def label(item):
            name = titles.get(str(item)) if titles else None
            return f"{item} ({name})" if name else str(item)

        print(f"\nuser {user}: {seen.nnz} ratings, mean {seen.data.mean():.2f}")
        top_rated = np.argsort(-seen.data, kind="stable")[:5]
        print("  rated highest: " + ", ".join(f"{label(seen_ids[i])} {seen.data[i]:g}" for i in top_rated))
        if args.ratings is None:
            liked = pd.Series([str(i).split("-")[0] for i in seen_ids[seen.data >= 4]]).value_counts()
            print("  favourite genres (ratings >= 4): " + ", ".join(f"{g} ({c})" for g, c in liked.items()))
        width = max([len("item")] + [len(label(item)) for item in items])
        print(f"\n{'rank':>4}  {'item':<{width}}  {'score':>8}")
        for r, (item, s) in enumerate(zip(items, scores, strict=True), 1):
            print(f"{r:>4}  {label(item):<{width}}  {s:>8.4f}")
        already = len(set(map(str, items)) & set(map(str, seen_ids)))
        print(f"\nalready rated by {user}: {already} of {len(items)} recommended items")
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _as_id(value, index: pd.Index):
    """A user ID typed like the index (command-line IDs arrive as text)."""
    if value in index:
        return value
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        as_int = None
    if as_int is not None and as_int in index:
        return as_int
    raise SystemExit(f"unknown user {value!r}; known users include {list(index[:5])}")


if __name__ == "__main__":
    sys.exit(main())
