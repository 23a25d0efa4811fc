"""The application examples (audio source separation, gene expression) run for
real in their --quick mode, as subprocesses, and reach the quality they claim:
separated sources well above the unprocessed mixture, the planted rank and
sample classes recovered."""

import json
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from tests.docs.test_examples import assert_png, run_example

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def test_audio_separation_beats_the_mixture_with_is_and_kl(tmp_path):
    out = run_example("audio_separation.py", "--out", tmp_path)
    summary = json.loads((tmp_path / "audio_summary.json").read_text(encoding="utf-8"))
    names = summary["sources"]
    assert names == ["tones", "drums"]
    mixture = summary["mixture_sdr_db"]
    assert mixture["tones"] == pytest.approx(3.0, abs=0.1) and mixture["drums"] == pytest.approx(-3.0, abs=0.1)
    for key, beta in (("is", "itakura-saito"), ("kl", "kullback-leibler")):
        entry = summary["models"][key]
        assert entry["beta_loss"] == beta
        sdr = entry["oracle"]["sdr_db"]
        for name in names:
            assert sdr[name] >= 8.0, (key, sdr)
            assert sdr[name] > mixture[name] + 5.0, (key, sdr, mixture)
            assert entry["oracle"]["si_sdr_db"][name] >= 8.0
            # The unsupervised grouping finds the same split here.
            assert entry["features"]["sdr_db"][name] >= 8.0, (key, entry["features"])
        groups = entry["oracle"]["components"]
        assert sorted(groups["tones"] + groups["drums"]) == list(range(summary["n_components"]))
        assert groups["tones"] and groups["drums"]
    # The printed table holds the same numbers.
    row = re.search(r"^unprocessed mixture\s+(-?[\d.]+) \(.*?\)\s+(-?[\d.]+) \(", out, flags=re.MULTILINE)
    assert row and float(row.group(1)) == pytest.approx(mixture["tones"], abs=0.01), out
    row = re.search(r"^IS-NMF \(power\), oracle grouping\s+\d+\s+[\d.]+s\s+([\d.]+) \(", out, flags=re.MULTILINE)
    assert row and float(row.group(1)) == pytest.approx(summary["models"]["is"]["oracle"]["sdr_db"]["tones"], abs=0.01)

    from scipy.io import wavfile

    sr, mix = wavfile.read(tmp_path / "audio_mixture.wav")
    assert sr == summary["sample_rate"] and mix.dtype == np.int16 and mix.size == round(summary["seconds"] * sr)
    for name in ("is_tones", "is_drums", "kl_tones", "kl_drums", "true_tones", "true_drums"):
        _, x = wavfile.read(tmp_path / f"audio_{name}.wav")
        assert x.shape == mix.shape and np.abs(x).max() > 1000, name
    assert_png(tmp_path / "audio_spectrograms.png", 300, 600)
    assert_png(tmp_path / "audio_components.png", 300, 600)


def test_audio_separation_of_a_wav_file_uses_the_unsupervised_grouping(tmp_path):
    from scipy.io import wavfile

    # A stereo 16-bit recording: a tone and clicks.
    sr = 8000
    t = np.arange(sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 880 * t)
    clicks = np.zeros_like(t)
    rng = np.random.default_rng(0)
    for start in range(1000, sr - 800, 2000):
        clicks[start : start + 400] = 0.4 * rng.standard_normal(400) * np.exp(-np.arange(400) / 80)
    x = np.round(np.column_stack([tone + clicks, tone + clicks]) * 20000).astype(np.int16)
    wav = tmp_path / "in.wav"
    wavfile.write(wav, sr, x)
    out = run_example("audio_separation.py", "--wav", wav, "-k", "4", "--out", tmp_path / "out")
    assert "SDR" not in out and "features grouping" in out, out
    summary = json.loads((tmp_path / "out" / "audio_summary.json").read_text(encoding="utf-8"))
    assert summary["grouping"] == "features" and "mixture_sdr_db" not in summary
    for key in ("is", "kl"):
        groups = summary["models"][key]["features"]["components"]
        assert sorted(groups["source1"] + groups["source2"]) == [0, 1, 2, 3]
        for name in ("source1", "source2"):
            assert (tmp_path / "out" / f"audio_{key}_{name}.wav").exists()


def test_gene_expression_recovers_the_planted_rank_and_classes(tmp_path):
    out = run_example("gene_expression.py", "--out", tmp_path)
    m = re.search(r"^chosen rank: (\d+) \(planted: (\d+)\)$", out, flags=re.MULTILINE)
    assert m and m.group(1) == m.group(2), out
    k = int(m.group(1))
    ari = float(re.search(r"ARI = ([\d.]+)$", out, flags=re.MULTILINE).group(1))
    assert ari >= 0.9, out

    summary = json.loads((tmp_path / "gene_summary.json").read_text(encoding="utf-8"))
    assert summary["chosen_k"] == summary["planted_k"] == k
    assert summary["ari"] == pytest.approx(ari, abs=1e-3)
    assert summary["cophenetic"][summary["ks"].index(k)] >= 0.99
    assert sum(summary["cluster_sizes"]) == summary["shape"]["samples"]
    # One component per class, each with its class's planted marker genes on top.
    table = re.findall(r"^\s+(\d+)\s+(\d+)\s+([A-Z])\s+((?:GENE\d{4} ){8}) (\d+)/20$", out, flags=re.MULTILINE)
    assert [int(r[0]) for r in table] == list(range(1, k + 1)), out
    assert len({r[2] for r in table}) == k
    assert all(int(r[4]) >= 15 for r in table), table
    markers = (tmp_path / "gene_markers.csv").read_text(encoding="utf-8").splitlines()
    assert markers[0] == "component,rank,gene,weight" and len(markers) == 1 + 20 * k
    assert_png(tmp_path / "gene_rank.png", 250, 400)
    assert_png(tmp_path / "gene_consensus.png", 250, 250)
    assert_png(tmp_path / "gene_metagenes.png", 300, 500)
