"""The training run: data -> (head phase) -> fine-tuning phase -> best model, log and run record in one folder.

A run folder holds ``config.json`` (fully resolved config), ``history.csv`` (every epoch of both phases),
``checkpoint.keras`` (best training model so far, written during training), ``model.keras`` (the best inference
model, written at the end) and ``run.json`` (data fingerprints, timings, hardware, backend).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from training.config import TrainConfig
from training.data import Split, class_weights, read_split
from training.labels import LABELS
from training.model import BACKBONE_NAME, build_inference_model, build_training_model, load_inference_model


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    val_accuracy: float
    epochs_run: int
    seconds: float


def limit_per_class(split: Split, limit: int, seed: int) -> Split:
    """At most ``limit`` images of each class (random but seeded); ``limit <= 0`` keeps everything."""
    if limit <= 0:
        return split
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(split.labels == c))[:limit] for c in range(len(LABELS))])
    keep.sort()
    return Split(split.images[keep], split.labels[keep])


def _use_mixed_precision(setting: str) -> bool:
    if setting in ("on", "off"):
        return setting == "on"
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    accel = ""
    if keras.backend.backend() == "jax":
        import jax

        accel = ", ".join(sorted({d.device_kind for d in jax.devices() if d.platform == "gpu"}))
    return f"{cpu} x{os.cpu_count()}" + (f"; {accel}" if accel else "")


def _callbacks(run_dir: Path, config: TrainConfig) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoint.keras"), monitor="val_accuracy", mode="max",
                                        save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=config.reduce_lr_patience,
                                          min_lr=1e-6),
    ]


def _compile(model: keras.Model, learning_rate: float, weight_decay: float) -> None:
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _set_fine_tune_trainable(backbone: keras.Model, config: TrainConfig) -> None:
    """Unfreeze the backbone's top ``fine_tune_layers`` layers (all when from scratch); BatchNorm stays frozen."""
    backbone.trainable = True
    if config.trains_from_scratch:
        return
    cut = max(0, len(backbone.layers) - config.fine_tune_layers)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)


def _load_weights_from(model: keras.Model, path: Path) -> None:
    """Copy the weights of the inference model saved at ``path`` into ``model`` (same architecture)."""
    if not path.is_file():
        raise FileNotFoundError(f"--init-from: no model file at {path}")
    source = load_inference_model(str(path))
    mine, theirs = model.get_weights(), source.get_weights()
    if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
        raise ValueError(f"--init-from: {path} is not a model of this architecture (its input is {tuple(source.input_shape[1:])}, it has {source.count_params():,} parameters)")
    model.set_weights(theirs)


def train(config: TrainConfig, data: str | Path, run_dir: str | Path, *, verbose: int | str = "auto") -> TrainResult:
    """Train ``config`` on ``data`` (folder root, Kaggle CSV or packed .npz), selecting on its ``val`` split.

    Raises:
        training.data.DataError: the data is unusable.
        training.model.WeightsUnavailableError: pretrained weights were asked for and cannot be had.
    """
    started = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    mixed = _use_mixed_precision(config.mixed_precision)
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    config.save(run_dir / "config.json")

    train_split = limit_per_class(read_split(data, "train"), config.limit_per_class, config.seed)
    val_split = read_split(data, "val")
    weights = class_weights(train_split.labels) if config.class_weights else None

    inference_model = build_inference_model(config.arch, pretrained=not config.init_from)
    if config.init_from:
        _load_weights_from(inference_model, Path(config.init_from))
    model = build_training_model(inference_model, config)
    backbone = inference_model.get_layer(BACKBONE_NAME)
    fit_args = dict(x=train_split.images, y=train_split.labels, batch_size=config.batch_size,
                    validation_data=(val_split.images, val_split.labels), class_weight=weights,
                    shuffle=True, verbose=verbose)

    epoch = 0
    if not config.trains_from_scratch and config.head_epochs > 0:
        backbone.trainable = False
        _compile(model, config.head_learning_rate, config.weight_decay)
        history = model.fit(epochs=config.head_epochs, callbacks=_callbacks(run_dir, config), **fit_args)
        epoch = len(history.epoch)

    _set_fine_tune_trainable(backbone, config)
    _compile(model, config.learning_rate, config.weight_decay)
    history = model.fit(epochs=epoch + config.epochs, initial_epoch=epoch,
                        callbacks=_callbacks(run_dir, config), **fit_args)
    epoch += len(history.epoch)

    if mixed:  # the saved inference model is float32; export rebuilds it under float32 anyway
        keras.mixed_precision.set_global_policy("float32")
    return _finish(run_dir, config, inference_model, train_split, val_split,
                   epochs_run=epoch, seconds=time.time() - started, mixed=mixed)


def _finish(run_dir: Path, config: TrainConfig, inference_model: keras.Model, train_split: Split, val_split: Split,
            *, epochs_run: int, seconds: float, mixed: bool, interrupted: bool = False) -> TrainResult:
    """Save ``model.keras``, measure it on val and write ``run.json`` (the run record export puts in metadata)."""
    from training.evaluate import predict_split

    model_path = run_dir / "model.keras"
    inference_model.save(model_path)
    probabilities = predict_split(lambda x: np.asarray(inference_model(x, training=False)), config.arch, val_split)
    val_accuracy = float((probabilities.argmax(axis=1) == val_split.labels).mean())
    record = {
        "command": " ".join(sys.argv),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "mixed_precision": mixed,
        "hardware": _hardware(),
        "seconds": round(seconds, 1),
        "epochs_run": epochs_run,
        "interrupted": interrupted,
        "val_accuracy": round(val_accuracy, 4),
        "train_images": len(train_split),
        "train_class_counts": train_split.class_counts(),
        "train_fingerprint": train_split.fingerprint(),
        "val_fingerprint": val_split.fingerprint(),
        "class_weights": class_weights(train_split.labels) if config.class_weights else None,
        "seed": config.seed,
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return TrainResult(run_dir, model_path, val_accuracy, epochs_run, seconds)


def finalize(run_dir: str | Path, data: str | Path) -> TrainResult:
    """Finish a run that was stopped before its last epoch (time budget, killed machine) from its best checkpoint.

    Writes ``model.keras`` and ``run.json`` as ``train`` would, marked ``"interrupted": true``; the duration is
    the time from the run's ``config.json`` to its last ``history.csv`` line.
    """
    from training.model import load_inference_model

    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir / "config.json")
    history = run_dir / "history.csv"
    with open(history) as handle:
        epochs_run = max(0, sum(1 for _ in handle) - 1)
    seconds = history.stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    train_split = limit_per_class(read_split(data, "train"), config.limit_per_class, config.seed)
    inference_model = load_inference_model(str(run_dir / "checkpoint.keras"))
    return _finish(run_dir, config, inference_model, train_split, read_split(data, "val"),
                   epochs_run=epochs_run, seconds=seconds, mixed=False, interrupted=True)
