"""Evaluation report: accuracy, macro-F1, per-class figures, confusion matrix, ROC-AUC, curves, ``report.md``.

The model may be a ``.keras`` file or an exported SavedModel folder: both are fed the same inputs (FER-2013 pixels
resized and converted exactly as during training), so both give the same numbers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training.config import ArchConfig, TrainConfig
from training.data import Split, read_split
from training.labels import LABELS

Predictor = Callable[[np.ndarray], np.ndarray]


def _keras_predictor(path: Path, config_path: Path | None,
                     test_time_flip: bool | None) -> tuple[Predictor, ArchConfig, str]:
    from training.export import served_model

    config_path = config_path or path.parent / "config.json"
    model, arch = served_model(path, TrainConfig.load(config_path).arch, test_time_flip)
    flip = ", test-time flip" if arch.test_time_flip else ""
    return (lambda x: np.asarray(model(x, training=False))), arch, f"{path} (Keras{flip})"


def _saved_model_predictor(path: Path) -> tuple[Predictor, ArchConfig, str]:
    import tensorflow as tf

    metadata = json.loads((path / "metadata.json").read_text())
    arch = ArchConfig(**{**metadata["architecture"], "cnn_widths": tuple(metadata["architecture"]["cnn_widths"])})
    sig = metadata["signature"]
    serve = tf.saved_model.load(str(path)).signatures[sig["key"]]
    name = f"{metadata['name']} v{metadata['version']} (SavedModel {path})"
    return (lambda x: serve(**{sig["input"]: tf.constant(x, tf.float32)})[sig["output"]].numpy()), arch, name


def load_predictor(model: str | Path, config_path: str | Path | None = None,
                   test_time_flip: bool | None = None) -> tuple[Predictor, ArchConfig, str]:
    """A function from model-input batches to probabilities, the model's architecture, and a display name.

    ``test_time_flip`` (``.keras`` models only) evaluates the graph `training.export` writes with that choice; an
    exported SavedModel already contains its choice, recorded in its metadata.
    """
    model = Path(model)
    if model.is_dir():
        predict, arch, name = _saved_model_predictor(model)
        if test_time_flip is not None and test_time_flip != arch.test_time_flip:
            raise ValueError(f"{model} was exported with test_time_flip={arch.test_time_flip}; the choice is made "
                             "at export and cannot be changed here")
        return predict, arch, name
    return _keras_predictor(model, Path(config_path) if config_path else None, test_time_flip)


def predict_split(predict: Predictor, arch: ArchConfig, split: Split, batch_size: int = 256) -> np.ndarray:
    """Probabilities for every image of ``split``, fed through the training pipeline's resize/colour steps."""
    from training.model import apply_layers, to_model_input

    steps = to_model_input(arch)
    out = []
    for start in range(0, len(split), batch_size):
        batch = split.images[start:start + batch_size].astype(np.float32)
        out.append(predict(np.asarray(apply_layers(steps, batch))))
    return np.concatenate(out)


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support/ROC-AUC and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                                     zero_division=0)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for c, label in enumerate(LABELS):
        positives = labels == c
        auc = float(roc_auc_score(positives, probabilities[:, c])) if 0 < positives.sum() < len(labels) else None
        per_class[label] = {"precision": round(float(precision[c]), 4), "recall": round(float(recall[c]), 4),
                            "f1": round(float(f1[c]), 4), "support": int(support[c]),
                            "roc_auc": None if auc is None else round(auc, 4)}
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
            ax.text(j, i, f"{m[i, j]}\n{normalised[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix (counts, row-normalised %)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_history(history_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    x = list(range(1, len(rows) + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("accuracy", "val_accuracy"):
        if key in rows[0]:
            left.plot(x, [float(r[key]) for r in rows], label=key)
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            right.plot(x, [float(r[key]) for r in rows], label=key)
    for ax, title in ((left, "accuracy"), (right, "loss")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(metrics: dict[str, Any], model_name: str, split: str, has_curves: bool) -> str:
    lines = [
        f"# Evaluation of {model_name}", "",
        f"Split: `{split}` ({metrics['images']} images).", "",
        f"- accuracy: **{metrics['accuracy']:.2%}**",
        f"- macro-F1: **{metrics['macro_f1']:.4f}**", "",
        "| class | precision | recall | F1 | ROC-AUC | support |", "|---|---|---|---|---|---|",
    ]
    for label, m in metrics["per_class"].items():
        auc = "–" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        lines.append(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {auc} | {m['support']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    if has_curves:
        lines += ["![training curves](training_curves.png)", ""]
    return "\n".join(lines)


def evaluate(model: str | Path, data: str | Path, out_dir: str | Path, *, split: str = "val",
             config_path: str | Path | None = None, history: str | Path | None = None,
             test_time_flip: bool | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (``.keras`` or SavedModel folder) on ``split`` of ``data``; write the report folder.

    Writes ``metrics.json``, ``confusion_matrix.json``/``.png``, ``training_curves.png`` (if ``history`` is given)
    and ``report.md`` into ``out_dir``; returns the metrics.
    """
    predict, arch, name = load_predictor(model, config_path, test_time_flip)
    data_split = read_split(data, split)
    probabilities = predict_split(predict, arch, data_split)
    metrics = {"split": split, "model": name, "data_fingerprint": data_split.fingerprint(),
               "test_time_flip": arch.test_time_flip, **compute_metrics(data_split.labels, probabilities)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "confusion_matrix.json").write_text(
        json.dumps({"labels": list(LABELS), "matrix": metrics["confusion_matrix"]}, indent=2) + "\n")
    _plot_confusion(metrics["confusion_matrix"], out / "confusion_matrix.png")
    has_curves = history is not None and Path(history).is_file()
    if has_curves:
        _plot_history(Path(history), out / "training_curves.png")
    (out / "report.md").write_text(_markdown(metrics, name, split, has_curves))
    return metrics
