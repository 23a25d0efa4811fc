"""dnmf.cli.report.write_report: one self-contained HTML file that shows what it claims."""

import base64
import io
import os
import re
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import dnmf
from dnmf.cli.report import cluster_info, write_report


class Page(HTMLParser):
    """Collects the elements a reader sees: headings, tables, images, links, svg."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.h2, self.title, self.links, self.images = [], [], "", [], []
        self.tables, self._cell, self._where = [], None, []
        self.svg = text.count("<svg")
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._where.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "a":
            self.links.append(attrs.get("href"))
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None
        if self._where and self._where[-1] == tag:
            self._where.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._where and self._where[-1] == "h2":
            self.h2.append(data.strip())
        elif self._where and self._where[-1] == "title":
            self.title += data

    def rows(self, first_header):
        """The rows of the table whose header row starts with first_header, as a dict."""
        for t in self.tables:
            if t and t[0] and t[0][0] == first_header:
                return t
        raise AssertionError(f"no table starting with {first_header!r}")

    def kv(self, first_header="name", which=0):
        tables = [t for t in self.tables if t and t[0] and t[0][0] == first_header]
        return {r[0]: r[1] for r in tables[which][1:]}


@pytest.fixture(scope="module")
def fitted(dist_client):
    X = np.abs(np.random.default_rng(0).standard_normal((120, 40)))
    # tol=0: runs all 10 iterations (no ConvergenceWarning with tol=0).
    return dnmf.NMF(4, random_state=0, max_iter=10, tol=0, client=dist_client).fit(X)


def test_report_holds_result_loss_curve_parameters_timings_and_cluster(fitted, dist_client, tmp_path):
    path = tmp_path / "out" / "report.html"
    info = cluster_info(dist_client)
    timings = {"ingest": 1.5, "init": 0.25, "iterations": 3.0, "save": 0.25}
    write_report(path, fitted, timings=timings, cluster=info, title="My <fit>", extra={"input": "X.zarr"})
    text = path.read_text(encoding="utf-8")
    page = Page(text)

    assert page.title == "My <fit>" and "My &lt;fit&gt;" in text  # escaped, shown as given
    assert page.h2 == ["Result", "Loss curve", "Timing per phase", "Cluster", "Parameters", "More"]

    result = page.kv("name", 0)
    assert result["n_iter_"] == "10"
    assert float(result["reconstruction_err_"]) == pytest.approx(fitted.reconstruction_err_, rel=1e-5)
    assert float(result["final loss"]) == pytest.approx(fitted.loss_history_[-1], rel=1e-5)
    assert result["n_components_"] == "4" and result["n_samples (rows of W)"] == "120"
    assert result["converged"].startswith("no (reached max_iter=10)")
    assert result["elapsed (iterations)"] == "3.00 s"  # from timings: the model records none

    # Every parameter, with its value as Python spells it.
    params = page.kv("name", 1)
    assert set(params) == set(fitted.get_params())
    assert params["max_iter"] == "10" and params["solver"] == "'cd'" and params["init"] == "None"
    assert params["client"].startswith("Client(") and info["scheduler"] in params["client"]
    assert page.kv("name", 2) == {"input": "X.zarr"}

    phases = page.rows("phase")
    assert [r[0] for r in phases[1:]] == ["ingest", "init", "iterations", "save", "total"]
    assert [r[2] for r in phases[1:]] == ["30.0 %", "5.0 %", "60.0 %", "5.0 %", "100 %"]
    assert phases[-1][1] == "5.00 s"

    cluster = page.kv("property")
    assert cluster["scheduler address"] == info["scheduler"]
    assert cluster["workers"] == "2" and cluster["threads"] == "2"
    workers = page.rows("worker")
    assert sorted(r[1] for r in workers[1:]) == sorted(w["address"] for w in info["workers"])
    if info["dashboard"]:
        assert info["dashboard"] in page.links

    # The per-iteration values are all there.
    history = page.rows("iteration")
    assert len(history) == 1 + fitted.n_iter_
    assert [float(r[1]) for r in history[1:]] == pytest.approx(fitted.loss_history_, rel=1e-5)


def test_report_is_self_contained_and_its_image_decodes(fitted, tmp_path):
    mpimg = pytest.importorskip("matplotlib.image")
    path = tmp_path / "r.html"
    write_report(path, fitted)
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    # No external assets: nothing loaded from elsewhere.
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe"), tag
        for key in ("src", "href"):
            if key in attrs and tag != "a":
                assert attrs[key].startswith("data:"), (tag, attrs[key][:40])
    assert len(page.images) == 1
    src = page.images[0]["src"]
    assert src.startswith("data:image/png;base64,")
    png = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.shape[0] >= 300 and img.shape[1] >= 900  # two panels side by side
    ink = np.mean(img[..., :3].min(axis=2) < 0.9)
    assert 0.01 < ink < 0.5, ink
    assert "No timings given" in text and "No cluster information given" in text


def test_without_matplotlib_the_curves_are_inline_svg(fitted, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "r.html"
    write_report(path, fitted)
    text = path.read_text(encoding="utf-8")
    assert "<img" not in text
    svgs = re.findall(r"<svg.*?</svg>", text, flags=re.DOTALL)
    assert len(svgs) == 2  # loss and stationarity
    for svg in svgs:
        root = ET.fromstring(svg)
        (line,) = [e for e in root.iter() if e.tag.endswith("polyline")]
        points = line.get("points").split()
        assert len(points) == fitted.n_iter_
        xs = [float(p.split(",")[0]) for p in points]
        assert xs == sorted(xs)


def test_written_atomically_and_not_at_all_for_an_unfitted_model(fitted, tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old report")
    with pytest.raises(NotFittedError, match="Call fit"):
        write_report(path, dnmf.NMF(3))
    assert path.read_text() == "old report"
    write_report(os.fspath(path), fitted, timings={"iterations": 1.0})
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert os.listdir(tmp_path) == ["report.html"]  # no temporary file left behind
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_cluster_info_without_a_client_describes_local_threads():
    info = cluster_info(None)
    assert info["workers"] == [] and info["threads"] >= 1 and info["dashboard"] is None


def test_cluster_given_as_counts_as_the_cli_does(fitted, tmp_path):
    cluster = {
        "scheduler": "inproc://10.0.0.1/1/1",
        "embedded": True,
        "workers": 1,
        "threads": 2,
        "memory_limit": 2 * 2**30,
        "dashboard": "http://10.0.0.1:8787/status",
    }
    path = tmp_path / "r.html"
    write_report(path, fitted, cluster=cluster, timings={"open input": 0.5, "fit": 2.0, "save": 0.5})
    page = Page(path.read_text(encoding="utf-8"))
    shown = page.kv("property")
    assert shown == {
        "scheduler address": "inproc://10.0.0.1/1/1",
        "workers": "1",
        "threads": "2",
        "memory limit (total)": "2.0 GiB",
        "dashboard": "http://10.0.0.1:8787/status",
        "embedded": "yes",
    }
    assert "http://10.0.0.1:8787/status" in page.links
    assert page.kv("name", 0)["elapsed (iterations)"] == "2.00 s"  # the "fit" phase
