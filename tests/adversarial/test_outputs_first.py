"""Item 8: outputs are checked before any work; an unreachable scheduler leaves nothing behind."""

import os

import pytest

from dnmf.storage import arrays as io

from .helpers import invoke, one_error_line, ratings_csv, tree_hashes

pytestmark = pytest.mark.adversarial


@pytest.fixture
def store(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


def _fit(*args):
    return invoke("fit", *args, "-k", 2, "--max-iter", 3, "-q")


def test_fit_output_onto_input_store_refused_before_the_fit(store, tmp_path):
    before = tree_hashes(store)
    res = _fit(store, "-o", store)
    assert res.exit_code == 2
    line = one_error_line(res.stderr)
    assert "-o" in line and "INPUT" in line and "running on" not in res.stderr + res.stdout
    assert tree_hashes(store) == before


def test_fit_output_onto_foreign_path_refused_before_the_fit(store, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    res = _fit(store, "-o", tmp_path / "photos")
    assert res.exit_code == 2 and "foreign" in one_error_line(res.stderr)
    (tmp_path / "file.txt").write_text("x")
    res = _fit(store, "-o", tmp_path / "file.txt")
    assert res.exit_code == 2 and "file" in one_error_line(res.stderr)
    assert "running on" not in res.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_fit_into_read_only_directory_refused_before_the_fit(store, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _fit(store, "-o", ro / "m")
        assert res.exit_code == 2 and "not writable" in one_error_line(res.stderr)
    finally:
        ro.chmod(0o755)


def test_fit_into_read_only_directory_refused_before_the_fit_any_user(store, tmp_path, monkeypatch):
    """The same check, with os.access saying no (the suite may run as root)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p).endswith("ro") else real(p, m, **k))
    (tmp_path / "ro").mkdir()
    res = _fit(store, "-o", tmp_path / "ro" / "m")
    assert res.exit_code == 2 and "not writable" in one_error_line(res.stderr)


def test_fit_over_an_existing_model_is_allowed(store, tmp_path):
    assert _fit(store, "-o", tmp_path / "m").exit_code == 0
    assert _fit(store, "-o", tmp_path / "m").exit_code == 0


def test_submit_to_unreachable_scheduler_leaves_no_job_directory(store, tmp_path):
    res = invoke(
        "submit", store, "-k", 2, "-o", tmp_path / "m", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", 1
    )
    assert res.exit_code == 2 and "scheduler" in one_error_line(res.stderr)
    assert not (tmp_path / "m.job").exists() and not (tmp_path / "m").exists()


def test_export_and_recommend_all_outputs_onto_the_model_refused(store, tmp_path):
    assert invoke("fit-ratings", store, "-k", 2, "-o", tmp_path / "m", "--max-iter", 2, "-q").exit_code == 0
    before = tree_hashes(tmp_path / "m")
    res = invoke("export", tmp_path / "m", "-o", tmp_path / "m")
    assert res.exit_code == 2 and "MODEL" in one_error_line(res.stderr)
    res = invoke("recommend-all", tmp_path / "m", "-o", tmp_path / "m" / "x.csv", "-q")
    assert res.exit_code == 2 and "MODEL" in one_error_line(res.stderr)
    res = invoke("recommend-all", tmp_path / "m", "-o", tmp_path / "adir", "-q")
    assert res.exit_code == 2
    assert tree_hashes(tmp_path / "m") == before
