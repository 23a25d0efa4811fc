"""dnmf's warnings name the user's line, whatever path through dnmf raised them."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf


def _warned_at(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    assert caught, "no warning"
    return {w.filename for w in caught}


X = np.random.default_rng(0).random((30, 20))


@pytest.mark.parametrize(
    "call",
    [
        lambda: dnmf.NMF(3, max_iter=2, random_state=0).fit(X),
        lambda: dnmf.NMF(3, max_iter=2, random_state=0).fit_transform(X),
        lambda: dnmf.NMF(3, solver="mu", init="nndsvd", max_iter=200, random_state=0).fit(X),
        lambda: dnmf.non_negative_factorization(X, n_components=3, max_iter=2, random_state=0),
        lambda: dnmf.select_rank(X, [2, 3], n_repeats=1, max_iter=2, random_state=0, early_stopping=None),
        lambda: dnmf.RatingsNMF(3, max_iter=2, random_state=0).fit(sp.csr_matrix(X)),
        lambda: dnmf.RatingsNMF(3, max_iter=50, random_state=0).fit(X.astype(np.float16)),
    ],
    ids=["fit", "fit_transform", "mu-nndsvd", "function", "select_rank", "ratings", "ratings-float16"],
)
def test_warning_names_this_file(call):
    assert _warned_at(call) == {__file__}
