"""Bit-identity hashes of the factors of a fixed set of seeded dnmf fits.

What it is for
--------------
Proving that a refactor (or any change that should not change results) keeps
every fitted factor *bit for bit* identical. Before the change, record the
hashes; after it, check them:

    PYTHONPATH=. python tools/factor_hashes.py --record before.json   # on the old code
    PYTHONPATH=. python tools/factor_hashes.py --check before.json    # on the new code

``tools/factor_hashes.baseline.json`` next to this script is a recorded
baseline. ``--check`` prints ``OK`` or ``DIFFERENT`` per case and exits 1 if
any case differs or is missing (in the file or in the run). ``--cases
PATTERN`` runs a subset: comma-separated glob patterns (``nmf-mu-*``), a
pattern without wildcards matching as a substring (``ratings``). With neither
``--record`` nor ``--check`` it prints the hashes. ``--list`` lists the cases.

The hashes depend on the machine: its BLAS (OpenBLAS/MKL and their kernels
for the CPU), the NumPy/SciPy/Dask versions and the number of threads all
change the last bits of floating-point results. So record and check **on the
same machine, in the same environment**; a baseline from another machine
says nothing (the file records its environment under ``_environment`` and
``--check`` says when it differs from the running one). The whole run takes about a minute on 2 cores.

What is hashed
--------------
Each case runs one small, seeded, fixed-length fit on deterministic generated
data (300 x 200, k = 5, several blocks in both directions so the blocked
graphs are exercised) and hashes with SHA-256, in a fixed order, each
result's name, dtype, shape and exact bytes: W and H as C-contiguous arrays of
their own dtype, ``n_iter_`` and the loss (and stationarity) histories as
float64, and for ``RatingsNMF`` the user/item biases and the global mean.

The cases: ``dnmf.NMF`` with solvers mu, cd, anls-bpp and mu with the
Kullback-Leibler loss, each on a dense NumPy array, a SciPy CSR matrix, a
multi-block Dask array, and a sparse and a dense Zarr store written with
``dnmf.write_matrix`` and fitted by path; mu and cd on the CSR matrix cut
into 8 row blocks (so that the order of sums over row blocks is covered); a
float32 input; ``select_rank``
(method "cv"); ``RatingsNMF`` explicit with and without biases, CCD, and
implicit; ``non_negative_factorization``; fits resumed from a checkpoint
(and the uninterrupted fits they must equal); an NMF and a RatingsNMF fit on
a ``distributed.LocalCluster`` with two worker processes.

Only names importable from the top-level ``dnmf`` package are used (never a
submodule path), so the script survives module moves. The ``dnmf`` imported
is the one in this checkout (the parent of ``tools/``) when it has one, else
the installed package; its location is printed first.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings

# This checkout's package first (when it has one at the top level).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "dnmf", "__init__.py")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402 -- after the sys.path insertion above
import scipy.sparse as sp  # noqa: E402

import dnmf  # noqa: E402

M, N, K = 300, 200, 5
BLOCK = (100, 100)  # 3 x 2 blocks
#: 8 x 1 blocks: sums over row blocks (pairwise, three levels) differ from sequential ones.
MANY_ROW_BLOCKS = (38, N)
#: 6 x 1 blocks: the pairwise tree's last level has three sums, which the column task adds.
SIX_ROW_BLOCKS = (50, N)
SEED = 0


def _quiet_warnings():
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    # The blocks are small on purpose (to have several); dnmf says so for stores.
    warnings.filterwarnings("ignore", message=r".*scheduling overhead will dominate", category=UserWarning)


# --------------------------------------------------------------------- data


def dense_matrix():
    """A planted rank-5 non-negative 300 x 200 matrix plus noise (all > 0)."""
    rng = np.random.default_rng(12345)
    W = rng.gamma(1.0, 1.0, size=(M, K))
    H = rng.gamma(1.0, 1.0, size=(K, N))
    return W @ H + 0.1 * rng.random((M, N)) + 1e-3


def sparse_matrix():
    """The dense matrix at a seeded 25% of its entries, as CSR."""
    rng = np.random.default_rng(23456)
    X = dense_matrix()
    X[rng.random(X.shape) >= 0.25] = 0.0
    return sp.csr_matrix(X)


def ratings_matrix():
    """300 users x 200 items, about 12% rated, integer ratings 1..5 with a planted structure."""
    rng = np.random.default_rng(34567)
    W = rng.gamma(1.0, 1.0, size=(M, K))
    H = rng.gamma(1.0, 1.0, size=(K, N))
    S = W @ H
    S = (S - S.min()) / (S.max() - S.min())
    R = np.clip(np.rint(1.0 + 4.0 * S + rng.normal(0.0, 0.5, S.shape)), 1, 5)
    R[rng.random(R.shape) >= 0.12] = 0.0
    return sp.csr_matrix(R)


# ------------------------------------------------------------------ hashing


def _as_array(value):
    if hasattr(value, "compute"):  # a Dask array
        value = value.compute()
    if sp.issparse(value):
        value = value.toarray()
    return np.asarray(value)


def digest(parts):
    """SHA-256 of (name, dtype, shape, bytes) of each part, in the given order.

    Arrays keep their own dtype (C-contiguous); ``float64:`` parts (counts,
    scalars, histories) are converted to float64 first.
    """
    h = hashlib.sha256()
    for name, value in parts:
        if value is None:
            h.update(f"{name}|None;".encode())
            continue
        arr = _as_array(value)
        if name.startswith("float64:"):
            arr = arr.astype(np.float64)
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def nmf_parts(model, W):
    parts = [
        ("W", W),
        ("H", model.components_),
        ("float64:n_iter", model.n_iter_),
        ("float64:loss_history", model.loss_history_),
    ]
    if hasattr(model, "stationarity_history_"):
        parts.append(("float64:stationarity_history", model.stationarity_history_))
    if hasattr(model, "reconstruction_err_"):
        parts.append(("float64:reconstruction_err", model.reconstruction_err_))
    return parts


def ratings_parts(model):
    return [
        ("W", model.user_factors_),
        ("H", model.components_),
        ("user_bias", model.user_bias_),
        ("item_bias", model.item_bias_),
        ("float64:global_mean", model.global_mean_),
        ("float64:n_iter", model.n_iter_),
        ("float64:loss_history", model.loss_history_),
    ]


# -------------------------------------------------------------------- cases


class Context:
    """Data, temporary directory and the (lazily started) LocalCluster."""

    def __init__(self, tmp):
        self.tmp = tmp
        self._cache = {}
        self._cluster = None
        self._client = None

    def get(self, name):
        if name not in self._cache:
            self._cache[name] = self._make(name)
        return self._cache[name]

    def _make(self, name):
        import dask.array as da

        if name == "dense":
            return dense_matrix()
        if name == "dense32":
            return dense_matrix().astype(np.float32)
        if name == "csr":
            return sparse_matrix()
        if name == "dask":
            return da.from_array(dense_matrix(), chunks=BLOCK)
        if name == "zarr":  # sparse store (CSR blocks)
            path = os.path.join(self.tmp, "X_sparse.zarr")
            dnmf.write_matrix(sparse_matrix(), path, chunks=BLOCK)
            return path
        if name == "zarr-dense":
            path = os.path.join(self.tmp, "X_dense.zarr")
            dnmf.write_matrix(dense_matrix(), path, chunks=BLOCK)
            return path
        if name == "ratings":
            return ratings_matrix()
        raise KeyError(name)

    def tmpdir(self, name):
        path = os.path.join(self.tmp, name)
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def client(self):
        if self._client is None:
            from distributed import Client, LocalCluster

            self._cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=50,
            )
            self._client = Client(self._cluster, set_as_default=False)
        return self._client

    def close(self):
        if self._client is not None:
            self._client.close()
            self._cluster.close()
            self._client = self._cluster = None


NMF_SOLVERS = {
    # name: (NMF parameters, max_iter)
    "mu": ({"solver": "mu"}, 30),
    "cd": ({"solver": "cd"}, 20),
    "anls-bpp": ({"solver": "anls-bpp"}, 10),
    "mu-kl": ({"solver": "mu", "beta_loss": "kullback-leibler"}, 30),
}
NMF_INPUTS = ("dense", "csr", "dask", "zarr", "zarr-dense")


def nmf_case(solver, source):
    params, max_iter = NMF_SOLVERS[solver]

    def run(ctx):
        X = ctx.get(source)
        model = dnmf.NMF(K, init="nndsvda", tol=0.0, max_iter=max_iter, random_state=SEED, chunks=BLOCK, **params)
        W = model.fit_transform(X)
        return nmf_parts(model, W)

    return run


def many_row_blocks_case(solver, chunks=MANY_ROW_BLOCKS):
    params, max_iter = NMF_SOLVERS[solver]

    def run(ctx):
        model = dnmf.NMF(K, init="nndsvda", tol=0.0, max_iter=max_iter, random_state=SEED, chunks=chunks, **params)
        W = model.fit_transform(ctx.get("csr"))
        return nmf_parts(model, W)

    return run


def case_nmf_random_init(ctx):
    model = dnmf.NMF(
        K,
        init="random",
        solver="cd",
        shuffle=True,
        tol=0.0,
        max_iter=15,
        random_state=7,
        chunks=BLOCK,
        alpha_W=1e-3,
        l1_ratio=0.5,
    )
    W = model.fit_transform(ctx.get("csr"))
    return nmf_parts(model, W)


def case_nmf_dense32(ctx):
    model = dnmf.NMF(K, solver="cd", tol=0.0, max_iter=20, random_state=SEED, chunks=BLOCK)
    W = model.fit_transform(ctx.get("dense32"))
    return nmf_parts(model, W)


def case_nnf_function(ctx):
    W, H, n_iter = dnmf.non_negative_factorization(
        ctx.get("csr"),
        n_components=K,
        solver="mu",
        beta_loss="kullback-leibler",
        tol=0.0,
        max_iter=20,
        random_state=SEED,
        chunks=BLOCK,
    )
    return [("W", W), ("H", H), ("float64:n_iter", n_iter)]


def case_select_rank_cv(ctx):
    res = dnmf.select_rank(
        ctx.get("csr"),
        ks=[2, 4, 6],
        method="cv",
        n_repeats=2,
        holdout=0.1,
        random_state=SEED,
        max_iter=15,
        chunks=BLOCK,
    )
    return [
        ("float64:scores", res.scores),
        ("float64:mean", res.mean),
        ("float64:std", res.std),
        ("float64:n_iter", res.n_iter),
        ("float64:chosen_k", res.chosen_k),
    ]


RATINGS_VARIANTS = {
    "explicit": {"feedback": "explicit", "biases": True, "max_iter": 10},
    "explicit-nobias": {"feedback": "explicit", "biases": False, "max_iter": 10},
    "explicit-ccd": {"feedback": "explicit", "solver": "ccd", "max_iter": 15},
    "implicit": {"feedback": "implicit", "max_iter": 10},
}


def ratings_case(variant):
    def run(ctx):
        model = dnmf.RatingsNMF(K, tol=0.0, random_state=SEED, chunks=BLOCK, **RATINGS_VARIANTS[variant])
        model.fit(ctx.get("ratings"))
        return ratings_parts(model)

    return run


def case_nmf_resumed(ctx):
    path = ctx.tmpdir("ckpt-nmf")
    X = ctx.get("csr")
    common = {"solver": "cd", "tol": 0.0, "random_state": SEED, "chunks": BLOCK}
    dnmf.NMF(K, max_iter=3, checkpoint=path, checkpoint_every=1, **common).fit(X)
    model = dnmf.NMF(K, max_iter=6, **common)
    W = model.fit_transform(X, resume=path)
    return nmf_parts(model, W)


def case_nmf_uninterrupted(ctx):
    """The fit that ``nmf-resumed`` must equal (the same hash)."""
    model = dnmf.NMF(K, solver="cd", tol=0.0, random_state=SEED, chunks=BLOCK, max_iter=6)
    W = model.fit_transform(ctx.get("csr"))
    return nmf_parts(model, W)


def case_ratings_resumed(ctx):
    path = ctx.tmpdir("ckpt-ratings")
    X = ctx.get("ratings")
    common = {"tol": 0.0, "random_state": SEED, "chunks": BLOCK}
    dnmf.RatingsNMF(K, max_iter=3, checkpoint=path, checkpoint_every=1, **common).fit(X)
    model = dnmf.RatingsNMF(K, max_iter=6, **common)
    model.fit(X, resume=path)
    return ratings_parts(model)


def case_ratings_uninterrupted(ctx):
    """The fit that ``ratings-resumed`` must equal (the same hash)."""
    model = dnmf.RatingsNMF(K, tol=0.0, random_state=SEED, chunks=BLOCK, max_iter=6)
    model.fit(ctx.get("ratings"))
    return ratings_parts(model)


def case_nmf_distributed(ctx):
    model = dnmf.NMF(K, solver="cd", tol=0.0, max_iter=15, random_state=SEED, chunks=BLOCK, client=ctx.client)
    W = model.fit_transform(ctx.get("csr"))
    return nmf_parts(model, W)


def case_ratings_distributed(ctx):
    model = dnmf.RatingsNMF(K, tol=0.0, max_iter=8, random_state=SEED, chunks=BLOCK, client=ctx.client)
    model.fit(ctx.get("ratings"))
    return ratings_parts(model)


def all_cases():
    cases = {}
    for solver in NMF_SOLVERS:
        for source in NMF_INPUTS:
            cases[f"nmf-{solver}-{source}"] = nmf_case(solver, source)
    for solver in ("mu", "cd"):
        cases[f"nmf-{solver}-csr-8-row-blocks"] = many_row_blocks_case(solver)
        cases[f"nmf-{solver}-csr-6-row-blocks"] = many_row_blocks_case(solver, SIX_ROW_BLOCKS)
    cases["nmf-cd-dense-float32"] = case_nmf_dense32
    cases["nmf-cd-random-shuffle-l1"] = case_nmf_random_init
    cases["nnf-function-mu-kl-csr"] = case_nnf_function
    cases["select-rank-cv"] = case_select_rank_cv
    for variant in RATINGS_VARIANTS:
        cases[f"ratings-{variant}"] = ratings_case(variant)
    cases["nmf-resumed"] = case_nmf_resumed
    cases["nmf-uninterrupted"] = case_nmf_uninterrupted
    cases["ratings-resumed"] = case_ratings_resumed
    cases["ratings-uninterrupted"] = case_ratings_uninterrupted
    cases["distributed-nmf"] = case_nmf_distributed
    cases["distributed-ratings"] = case_ratings_distributed
    return cases


# ---------------------------------------------------------------------- CLI


def select(names, pattern):
    if not pattern:
        return list(names)
    pats = [p.strip() for p in pattern.split(",") if p.strip()]
    pats = [p if any(c in p for c in "*?[") else f"*{p}*" for p in pats]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]


ENV_KEY = "_environment"


def environment() -> dict:
    """What the hashes depend on besides the code: library versions and the BLAS in use."""
    import dask
    import scipy
    from threadpoolctl import threadpool_info

    blas = sorted(
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    )
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "blas": blas,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--record", metavar="FILE", help="write {case: sha256} as JSON to FILE")
    mode.add_argument("--check", metavar="FILE", help="compare with FILE; exit 1 on any difference")
    mode.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument(
        "--cases",
        metavar="PATTERN",
        help="comma-separated glob patterns (a pattern without wildcards matches as a substring)",
    )
    args = ap.parse_args(argv)

    cases = all_cases()
    names = select(cases, args.cases)
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        print(f"no case matches {args.cases!r}; --list shows them", file=sys.stderr)
        return 2
    expected = None
    env = environment()
    if args.check:
        with open(args.check) as f:
            expected = json.load(f)
        recorded_env = expected.pop(ENV_KEY, None)
        if recorded_env != env:
            print(
                f"note: {args.check} was recorded in another environment ({recorded_env}); this one is {env}. "
                "Hashes differ across environments: record a baseline of the old code here first.",
                flush=True,
            )

    _quiet_warnings()
    print(f"dnmf {dnmf.__version__} from {os.path.dirname(dnmf.__file__)}", flush=True)
    hashes, failed = {}, False
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dnmf-hashes-") as tmp:
        ctx = Context(tmp)
        try:
            for name in names:
                t0 = time.perf_counter()
                hashes[name] = digest(cases[name](ctx))
                dt = time.perf_counter() - t0
                if expected is None:
                    status = ""
                elif name not in expected:
                    status, failed = "MISSING (not in file)", True
                elif expected[name] == hashes[name]:
                    status = "OK"
                else:
                    status, failed = "DIFFERENT", True
                print(f"{name:32s} {hashes[name][:16]}  {dt:6.2f}s  {status}".rstrip(), flush=True)
        finally:
            ctx.close()
    if expected is not None and not args.cases:
        for name in sorted(set(expected) - set(hashes)):
            print(f"{name:32s} MISSING (in file, not run)")
            failed = True
    print(f"{len(hashes)} cases in {time.perf_counter() - t_all:.1f}s", flush=True)

    if args.record:
        with open(args.record, "w") as f:
            json.dump({ENV_KEY: env, **hashes}, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"recorded to {args.record}")
    if expected is not None:
        print("DIFFERENT" if failed else "all OK")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
