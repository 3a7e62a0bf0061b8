"""Does leaning an export's answers towards the rare classes lift macro-F1? Post-hoc logit adjustment (issue 11).

Menon et al. 2021 ("Long-tail learning via logit adjustment"): multiply the probabilities by the training prior to
the power ``-tau`` (subtract ``tau * log prior`` from the logits) and renormalise; ``tau = 1`` aims at the balanced
error, ``tau = 0`` is the model as served. ``tau`` is chosen on the export's calibration hold-out (train images no
network trained on, from the export's training config) by macro-F1; val (the reported split) is only reported.
Writes ``benchmarks/LOGIT_ADJUSTMENT.md`` (and ``.json``). Needs FER-2013:

    .venv/bin/python benchmarks/logit_adjustment.py --model-dir models/fer-cnn-48/10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402

#: The powers of the prior tried.
TAUS = tuple(round(t, 1) for t in np.arange(0.0, 1.01, 0.1))


def adjust(probabilities: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """``p * prior**-tau``, renormalised per row."""
    q = probabilities * prior ** (-tau)
    return q / q.sum(axis=1, keepdims=True)


def main() -> int:
    from training.config import TrainConfig
    from training.data import read_split
    from training.evaluate import compute_metrics
    from training.inference import predict_split, saved_model_predictor
    from training.labels import LABELS
    from training.splits import training_splits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an exported version folder")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "LOGIT_ADJUSTMENT.md"))
    args = parser.parse_args()

    predict, arch, metadata = saved_model_predictor(args.model_dir)
    trained, held = training_splits(TrainConfig.from_dict(metadata["training"]["config"]), args.data)
    prior = np.bincount(trained.labels, minlength=len(LABELS)) / len(trained)
    splits = {"hold-out": held, "val": read_split(args.data, "val")}
    probabilities = {name: predict_split(predict, arch, split) for name, split in splits.items()}

    rows = []
    for tau in TAUS:
        row: dict[str, float] = {"tau": tau}
        for name, split in splits.items():
            metrics = compute_metrics(split.labels, adjust(probabilities[name], prior, tau))
            row[f"{name} accuracy"] = metrics["accuracy"]
            row[f"{name} macro-F1"] = metrics["macro_f1"]
            row[f"{name} lowest class F1"] = min(c["f1"] for c in metrics["per_class"].values())
        rows.append(row)
    chosen = max(rows, key=lambda r: r["hold-out macro-F1"])
    columns = [key for key in rows[0] if key != "tau"]
    lines = [
        "# Post-hoc logit adjustment: accuracy and macro-F1 against the power of the prior",
        "",
        f"Measured on {machine_description()}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/logit_adjustment.py', *sys.argv[1:]])}`.",
        f"{metadata['name']} v{metadata['version']} as exported (its views and temperature), its answers times the "
        f"training prior (the {len(trained)} images its networks trained on) to the power -tau. tau chosen on the "
        f"hold-out ({len(held)} images) by macro-F1: **{chosen['tau']:g}** (val {chosen['val accuracy']:.2%}, "
        f"macro-F1 {chosen['val macro-F1']:.3f}; as served, tau 0: {rows[0]['val accuracy']:.2%}, "
        f"{rows[0]['val macro-F1']:.3f}).",
        "",
        "| tau | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row[c]:.2%}" if "accuracy" in c else f"{row[c]:.3f}" for c in columns]
        lines.append(f"| {row['tau']:g}{' (chosen)' if row is chosen else ''} | " + " | ".join(cells) + " |")
    write_results(Path(args.out), lines, [{**r, "chosen": r is chosen} for r in rows])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
