"""Ensembles of trained runs, and a run folder recovered from an export.

* :func:`combine` — several run folders (networks trained with different seeds, of one architecture or of several
  that take the same input) -> one run folder whose ``model.keras`` averages their probabilities
  (:func:`training.model.ensemble_of`). A run that is itself an ensemble contributes its members, so an ensemble
  grows by one network without retraining the others. ``evaluate``, ``export`` and ``compile`` then treat it as any
  other run: test-time flip, the temperature and Grad-CAM apply to the ensemble as a whole. ``drop`` leaves
  networks out by number, so a weaker member can be replaced by a new one without its run folder.
* :func:`recover` — an exported version -> the run folder it came from (``model.keras``, ``config.json``,
  ``run.json``), for when the run folder is gone (runs live outside the work tree; what ships is committed). The
  weights are read from the SavedModel and checked against it.

The members must share their calibration hold-out (``train --holdout-seed``): the ensemble's temperature is fitted
on those images, so no member may have trained on them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.config import ArchConfig, TrainConfig
from training.inference import rebuild_float32, saved_model_predictor, served_graph
from training.model import build_inference_model, ensemble_members, ensemble_of, load_inference_model

#: Largest |recovered - exported| probability allowed when recovering a run from an export.
RECOVER_TOLERANCE = 1e-5


class EnsembleError(ValueError):
    """The runs cannot form one ensemble (different inputs, held-out images or training images)."""


def _as_trained(arch: ArchConfig) -> ArchConfig:
    """``arch`` without its inference-only choices (test-time views, temperature: set at export)."""
    return dataclasses.replace(arch, test_time_flip=False, test_time_zoom=1.0, temperature=1.0)


def _single(arch: ArchConfig) -> ArchConfig:
    """``arch`` as trained, for one network (an ensemble's member)."""
    return dataclasses.replace(_as_trained(arch), ensemble=1, members=())


def _read_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    config_path = run_dir / "config.json"
    if not (run_dir / "model.keras").is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run (model.keras and config.json expected)")
    run_path = run_dir / "run.json"
    return TrainConfig.load(config_path), json.loads(run_path.read_text()) if run_path.is_file() else {}


def combine(members: list[str | Path], run_dir: str | Path, drop: Sequence[int] = ()) -> Path:
    """Write the ensemble of the finished runs ``members`` to ``run_dir`` and return its ``model.keras``. Members
    may have different architectures (a mixed ensemble) as long as they take the same input. ``drop``: networks
    to leave out, by their 1-based number in the runs' networks in order (a run that is an ensemble counts each of
    its networks); the others keep their order and are renumbered.

    Raises:
        EnsembleError: fewer than two networks (after ``drop``), a ``drop`` number that is no network, or members
            of different inputs, hold-outs or data.
        FileExistsError: ``run_dir`` already holds a model.
    """
    runs = [(Path(m), *_read_run(Path(m))) for m in members]
    total = sum(config.arch.ensemble for _, config, _ in runs)
    dropped = set(drop)
    wrong = sorted(dropped - set(range(1, total + 1)))
    if wrong:
        raise EnsembleError(f"cannot drop network(s) {wrong}: the runs hold networks 1 to {total}")
    kept = [n for n in range(1, total + 1) if n not in dropped]
    if len(kept) < 2:
        raise EnsembleError(f"an ensemble needs at least two networks ({len(kept)} left of {total})")
    first_dir, first, _ = runs[0]
    for path, config, record in runs[1:]:
        if (config.arch.input_size, config.arch.color_mode) != (first.arch.input_size, first.arch.color_mode):
            raise EnsembleError(
                f"{path} takes another input than {first_dir} ({config.arch.input_size} px {config.arch.color_mode} "
                f"vs {first.arch.input_size} px {first.arch.color_mode}): one graph feeds every member the same crops"
            )
        held = (config.split_seed, config.calibration_fraction, config.limit_per_class)
        if held != (first.split_seed, first.calibration_fraction, first.limit_per_class):
            raise EnsembleError(
                f"{path} held out other training images than {first_dir} (hold-out seed, fraction, limit "
                f"{held} vs {(first.split_seed, first.calibration_fraction, first.limit_per_class)}): the "
                "ensemble's temperature would be fitted on images a member trained on; train members with the "
                "same --holdout-seed"
            )
        theirs, ours = record.get("train_fingerprint"), runs[0][2].get("train_fingerprint")
        if theirs and ours and theirs != ours:
            raise EnsembleError(f"{path} was trained on other images than {first_dir}")
    out = Path(run_dir)
    if (out / "model.keras").exists():
        raise FileExistsError(f"{out / 'model.keras'} already exists")
    out.mkdir(parents=True, exist_ok=True)

    networks = [
        network
        for p, c, _ in runs
        for network in ensemble_members(rebuild_float32(load_inference_model(str(p / "model.keras")), c.arch))
    ]
    networks = [networks[n - 1] for n in kept]
    model = ensemble_of(networks)
    model.save(out / "model.keras")
    archs = [_single(n) for _, c, _ in runs for n in c.arch.networks()]
    archs = [archs[n - 1] for n in kept]
    mixed = any(n != archs[0] for n in archs)  # e.g. fer_cnn and fer_resnet members: each keeps its own
    arch = dataclasses.replace(archs[0], ensemble=len(networks), members=tuple(archs) if mixed else ())
    # A member's own teacher (distillation), weight averaging and batch mixing are in its run record, not the
    # ensemble's config
    dataclasses.replace(
        first,
        arch=arch,
        holdout_seed=first.split_seed,
        teacher="",
        distill_weight=TrainConfig.distill_weight,
        ema_momentum=0.0,
        mixup=0.0,
        cutmix=0.0,
        mix_probability=TrainConfig.mix_probability,
    ).save(out / "config.json")
    records = [r for _, _, r in runs]
    member_records = [m for p, _, r in runs for m in r.get("ensemble_of", [{"run_dir": str(p), **r}])]
    member_records = [member_records[n - 1] for n in kept]
    record = {
        "ensemble_of": member_records,
        "seconds": round(sum(float(m.get("seconds", 0)) for m in member_records), 1),
        **{k: records[0][k] for k in ("train_images", "calibration_images", "train_fingerprint") if k in records[0]},
        "member_val_accuracy": [m.get("val_accuracy") for m in member_records],
    }
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    _carry_histories([(p, c) for p, c, _ in runs], out, kept)
    return out / "model.keras"


#: An ensemble folder's copy of member N's ``history.csv`` is ``history-member<N>.csv``.
MEMBER_HISTORY_PREFIX = "history-member"


def history_member(history_csv: Path) -> int | None:
    """The member number N of an ensemble's ``history-member<N>.csv``; None for a single run's ``history.csv``."""
    stem = history_csv.stem
    return int(stem.removeprefix(MEMBER_HISTORY_PREFIX)) if stem.startswith(MEMBER_HISTORY_PREFIX) else None


def member_histories(run_dir: str | Path) -> list[Path]:
    """The training histories (``history.csv`` of ``train``) a run folder holds: its own, or for an ensemble those
    :func:`combine` carried over, ``history-member<N>.csv`` for member N (a member whose run folder had none, e.g. a
    recovered one, has no file), in member order."""
    run = Path(run_dir)
    if (run / "history.csv").is_file():
        return [run / "history.csv"]
    return sorted(run.glob(f"{MEMBER_HISTORY_PREFIX}*.csv"), key=lambda path: history_member(path) or 0)


def _carry_histories(runs: list[tuple[Path, TrainConfig]], out: Path, kept: list[int]) -> None:
    """Copy each kept member's training history into the ensemble's folder as ``history-member<N>.csv`` (N: its
    number in the ensemble; ``kept`` lists the runs' network numbers the ensemble keeps, in order), so the
    ensemble's report can draw every member's curves."""
    renumber = {old: new for new, old in enumerate(kept, start=1)}
    offset = 0
    for path, config in runs:
        for history in member_histories(path):
            number = offset + (history_member(history) or 1)  # a single run's own history.csv: its one network
            if number in renumber:
                (out / f"{MEMBER_HISTORY_PREFIX}{renumber[number]}.csv").write_bytes(history.read_bytes())
        offset += config.arch.ensemble


def recover(export_dir: str | Path, run_dir: str | Path) -> Path:
    """Rebuild the run folder of the exported version ``export_dir`` in ``run_dir``; returns its ``model.keras``.

    The network is rebuilt from the metadata's architecture, its weights are the SavedModel's variables (written in
    the network's own order by :func:`training.export.write_saved_model`), and the rebuilt graph must reproduce the
    export's probabilities within :data:`RECOVER_TOLERANCE` on a random batch.

    Raises:
        ValueError: the export has no training record, or the rebuilt network does not match it.
        FileExistsError: ``run_dir`` already holds a model.
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    predict, served_arch, metadata = saved_model_predictor(export_dir)
    training = metadata.get("training") or {}
    if "config" not in training:
        raise ValueError(f"{export_dir} has no training config in its metadata: nothing to rebuild from")
    trained_arch = _as_trained(served_arch)
    model = build_inference_model(trained_arch, num_classes=len(metadata["labels"]), pretrained=False)
    variables = tf.saved_model.load(str(export_dir)).weights
    if len(variables) != len(model.weights):
        raise ValueError(f"{export_dir} holds {len(variables)} variables, its architecture has {len(model.weights)}")
    model.set_weights([v.numpy() for v in variables])

    shape = (8, served_arch.input_size, served_arch.input_size, served_arch.channels)
    sample = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    diff = float(np.max(np.abs(np.asarray(served_graph(model, served_arch)(sample)) - predict(sample))))
    if not diff <= RECOVER_TOLERANCE:
        raise ValueError(f"the network rebuilt from {export_dir} differs from it by {diff:.3g}")

    out = Path(run_dir)
    if (out / "model.keras").exists():
        raise FileExistsError(f"{out / 'model.keras'} already exists")
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    config = TrainConfig.from_dict(training["config"])
    dataclasses.replace(config, arch=trained_arch).save(out / "config.json")
    record = {k: v for k, v in training.items() if k != "config"}
    record["recovered_from"] = f"{metadata['name']}/{metadata['version']}"
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return out / "model.keras"
