"""Ingestion of ratings tables and matrix files, checked against in-memory builds."""

from __future__ import annotations

import gzip
import logging
import os

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnmf.storage import arrays as io

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")


def _as_csv_ids(ids: pd.Series) -> pd.Series:
    """IDs as read back from CSV: text, or integers if all are canonical integers."""
    text = ids.astype(str)
    if text.str.fullmatch(r"-?(0|[1-9][0-9]*)").all():
        return text.astype(np.int64)
    return text


def reference(df, user="user", item="item", value="rating", duplicates="sum", csv=False):
    """The expected matrix, built in memory: IDs in sorted order."""
    df = df.copy()
    if csv:
        df[user], df[item] = _as_csv_ids(df[user]), _as_csv_ids(df[item])
    df["_v"] = 1.0 if value is None else df[value].astype(float)
    rows = pd.Index(sorted(df[user].unique()))
    cols = pd.Index(sorted(df[item].unique()))
    if duplicates == "sum":
        agg = df.groupby([user, item], sort=False)["_v"].sum()
    else:
        agg = df.drop_duplicates([user, item], keep="last").set_index([user, item])["_v"]
    r = rows.get_indexer(agg.index.get_level_values(0))
    c = cols.get_indexer(agg.index.get_level_values(1))
    X = sp.csr_matrix((agg.to_numpy(), (r, c)), shape=(len(rows), len(cols)))
    return X, rows, cols


def assert_matches(store, X, rows, cols):
    Y, ids = store
    Y = Y.compute(scheduler="synchronous")
    assert Y.shape == X.shape and Y.nnz == X.nnz
    np.testing.assert_allclose(Y.toarray(), X.toarray(), rtol=1e-6)
    assert list(ids.rows) == list(rows)
    assert list(ids.cols) == list(cols)


ratings = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol", "dan", "émile", "NA", "7"]),
        st.integers(0, 6),
        st.sampled_from([0.0, 0.5, 1.0, 3.5, 5.0]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=ratings,
    duplicates=st.sampled_from(["sum", "last"]),
    implicit=st.booleans(),
    fmt=st.sampled_from(["csv", "parquet"]),
    batch=st.integers(1, 25),
    chunks=st.sampled_from([None, (2, 3), (1, 1)]),
)
def test_tables_match_in_memory_build(tmp_path_factory, records, duplicates, implicit, fmt, batch, chunks):
    d = tmp_path_factory.mktemp("t")
    df = pd.DataFrame(records, columns=["user", "item", "rating"])
    src = str(d / f"r.{fmt}")
    df.to_csv(src, index=False) if fmt == "csv" else df.to_parquet(src)
    store = io.ingest(
        src,
        str(d / "x.zarr"),
        duplicates=duplicates,
        value_col=None if implicit else "rating",
        batch_records=batch,
        chunks=chunks,
    )
    X, rows, cols = reference(df, value=None if implicit else "rating", duplicates=duplicates, csv=fmt == "csv")
    assert_matches(store, X, rows, cols)
    assert store.dtype == np.float32
    # Ingestion does not depend on the order of the file's rows (sums only:
    # "last" depends on order by definition).
    if duplicates == "sum":
        shuffled = df.sample(frac=1, random_state=0)
        src2 = str(d / f"s.{fmt}")
        shuffled.to_csv(src2, index=False) if fmt == "csv" else shuffled.to_parquet(src2)
        other = io.ingest(src2, str(d / "y.zarr"), value_col=None if implicit else "rating", chunks=chunks)
        np.testing.assert_allclose(other.data.compute().toarray(), store.data.compute().toarray(), rtol=1e-6)


def test_int_and_string_ids(tmp_path):
    df = pd.DataFrame({"user": [10, 2, 33, 2], "item": ["007", "7", "x", "7"], "rating": [1, 2, 3, 4]})
    df.to_csv(tmp_path / "r.csv", index=False)
    m = io.ingest(tmp_path / "r.csv", tmp_path / "r.zarr")
    # Text that is all canonical integers becomes integers, sorted numerically.
    assert m.row_ids.tolist() == [2, 10, 33] and m.row_ids.dtype == np.int64
    # "007" is not canonical: the column stays text, and "007" != "7".
    assert m.col_ids.tolist() == ["007", "7", "x"]
    assert m.data.compute()[0, 1] == 6  # duplicates summed
    df.to_parquet(tmp_path / "r.parquet")
    p = io.ingest(tmp_path / "r.parquet", tmp_path / "p.zarr")
    assert p.row_ids.tolist() == [2, 10, 33] and p.col_ids.tolist() == ["007", "7", "x"]
    assert (p.data.compute() != m.data.compute()).nnz == 0
    # IDs map back to positions.
    assert p.row_ids.get_indexer([33, 2]).tolist() == [2, 0]


