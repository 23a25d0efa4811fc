"""Item 10: error messages name the file, the column or the value as found."""

import gzip
import warnings

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


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_values_near_float_max_get_a_scale_message_not_linalgerror(solver):
    X = np.random.default_rng(0).random((30, 20)) * 1e308
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow warnings on the way
        with pytest.raises(ValueError, match=r"too large for float64.*X / X.max\(\)"):
            dnmf.NMF(3, solver=solver, random_state=0, max_iter=20).fit(X)


def test_ratings_near_float_max_get_a_scale_message():
    X = np.random.default_rng(0).random((30, 20)) * 1e308
    with pytest.raises(ValueError, match=r"too large for float64.*Scale the ratings"):
        dnmf.RatingsNMF(3, random_state=0, max_iter=5).fit(X)


def test_huge_values_through_the_cli_exit_2_with_one_line(tmp_path):
    pd.DataFrame({"user": [1, 1, 2, 3], "item": [1, 2, 2, 3], "rating": [1e308, 2e307, 5e307, 1e308]}).to_csv(
        tmp_path / "r.csv", index=False
    )
    # float32 (the ratings default) would turn them into infinity: ingest says so and names the option.
    res = invoke("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr")
    line = one_error_line(res.stderr)
    assert res.exit_code == 2 and "too large" in line and "--dtype float64" in line
    assert not (tmp_path / "r.zarr").exists()
    assert invoke("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr", "--dtype", "float64").exit_code == 0
    res = invoke("fit", tmp_path / "r.zarr", "-k", "2", "-o", tmp_path / "m.zarr")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert res.exit_code == 2 and len(errors) == 1 and "too large for float64" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m.zarr").exists()


def test_dtype_changed_in_zarr_json_is_exit_2_one_line(tmp_path):
    import json

    X = np.random.default_rng(0).random((50, 40))
    dnmf.write_matrix(X, tmp_path / "d.zarr")
    meta = tmp_path / "d.zarr" / "X" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = "float32"
    meta.write_text(json.dumps(doc))
    res = invoke("fit", tmp_path / "d.zarr", "-k", "2", "-o", tmp_path / "m.zarr")
    assert res.exit_code == 2 and "float32" in res.stderr and "Traceback" not in res.stderr
