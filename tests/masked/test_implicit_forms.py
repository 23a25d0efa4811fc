"""Implicit feedback: confidence forms, preference threshold and the default penalty scaling ("cells").

Every form is checked against naive references that spell the objective out
cell by cell: ``Σ_all c_ij (p_ij − w_i·h_j)² + penalties`` with ``p = 0,
c = 1`` at the missing cells and the documented formulas at the observed ones.
"""

import math
import warnings
from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import lsq_linear
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf import RatingsNMF
from dnmf.masked import estimator as est
from dnmf.masked import kernels as masked
from dnmf.storage import arrays as io
from tests.masked.helpers import ratings

# --------------------------------------------------------------------------
# Naive references
# --------------------------------------------------------------------------


def naive_confidence(x, form, alpha, epsilon=1.0, floor=0.0, threshold=None):
    """(c, p) of one observed value, straight from the documented formulas."""
    if form == "linear":
        c = 1.0 + alpha * x
    elif form == "log":
        c = 1.0 + alpha * math.log(1.0 + x / epsilon)
    else:
        c = max(alpha * x, floor)
    p = 1.0 if threshold is None or x >= threshold else 0.0
    return c, p


def cells(mask, values, p):
    """Dense (c, pref) over every cell: the missing ones are p = 0, c = 1."""
    C = np.ones(mask.shape)
    P = np.zeros(mask.shape)
    for i, j in zip(*np.nonzero(mask), strict=True):
        C[i, j], P[i, j] = naive_confidence(
            values[i, j], p.confidence_form, p.confidence, p.epsilon, p.confidence_floor, p.preference_threshold
        )
    return C, P


def naive_rows(C, P, V, l2):
    """argmin_{u >= 0} Σ_j C[i, j] (P[i, j] − u·v_j)² + l2_i·||u||² for every row, by bounded least squares.

    ``l2``: one weight, or one per row.
    """
    k = V.shape[1]
    out = []
    for c, pref, weight in zip(C, P, np.broadcast_to(l2, (C.shape[0],)), strict=True):
        sw = np.sqrt(c)
        A = np.vstack([sw[:, None] * V, math.sqrt(weight) * np.eye(k)])
        b = np.concatenate([sw * pref, np.zeros(k)])
        out.append(lsq_linear(A, b, bounds=(0, np.inf), method="bvls", tol=1e-15).x)
    return np.array(out)


def naive_objective(C, P, W, H, l2, user_scale=1.0):
    """The loss cell by cell plus ``l2·(Σ_i s_i ||w_i||² + ||H||²)``, ``s_i`` = ``user_scale``."""
    scale = np.broadcast_to(user_scale, (W.shape[0],))
    return float(np.sum(C * (P - W @ H) ** 2) + l2 * (np.sum(scale[:, None] * W * W) + np.sum(H * H)))


def naive_user_scale(mask, power):
    """(max(n_u, 1) / mean n_u)^power per user: the documented user_count_power."""
    counts = mask.sum(axis=1).astype(float)
    return (np.maximum(counts, 1.0) / counts.mean()) ** power


FORMS = {
    "linear": dict(confidence_form="linear", confidence=2.0),
    "log": dict(confidence_form="log", confidence=3.0, epsilon=0.5),
    "proportional": dict(confidence_form="proportional", confidence=0.8, confidence_floor=0.6),
    "proportional-no-floor": dict(confidence_form="proportional", confidence=1.0),
    "linear-threshold": dict(confidence_form="linear", confidence=1.5, preference_threshold=3.0),
    "log-threshold": dict(confidence_form="log", confidence=2.0, preference_threshold=2.5),
}


def params(name, **kw):
    return masked.MaskedParams(k=3, feedback="implicit", l2=0.7, **FORMS[name], **kw)


