"""The estimator's contract: scikit-learn compatibility, types in and out,
and clear errors for bad input."""

import itertools
import logging
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import sparse as pydata_sparse
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import check_estimator

import dnmf
from tests.helpers import make_data

# scikit-learn's own NMF() fails these two at the default max_iter=200 with the
# very same numbers: the check's problem is not converged after 200 iterations,
# so transform's W (solved from scratch) differs from fit_transform's. Both pass
# at max_iter=500, the setting scikit-learn tests its NMF with (checked below).
NOT_CONVERGED_AT_200 = {
    "check_transformer_general": "not converged at max_iter=200, as sklearn's NMF()",
    "check_transformer_data_not_an_array": "not converged at max_iter=200, as sklearn's NMF()",
}


@pytest.mark.slow
def test_check_estimator_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(dnmf.NMF(), expected_failed_checks=NOT_CONVERGED_AT_200)


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(NOT_CONVERGED_AT_200))
def test_check_estimator_converged(check):
    """The two checks left out above pass once the fit converges (max_iter=500).

    The rest of check_estimator does not depend on max_iter and ran above.
    """
    from sklearn.utils import estimator_checks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        getattr(estimator_checks, check)("NMF", dnmf.NMF(max_iter=500))


def fit_quiet(model, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit_transform(X, **kw)


def test_dask_in_dask_out():
    X, _, _ = make_data(50, 20, density=0.3)
    Xd = da.from_array(X.toarray(), chunks=(13, 20)).map_blocks(sp.csr_matrix)
    m = dnmf.NMF(3, random_state=0, max_iter=20)
    W = fit_quiet(m, Xd)
    assert isinstance(W, da.Array) and W.chunks[0] == Xd.chunks[0]
    W_np = fit_quiet(dnmf.NMF(3, random_state=0, max_iter=20, chunks=(13, 20)), X)
    np.testing.assert_array_equal(W.compute(), W_np)
    T = m.transform(Xd)
    assert isinstance(T, da.Array)
    assert isinstance(m.inverse_transform(W), da.Array)
    np.testing.assert_allclose(m.inverse_transform(W).compute(), W_np @ m.components_)


@pytest.mark.parametrize(
    "make",
    [
        lambda X: X,
        lambda X: sp.csr_matrix(X),
        lambda X: sp.csc_matrix(X),
        lambda X: sp.coo_matrix(X),
        lambda X: sp.lil_matrix(X),
        lambda X: sp.csr_array(X),
        lambda X: pydata_sparse.COO.from_numpy(X),
        lambda X: pydata_sparse.GCXS.from_numpy(X),
        lambda X: da.from_array(X, chunks=(7, 9)),
        lambda X: da.from_array(X, chunks=(7, 9)).map_blocks(pydata_sparse.COO.from_numpy),
        lambda X: da.from_array(X, chunks=(7, 9)).map_blocks(sp.coo_matrix),
    ],
    ids=[
        "ndarray",
        "csr",
        "csc",
        "coo",
        "lil",
        "csr_array",
        "pydata-coo",
        "pydata-gcxs",
        "dask-dense",
        "dask-pydata",
        "dask-scipy-coo",
    ],
)
def test_every_input_type_gives_the_same_factors(make):
    X, _, _ = make_data(21, 18, density=0.4)
    X = X.toarray()
    want = fit_quiet(dnmf.NMF(3, init="random", random_state=1, max_iter=10, chunks=(7, 9)), X)
    got = fit_quiet(dnmf.NMF(3, init="random", random_state=1, max_iter=10, chunks=(7, 9)), make(X))
    got = got.compute() if isinstance(got, da.Array) else got
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_dtype_preserved(dtype, sparse, solver):
    X, _, _ = make_data(20, 15, density=0.5 if sparse else None, dtype=dtype)
    m = dnmf.NMF(3, solver=solver, max_iter=5, random_state=0)
    W = fit_quiet(m, X)
    assert W.dtype == dtype and m.components_.dtype == dtype
    assert m.transform(X).dtype == dtype
    Xd = da.from_array(X.toarray() if sparse else X, chunks=(7, 15))
    W = fit_quiet(dnmf.NMF(3, solver=solver, max_iter=5, random_state=0), Xd)
    assert W.dtype == dtype and W.compute().dtype == dtype


def test_integers_cast_to_float64():
    X = np.random.RandomState(0).randint(0, 5, size=(12, 8))
    m = dnmf.NMF(2, max_iter=5, random_state=0)
    assert fit_quiet(m, X).dtype == np.float64
    Xd = da.from_array(X, chunks=(5, 8))
    assert fit_quiet(dnmf.NMF(2, max_iter=5, random_state=0), Xd).dtype == np.float64


def test_fitted_attributes_and_function_form():
    X, W0, H0 = make_data(30, 20, 4)
    m = dnmf.NMF(4, init="custom", max_iter=30, tol=0)
    W = fit_quiet(m, X, W=W0, H=H0)
    assert m.components_.shape == (4, 20) and m.n_components_ == 4
    assert m.n_iter_ == 30 and m.n_features_in_ == 20
    assert m.loss_history_.shape == (30,)
    assert m.reconstruction_err_ == pytest.approx(np.linalg.norm(X - W @ m.components_))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W2, H2, n = dnmf.non_negative_factorization(X, W0, H0, 4, init="custom", max_iter=30, tol=0)
    np.testing.assert_array_equal(W2, W)
    np.testing.assert_array_equal(H2, m.components_)
    W3, H3, _ = dnmf.non_negative_factorization(X, H=m.components_, update_H=False, n_components=4, max_iter=30, tol=0)
    np.testing.assert_array_equal(H3, m.components_)
    np.testing.assert_allclose(W3, m.transform(X))
    params = m.get_params()
    assert params["n_components"] == 4 and clone(m).get_params() == params
    m.set_params(max_iter=7)
    assert m.max_iter == 7


def test_callback_logging_and_early_stop(caplog):
    X, _, _ = make_data(30, 20)
    seen = []
    with caplog.at_level(logging.INFO, logger="dnmf"):
        m = dnmf.NMF(3, max_iter=50, tol=0, verbose=1, random_state=0)
        m.fit(X, callback=lambda it, el, loss: seen.append((it, el, loss)) or it < 5)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(seen))
    assert m.n_iter_ == 5
    assert any("iteration 3: loss" in r.getMessage() for r in caplog.records)


