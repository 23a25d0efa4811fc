"""Sound source separation: NMF of a spectrogram, soft masks, SDR against the known sources.

A mixture of two sources with different structure is generated with NumPy:
*tones*, a melody of harmonic notes (few, sustained spectral lines), and
*drums*, noise bursts (broadband, short, on the off-beats), 3 dB quieter. Its short-time
Fourier transform (``scipy.signal.stft``) is factorized as V ≈ W H, V being
frequencies x frames: each column of W is a spectral template, the row of H
beside it says when it sounds. Two models are fitted with ``dnmf.NMF(solver="mu")``:

- the Itakura-Saito divergence on the *power* spectrogram |X|² (Févotte et
  al. 2009): it is scale-invariant, so quiet partials weigh as much as loud
  ones, and it is the likelihood of a sum of Gaussian components — the model
  behind Wiener filtering;
- the Kullback-Leibler divergence on the *magnitude* spectrogram |X|
  (Smaragdis & Brown 2003; Virtanen 2007).

The components are then grouped into sources. With the generated mixture,
each component goes to the source whose own spectrogram its rank-one
spectrogram W[:, c] H[c] correlates with best: this uses the known sources
(an "oracle" grouping that measures what the factorization can separate).
The unsupervised grouping ("features"), the one used for ``--wav``, clusters
the components (k-means) by how peaky their template is along frequency
(harmonic lines stick out of a running median over ~150 Hz) and how peaky
their activation is along time (bursts stick out of a running median over
~150 ms): harmonic, sustained components and percussive, broadband ones
fall apart without knowing the sources (it suits harmonic-vs-percussive
material, not two instruments of the same kind). Both groupings are scored
for the generated mixture.

Each source is recovered with a Wiener-style soft mask: its components'
share of the model, M_j = V̂_j / Σ_i V̂_i with V̂_j = Σ_{c in j} W[:, c] H[c]
(power for IS; the magnitude model squared for KL, i.e. power too), applied
to the complex mixture STFT and inverted with ``scipy.signal.istft``. The
signal-to-distortion ratio of each estimate ŝ against its source s,
SDR = 10 log10(||s||² / ||s − ŝ||²) (and the scale-invariant SI-SDR), is
compared with the SDR of the unprocessed mixture taken as the estimate.

Writes under ``--out``: ``audio_spectrograms.png`` (mixture, true and
separated sources), ``audio_components.png`` (templates and activations of
both models, coloured by source), WAV files (``audio_mixture.wav``,
``audio_<is|kl>_<source>.wav``, and ``audio_true_<source>.wav``) and
``audio_summary.json`` with every measured value.

    python examples/audio_separation.py              # 6 s at 16 kHz, k = 10 (about 30 s)
    python examples/audio_separation.py --quick      # 2 s at 8 kHz, k = 8 (a few seconds; CI)
    python examples/audio_separation.py --wav song.wav --sources 2 -k 12
        # your recording (mono or the mean of its channels; first --max-seconds
        # seconds); no SDR without known sources, only the separated WAVs and figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

SOURCES = ("tones", "drums")


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------


def synthetic_sources(sr: int, seconds: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Two sources: a melody of harmonic notes and noise bursts 3 dB quieter."""
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr

    # Tones: notes of 0.5 s from a few pitches (A3, C#4, E4, A4), 8 partials
    # each with amplitude 1/h, a 20 ms attack, an exponential decay and a release.
    pitches = np.array([220.0, 277.18, 329.63, 440.0])
    melody = [0, 1, 2, 3, 2, 1, 0, 2, 3, 1, 0, 3]
    note = 0.5
    tones = np.zeros(n)
    for i, start in enumerate(np.arange(0.0, seconds, note)):
        a, b = int(start * sr), min(n, int((start + note) * sr))
        tt = t[a:b] - start
        env = np.minimum(tt / 0.02, 1.0) * np.exp(-tt / 0.6) * np.minimum((note - tt) / 0.05, 1.0)
        f0 = pitches[melody[i % len(melody)]]
        wave = sum(
            np.sin(2 * np.pi * h * f0 * tt + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 9) if h * f0 < sr / 2
        )
        tones[a:b] += env * wave

    # Drums: bursts every 0.25 s starting mid-note, alternating a "snare" (noise
    # band-passed to 1-5 kHz, 60 ms decay) and a "hi-hat" (noise above 3 kHz, 25 ms).
    nyq = sr / 2
    snare_sos = butter(4, [1000 / nyq, min(5000, 0.9 * nyq) / nyq], btype="band", output="sos")
    hat_sos = butter(4, min(3000, 0.7 * nyq) / nyq, btype="high", output="sos")
    drums = np.zeros(n)
    for i, start in enumerate(np.arange(0.125, seconds, 0.25)):
        a = int(start * sr)
        length = min(n - a, int(0.2 * sr))
        tt = np.arange(length) / sr
        noise = rng.standard_normal(length)
        if i % 2 == 0:
            burst = sosfilt(snare_sos, noise) * np.exp(-tt / 0.06)
        else:
            burst = 0.7 * sosfilt(hat_sos, noise) * np.exp(-tt / 0.025)
        drums[a : a + length] += burst

    rms = {name: np.sqrt(np.mean(x**2)) for name, x in (("tones", tones), ("drums", drums))}
    return {"tones": 0.25 * tones / rms["tones"], "drums": 0.25 / np.sqrt(2) * drums / rms["drums"]}


