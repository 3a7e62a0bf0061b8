"""Knowledge distillation (Hinton et al. 2015): a network trained towards an exported model's answers.

Version 10 averages 20 network passes per face (5 networks x 4 views): 25 ms of CPU per face on an AVX2-only
CPU, 2.5x issue 11's budget. One network trained on the ensemble's probabilities instead of the bare labels
learns what the ensemble knows about which classes look alike, and answers in 1/5 of the passes.

``teach`` runs an export once over the images a training config trains on (its ``training_splits``) and stores
the probabilities with that split's fingerprint; ``train --teacher FILE --distill-weight W`` then trains towards
``(1 - W) * one-hot label + W * teacher probabilities`` (label smoothing still applies in the loss). The targets
are computed on the un-augmented images once, not per augmented batch: the ensemble costs 20 passes per image,
the student one.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from training.data import Split
from training.labels import LABELS

#: How the export is run: ``tensorflow`` (the SavedModel, the reference) or one of its compiled OpenVINO IRs
#: (``python -m training compile``), 3x faster on a CPU; int8 holds parity with fp32 on val (its compile check).
RUNTIMES = ("tensorflow", "fp32", "int8")
#: The run folder's own copy of its teacher file: a resumed run reads the targets it started with, wherever the
#: original went.
RUN_COPY = "teacher.npz"
#: Images converted and run at once (a 224 px export's crops for all of train would take ~5 GB).
_CHUNK = 1024


class TeacherMismatchError(ValueError):
    """The teacher file was computed on other images than the ones this run trains on (another hold-out, seed,
    data set or per-class limit), holds no probabilities, or is not a teacher file."""


class Teacher(NamedTuple):
    """A teacher file's probabilities ``(n, 7)`` and what computed them."""

    probabilities: np.ndarray
    source: str


def teach(export: str | Path, data: str | Path, out: str | Path, runtime: str = "tensorflow") -> Teacher:
    """Run ``export`` (as ``runtime`` computes it) over the train images its own training config trained on and
    write its probabilities to ``out``.

    Raises:
        FileNotFoundError: no export there, or ``runtime`` is an IR the export was not compiled to.
        ValueError: an unknown ``runtime``, an export with other labels or without a training config in its metadata.
        training.data.DataError: ``data`` is unusable.
    """
    from training.compile import FILES, OUT_DIR, ir_runner, model_input, resolve_version_dir, savedmodel_runner
    from training.config import TrainConfig
    from training.splits import training_splits

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    version = resolve_version_dir(export)
    metadata = json.loads((version / "metadata.json").read_text())
    if list(metadata["labels"]) != list(LABELS):
        raise ValueError(f"{version} answers with labels {metadata['labels']}, not {list(LABELS)}")
    config = (metadata.get("training") or {}).get("config")
    if config is None:
        raise ValueError(f"{version} has no training config in its metadata: which images it trained on is unknown")
    xml = (version / OUT_DIR / FILES.get(runtime, "")).with_suffix(".xml")
    if runtime != "tensorflow" and not xml.is_file():
        raise FileNotFoundError(f"{xml} is missing: compile the export first (python -m training compile)")
    trained, _ = training_splits(TrainConfig.from_dict(config), data)
    run = savedmodel_runner(version, metadata) if runtime == "tensorflow" else ir_runner(xml, runtime, metadata)
    probabilities = np.concatenate(
        [run(model_input(metadata, trained.images[i : i + _CHUNK])) for i in range(0, len(trained), _CHUNK)]
    )
    source = f"{metadata['name']} v{metadata['version']} ({runtime}) on {len(trained)} train images"
    save_teacher(out, probabilities, trained, source)
    return Teacher(probabilities, source)


def save_teacher(path: str | Path, probabilities: np.ndarray, split: Split, source: str) -> Path:
    """Write ``probabilities`` for ``split`` with its fingerprint (an ``.npz``; replaced whole, never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, probabilities=probabilities.astype(np.float32), fingerprint=split.fingerprint(), source=source)
    os.replace(partial, path)
    return path


def load_teacher(path: str | Path, split: Split) -> Teacher:
    """The teacher file's probabilities for ``split``, checked against its fingerprint, shape and contents.

    Raises:
        FileNotFoundError: no such file.
        TeacherMismatchError: computed on other images, not probabilities, or not a teacher file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher file {path} is missing")
    try:
        with np.load(path) as stored:
            probabilities, fingerprint = stored["probabilities"], str(stored["fingerprint"])
            source = str(stored["source"])
    except (KeyError, ValueError, OSError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as error:
        raise TeacherMismatchError(f"{path} is not a teacher file (python -m training teach): {error}") from error
    if fingerprint != split.fingerprint():
        raise TeacherMismatchError(
            f"{path} holds answers for other images (fingerprint {fingerprint}, {probabilities.shape[0]} rows) than "
            f"this run trains on (fingerprint {split.fingerprint()}, {len(split)} images): compute it on the same "
            "--data with the same --holdout-seed (or --seed), --calibration-fraction and --limit-per-class"
        )
    if probabilities.shape != (len(split), len(LABELS)):
        raise TeacherMismatchError(f"{path}: probabilities of shape {probabilities.shape}, not {(len(split), 7)}")
    if not (np.isfinite(probabilities).all() and (probabilities >= 0).all()) or not np.allclose(
        probabilities.sum(axis=1), 1.0, atol=1e-3
    ):
        raise TeacherMismatchError(f"{path}: its rows are not probabilities (negative, not finite or not summing to 1)")
    return Teacher(probabilities, source)


def run_teacher(run_dir: Path, teacher: str, split: Split) -> Teacher:
    """The run's teacher: its own copy in ``run_dir`` (made from ``teacher`` on the run's first call), checked
    against the images it trains on.

    Raises:
        FileNotFoundError: neither the run's copy nor ``teacher`` (config.json's ``teacher``) is there.
        TeacherMismatchError: as ``load_teacher``.
    """
    copy = run_dir / RUN_COPY
    if not copy.is_file():
        if not Path(teacher).is_file():
            raise FileNotFoundError(f"teacher file {teacher} (config.json's teacher) is missing and {copy} too")
        loaded = load_teacher(teacher, split)  # a bad file is refused before it is copied
        partial = copy.with_name(RUN_COPY + ".partial")
        shutil.copyfile(teacher, partial)
        os.replace(partial, copy)
        return loaded
    return load_teacher(copy, split)


def distillation_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one-hot(labels) + weight * teacher``: rows that sum to 1."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the distillation weight must be in [0, 1], not {weight}")
    one_hot = np.eye(len(LABELS), dtype=np.float32)[labels]
    return ((1.0 - weight) * one_hot + weight * teacher).astype(np.float32)