def test_max_time_stops_without_warning():
    X, _, _ = make_data(30, 20)
    m = dnmf.NMF(3, max_iter=10_000, tol=0, max_time=0.3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        m.fit(X)
    assert 1 <= m.n_iter_ < 10_000


def test_convergence_warning_at_max_iter():
    X, _, _ = make_data(30, 20)
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 3"):
        dnmf.NMF(3, max_iter=3, random_state=0).fit(X)


def test_same_seed_same_result_different_seed_different():
    X, _, _ = make_data(30, 20, density=0.5)
    a = fit_quiet(dnmf.NMF(3, init="random", random_state=5, max_iter=10), X)
    b = fit_quiet(dnmf.NMF(3, init="random", random_state=5, max_iter=10), X)
    c = fit_quiet(dnmf.NMF(3, init="random", random_state=6, max_iter=10), X)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_random_init_independent_of_blocking():
    X, _, _ = make_data(40, 25, density=0.5)
    a = fit_quiet(dnmf.NMF(3, init="random", random_state=2, max_iter=3, chunks=(40, 25)), X)
    b = fit_quiet(dnmf.NMF(3, init="random", random_state=2, max_iter=3, chunks=(9, 8)), X)
    np.testing.assert_allclose(a, b, rtol=1e-10)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[1.0, -2.0], [3.0, 4.0]]), "Negative values in data passed to NMF"),
        (np.array([[1.0, np.nan], [3.0, 4.0]]), "NaN"),
        (np.array([[1.0, np.inf], [3.0, 4.0]]), "infinity"),
        (np.empty((0, 3)), "0 sample"),
    ],
)
def test_bad_values_in_memory(X, match):
    with pytest.raises(ValueError, match=match):
        dnmf.NMF(1).fit(X)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[1.0, -2.0], [3.0, 4.0]]), "Negative values in data passed to NMF .* smallest is -2"),
        (np.array([[1.0, np.nan], [3.0, 4.0]]), "1 non-finite"),
        (np.empty((0, 3)), "at least one sample"),
    ],
)
def test_bad_values_dask(X, match):
    with pytest.raises(ValueError, match=match):
        dnmf.NMF(1).fit(da.from_array(X, chunks=1 if X.size else -1))