def read_wav(path: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Mono float signal in [-1, 1] (the mean of the channels) and its rate."""
    from scipy.io import wavfile

    sr, data = wavfile.read(path)
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float64) - (info.max + info.min + 1) / 2) / (info.max - info.min + 1) * 2
    x = np.asarray(data, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = x[: int(max_seconds * sr)]
    if x.size < sr // 4 or not np.any(x):
        raise SystemExit(f"{path}: too short or silent ({x.size} samples at {sr} Hz).")
    return x, int(sr)


def write_wav(path: str, x: np.ndarray, sr: int, scale: float) -> None:
    """16-bit PCM, with one scale for all files (so their loudness compares)."""
    from scipy.io import wavfile

    wavfile.write(path, sr, np.clip(np.round(x * scale * 32767), -32768, 32767).astype(np.int16))


# --------------------------------------------------------------------------
# Separation
# --------------------------------------------------------------------------


def sdr(s: np.ndarray, est: np.ndarray) -> float:
    """Signal-to-distortion ratio in dB: 10 log10(||s||² / ||s − ŝ||²)."""
    return float(10 * np.log10(np.sum(s**2) / max(np.sum((s - est) ** 2), 1e-300)))


def si_sdr(s: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SDR (Le Roux et al. 2019): the SDR of ŝ against its best scaling α s."""
    target = (np.dot(est, s) / np.dot(s, s)) * s
    return float(10 * np.log10(np.sum(target**2) / max(np.sum((target - est) ** 2), 1e-300)))


def fit_nmf(V: np.ndarray, k: int, beta: str, max_iter: int, seed: int):
    """``dnmf.NMF`` of a (frequencies x frames) spectrogram: (W templates, H activations, model, seconds)."""
    import dnmf

    t = time.perf_counter()
    model = dnmf.NMF(k, solver="mu", beta_loss=beta, init="nndsvda", max_iter=max_iter, tol=1e-5, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning with few iterations is expected
        W = np.asarray(model.fit_transform(V))
    return W, model.components_, model, time.perf_counter() - t


def oracle_groups(W: np.ndarray, H: np.ndarray, source_specs: list[np.ndarray]) -> np.ndarray:
    """Each component to the source whose spectrogram its W[:, c] H[c] correlates with best (uses the sources)."""
    corr = np.empty((W.shape[1], len(source_specs)))
    for c in range(W.shape[1]):
        comp = np.outer(W[:, c], H[c]).ravel()
        for j, S in enumerate(source_specs):
            corr[c, j] = np.corrcoef(comp, S.ravel())[0, 1]
    return np.nan_to_num(corr, nan=-1.0).argmax(axis=1)


def component_features(W: np.ndarray, H: np.ndarray, bins: int, frames: int) -> np.ndarray:
    """(k, 2): spectral peakiness of each template and temporal peakiness of each activation.

    Peakiness: the share of a row that sticks out above its running median
    (over ``bins`` frequencies, or ``frames`` frames) — near 1 for harmonic
    lines in a template or for short bursts in an activation, near 0 for a
    smooth (broadband) spectrum or a sustained activation.
    """
    from scipy.ndimage import median_filter

    def peakiness(A, size):
        A = A / np.maximum(A.max(axis=1, keepdims=True), 1e-300)
        excess = np.maximum(A - median_filter(A, size=(1, size), mode="nearest"), 0).sum(axis=1)
        return excess / np.maximum(A.sum(axis=1), 1e-300)

    return np.column_stack([peakiness(W.T, bins), peakiness(H, frames)])


def feature_groups(W: np.ndarray, H: np.ndarray, n_sources: int, bins: int, frames: int, seed: int = 0) -> np.ndarray:
    """Unsupervised grouping: k-means of the components' spectral and temporal peakiness.

    Harmonic sounds have peaky templates and smooth activations, percussive
    ones smooth (broadband) templates and peaky activations. Groups are
    numbered by decreasing spectral peakiness: group 0 is the most harmonic.
    """
    from sklearn.cluster import KMeans

    F = component_features(W, H, bins, frames)
    labels = KMeans(n_sources, n_init=10, random_state=seed).fit_predict(F)
    order = np.argsort([-F[labels == g, 0].mean() if np.any(labels == g) else np.inf for g in range(n_sources)])
    return np.argsort(order)[labels]


def separate(Z, W, H, groups, n_sources, power: float, istft_args: dict, n: int) -> list[np.ndarray]:
    """Wiener-style masks M_j = V̂_j^p / Σ_i V̂_i^p on the complex STFT Z, inverted: one signal per source."""
    from scipy.signal import istft

    models = [W[:, groups == j] @ H[groups == j] for j in range(n_sources)]
    powers = [np.power(m, power) for m in models]
    total = np.maximum(sum(powers), 1e-300)
    out = []
    for p in powers:
        _, x = istft(p / total * Z, **istft_args)
        x = x[:n]
        out.append(np.pad(x, (0, n - x.size)))
    return out


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def _db(S: np.ndarray, floor: float = 80.0) -> np.ndarray:
    D = 10 * np.log10(np.maximum(S, 1e-300))
    return np.maximum(D, D.max() - floor)


def plot_spectrograms(path, f, times, mixture_P, truth, estimates, names):
    """Rows: mixture, then each source; columns: true, IS-NMF estimate, KL-NMF estimate (power in dB)."""
    import matplotlib.pyplot as plt

    rows = 1 + len(names)
    cols = 1 + len(estimates)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.4 * rows), sharex=True, sharey=True, squeeze=False)
    vmax = _db(mixture_P).max()
    extent = (times[0], times[-1], f[0] / 1000, f[-1] / 1000)

    def show(ax, P, title):
        ax.imshow(_db(P), origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=vmax - 80, vmax=vmax)
        ax.set_title(title, fontsize=9)

    show(axes[0, 0], mixture_P, "mixture")
    for ax in axes[0, 1:]:
        ax.axis("off")
    for j, name in enumerate(names):
        if truth is not None:
            show(axes[1 + j, 0], truth[j], f"true {name}")
        else:
            axes[1 + j, 0].axis("off")
        for m, (label, specs) in enumerate(estimates.items()):
            show(axes[1 + j, 1 + m], specs[j], f"{label}: {name}")
    for ax in axes[:, 0]:
        ax.set_ylabel("kHz")
    for ax in axes[-1]:
        ax.set_xlabel("s")
    fig.suptitle("Power spectrograms (dB): mixture, true and separated sources", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_components(path, f, times, fits, names):
    """Per model: templates W (dB, one column per component) and activations H, coloured by source.

    Activations of a power model are drawn as their square root (amplitude), like the magnitude model's.
    """
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(len(fits), 2, figsize=(12, 3.4 * len(fits)), squeeze=False)
    for r, (label, (W, H, groups, power)) in enumerate(fits.items()):
        order = np.lexsort((np.arange(W.shape[1]), groups))
        ax = axes[r, 0]
        Wn = W[:, order] / np.maximum(W[:, order].max(axis=0), 1e-300)
        ax.imshow(
            _db(Wn, 60), origin="lower", aspect="auto", cmap="magma", extent=(0, W.shape[1], f[0] / 1000, f[-1] / 1000)
        )
        for i, c in enumerate(order):
            ax.add_patch(plt.Rectangle((i, f[-1] / 1000 * 0.97), 1, f[-1] / 1000 * 0.03, color=colours[groups[c] % 10]))
        ax.set_xticks(np.arange(W.shape[1]) + 0.5, [str(c) for c in order])
        ax.set_xlabel("component")
        ax.set_ylabel("kHz")
        ax.set_title(f"{label}: spectral templates W (dB, each normalised)", fontsize=9)
        ax = axes[r, 1]
        for i, c in enumerate(order):
            h = H[c] ** (0.5 if power == 1.0 else 1.0)
            h = h / max(h.max(), 1e-300)
            ax.plot(times, h * 0.9 + i, color=colours[groups[c] % 10], lw=0.9)
        ax.set_yticks(np.arange(len(order)), [str(c) for c in order])
        ax.set_xlabel("s")
        ax.set_ylabel("component")
        ax.set_title(f"{label}: activations H (amplitude, each normalised)", fontsize=9)
        handles = [plt.Line2D([], [], color=colours[j % 10], label=name) for j, name in enumerate(names)]
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--n-components", type=int, default=None, help="components (default 10; 8 with --quick)")
    parser.add_argument("--max-iter", type=int, default=None, help="iterations (default 300; 100 with --quick)")
    parser.add_argument("--wav", default=None, help="a WAV file to separate (default: a generated mixture)")
    parser.add_argument("--sources", type=int, default=2, help="sources to separate a --wav into (default 2)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="seconds of --wav used (default 30)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="length of the generated mixture (6; 2 with --quick)"
    )
    parser.add_argument(
        "--grouping",
        choices=("oracle", "features"),
        default=None,
        help="components -> sources: 'oracle' correlates with the known sources (generated mixture only; "
        "the default there), 'features' clusters spectral/temporal peakiness (the default for --wav)",
    )
    parser.add_argument("--out", default=os.path.join("examples", "output"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="short and fast (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    k = args.n_components or (8 if args.quick else 10)
    max_iter = args.max_iter or (100 if args.quick else 300)
    grouping = args.grouping or ("features" if args.wav else "oracle")
    if args.wav and grouping == "oracle":
        parser.error("--grouping oracle needs the known sources of the generated mixture; use 'features' with --wav")

    from scipy.signal import stft

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.wav:
        mixture, sr = read_wav(args.wav, args.max_seconds)
        truth_signals = None
        names = [f"source{j + 1}" for j in range(args.sources)]
        what = args.wav
    else:
        sr = 8000 if args.quick else 16000
        seconds = args.seconds or (2.0 if args.quick else 6.0)
        sources = synthetic_sources(sr, seconds, seed=args.seed)
        names = list(SOURCES)
        truth_signals = [sources[name] for name in names]
        mixture = sum(truth_signals)
        what = "generated mixture of " + " + ".join(names)
    n = mixture.size
    nperseg = 2 ** int(round(np.log2(0.064 * sr)))  # about 64 ms windows, 75% overlap
    stft_args = dict(fs=sr, nperseg=nperseg, noverlap=3 * nperseg // 4)
    f, times, Z = stft(mixture, **stft_args)
    P = np.abs(Z) ** 2
    # Running-median widths of the unsupervised grouping: about 150 Hz and 150 ms (odd).
    bins = 2 * int(75 / (f[1] - f[0])) + 1
    frames = 2 * int(0.075 / (times[1] - times[0])) + 1
    # Spectrograms are scaled to mean 1 (the MU updates clip values under float32's
    # epsilon, as scikit-learn does), with a floor 1e-6 below: the IS divergence
    # needs V > 0 and would otherwise spend components on digital silence.
    scale = P.mean()
    V_power = P / scale + 1e-6
    V_mag = np.sqrt(P / scale) + 1e-3
    timings["signal + STFT"] = time.perf_counter() - t0
    print(f"{what}: {n / sr:.1f} s at {sr} Hz; STFT {Z.shape[0]} frequencies x {Z.shape[1]} frames ({nperseg} samples)")

    source_P = None
    if truth_signals is not None:
        source_P = [np.abs(stft(s, **stft_args)[2]) ** 2 / scale for s in truth_signals]

    models = {
        "IS-NMF (power)": ("is", "itakura-saito", V_power, 1.0),
        "KL-NMF (magnitude)": ("kl", "kullback-leibler", V_mag, 2.0),
    }
    istft_args = dict(stft_args)
    summary: dict = {
        "input": what,
        "sample_rate": sr,
        "seconds": n / sr,
        "stft": {"nperseg": nperseg, "noverlap": stft_args["noverlap"], "shape": list(Z.shape)},
        "n_components": k,
        "max_iter": max_iter,
        "grouping": grouping,
        "sources": names,
        "models": {},
    }
    if truth_signals is not None:
        summary["mixture_sdr_db"] = {name: sdr(s, mixture) for name, s in zip(names, truth_signals, strict=True)}
        summary["mixture_si_sdr_db"] = {name: si_sdr(s, mixture) for name, s in zip(names, truth_signals, strict=True)}

    fits, est_specs, est_signals = {}, {}, {}
    for label, (key, beta, V, power) in models.items():
        W, H, model, secs = fit_nmf(V, k, beta, max_iter, args.seed)
        timings[f"{key} fit"] = secs
        entry = {
            "beta_loss": beta,
            "spectrogram": "power" if power == 1.0 else "magnitude",
            "n_iter": int(model.n_iter_),
            "fit_seconds": secs,
            "reconstruction_err": float(model.reconstruction_err_),
        }
        candidates = {}
        if truth_signals is not None:
            exponent = 1.0 if power == 1.0 else 0.5  # compare in the fitted domain
            candidates["oracle"] = oracle_groups(W, H, [np.power(S, exponent) for S in source_P])
        candidates["features"] = feature_groups(W, H, len(names), bins, frames, seed=args.seed)
        for how, groups in candidates.items():
            signals = separate(Z, W, H, groups, len(names), power, istft_args, n)
            result = {"components": {name: np.flatnonzero(groups == j).tolist() for j, name in enumerate(names)}}
            if truth_signals is not None:
                if how == "features":  # unsupervised groups are unnamed: match them to the sources
                    signals, perm = _best_match(truth_signals, signals)
                    result["components"] = {
                        names[j]: np.flatnonzero(groups == perm[j]).tolist() for j in range(len(names))
                    }
                result["sdr_db"] = {name: sdr(s, e) for name, s, e in zip(names, truth_signals, signals, strict=True)}
                result["si_sdr_db"] = {
                    name: si_sdr(s, e) for name, s, e in zip(names, truth_signals, signals, strict=True)
                }
            entry[how] = result
            if how == grouping:
                fits[label] = (
                    W,
                    H,
                    groups if how == "oracle" or truth_signals is None else _relabel(groups, perm),
                    power,
                )
                est_signals[key] = signals
                est_specs[label] = [np.abs(stft(x, **stft_args)[2]) ** 2 / scale for x in signals]
        summary["models"][key] = entry

    # Table.
    print()
    if truth_signals is not None:
        print(f"SDR in dB (SI-SDR in brackets); k = {k}, at most {max_iter} iterations")
        print(f"{'estimate':<38}{'iters':>6}{'time':>8}" + "".join(f"{name:>16}" for name in names))

        def cells(sdrs, si):
            return "".join(f"{f'{sdrs[nm]:.2f} ({si[nm]:.1f})':>16}" for nm in names)

        print(f"{'unprocessed mixture':<52}" + cells(summary["mixture_sdr_db"], summary["mixture_si_sdr_db"]))
        for label, (key, *_rest) in models.items():
            entry = summary["models"][key]
            for how in ("oracle", "features"):
                res = entry[how]
                row = f"{label}, {how} grouping"
                print(
                    f"{row:<38}{entry['n_iter']:>6}{entry['fit_seconds']:>7.1f}s"
                    + cells(res["sdr_db"], res["si_sdr_db"])
                )
        print()
    for label, (key, *_rest) in models.items():
        comps = summary["models"][key][grouping]["components"]
        print(
            f"{label}: components per source ({grouping} grouping): " + ", ".join(f"{nm} {comps[nm]}" for nm in names)
        )

    # Files.
    os.makedirs(args.out, exist_ok=True)
    t = time.perf_counter()
    written = []
    peak = max(np.abs(mixture).max(), 1e-12)
    wav_scale = 0.99 / peak
    path = os.path.join(args.out, "audio_mixture.wav")
    write_wav(path, mixture, sr, wav_scale)
    written.append(path)
    if truth_signals is not None:
        for name, s in zip(names, truth_signals, strict=True):
            path = os.path.join(args.out, f"audio_true_{name}.wav")
            write_wav(path, s, sr, wav_scale)
            written.append(path)
    for key, signals in est_signals.items():
        for name, x in zip(names, signals, strict=True):
            path = os.path.join(args.out, f"audio_{key}_{name}.wav")
            write_wav(path, x, sr, wav_scale)
            written.append(path)
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        path = os.path.join(args.out, "audio_spectrograms.png")
        plot_spectrograms(path, f, times, P / scale, source_P, est_specs, names)
        written.append(path)
        path = os.path.join(args.out, "audio_components.png")
        plot_components(path, f, times, fits, names)
        written.append(path)
    except ImportError:
        print("matplotlib is not installed: no figures (pip install dnmf[plot])")
    timings["outputs"] = time.perf_counter() - t
    summary["timings"] = timings
    path = os.path.join(args.out, "audio_summary.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    written.append(path)
    print()
    for path in written:
        print(f"wrote {path}")
    return 0


def _best_match(truth: list[np.ndarray], signals: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The estimates reordered to the permutation of highest total SDR, and that permutation."""
    from itertools import permutations

    best = max(
        permutations(range(len(signals))),
        key=lambda p: sum(sdr(s, signals[j]) for s, j in zip(truth, p, strict=True)),
    )
    return [signals[j] for j in best], list(best)


def _relabel(groups: np.ndarray, perm: list[int]) -> np.ndarray:
    """Group labels renamed so that group perm[j] becomes source j."""
    out = np.empty_like(groups)
    for j, g in enumerate(perm):
        out[groups == g] = j
    return out


if __name__ == "__main__":
    sys.exit(main())
