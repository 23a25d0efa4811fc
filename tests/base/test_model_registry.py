"""dnmf.load dispatches through the model registry; anything else is a clear StoreError."""

from __future__ import annotations

import numpy as np
import pytest

import dnmf
from dnmf.base.estimator import MODEL_KINDS
from dnmf.storage import StoreError
from dnmf.storage.arrays import save_factors


def test_every_model_kind_loads_back(tmp_path):
    X = np.abs(np.random.RandomState(0).rand(20, 8))
    for kind, model in (("NMF", dnmf.NMF(2, max_iter=5, tol=0)), ("RatingsNMF", dnmf.RatingsNMF(2, max_iter=3))):
        assert kind in MODEL_KINDS
        model.fit(X)
        model.save(tmp_path / kind)
        loaded = dnmf.load(tmp_path / kind)
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.components_, model.components_)


@pytest.mark.parametrize(
    "attrs",
    [{"library": "someone-else"}, {"library": "dnmf", "estimator": "Tucker", "params": {}}, {"library": "dnmf"}],
    ids=["foreign", "unknown-kind", "no-params"],
)
def test_a_store_of_no_known_kind_is_refused_with_the_fix(tmp_path, attrs):
    path = tmp_path / "m"
    save_factors(path, {"H": np.ones((2, 3))}, attrs)
    with pytest.raises(StoreError) as err:
        dnmf.load(path)
    message = str(err.value)
    assert str(path) in message and "NMF.save" in message and "RatingsNMF.save" in message
