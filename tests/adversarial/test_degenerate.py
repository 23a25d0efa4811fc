"""Item 6: solver="mu" on an all-zero matrix (e.g. stored zero ratings) ends like solver="cd" does."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf

pytestmark = pytest.mark.adversarial

ZERO = {
    "dense": np.zeros((6, 5)),
    "stored-zeros": sp.csr_matrix((np.zeros(3), ([0, 1, 2], [0, 1, 2])), shape=(6, 5)),
}


@pytest.mark.parametrize("kind", list(ZERO))
def test_cd_on_all_zero_matrix(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dnmf.NMF(2, solver="cd", max_iter=20).fit(ZERO[kind])
    assert model.reconstruction_err_ == 0


@pytest.mark.parametrize("kind", list(ZERO))
def test_mu_on_all_zero_matrix(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dnmf.NMF(2, solver="mu", max_iter=20).fit(ZERO[kind])
    assert model.reconstruction_err_ == 0


def test_cli_fit_mu_on_stored_zero_ratings_exits_0(tmp_path):
    from .helpers import invoke

    (tmp_path / "z.csv").write_text("user,item,rating\n1,2,0\n2,3,0\n3,1,0\n")
    res = invoke("fit", tmp_path / "z.csv", "-k", 1, "-o", tmp_path / "m", "--solver", "mu", "-q")
    assert res.exit_code == 0, res.stderr
