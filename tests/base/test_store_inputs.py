"""Fitting from stores gives exactly what fitting the same matrix in memory gives."""

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf


def _ratings_csv(path, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    users = np.array([f"user-{u:05d}" for u in rng.integers(0, 900, n)])
    items = np.array([f"item-{i:04d}" for i in (rng.zipf(1.5, n) % 400)])
    pd.DataFrame({"user": users, "item": items, "rating": rng.integers(1, 6, n).astype(float)}).to_csv(
        path, index=False
    )


def _fit(X, chunks=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(6, init="nndsvdar", random_state=3, max_iter=15, tol=0, chunks=chunks or "auto")
        W = m.fit_transform(X)
    return (W.compute() if hasattr(W, "compute") else W), m


def test_ingested_csv_fits_like_the_in_memory_matrix(tmp_path):
    csv = tmp_path / "ratings.csv"
    _ratings_csv(csv)
    store = dnmf.ingest(
        str(csv), str(tmp_path / "r.zarr"), user_col="user", item_col="item", value_col="rating", chunks=(250, 400)
    )
    # The same matrix built in memory: IDs in sorted order, duplicates summed.
    df = pd.read_csv(csv)
    users, items = np.unique(df["user"]), np.unique(df["item"])
    X = sp.coo_matrix(
        (df["rating"], (np.searchsorted(users, df["user"]), np.searchsorted(items, df["item"]))),
        shape=(len(users), len(items)),
    ).tocsr()
    X.sum_duplicates()
    X = X.astype(store.dtype)  # ingest stores ratings as float32 by default
    assert list(store.row_ids) == list(users) and list(store.col_ids) == list(items)

    W_store, m_store = _fit(str(tmp_path / "r.zarr"))
    W_mem, m_mem = _fit(X, chunks=store.chunks)
    np.testing.assert_array_equal(W_store, W_mem)
    np.testing.assert_array_equal(m_store.components_, m_mem.components_)
    assert list(m_store.feature_ids_) == list(items)


def test_save_load_round_trip(tmp_path):
    X = sp.random(120, 50, density=0.2, random_state=0, format="csr")
    dnmf.write_matrix(X, str(tmp_path / "x.zarr"), chunks=(40, 50))
    W, m = _fit(str(tmp_path / "x.zarr"))
    m.save(str(tmp_path / "model"))
    loaded = dnmf.load(str(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.components_, m.components_)
    np.testing.assert_array_equal(loaded._W.compute(), W)
    assert loaded.get_params() == m.get_params()
    np.testing.assert_array_equal(loaded.loss_history_, m.loss_history_)
    np.testing.assert_allclose(loaded.transform(X[:7]), m.transform(X[:7]))
    # overwrite in place (W read lazily from the model being replaced)
    loaded.save(str(tmp_path / "model"))
    np.testing.assert_array_equal(dnmf.load(str(tmp_path / "model"))._W.compute(), W)


def test_saved_ids_integer_as_arrays_text_as_attributes(tmp_path):
    from dnmf.storage import read_model, read_model_info, write_model

    X = sp.random(90, 40, density=0.2, random_state=1, format="csr")
    rows, cols = np.arange(90, dtype=np.int64) * 7 + 10**12, np.array([f"item-{j}" for j in range(40)])
    dnmf.write_matrix(X, str(tmp_path / "x.zarr"), chunks=(30, 40), row_ids=rows, col_ids=cols)
    W, m = _fit(str(tmp_path / "x.zarr"))
    m.save(str(tmp_path / "model"))
    info = read_model_info(str(tmp_path / "model"))
    assert info.arrays["sample_ids"]["dtype"] == np.int64 and "sample_ids" not in info.attrs
    assert "feature_ids" not in info.arrays and info.attrs["feature_ids"] == list(cols)
    loaded = dnmf.load(str(tmp_path / "model"))
    assert loaded.sample_ids_.equals(pd.Index(rows)) and loaded.feature_ids_.equals(pd.Index(cols))

    # A model saved with integer IDs in the attributes (as dnmf 0.1.0 did) loads the same IDs.
    arrays, attrs = read_model(str(tmp_path / "model"))
    attrs["sample_ids"] = arrays.pop("sample_ids").tolist()
    write_model(str(tmp_path / "old"), arrays, attrs)
    old = dnmf.load(str(tmp_path / "old"))
    assert old.sample_ids_.equals(pd.Index(rows)) and old.feature_ids_.equals(pd.Index(cols))
    np.testing.assert_array_equal(old._W.compute(), W)