def test_parquet_dataset_directory_and_dictionary_ids(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    parts = [
        pd.DataFrame({"u": ["a", "b"], "i": [1, 2], "r": [1.0, 2.0]}),
        pd.DataFrame({"u": ["b", "c"], "i": [2, 3], "r": [5.0, 1.0]}),
    ]
    parts[0].astype({"u": "category"}).to_parquet(d / "part-0.parquet")
    parts[1].to_parquet(d / "part-1.parquet")
    m = io.ingest(d, tmp_path / "x.zarr", user_col="u", item_col="i", value_col="r", duplicates="last")
    X, rows, cols = reference(pd.concat(parts), "u", "i", "r", duplicates="last")
    assert_matches(m, X, rows, cols)


def test_invalid_rows_raise_with_count_and_first_line(tmp_path):
    lines = [
        "user,item,rating",
        "a,x,1",
        "b,y,-2",
        "c,z,nan",
        "d,w,abc",
        ",v,1",
        "e,u,inf",
        "f,t,3",
    ]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "bad.zarr"
    with pytest.raises(ValueError) as err:
        io.ingest(tmp_path / "bad.csv", out)
    msg = str(err.value)
    assert "5 of 7 records" in msg
    assert "line 3" in msg and "user='b'" in msg and "rating=-2.0" in msg
    assert "1 with negative value" in msg and "1 with missing ID" in msg
    assert "3 with non-finite or non-numeric value" in msg
    assert "on_invalid='drop'" in msg
    assert not out.exists()  # nothing written


def test_invalid_rows_dropped_with_warning(tmp_path, caplog):
    lines = ["user,item,rating", "a,x,1", "b,y,-2", "c,z,nan", "a,z,2"]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="dnmf"):
        m = io.ingest(tmp_path / "bad.csv", tmp_path / "x.zarr", on_invalid="drop")
    assert "2 of 4 records" in caplog.text and "Dropped" in caplog.text
    assert m.row_ids.tolist() == ["a"] and m.col_ids.tolist() == ["x", "z"]
    assert m.data.compute().toarray().tolist() == [[1.0, 2.0]]
    assert m.info.provenance["records_dropped"] == 2


def test_tsv_gzip_and_header_options(tmp_path):
    with gzip.open(tmp_path / "r.tsv.gz", "wt") as f:
        f.write("u1\ti1\t4\nu2\ti1\t5\n")
    m = io.ingest(
        tmp_path / "r.tsv.gz",
        tmp_path / "x.zarr",
        read_options={"header": None, "names": ["user", "item", "rating"]},
    )
    assert m.shape == (2, 1) and m.data.compute().toarray().ravel().tolist() == [4.0, 5.0]


