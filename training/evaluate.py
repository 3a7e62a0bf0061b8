"""Evaluation report: accuracy, macro-F1, per-class figures, confusion matrix, ROC-AUC, curves, ``report.md``.

The model may be a ``.keras`` file or an exported SavedModel folder: both are fed the same inputs (FER-2013 pixels
resized and converted exactly as during training), so both give the same numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import calibration
from training import explain as explaining
from training.config import ArchConfig, TrainConfig
from training.data import read_split
from training.ensemble import history_member
from training.inference import (
    Predictor,
    fer_pixels_to_model_input,
    keras_predictor,
    predict_split,
    rebuild_float32,
    saved_model_predictor,
    served_graph,
    served_model,
)
from training.labels import LABELS
from training.model import load_inference_model
from training.splits import training_splits


def load_predictor(
    model: str | Path,
    config_path: str | Path | None = None,
    test_time_flip: bool | None = None,
    temperature: float | None = None,
    test_time_zoom: float | None = None,
) -> tuple[Predictor, ArchConfig, str]:
    """A function from model-input batches to probabilities, the model's architecture, and a display name.

    ``test_time_flip``, ``test_time_zoom`` and ``temperature`` (``.keras`` models only) evaluate the graph
    `training.export` writes with those choices; an exported SavedModel already contains its choices, recorded in
    its metadata.
    """
    model = Path(model)
    if model.is_dir():
        predict, arch, metadata = saved_model_predictor(model)
        for option, asked, exported in (
            ("test_time_flip", test_time_flip, arch.test_time_flip),
            ("test_time_zoom", test_time_zoom, arch.test_time_zoom),
        ):
            if asked is not None and asked != exported:
                raise ValueError(
                    f"{model} was exported with {option}={exported}; the choice is made at export and cannot be "
                    "changed here"
                )
        return predict, arch, f"{metadata['name']} v{metadata['version']} (SavedModel {model})"
    config_path = Path(config_path) if config_path else model.parent / "config.json"
    keras_model, arch = served_model(
        model, TrainConfig.load(config_path).arch, test_time_flip, temperature, test_time_zoom
    )
    views = (", test-time flip" if arch.test_time_flip else "") + (
        f", test-time zoom {arch.test_time_zoom:g}" if arch.test_time_zoom > 1 else ""
    )
    return keras_predictor(keras_model), arch, f"{model} (Keras{views})"


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support/ROC-AUC and the confusion matrix."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for c, label in enumerate(LABELS):
        positives = labels == c
        auc = float(roc_auc_score(positives, probabilities[:, c])) if 0 < positives.sum() < len(labels) else None
        per_class[label] = {
            "precision": round(float(precision[c]), 4),
            "recall": round(float(recall[c]), 4),
            "f1": round(float(f1[c]), 4),
            "support": int(support[c]),
            "roc_auc": None if auc is None else round(auc, 4),
        }
    return {
        "images": int(len(labels)),
        "accuracy": round(float(accuracy_score(labels, predicted)), 4),
        "macro_f1": round(float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)), 4),
        "per_class": per_class,
        "labels": list(LABELS),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def _plot_confusion(matrix: list[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(matrix)
    normalised = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(
                j,
                i,
                f"{m[i, j]}\n{normalised[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if normalised[i, j] > 0.5 else "black",
            )
    ax.set_title("Confusion matrix (counts, row-normalised %)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _history_label(history_csv: Path) -> str:
    """``member 3`` for an ensemble's ``history-member3.csv``; "" for a single run's ``history.csv``."""
    member = history_member(history_csv)
    return "" if member is None else f"member {member}"


def _plot_history(histories: Sequence[Path], path: Path) -> list[str]:
    """Accuracy and loss per epoch of each training history (an ensemble: one pair of lines per member, labelled by
    member). Returns the labels of the histories drawn (``[""]`` for a single run; ``[]``: none had a row, nothing
    was drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for history_csv in histories:
        with open(history_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            runs.append((_history_label(history_csv), rows))
    if not runs:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in runs:
        x = list(range(1, len(rows) + 1))
        # raw_val_*: a weight-averaged run's last-step weights (its val_* are the average's)
        for ax, keys in (
            (left, ("accuracy", "val_accuracy", "raw_val_accuracy")),
            (right, ("loss", "val_loss", "raw_val_loss")),
        ):
            for key in keys:
                if key in rows[0]:
                    name = f"{label} {key}".strip()
                    style = ":" if key.startswith("raw") else "--" if "val" in key else "-"
                    ax.plot(x, [float(r[key]) for r in rows], label=name, linestyle=style)
    for ax, title in ((left, "accuracy"), (right, "loss")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize="small" if len(runs) > 1 else None)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [label for label, _ in runs]


def _markdown(metrics: dict[str, Any], model_name: str, split: str, histories: list[str], networks: int) -> str:
    lines = [
        f"# Evaluation of {model_name}",
        "",
        f"Split: `{split}` ({metrics['images']} images).",
        "",
        f"- accuracy: **{metrics['accuracy']:.2%}**",
        f"- macro-F1: **{metrics['macro_f1']:.4f}**",
        "",
        "| class | precision | recall | F1 | ROC-AUC | support |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in metrics["per_class"].items():
        auc = "–" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        lines.append(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {auc} | {m['support']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    cal = metrics.get("calibration")
    if cal:
        lines += [
            "## Calibration",
            "",
            f"Expected calibration error ({calibration.BINS} bins) on `{split}`: **{cal['ece']:.4f}**, "
            f"negative log-likelihood {cal['nll']:.4f}.",
        ]
        if "temperature" in cal:
            lines += [
                "",
                f"Temperature **{cal['temperature']}**, fitted on {cal['fitted_on']}: ECE "
                f"{cal['ece_before']:.4f} -> {cal['ece']:.4f}, NLL {cal['nll_before']:.4f} -> "
                f"{cal['nll']:.4f} (accuracy unchanged: scaling keeps the ranking).",
            ]
        lines += ["", "![reliability diagram](reliability.png)", ""]
    if histories:
        if len(histories) < networks:  # recovered members have no history: say whose these are
            kept = ", ".join(histories)
            lines += [f"Training curves of {kept} of the {networks} networks (the others kept no history).", ""]
        lines += ["![training curves](training_curves.png)", ""]
    if "explanations" in metrics:
        lines += [
            "## What the network looks at",
            "",
            "Grad-CAM maps of the predicted class (the export's `explain` signature): correct answers on the "
            "left, wrong ones on the right, one row per true class.",
            "",
            "![explanations](explanations.png)",
            "",
        ]
    return "\n".join(lines)


def _explainer(model: Path, arch: ArchConfig, config_path: str | Path | None) -> explaining.Explainer:
    """Grad-CAM maps of FER-2013 pixels, from the export's ``explain`` signature or, for ``.keras``, the same graph."""
    if model.is_dir():
        maps = explaining.saved_model_explainer(model)
    else:
        trained = TrainConfig.load(Path(config_path) if config_path else model.parent / "config.json").arch
        inference_model = rebuild_float32(load_inference_model(str(model)), trained)
        maps = explaining.keras_explainer(served_graph(inference_model, arch), inference_model, arch)
    return lambda pixels, classes: maps(np.asarray(fer_pixels_to_model_input(arch, pixels.astype(np.float32))), classes)


def _held_out(config_path: Path, data: str | Path) -> tuple[Any, str]:
    config = TrainConfig.load(config_path)
    _, held = training_splits(config, data)
    if len(held) == 0:
        raise ValueError(
            f"the run of {config_path} held nothing out (calibration_fraction 0): there is nothing to "
            "fit the temperature on without touching the reported split"
        )
    return held, (
        f"{len(held)} train images held out before training ({config.calibration_fraction:.0%} of each "
        f"class, seed {config.split_seed}; never trained on, not the reported split)"
    )


def evaluate(
    model: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val",
    config_path: str | Path | None = None,
    history: str | Path | Sequence[str | Path] | None = None,
    test_time_flip: bool | None = None,
    calibrate: bool = False,
    explain: int = 0,
    test_time_zoom: float | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (``.keras`` or SavedModel folder) on ``split`` of ``data``; write the report folder.

    Writes ``metrics.json``, ``confusion_matrix.json``/``.png``, ``reliability.png``, ``training_curves.png`` (if
    ``history`` names one or more ``history.csv`` files: an ensemble's members each get their lines) and
    ``report.md`` into ``out_dir``; returns the metrics. ``calibrate`` (``.keras`` only)
    fits a temperature on the run's held-out train images and reports the scaled probabilities (ECE before and
    after); ``export --report`` then puts that temperature into the graph. ``explain`` > 0 draws
    ``explanations.png``: that many correct and wrong images per class with their Grad-CAM maps.
    """
    histories = [history] if isinstance(history, str | Path) else list(history or [])
    missing = [str(h) for h in histories if not Path(h).is_file()]
    if missing:
        raise FileNotFoundError(f"no training history at {', '.join(missing)}")
    model = Path(model)
    predict, arch, name = load_predictor(model, config_path, test_time_flip, test_time_zoom=test_time_zoom)
    data_split = read_split(data, split)
    probabilities = predict_split(predict, arch, data_split)
    labels = data_split.labels
    cal: dict[str, Any] = {}
    curves = {"as served": calibration.reliability(probabilities, labels)}
    eces = {"as served": calibration.expected_calibration_error(probabilities, labels)}
    if calibrate:
        if model.is_dir():
            raise ValueError("--calibrate works on a .keras model; an export already carries its temperature")
        held, fitted_on = _held_out(Path(config_path) if config_path else model.parent / "config.json", data)
        temperature = calibration.fit_temperature(predict_split(predict, arch, held), held.labels)
        scaled = calibration.scale(probabilities, temperature)
        cal = {
            "temperature": temperature,
            "fitted_on": fitted_on,
            "ece_before": eces["as served"],
            "nll_before": calibration.negative_log_likelihood(probabilities, labels),
        }
        curves = {"before scaling": curves["as served"], f"T = {temperature}": calibration.reliability(scaled, labels)}
        eces = {
            "before scaling": eces["as served"],
            f"T = {temperature}": calibration.expected_calibration_error(scaled, labels),
        }
        probabilities = scaled
        arch = dataclasses.replace(arch, temperature=temperature)
    cal.update(
        ece=calibration.expected_calibration_error(probabilities, labels),
        nll=round(calibration.negative_log_likelihood(probabilities, labels), 4),
        reliability=calibration.reliability(probabilities, labels),
    )
    if "nll_before" in cal:
        cal["nll_before"] = round(cal["nll_before"], 4)
    metrics = {
        "split": split,
        "model": name,
        "data_fingerprint": data_split.fingerprint(),
        "test_time_flip": arch.test_time_flip,
        "test_time_zoom": arch.test_time_zoom,
        "temperature": arch.temperature,
        "calibration": cal,
        **compute_metrics(labels, probabilities),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "confusion_matrix.json").write_text(
        json.dumps({"labels": list(LABELS), "matrix": metrics["confusion_matrix"]}, indent=2) + "\n"
    )
    _plot_confusion(metrics["confusion_matrix"], out / "confusion_matrix.png")
    calibration.plot_reliability(curves, eces, out / "reliability.png")
    drawn = _plot_history([Path(h) for h in histories], out / "training_curves.png")
    if explain > 0:
        explainer = _explainer(model, arch, config_path)
        metrics["explanations"] = explaining.contact_sheet(
            data_split.images, labels, probabilities, explainer, explain, out / "explanations.png", LABELS
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(metrics, name, split, drawn, arch.ensemble))
    return metrics
