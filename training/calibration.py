"""Probabilities that mean what they say: temperature scaling (Guo et al. 2017), its error measure and its picture.

A temperature ``T`` turns probabilities ``p`` into ``softmax(log p / T)``: the ranking of the classes (hence
accuracy) is unchanged, only the confidence. ``T`` is fitted by minimising the negative log-likelihood on images the
network never trained on and that are not the split we report on: a seeded share of the *train* split held out
before training (``TrainConfig.calibration_fraction``). The expected calibration error (ECE) is the mean gap between
confidence and accuracy over equal-width confidence bins, weighted by the bins' sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Confidence bins of the ECE and of the reliability diagram.
BINS = 15
_EPS = 1e-7


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (the same formula as the exported graph's)."""
    logits = np.log(np.maximum(probabilities, _EPS)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p[true class]``."""
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], _EPS))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (bounded search over 0.05-20)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        raise ValueError("no held-out images to fit the temperature on (calibration_fraction is 0 for this run)")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(scale(probabilities, float(np.exp(log_t))), labels),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return round(float(np.exp(result.x)), 4)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and number of images (empty bins have count 0)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    safe = np.maximum(counts, 1)
    return {
        "confidence": (np.bincount(which, weights=confidence, minlength=bins) / safe).round(4).tolist(),
        "accuracy": (np.bincount(which, weights=correct, minlength=bins) / safe).round(4).tolist(),
        "count": counts.astype(int).tolist(),
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE: sum over bins of (share of images) x |accuracy - mean confidence|."""
    r = reliability(probabilities, labels, bins)
    counts = np.asarray(r["count"], float)
    gaps = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"]))
    return round(float((counts * gaps).sum() / max(counts.sum(), 1)), 4)


def plot_reliability(curves: dict[str, dict[str, list[float]]], eces: dict[str, float], path: Path) -> None:
    """A reliability diagram: accuracy against confidence per bin, one line per named curve, the diagonal ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for name, r in curves.items():
        keep = np.asarray(r["count"]) > 0
        ax.plot(
            np.asarray(r["confidence"])[keep],
            np.asarray(r["accuracy"])[keep],
            marker="o",
            label=f"{name} (ECE {eces[name]:.3f})",
        )
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram ({BINS} bins)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
