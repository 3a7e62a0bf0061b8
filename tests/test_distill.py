"""Distillation: ``python -m training teach`` writes an export's answers on a run's training images, and
``train --teacher`` trains towards them (issue 11: one network in place of the ensemble's 20 passes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.labels import LABELS

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=ROOT)


def _split(n: int, seed: int):
    from training.data import Split

    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 48, 48, 1), dtype=np.uint8), rng.integers(0, 7, n).astype(np.int32))


def test_batches_carry_the_given_targets_of_the_images_they_pick() -> None:
    from training.batches import Augmentation, training_batches

    split = _split(50, 0)
    targets = np.random.default_rng(1).dirichlet(np.ones(len(LABELS)), 50).astype(np.float32)
    plain = list(training_batches(split, batch_size=8, seed=3, start_step=0, end_step=8, aug=Augmentation()))
    soft = list(
        training_batches(split, batch_size=8, seed=3, start_step=0, end_step=8, aug=Augmentation(), targets=targets)
    )
    for (x, onehot, w), (x2, y, w2) in zip(plain, soft, strict=True):
        np.testing.assert_array_equal(x, x2)  # the same images, augmentation and weights: only the targets differ
        np.testing.assert_array_equal(w, w2)
        picked = [int(np.flatnonzero((split.images == image.astype(np.uint8)).all(axis=(1, 2, 3)))[0]) for image in x]
        np.testing.assert_array_equal(y, targets[picked])
        np.testing.assert_array_equal(onehot, np.eye(len(LABELS))[split.labels[picked]])
    with pytest.raises(ValueError, match="targets of shape"):
        next(
            training_batches(
                split, batch_size=8, seed=3, start_step=0, end_step=1, aug=Augmentation(), targets=targets[:10]
            )
        )


def test_teacher_files_are_bound_to_the_images_they_were_computed_on(tmp_path: Path) -> None:
    from training.distill import TeacherMismatchError, distillation_targets, load_teacher, save_teacher

    split, other = _split(20, 0), _split(20, 1)
    probabilities = np.random.default_rng(2).dirichlet(np.ones(len(LABELS)), 20)
    path = save_teacher(tmp_path / "teacher", probabilities, split, "test")  # no .npz suffix: kept as given
    assert path == tmp_path / "teacher"
    np.testing.assert_allclose(load_teacher(path, split), probabilities, rtol=1e-6)
    with pytest.raises(TeacherMismatchError, match="other images"):
        load_teacher(path, other)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TeacherMismatchError, match="not a teacher file"):
        load_teacher(tmp_path / "junk.npz", split)
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "none.npz", split)
    mixed = distillation_targets(split.labels, probabilities, 0.25)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed, 0.75 * np.eye(len(LABELS))[split.labels] + 0.25 * probabilities, rtol=1e-6)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        distillation_targets(split.labels, probabilities, 1.5)


def test_teach_writes_the_exports_answers_and_train_learns_from_them(
    exported_model: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    from training.config import TrainConfig
    from training.distill import load_teacher
    from training.inference import predict_split, saved_model_predictor
    from training.splits import training_splits

    out = tmp_path / "teacher.npz"
    done = cli("teach", str(exported_model), "--data", str(tiny_folder_dataset), "--out", str(out))
    assert done.returncode == 0, done.stderr
    metadata = json.loads((exported_model / "metadata.json").read_text())
    trained, held = training_splits(TrainConfig.from_dict(metadata["training"]["config"]), tiny_folder_dataset)
    predict, arch, _ = saved_model_predictor(exported_model)  # the service's path to the same SavedModel
    np.testing.assert_allclose(load_teacher(out, trained), predict_split(predict, arch, trained), atol=1e-5)
    assert "on %d train images" % len(trained) in done.stdout and len(held) > 0

    # A teacher that answers "angry" for every face, followed completely: the student answers "angry" for most
    # val faces (a seventh of them are angry).
    from training.distill import save_teacher

    angry = save_teacher(tmp_path / "angry.npz", np.eye(len(LABELS))[np.zeros(len(trained), int)], trained, "angry")
    student = tmp_path / "student"
    smoke = ["--preset", "smoke", "--data", str(tiny_folder_dataset), "--epochs", "4", "--learning-rate", "0.01"]
    done = cli("train", *smoke, "--teacher", str(angry), "--distill-weight", "1", "--run-dir", str(student))
    assert done.returncode == 0, done.stderr
    assert json.loads((student / "config.json").read_text())["teacher"] == str(angry)
    from training.data import read_split
    from training.inference import keras_predictor
    from training.model import load_inference_model

    model = load_inference_model(str(student / "model.keras"))
    answers = predict_split(keras_predictor(model), arch, read_split(tiny_folder_dataset, "val")).argmax(axis=1)
    assert (answers == 0).mean() > 0.5, np.bincount(answers, minlength=len(LABELS))

    # Trained on other images than the teacher saw (another hold-out): refused before any training.
    refused = cli("train", *smoke, "--holdout-seed", "7", "--teacher", str(out), "--run-dir", str(tmp_path / "x"))
    assert refused.returncode == 2 and "other images" in refused.stderr
    refused = cli("teach", str(exported_model), "--data", str(tiny_folder_dataset), "--out", str(out), "--runtime", "int8")
    assert refused.returncode == 2 and "compile the export first" in refused.stderr
