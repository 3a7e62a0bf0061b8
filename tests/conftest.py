"""Shared fixtures: tiny FER-2013-shaped data sets in both layouts, and a real SavedModel exported by the
training package's own code (a tiny network: the contract is what matters, not accuracy)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.labels import CSV_CODE_TO_LABEL, LABELS

# OpenVINO's usage telemetry off in the test process too (as service.runtimes.import_openvino does for the service):
# `import openvino` and each ov.convert_model fork a process per event, and one that hangs offline holds the test
# run's output open. Without the module OpenVINO and NNCF use their no-op stubs.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

PER_CLASS = 6


def class_image(label_index: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 grayscale image whose brightness depends on its class, plus noise."""
    base = 30 + label_index * 30
    return np.clip(base + rng.normal(0, 20, (48, 48)), 0, 255).astype(np.uint8)


def write_folder_dataset(
    root: Path, per_class: int = PER_CLASS, splits: tuple[str, ...] = ("train", "val"), seed: int = 0
) -> Path:
    """Write ``root/<split>/<label>/<split>_<i>.jpg`` for every label."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for index, label in enumerate(LABELS):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(class_image(index, rng)).save(folder / f"{split}_{i}.jpg", quality=95)
    return root


def write_csv_dataset(path: Path, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """Write a Kaggle-style ``emotion,pixels,Usage`` CSV with Training and PublicTest rows."""
    rng = np.random.default_rng(seed)
    label_to_code = {label: code for code, label in CSV_CODE_TO_LABEL.items()}
    lines = ["emotion,pixels,Usage"]
    for usage in ("Training", "PublicTest"):
        for index, label in enumerate(LABELS):
            for _ in range(per_class):
                pixels = " ".join(str(int(v)) for v in class_image(index, rng).ravel())
                lines.append(f"{label_to_code[label]},{pixels},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("fer_folder"))


@pytest.fixture(scope="session")
def trained_run(tiny_folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder from a real (tiny) ``train`` on the generated data set."""
    from training.config import PRESETS
    from training.train import train

    run_dir = tmp_path_factory.mktemp("run")
    train(PRESETS["smoke"], tiny_folder_dataset, run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="session")
def exported_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/tiny/1``: a SavedModel + metadata.json written by the training package's export."""
    from training.export import export_model

    return export_model(trained_run / "model.keras", tmp_path_factory.mktemp("models"), name="tiny", version="1")
