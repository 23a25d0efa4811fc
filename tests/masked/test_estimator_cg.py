"""RatingsNMF(solver="cg"): bit-identical wherever it runs, and close to the exact solver's fit."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from dnmf import RatingsNMF
from tests.masked.helpers import ratings


def fit(X, **kw):
    kw.setdefault("random_state", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return RatingsNMF(**kw).fit(X)


def assert_same(x, y):
    np.testing.assert_array_equal(x.components_, y.components_)
    np.testing.assert_array_equal(x.user_factors_, y.user_factors_)
    np.testing.assert_array_equal(x.loss_history_, y.loss_history_)
    if x.user_bias_ is not None:
        np.testing.assert_array_equal(x.user_bias_, y.user_bias_)
        np.testing.assert_array_equal(x.item_bias_, y.item_bias_)


@pytest.mark.cluster
def test_cg_fit_is_bit_identical_for_any_blocking_threads_and_processes(dist_client):
    X, _, _ = ratings(41, 23, 0.3, seed=4)
    kw = dict(n_components=4, solver="cg", max_iter=5, tol=0)
    a = fit(X, chunks=((41,), (23,)), **kw)
    b = fit(X, chunks=((10, 1, 30), (7, 16)), client=dist_client, **kw)
    c = fit(X, chunks=((20, 21), (23,)), **kw)
    assert_same(a, b)
    assert_same(a, c)
    # Implicit: Grams are summed in a fixed order per blocking, wherever tasks run.
    kw = dict(n_components=4, feedback="implicit", solver="cg", max_iter=4, tol=0, chunks=((10, 31), (7, 16)))
    assert_same(fit(X, **kw), fit(X, client=dist_client, **kw))


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_cg_objective_decreases_and_approaches_the_exact_solver(feedback):
    """Each "cg" half-step lowers its row objectives, so the loss never rises; after as many
    iterations it ends within a few percent of "als" (which solves each half-step exactly)."""
    X, _, _ = ratings(60, 40, 0.25, seed=9)
    kw = dict(n_components=5, feedback=feedback, alpha=0.1, max_iter=30, tol=0)
    cg = fit(X, solver="cg", **kw)
    als = fit(X, solver="als", **kw)
    history = cg.loss_history_
    assert (np.diff(history) <= 1e-9 * np.abs(history[:-1])).all()
    assert cg.loss_history_[-1] <= 1.05 * als.loss_history_[-1]
    assert cg.loss_history_[-1] >= als.loss_history_[-1] * (1 - 0.05)


def test_cg_steps_is_validated():
    X, _, _ = ratings(10, 8, 0.4, seed=1)
    with pytest.raises(ValueError, match="cg_steps"):
        RatingsNMF(3, solver="cg", cg_steps=0).fit(X)
