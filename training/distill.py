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

from pathlib import Path

import numpy as np

from training.data import Split
from training.labels import LABELS

#: How the export is run: ``tensorflow`` (the SavedModel, the reference) or one of its compiled OpenVINO IRs
#: (``python -m training compile``), 3x faster on a CPU; int8 holds parity with fp32 on val (its compile check).
RUNTIMES = ("tensorflow", "fp32", "int8")


class TeacherMismatchError(ValueError):
    """The teacher file was computed on other images than the ones this run trains on (another hold-out, data set
    or per-class limit), or is not a teacher file."""


def teacher_probabilities(version_dir: str | Path, split: Split, runtime: str = "tensorflow") -> np.ndarray:
    """The export's served probabilities ``(len(split), 7)`` for ``split``'s images, as ``runtime`` computes them.

    Raises:
        FileNotFoundError: no export there, or ``runtime`` is an IR the export was not compiled to.
        ValueError: an unknown ``runtime``.
    """
    import json

    from training.compile import FILES, OUT_DIR, ir_outputs, model_input, resolve_version_dir, savedmodel_outputs

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    version = resolve_version_dir(version_dir)
    metadata = json.loads((version / "metadata.json").read_text())
    if list(metadata["labels"]) != list(LABELS):
        raise ValueError(f"{version} answers with labels {metadata['labels']}, not {list(LABELS)}")
    sample = model_input(metadata, split.images)
    if runtime == "tensorflow":
        return savedmodel_outputs(version, metadata, sample)
    xml = (version / OUT_DIR / FILES[runtime]).with_suffix(".xml")
    if not xml.is_file():
        raise FileNotFoundError(f"{xml} is missing: compile the export first (python -m training compile)")
    return ir_outputs(xml, runtime, metadata, sample)


def save_teacher(path: str | Path, probabilities: np.ndarray, split: Split, source: str) -> Path:
    """Write ``probabilities`` for ``split`` with its fingerprint (an ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, probabilities=probabilities.astype(np.float32), fingerprint=split.fingerprint(), source=source)
    return path


def load_teacher(path: str | Path, split: Split) -> np.ndarray:
    """The teacher's probabilities for ``split``, checked against its fingerprint and shape.

    Raises:
        FileNotFoundError: no such file.
        TeacherMismatchError: computed on other images, or not a teacher file.
    """
    try:
        with np.load(Path(path)) as stored:
            probabilities, fingerprint = stored["probabilities"], str(stored["fingerprint"])
    except (KeyError, ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise TeacherMismatchError(f"{path} is not a teacher file (python -m training teach): {error}") from error
    if fingerprint != split.fingerprint() or probabilities.shape != (len(split), len(LABELS)):
        raise TeacherMismatchError(
            f"{path} holds answers for other images (fingerprint {fingerprint}, {probabilities.shape[0]} rows) than "
            f"this run trains on (fingerprint {split.fingerprint()}, {len(split)} images): compute it with the same "
            "--holdout-seed, --calibration-fraction and --limit-per-class"
        )
    return probabilities


def distillation_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one-hot(labels) + weight * teacher``: rows that sum to 1."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the distillation weight must be in [0, 1], not {weight}")
    one_hot = np.eye(len(LABELS), dtype=np.float32)[labels]
    return ((1.0 - weight) * one_hot + weight * teacher).astype(np.float32)
