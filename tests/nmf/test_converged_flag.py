"""converged_ says whether the stopping rule ended the fit, not whether n_iter_ < max_iter."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import dnmf
from tests.adversarial.helpers import invoke, ratings_csv

X = np.random.default_rng(0).random((40, 30))


@pytest.mark.parametrize(
    "make", [lambda **kw: dnmf.NMF(3, random_state=0, **kw), lambda **kw: dnmf.RatingsNMF(3, random_state=0, **kw)]
)
def test_converged_flag_and_its_round_trip(make, tmp_path):
    done = make(max_iter=2000, tol=1e-3).fit(X)
    assert done.converged_ and done.n_iter_ < 2000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        capped = make(max_iter=2, tol=1e-12).fit(X)
    assert not capped.converged_
    timed = make(max_iter=100_000, tol=0, max_time=0.2).fit(X)
    assert not timed.converged_ and timed.n_iter_ < 100_000
    timed.save(tmp_path / "m.zarr")
    assert dnmf.load(tmp_path / "m.zarr").converged_ is False
    done.save(tmp_path / "d.zarr")
    assert dnmf.load(tmp_path / "d.zarr").converged_ is True


def test_cli_does_not_call_a_max_time_stop_converged(tmp_path):
    ratings_csv(tmp_path / "r.csv", n_users=200, n_items=60, n=3000)
    res = invoke(
        "fit", tmp_path / "r.csv", "-k", 3, "-o", tmp_path / "m", "--max-iter", 100000, "--tol", 0, "--max-time", 0.5
    )
    assert res.exit_code == 0, res.output
    assert "stopped before converging" in res.output and "(converged)" not in res.output