def test_column_errors(tmp_path):
    pd.DataFrame({"userId": [1], "movieId": [2], "rating": [3.0]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(ValueError, match=r"user_col='user' is not a column.*userId"):
        io.ingest(tmp_path / "r.csv", tmp_path / "x.zarr")
    with pytest.raises(ValueError, match=r"value_col=None for implicit"):
        io.ingest(
            tmp_path / "r.csv",
            tmp_path / "x.zarr",
            user_col="userId",
            item_col="movieId",
            value_col="stars",
        )
    with pytest.raises(ValueError, match="Cannot tell the format"):
        io.ingest(tmp_path / "r.weird", tmp_path / "x.zarr")


def test_existing_output(tmp_path):
    pd.DataFrame({"user": [1], "item": [2], "rating": [3.0]}).to_csv(tmp_path / "r.csv", index=False)
    io.ingest(tmp_path / "r.csv", tmp_path / "x.zarr")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        io.ingest(tmp_path / "r.csv", tmp_path / "x.zarr")
    io.ingest(tmp_path / "r.csv", tmp_path / "x.zarr", overwrite=True)


def _coo(seed=0, shape=(9, 7), density=0.3):
    X = sp.random(*shape, density=density, random_state=seed, format="coo")
    X.data = np.round(X.data * 5, 1)
    return X


@pytest.mark.parametrize("field", ["real", "integer", "pattern"])
@pytest.mark.parametrize("symmetry", ["general", "symmetric"])
def test_matrix_market(tmp_path, field, symmetry):
    X = _coo()
    if symmetry == "symmetric":
        X = sp.coo_matrix(sp.tril(_coo(shape=(8, 8)) + _coo(1, shape=(8, 8)).T))
    if field == "integer":
        X.data = np.ceil(X.data)
    path = str(tmp_path / "x.mtx")
    scipy.io.mmwrite(path, X, field=field, symmetry=symmetry)
    m = io.ingest(path, tmp_path / "x.zarr", chunks=(3, 4), batch_records=5)
    expected = scipy.io.mmread(path).toarray()
    np.testing.assert_array_equal(m.data.compute().toarray(), expected)
    assert m.dtype == np.float64 and m.row_ids.equals(pd.RangeIndex(X.shape[0]))


def test_matrix_market_gzip_dense_and_invalid(tmp_path):
    X = _coo()
    scipy.io.mmwrite(str(tmp_path / "x.mtx"), X)
    with open(tmp_path / "x.mtx", "rb") as f, gzip.open(tmp_path / "x.mtx.gz", "wb") as g:
        g.write(f.read())
    m = io.ingest(tmp_path / "x.mtx.gz", tmp_path / "g.zarr")
    np.testing.assert_array_equal(m.data.compute().toarray(), X.toarray())
    # Dense ("array") MatrixMarket files become dense stores.
    scipy.io.mmwrite(str(tmp_path / "d.mtx"), X.toarray())
    d = io.ingest(tmp_path / "d.mtx", tmp_path / "d.zarr")
    assert d.format == "dense"
    np.testing.assert_array_equal(d.data.compute(), X.toarray())
    # Negative entries are reported with their line and 1-based position.
    X.data[2] = -1
    scipy.io.mmwrite(str(tmp_path / "n.mtx"), X)
    with pytest.raises(ValueError, match=rf"row={X.row[2] + 1}, col={X.col[2] + 1}, value=-1.0"):
        io.ingest(tmp_path / "n.mtx", tmp_path / "n.zarr")


def test_npz(tmp_path):
    X = _coo().tocsr()
    sp.save_npz(tmp_path / "x.npz", X)
    m = io.ingest(tmp_path / "x.npz", tmp_path / "x.zarr", chunks=(4, 4))
    assert m.format == "sparse" and (m.data.compute() != X).nnz == 0
    X.data[0] = np.nan
    sp.save_npz(tmp_path / "bad.npz", X)
    with pytest.raises(ValueError, match=r"1 of \d+ entries.*non-finite"):
        io.ingest(tmp_path / "bad.npz", tmp_path / "bad.zarr")
    m = io.ingest(tmp_path / "bad.npz", tmp_path / "bad.zarr", on_invalid="drop")
    assert m.nnz == X.nnz - 1
    np.save(tmp_path / "plain.npz", np.ones(3))  # not a SciPy npz
    os.replace(tmp_path / "plain.npz.npy", tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="SciPy sparse .npz"):
        io.ingest(tmp_path / "plain.npz", tmp_path / "p.zarr")


def test_npy_memory_mapped_dense(tmp_path):
    A = np.random.default_rng(0).random((23, 5)).astype("float32")
    np.save(tmp_path / "a.npy", A)
    m = io.ingest(tmp_path / "a.npy", tmp_path / "a.zarr", chunks=(10, 5))
    assert m.format == "dense" and m.dtype == np.float32 and m.chunks == ((10, 10, 3), (5,))
    np.testing.assert_array_equal(m.data.compute(), A)
    A[3, 1] = -4
    np.save(tmp_path / "b.npy", A)
    with pytest.raises(ValueError, match=r"entry \(row 3, col 1\)"):
        io.ingest(tmp_path / "b.npy", tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()
    m = io.ingest(tmp_path / "b.npy", tmp_path / "b.zarr", on_invalid="drop")
    assert m.data.compute()[3, 1] == 0


def test_storage_dtype_and_provenance(tmp_path):
    pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "x", "y"], "rating": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "r.csv", index=False
    )
    m = io.ingest(tmp_path / "r.csv", tmp_path / "x.zarr", dtype="float64")
    assert m.dtype == np.float64
    prov = m.info.provenance
    assert prov["records_read"] == 3 and prov["duplicates_merged"] == 1 and prov["id_order"] == "sorted"