def fit(X, **kw):
    kw.setdefault("random_state", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return RatingsNMF(**kw).fit(X)


# --------------------------------------------------------------------------
# Kernels: forms against the naive objective and row solutions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMS)
def test_confidence_weights_follow_the_documented_formulas(name):
    p = params(name)
    x = np.array([0.0, 0.5, 1.0, 2.5, 3.0, 4.5, 17.0])
    c, pref = masked.confidence_weights(x, p)
    expect = [
        naive_confidence(v, p.confidence_form, p.confidence, p.epsilon, p.confidence_floor, p.preference_threshold)
        for v in x
    ]
    np.testing.assert_allclose(c, [e[0] for e in expect], rtol=1e-15)
    np.testing.assert_array_equal(pref, [e[1] for e in expect])


@pytest.mark.parametrize("name", FORMS)
def test_half_steps_are_the_exact_row_minimisers_of_the_cell_by_cell_objective(name):
    p = params(name)
    X, mask, values = ratings(12, 9, 0.4, seed=11)
    C, P = cells(mask, values, p)
    rng = np.random.default_rng(12)
    U, V = np.abs(rng.standard_normal((12, 3))), np.abs(rng.standard_normal((9, 3)))
    U1 = masked.update(X, U, V, p, V.T @ V)
    np.testing.assert_allclose(U1, naive_rows(C, P, V, p.l2), rtol=1e-7, atol=1e-9)
    V1 = masked.update(masked.col_band([X]), V, U1, p, U1.T @ U1)
    np.testing.assert_allclose(V1, naive_rows(C.T, P.T, U1, p.l2), rtol=1e-7, atol=1e-9)
    # Coordinate descent converges to the same minimiser.
    many = masked.update(X, U, V, masked.MaskedParams(**{**p.__dict__, "sweeps": 500}), V.T @ V, solver="ccd")
    np.testing.assert_allclose(many, U1, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", FORMS)
def test_loss_terms_equal_the_cell_by_cell_objective(name):
    p = params(name)
    X, mask, values = ratings(10, 8, 0.4, seed=13)
    C, P = cells(mask, values, p)
    rng = np.random.default_rng(14)
    U, V = np.abs(rng.standard_normal((10, 3))), np.abs(rng.standard_normal((8, 3)))
    data = masked.exact_value(masked.band_loss(X, U, V, p)) + float(np.vdot(U.T @ U, V.T @ V))
    pen = masked.exact_value(
        masked.exact_add(masked.penalty(U, mask.sum(axis=1), p), masked.penalty(V, mask.sum(axis=0), p))
    )
    assert data + pen == pytest.approx(naive_objective(C, P, U, V.T, p.l2), rel=1e-12)


def test_the_linear_form_keeps_the_bits_of_the_model_it_extends():
    """c − 1 = α·x is computed directly, as before the other forms existed."""
    X, _, _ = ratings(10, 8, 0.4, seed=15)
    X.data = X.data * 0.37  # values whose 1 + α·x − 1 is not α·x in floating point
    p = masked.MaskedParams(k=3, feedback="implicit", l2=0.5, confidence=1.3)
    a, b = masked._weights(X.data, None, X.indices, p)
    np.testing.assert_array_equal(a, 1.3 * X.data)
    np.testing.assert_array_equal(b, 1.0 + 1.3 * X.data)


# --------------------------------------------------------------------------
# The estimator: fits, the default scaling rule, validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["log", "proportional", "linear-threshold"])
def test_fit_minimises_the_documented_objective(name):
    X, mask, values = ratings(25, 17, 0.3, seed=16)
    model = fit(X, n_components=3, feedback="implicit", max_iter=6, tol=0, **FORMS[name])
    p = model._fitted_params()
    C, P = cells(mask, values, p)
    W, H = np.asarray(model.user_factors_), model.components_
    # user_count_power="auto" is 0.6: a user's penalty grows as their entries to the power 0.6.
    assert (p.count_power, p.count_mean) == (0.6, pytest.approx(mask.sum() / 25, rel=1e-15))
    scale = naive_user_scale(mask, 0.6)
    assert model.loss_history_[-1] == pytest.approx(naive_objective(C, P, W, H, p.l2, scale), rel=1e-11)
    assert np.all(np.diff(model.loss_history_) <= 1e-9 * model.loss_history_[0])
    # The last half-step solved every item exactly.
    np.testing.assert_allclose(H.T, naive_rows(C.T, P.T, W, p.l2), rtol=1e-7, atol=1e-9)
    # The penalty is alpha="auto" times (cells)^(1/4) times the mean observed confidence to the power 2/3.
    cbar = C[mask].mean()
    assert model.confidence_mean_ == pytest.approx(cbar, rel=1e-14)
    assert p.l2 == pytest.approx(est.IMPLICIT_ALPHA * (25 * 17) ** 0.25 * cbar ** (2 / 3), rel=1e-14)


def test_default_penalty_scales_with_the_cells_and_the_mean_confidence():
    X, _, _ = ratings(30, 20, 0.3, seed=17)
    base = fit(X, n_components=3, feedback="implicit", max_iter=2)
    cbar = 1.0 + X.data.mean()  # linear form, confidence 1
    assert base.confidence_mean_ == pytest.approx(cbar, rel=1e-14)
    scale = (30 * 20) ** 0.25 * cbar ** (2 / 3)
    assert base._fitted_params().l2 == pytest.approx(0.3 * scale, rel=1e-14)
    assert est.cells_scale(30, 20, base.confidence_mean_) == pytest.approx(scale, rel=1e-14)
    # Four times the cells (twice the users and twice the items, the same values): sqrt(2) times the penalty.
    big = fit(sp.csr_matrix(sp.bmat([[X, X], [X, X]])), n_components=3, feedback="implicit", max_iter=2)
    assert big.confidence_mean_ == pytest.approx(cbar, rel=1e-14)
    assert big._fitted_params().l2 == pytest.approx(base._fitted_params().l2 * math.sqrt(2.0), rel=1e-14)
    # Sixteen times the users alone: twice the penalty.
    tall = fit(sp.csr_matrix(sp.vstack([X] * 16)), n_components=3, feedback="implicit", max_iter=1)
    assert tall._fitted_params().l2 == pytest.approx(base._fitted_params().l2 * 2.0, rel=1e-14)
    # Three times the values: c̄ = 1 + 3·mean(x), the penalty by the ratio to the power 2/3.
    tripled = fit(X * 3.0, n_components=3, feedback="implicit", max_iter=2)
    ratio = (1.0 + 3.0 * X.data.mean()) / cbar
    assert tripled._fitted_params().l2 == pytest.approx(base._fitted_params().l2 * ratio ** (2 / 3), rel=1e-13)
    # The scaling of the penalty follows alpha and l1_ratio; reg_scaling="none" is alpha alone (the old default).
    p = fit(X, n_components=3, feedback="implicit", alpha=2.0, l1_ratio=0.25, max_iter=2)._fitted_params()
    assert (p.l2, p.l1) == pytest.approx((1.5 * scale, 0.5 * scale), rel=1e-14)
    old = fit(X, n_components=3, feedback="implicit", alpha=0.1, reg_scaling="none", max_iter=2)._fitted_params()
    assert (old.l2, old.l1, old.count_scaled) == (0.1, 0.0, False)
    # Explicit ratings keep alpha=0.1 with the ALS-WR count scaling.
    ex = fit(X, n_components=3, max_iter=2)._fitted_params()
    assert (ex.l2, ex.l2_bias, ex.count_scaled) == (0.1, 0.1, True)


def test_old_defaults_reproduce_the_model_before_the_new_ones():
    """alpha=0.1, reg_scaling="none" is the implicit model as it was: unscaled penalty, c = 1 + x."""
    X, mask, values = ratings(20, 15, 0.3, seed=18)
    model = fit(
        X, n_components=3, feedback="implicit", alpha=0.1, reg_scaling="none", user_count_power=0, max_iter=4, tol=0
    )
    p = model._fitted_params()
    expected = masked.MaskedParams(k=3, feedback="implicit", l2=0.1, l2_bias=0.1, confidence=1.0)
    assert p == replace(expected, count_mean=p.count_mean)
    # count_mean is recorded but unused without a power: the penalty weights are the old ones.
    counts = np.diff(X.indptr)
    np.testing.assert_array_equal(masked.row_scale(counts, p), np.ones(counts.size))


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_user_count_power_half_steps_are_the_exact_minimisers(power):
    p = replace(params("linear"), count_power=power, count_mean=3.0)
    X, mask, values = ratings(12, 9, 0.4, seed=31)
    C, P = cells(mask, values, p)
    rng = np.random.default_rng(32)
    U, V = np.abs(rng.standard_normal((12, 3))), np.abs(rng.standard_normal((9, 3)))
    scale = (np.maximum(mask.sum(axis=1), 1) / 3.0) ** power
    U1 = masked.update(X, U, V, p, V.T @ V)
    np.testing.assert_allclose(U1, naive_rows(C, P, V, p.l2 * scale), rtol=1e-7, atol=1e-9)
    # The item half-step keeps one penalty for every item.
    items = masked.item_side(p)
    assert (items.count_power, items.l2) == (0.0, p.l2)
    V1 = masked.update(masked.col_band([X]), V, U1, items, U1.T @ U1)
    np.testing.assert_allclose(V1, naive_rows(C.T, P.T, U1, p.l2), rtol=1e-7, atol=1e-9)
    pen = masked.exact_value(
        masked.exact_add(masked.penalty(U1, mask.sum(axis=1), p), masked.penalty(V1, mask.sum(axis=0), items))
    )
    assert pen == pytest.approx(p.l2 * (np.sum(scale[:, None] * U1 * U1) + np.sum(V1 * V1)), rel=1e-12)


def test_user_count_power_is_blocking_independent_and_follows_the_fit():
    X, mask, _ = ratings(30, 20, 0.3, seed=33)
    lazy = da.from_array(np.where(X.toarray() > 0, X.toarray(), np.nan), chunks=(7, 9))
    a = fit(X, n_components=3, feedback="implicit", max_iter=3, tol=0)
    b = fit(lazy, n_components=3, feedback="implicit", max_iter=3, tol=0)
    assert a._fitted_params() == b._fitted_params()
    assert a._fitted_params().count_mean == pytest.approx(mask.sum() / 30, rel=1e-15)
    np.testing.assert_allclose(np.asarray(b.user_factors_), a.user_factors_, rtol=1e-9, atol=1e-12)
    flat = fit(X, n_components=3, feedback="implicit", user_count_power=0, max_iter=3, tol=0)
    assert flat._fitted_params().count_power == 0.0
    assert not np.allclose(flat.user_factors_, a.user_factors_)


def test_user_count_power_needs_implicit_feedback():
    X, _, _ = ratings(10, 8, 0.4, seed=34)
    with pytest.raises(ValueError, match="user_count_power=0.5 needs feedback='implicit'"):
        RatingsNMF(2, user_count_power=0.5).fit(X)
    with pytest.raises(ValueError, match="user_count_power"):
        RatingsNMF(2, feedback="implicit", user_count_power=-1.0).fit(X)


def test_confidence_mean_is_the_same_for_dask_input():
    X, _, _ = ratings(30, 20, 0.3, seed=19)
    lazy = da.from_array(np.where(X.toarray() > 0, X.toarray(), np.nan), chunks=(7, 9))
    a = fit(X, n_components=3, feedback="implicit", confidence_form="log", max_iter=2)
    b = fit(lazy, n_components=3, feedback="implicit", confidence_form="log", max_iter=2)
    assert a.confidence_mean_ == b.confidence_mean_
    assert a._fitted_params() == b._fitted_params()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(confidence_form="square"), "confidence_form"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(confidence_floor=-1.0), "confidence_floor"),
        (dict(preference_threshold="high"), "preference_threshold"),
        (dict(alpha="big"), "alpha"),
        (dict(reg_scaling="confidence"), "reg_scaling"),
    ],
)
def test_invalid_parameters_are_refused(kw, message):
    X, _, _ = ratings(10, 8, 0.4, seed=20)
    with pytest.raises(ValueError, match=message):
        RatingsNMF(2, feedback="implicit", **kw).fit(X)


