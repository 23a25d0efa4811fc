"""Item 10: error messages name the file, the column or the value as found."""

import gzip

import numpy as np
import pandas as pd
import pytest

import dnmf

from .helpers import invoke, one_error_line

pytestmark = pytest.mark.adversarial


def test_empty_csv_names_the_path(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    res = invoke("ingest", tmp_path / "empty.csv", "-o", tmp_path / "o.zarr")
    assert res.exit_code == 2 and "empty.csv" in one_error_line(res.stderr) and "empty" in res.stderr


def test_gzip_content_named_csv(tmp_path):
    (tmp_path / "r.csv").write_bytes(gzip.compress(b"user,item,rating\n1,2,3\n"))
    res = invoke("ingest", tmp_path / "r.csv", "-o", tmp_path / "o.zarr")
    line = one_error_line(res.stderr)
    assert res.exit_code == 2 and "gzip" in line and ".gz" in line and "r.csv" in line


def test_non_numeric_rating_is_shown_as_written(tmp_path):
    (tmp_path / "r.csv").write_text("user,item,rating\n1,2,3\n1,3,five\n")
    res = invoke("ingest", tmp_path / "r.csv", "-o", tmp_path / "o.zarr")
    line = one_error_line(res.stderr)
    assert res.exit_code == 2 and "rating='five'" in line and "nan" not in line and "--on-invalid drop" in line


def test_dataframe_string_column_is_named():
    with pytest.raises(ValueError, match="'b'"):
        dnmf.NMF(1, max_iter=2).fit(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))


def test_float16_to_ratings_nmf():
    X = np.abs(np.random.default_rng(0).random((10, 8))).astype(np.float16)
    with pytest.warns(Warning):
        dnmf.RatingsNMF(2, max_iter=2).fit(X)


def test_nan_input_message_is_dnmfs_own():
    with pytest.raises(ValueError) as info:
        dnmf.NMF(1, max_iter=2).fit(np.array([[1.0, np.nan], [2.0, 3.0]]))
    assert "HistGradientBoosting" not in str(info.value)
