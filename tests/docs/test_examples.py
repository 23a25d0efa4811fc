"""The examples run for real (their --quick mode, as subprocesses) and write
what they claim: images that decode and show something, tables, reports."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image as mpimg

from tests.helpers import REPO_ROOT as ROOT

pytestmark = pytest.mark.subprocess

EXAMPLES = ROOT / "examples"


def run_example(name, *args, timeout=240):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def assert_png(path, min_h, min_w):
    """Decodes, is at least min_h x min_w pixels, and is neither blank nor solid."""
    assert path.stat().st_size > 5_000, path
    img = mpimg.imread(path)
    assert img.shape[0] >= min_h and img.shape[1] >= min_w, img.shape
    ink = np.mean(img[..., :3].min(axis=2) < 0.9)
    assert 0.01 < ink < 0.9, (path, ink)
    return img


def test_faces_digits_shows_nmf_parts_next_to_pca(tmp_path):
    out = run_example("faces_digits.py", "--out", tmp_path)
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(r"^(NMF|PCA)\s+([0-9.]+)\s+(\d+)%\s+(\d+)%$", out, flags=re.MULTILINE)
    }
    assert set(rows) == {"NMF", "PCA"}, out
    nmf_err, nmf_sparse, nmf_neg = float(rows["NMF"][0]), int(rows["NMF"][1]), int(rows["NMF"][2])
    pca_err, pca_sparse, pca_neg = float(rows["PCA"][0]), int(rows["PCA"][1]), int(rows["PCA"][2])
    assert 0 < pca_err < nmf_err < 0.6  # PCA is the best rank-k fit; NMF is close
    assert nmf_neg == 0 and pca_neg > 20  # parts add up; eigen-digits cancel out
    assert nmf_sparse > pca_sparse  # parts are localised

    grid = assert_png(tmp_path / "digits_components.png", 200, 400)
    # Two panels: the left half (NMF, grey) and the right half (PCA, red/blue) both hold images.
    left, right = grid[:, : grid.shape[1] // 2, :3], grid[:, grid.shape[1] // 2 :, :3]
    assert np.mean(left.min(axis=2) < 0.5) > 0.01
    colour = np.abs(right[..., 0] - right[..., 2]) > 0.2
    assert colour.mean() > 0.01 and np.abs(left[..., 0] - left[..., 2]).max() < 0.05
    assert_png(tmp_path / "digits_loss.png", 300, 500)
    report = (tmp_path / "digits_report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in report and "NMF of digits images" in report


def test_topics_prints_top_words_per_topic_with_kl(tmp_path):
    out = run_example("topics.py", "--out", tmp_path, "-k", "5")
    m = re.search(r"corpus: .*: ([\d,]+) documents x ([\d,]+) words", out)
    assert m and int(m.group(1).replace(",", "")) > 300, out
    table = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\S+)\s+((?:[a-z]+ ?){8})$", out, flags=re.MULTILINE)
    assert [int(t[0]) for t in table] == [1, 2, 3, 4, 5], out
    assert sum(int(t[1]) for t in table) == int(m.group(1).replace(",", ""))  # every document in one topic
    words = [t[3].split() for t in table]
    assert all(len(set(w)) == 8 for w in words)
    # Topics differ: most top words belong to one topic only.
    flat = [w for ws in words for w in ws]
    assert len(set(flat)) >= 0.7 * len(flat)
    md = (tmp_path / "topics.md").read_text(encoding="utf-8")
    assert "kullback-leibler" in md and md.count("\n| ") == 1 + 5
    assert_png(tmp_path / "topics_loss.png", 300, 400)


@pytest.mark.cluster
def test_out_of_core_kills_the_driver_and_resumes_bit_for_bit(tmp_path):
    out = run_example("out_of_core.py", "--out", tmp_path, "--dir", tmp_path / "work")
    assert re.search(r"^dashboard: http://\S+/status$", out, flags=re.MULTILINE), out
    assert "killed the driver" in out and "exit code -9" in out
    assert "last committed checkpoint: iteration 2" in out
    driver = [int(i) for i in re.findall(r"^  iteration\s+(\d+)", out.split("[resume]")[0], flags=re.MULTILINE)]
    resumed = [int(i) for i in re.findall(r"^  iteration\s+(\d+)", out.split("[resume]")[1], flags=re.MULTILINE)]
    assert driver == [1, 2, 3] and resumed == [3, 4, 5, 6]
    assert "resumed == uninterrupted, bit for bit: yes" in out
    assert (tmp_path / "work" / "checkpoints" / "LATEST.json").exists()
    assert_png(tmp_path / "out_of_core_loss.png", 300, 400)
    report = (tmp_path / "out_of_core_report.html").read_text(encoding="utf-8")
    assert "resumed from iteration</td><td>2</td>" in report
    assert report.count("<tr><td>tcp://") == 0 and "worker</th><th>address" in report


def test_recommend_ingests_evaluates_and_recommends_unseen_items_of_the_users_genres(tmp_path):
    out = run_example("recommend.py", "--dir", tmp_path)
    assert re.search(r"^ingested .*: 400 users x 160 items, [\d,]+ ratings", out, flags=re.MULTILINE), out
    metrics = {
        m.group(1).strip(): m.group(2).split()
        for m in re.finditer(
            r"^(RatingsNMF explicit \(masked\)|RatingsNMF implicit|NMF \(missing = 0\))\s+[\d.]+s\s+(.*)$",
            out,
            flags=re.MULTILINE,
        )
    }
    assert len(metrics) == 3, out
    rmse = float(metrics["RatingsNMF explicit (masked)"][0])
    assert 0 < rmse < 1.0  # ratings in 0.5..5 predicted within a star
    ndcg = {name: float(v[-1]) for name, v in metrics.items()}
    assert ndcg["NMF (missing = 0)"] > ndcg["RatingsNMF explicit (masked)"]  # ranking is not rating

    table = re.findall(r"^\s+(\d+)\s+([a-z]+)-(\d{3})\s+(-?[\d.]+)$", out, flags=re.MULTILINE)
    assert [int(r[0]) for r in table] == list(range(1, 11)), out
    scores = [float(r[3]) for r in table]
    assert scores == sorted(scores, reverse=True)
    favourites = re.search(r"favourite genres \(ratings >= 4\): (.*)$", out, flags=re.MULTILINE).group(1)
    liked = set(re.findall(r"([a-z]+) \(\d+\)", favourites))
    # Chance: about 2-3 of 10. The implicit model's default penalty (reg_scaling="cells") ranks held-out
    # ratings better than the old one (NDCG@10 0.604 vs 0.568 here) with a little more popularity in the
    # lists: 4 of 10 for this user, 40% over all users (52% before).
    assert sum(genre in liked for _, genre, _, _ in table) >= 4, out
    assert re.search(r"already rated by u00000: 0 of 10 recommended items", out)
    assert (tmp_path / "ratings.zarr").exists()  # the store dnmf.ingest wrote