def test_cells_scaling_needs_implicit_feedback():
    X, _, _ = ratings(10, 8, 0.4, seed=21)
    with pytest.raises(ValueError, match="reg_scaling='cells' needs feedback='implicit'"):
        RatingsNMF(2, reg_scaling="cells").fit(X)


# --------------------------------------------------------------------------
# Saved models
# --------------------------------------------------------------------------


def test_saved_models_keep_the_new_parameters(tmp_path):
    X, _, _ = ratings(30, 20, 0.3, seed=22)
    kw = dict(
        n_components=3,
        feedback="implicit",
        confidence_form="proportional",
        confidence=0.9,
        confidence_floor=0.25,
        preference_threshold=2.0,
        max_iter=3,
    )
    model = fit(X, **kw)
    path = str(tmp_path / "model")
    model.save(path)
    loaded = dnmf.load(path)
    assert loaded.get_params() == model.get_params() | {"client": None}
    assert loaded.confidence_mean_ == model.confidence_mean_
    assert loaded._fitted_params() == model._fitted_params()
    new, _, _ = ratings(4, 20, 0.3, seed=23)
    np.testing.assert_array_equal(loaded.transform(new), model.transform(new))


def test_models_saved_before_the_new_parameters_load_with_their_old_meaning(tmp_path):
    """Without the new attributes, an implicit model's reg_scaling="auto" meant no scaling."""
    X, _, _ = ratings(30, 20, 0.3, seed=24)
    model = fit(X, n_components=3, feedback="implicit", alpha=0.1, reg_scaling="none", user_count_power=0, max_iter=3)
    path = str(tmp_path / "model")
    model.save(path)
    arrays, attrs = io.load_factors(path)
    params = dict(attrs["params"])
    for name in ("confidence_form", "epsilon", "confidence_floor", "preference_threshold", "user_count_power"):
        del params[name]
    params["reg_scaling"] = "auto"  # what the old default wrote
    old_attrs = {k: v for k, v in attrs.items() if k != "confidence_mean"} | {"params": params}
    loaded = est.load_model(arrays, old_attrs, path)
    assert loaded.reg_scaling == "none" and loaded.confidence_form == "linear" and loaded.user_count_power == 0
    assert math.isnan(loaded.confidence_mean_)
    assert loaded._fitted_params() == model._fitted_params()
    new, _, _ = ratings(4, 20, 0.3, seed=25)
    np.testing.assert_array_equal(loaded.transform(new), model.transform(new))
    # An old explicit model is unchanged: its "auto" was and is the count scaling.
    ex = fit(X, n_components=3, max_iter=3)
    ex.save(str(tmp_path / "explicit"))
    arrays, attrs = io.load_factors(str(tmp_path / "explicit"))
    old = {k: v for k, v in attrs.items() if k != "confidence_mean"} | {"params": attrs["params"] | {"alpha": 0.1}}
    assert est.load_model(arrays, old, str(tmp_path / "explicit"))._fitted_params() == ex._fitted_params()
