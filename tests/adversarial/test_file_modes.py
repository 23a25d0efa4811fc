"""Item 11: result files get the mode the umask gives (0666 & ~umask), not mkstemp's 0600."""

import os
import stat

import pytest

from dnmf.storage import arrays as io

from .helpers import invoke, ratings_csv

pytestmark = pytest.mark.adversarial


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_results_respect_the_umask(tmp_path, umask_022):
    ratings_csv(tmp_path / "r.csv")
    io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    assert (
        invoke("fit-ratings", tmp_path / "s.zarr", "-k", 2, "-o", tmp_path / "m", "--max-iter", 2, "-q").exit_code == 0
    )
    assert invoke("recommend-all", tmp_path / "m", "-o", tmp_path / "all.parquet", "-q").exit_code == 0
    assert invoke("export", tmp_path / "m", "--format", "csv", "-o", tmp_path / "f").exit_code == 0
    assert invoke("fit", tmp_path / "s.zarr", "-k", 2, "-o", tmp_path / "n", "--max-iter", 2, "-q").exit_code == 0
    res = invoke("transform", tmp_path / "n", tmp_path / "r.csv", "-o", tmp_path / "W.npy", "-q")
    assert res.exit_code == 0, res.stderr
    for p in (tmp_path / "all.parquet", tmp_path / "f" / "W.csv", tmp_path / "f" / "H.csv", tmp_path / "W.npy"):
        assert _mode(p) == umask_022, (p, oct(_mode(p)))


def test_a_stricter_umask_is_kept(tmp_path):
    old = os.umask(0o077)
    try:
        from dnmf.storage import tables

        tables.write_table(str(tmp_path / "x.csv"), iter([__import__("numpy").ones((1, 1))]), (1, 1), format="csv")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.csv") == 0o600
