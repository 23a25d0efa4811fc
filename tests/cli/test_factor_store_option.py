"""``dnmf fit --factor-store DIR``: W lives in DIR during the fit, and an earlier fit's DIR is refused first."""

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import dnmf as dnmf_api
from dnmf.storage import factors
from dnmf.storage.arrays import load_factors
from tests.cli.helpers import dnmf, write_ratings

pytestmark = pytest.mark.subprocess


def test_fit_with_a_factor_store_then_a_second_fit_into_it_is_refused_before_any_work(tmp_path):
    write_ratings(tmp_path / "ratings.csv")
    store = tmp_path / "ratings.zarr"
    dnmf("ingest", tmp_path / "ratings.csv", "-o", store)
    args = ["-k", 3, "--max-iter", 6, "--tol", 0, "--seed", 1, "--workers", 1, "--threads-per-worker", 2]
    dnmf("fit", store, "-o", tmp_path / "stored", "--factor-store", tmp_path / "f", *args)
    assert factors.read_pointer(str(tmp_path / "f"))["current"] == 6
    saved, _ = load_factors(tmp_path / "stored")
    # The same fit in this process, W in memory: the same bits (placement never changes them).
    params = {k: v for k, v in dnmf_api.load(tmp_path / "stored").get_params().items() if k != "factor_store"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = dnmf_api.NMF(**params)
        W = plain.fit_transform(str(store))
    np.testing.assert_array_equal(np.asarray(saved["W"]), np.asarray(W))
    np.testing.assert_array_equal(np.asarray(saved["H"]), plain.components_)

    before = json.loads((tmp_path / "f" / factors.POINTER).read_text())
    again = dnmf("fit", store, "-o", tmp_path / "again", "--factor-store", tmp_path / "f", *args, check=False)
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 2, again.stderr
    assert "--factor-store" in lines[-1] and "already holds the factors of another fit" in lines[-1], again.stderr
    assert not (tmp_path / "again").exists()
    assert json.loads((tmp_path / "f" / factors.POINTER).read_text()) == before


def test_fit_ratings_with_a_factor_store_gives_the_in_memory_bits_and_refuses_what_cannot_stream(tmp_path):
    write_ratings(tmp_path / "ratings.csv")
    store = tmp_path / "ratings.zarr"
    dnmf("ingest", tmp_path / "ratings.csv", "-o", store)
    args = ["-k", 3, "--max-iter", 4, "--tol", 0, "--seed", 1, "--workers", 1, "--threads-per-worker", 2]
    dnmf("fit-ratings", store, "-o", tmp_path / "stored", "--factor-store", tmp_path / "f", *args)
    assert factors.read_pointer(str(tmp_path / "f"))["current"] == 4
    saved = dnmf_api.load(tmp_path / "stored")
    params = {k: v for k, v in saved.get_params().items() if k != "factor_store"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = dnmf_api.RatingsNMF(**params).fit(str(store))
    np.testing.assert_array_equal(np.asarray(saved.user_factors_), np.asarray(plain.user_factors_))
    np.testing.assert_array_equal(saved.components_, plain.components_)

    cg = dnmf(
        "fit-ratings", store, "-o", tmp_path / "cg", "--factor-store", tmp_path / "g", "--solver", "cg", check=False
    )
    assert cg.returncode == 2, cg.stderr
    last = [line for line in cg.stderr.splitlines() if line.strip()][-1]
    assert "--factor-store needs --solver als; got --solver cg" in last, cg.stderr
    assert not (tmp_path / "cg").exists() and not (tmp_path / "g").exists()