def test_non_numeric_dtype():
    with pytest.raises((TypeError, ValueError), match="dtype|numbers|string"):
        dnmf.NMF(1).fit(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match="must hold numbers"):
        dnmf.NMF(1).fit(da.from_array(np.array([["a", "b"]], dtype=object), chunks=(1, 2)))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_components=0), "'n_components' parameter of NMF must be"),
        (dict(tol=-1), "'tol' parameter of NMF must be a float in the range \\[0.0, inf\\)"),
        (dict(solver="als"), "'solver' parameter"),
        (dict(beta_loss="hinge"), "'beta_loss' parameter"),
        (dict(l1_ratio=2), "'l1_ratio' parameter"),
        (dict(max_time=0), "'max_time' parameter"),
        (dict(solver="cd", beta_loss="kullback-leibler"), "solver 'cd' does not handle"),
        (dict(n_components=5, init="nndsvd"), "n_components <= min\\(n_samples, n_features\\) = 3"),
        (dict(chunks="big"), "'chunks' parameter"),
    ],
)
def test_bad_parameters(params, match):
    X, _, _ = make_data(4, 3)
    with pytest.raises(ValueError, match=match):
        dnmf.NMF(**params).fit(X)


def test_itakura_saito_needs_positive_x():
    X = np.array([[0.0, 1.0], [2.0, 3.0]])
    with pytest.raises(ValueError, match="beta_loss <= 0 and X contains zeros"):
        dnmf.NMF(1, solver="mu", beta_loss="itakura-saito").fit(X)


def test_bad_custom_init():
    X, W0, H0 = make_data(10, 8, 3)
    with pytest.raises(ValueError, match="wrong first dimension passed to NMF \\(input W\\). Expected 10, but got 9"):
        dnmf.NMF(3, init="custom").fit(X, W=W0[:9], H=H0)
    with pytest.raises(ValueError, match="wrong second dimension passed to NMF \\(input H\\)"):
        dnmf.NMF(3, init="custom").fit(X, W=W0, H=H0[:, :5])
    with pytest.raises(TypeError, match="same dtype as X"):
        dnmf.NMF(3, init="custom").fit(X, W=W0.astype(np.float32), H=H0)
    with pytest.raises(ValueError, match="Negative values in data passed to NMF \\(input H\\)"):
        dnmf.NMF(3, init="custom").fit(X, W=W0, H=-H0)
    with pytest.raises(ValueError, match="full of zeros"):
        dnmf.NMF(3, init="custom").fit(X, W=W0 * 0, H=H0)
    with pytest.raises(ValueError, match="needs both W and H"):
        dnmf.NMF(3, init="custom").fit(X, H=H0)


def test_transform_checks_features():
    X, _, _ = make_data(10, 8)
    m = dnmf.NMF(2, max_iter=5)
    fit_quiet(m, X)
    with pytest.raises(ValueError, match="8 features"):
        m.transform(X[:, :5])
    with pytest.raises(ValueError, match="8 features"):
        m.transform(da.from_array(X[:, :5]))


def test_fitted_model_pickles_and_clones():
    import pickle

    X, _, _ = make_data(60, 20, density=0.3)
    m = dnmf.NMF(3, max_iter=5, random_state=0, chunks=(20, 20))  # several blocks: thread pool
    W = fit_quiet(m, X)
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(again.components_, m.components_)
    np.testing.assert_allclose(again.transform(X), m.transform(X))
    assert clone(m).get_params() == m.get_params()
    assert W.shape == (60, 3)
