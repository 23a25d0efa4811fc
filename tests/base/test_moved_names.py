"""Every public name of the modules before the split into layers still imports from its old path.

``OLD_NAMES`` was read off the tree before the split (commit 9a05e49~1, each module's ``__all__``
or its public functions and classes); ``dnmf.kernels.is_sparse`` is left out on purpose: it was
dead code and was removed.
"""

import importlib
import subprocess
import sys
import warnings

import pytest

from dnmf._moved import MOVED

OLD_NAMES = {
    "dnmf.blocked": ["StepParams", "stats", "xdot", "xtdot", "gram", "step", "objective_terms", "holdout_error"],
    "dnmf.checkpoint": ["LoopState", "rng_to_json", "rng_from_json", "Checkpointer", "load", "check_resumable"],
    "dnmf.cluster": ["ClusterOptions", "ConnectError", "connect", "security"],
    "dnmf.demo": ["planted_sparse"],
    "dnmf.driver": ["FitResult", "LoopConfig", "Runner", "stopping_rule", "FitFailed", "run"],
    "dnmf.estimator": ["NMF", "load", "non_negative_factorization"],
    "dnmf.evaluation": ["evaluate", "mae", "ranking_metrics", "rmse", "train_test_split"],
    "dnmf.init": ["seed_from", "random_tall", "random_init", "randomized_svd", "nndsvd_init", "as_tall"],
    "dnmf.inputs": [
        "is_pydata_sparse",
        "to_block",
        "float_dtype",
        "auto_chunks",
        "normalize_chunks",
        "from_memory",
        "from_dask",
        "MatrixStats",
        "compute_stats",
        "check_values",
    ],
    "dnmf.io": [
        "IdMaps",
        "MatrixStore",
        "StoreError",
        "ingest",
        "load_factors",
        "open_matrix",
        "save_factors",
        "write_matrix",
    ],
    "dnmf.jobs": ["new_job_id", "create", "run", "submit", "describe"],
    "dnmf.kernels": [
        "as_block",
        "gram",
        "xdot",
        "xtdot",
        "squared_norm",
        "block_stats",
        "mu_gamma",
        "mu_frobenius_denominator",
        "mu_apply",
        "sampled_dot",
        "mu_beta_terms",
        "beta_divergence_block",
        "cd_update",
        "hals_inner_limits",
        "projected_gradient_l1",
        "regularized_gradient",
        "holdout_mask",
        "holdout_zero",
        "holdout_values",
        "holdout_error",
        "frobenius_from_terms",
        "regularization",
    ],
    "dnmf.masked": [
        "MaskedParams",
        "exact_sum",
        "exact_add",
        "exact_value",
        "observed",
        "row_band",
        "col_band",
        "block_summary",
        "combine_summaries",
        "update",
        "nnls_rows",
        "band_loss",
        "penalty",
        "gram",
        "predict",
    ],
    "dnmf.masked_graph": [
        "Bands",
        "bands_from_memory",
        "band_arrays",
        "persist_bands",
        "bands_from_store",
        "summary",
        "initial_state",
        "factor_gram",
        "step",
        "col_counts",
        "fold_in",
    ],
    "dnmf.nnls": ["nnls_bpp", "nnls_active_set", "anls_update"],
    "dnmf.plot": ["component_grid", "loss_curve", "rank_curve", "save_png"],
    "dnmf.rank": [
        "RankSelection",
        "select_rank",
        "holdout_split",
        "one_standard_error",
        "consensus_matrix",
        "cophenetic_correlation",
        "stable_rank",
    ],
    "dnmf.ratings": ["RatingsNMF", "load"],
    "dnmf.recommend": [
        "Factors",
        "UnknownIDError",
        "item_popularity",
        "popular_items",
        "popularity_baseline",
        "recommend",
        "recommend_all",
        "similar_items",
    ],
    "dnmf.report": ["cluster_info", "render_report", "write_report"],
    "dnmf.topn": [
        "assemble",
        "coords",
        "column_slice",
        "item_block",
        "count_columns",
        "empty",
        "select",
        "score_error_bound",
        "select_refined",
        "merge",
        "merge_list",
        "topn_block",
        "add_row_offset",
        "topn_rows",
        "pair_scores",
        "relevant",
        "hits",
        "ranking_sums",
        "ranking_block",
        "error_block",
        "sum_parts",
        "entry_hash",
        "split_random",
        "split_leave_k_out",
        "split_time",
        "time_counts",
        "combine_time_counts",
        "time_range",
        "combine_time_range",
        "split_pick",
        "slice_cols",
    ],
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_module_path_gives_every_old_name(old):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
        objects = {name: getattr(module, name) for name in OLD_NAMES[old]}
    if old in MOVED:
        assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)
    for name, obj in objects.items():
        assert obj is not None, f"{old}.{name}"
        home = getattr(obj, "__module__", None)
        if home and home.startswith("dnmf."):
            # The object is the very one at its new home, not a copy.
            assert getattr(importlib.import_module(home), getattr(obj, "__name__", name)) is obj


def test_recommend_names_import_from_the_package_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from dnmf.recommend import Factors, recommend_all  # noqa: F401


@pytest.mark.subprocess
def test_old_paths_in_a_fresh_interpreter_warn_once_and_work():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    import dnmf.io\nexcept DeprecationWarning as e:\n    print('warned:', e)\n"
        "warnings.simplefilter('ignore')\n"
        "from dnmf.io import write_matrix, open_matrix\n"
        "from dnmf.estimator import NMF, load\n"
        "import dnmf\n"
        "assert NMF is dnmf.NMF and load is dnmf.load and write_matrix is dnmf.write_matrix\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "warned: dnmf.io moved to dnmf.storage.arrays" in out.stdout and out.stdout.strip().endswith("ok")
