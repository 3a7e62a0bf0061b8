"""The training run: data -> (head phase) -> fine-tuning phase -> best model, log and run record in one folder.

A run folder holds ``config.json`` (fully resolved config), ``history.csv`` (every epoch of both phases),
``checkpoint.keras`` (best training model so far, written during training), ``model.keras`` (the best inference
model, written at the end) and ``run.json`` (data fingerprints, timings, hardware, backend).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training.batches import Augmentation, steps_per_epoch, training_batches
from training.config import TrainConfig
from training.data import Split, class_weights, read_split
from training.distill import Teacher, distillation_targets, run_teacher
from training.hardware import native_bf16
from training.inference import fer_pixels_to_model_input, global_policy, keras_predictor, predict_split
from training.labels import IMAGE_SIZE, LABELS
from training.model import (
    BACKBONE_NAME,
    INFERENCE_MODEL_NAME,
    build_inference_model,
    ensemble_members,
    load_inference_model,
)
from training.splits import training_splits


class EmulatedBf16Warning(UserWarning):
    """``--mixed-precision on`` on a CPU that does not compute bfloat16 natively: the run is far slower than float32."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    val_accuracy: float
    epochs_run: int
    seconds: float


def _gpu_compute_capability() -> float | None:
    """The CUDA compute capability of the GPU the Keras backend sees (9.0 for an H100/H200), 0.0 if it does not
    say, None without a GPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            return None
        try:
            return float(getattr(gpus[0], "compute_capability", 0.0))
        except (TypeError, ValueError):
            return 0.0
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        if not devices:
            return None
        major, minor = tf.config.experimental.get_device_details(devices[0]).get("compute_capability", (0, 0))
        return major + minor / 10
    return None


def mixed_precision_policy(setting: str) -> str | None:
    """The Keras mixed-precision policy for ``setting`` on this machine, or None for float32.

    A GPU gets ``mixed_bfloat16`` where it computes bf16 natively (compute capability 8.0 and later: A100, H100,
    H200), as bf16 has float32's range: in ``mixed_float16`` ResNet50V2's validation loss went to NaN in early
    epochs on an H200 (float16 ends at 65,504); older GPUs get ``mixed_float16`` (with loss scaling). A CPU gets
    ``mixed_bfloat16`` only where it computes bf16 natively (AVX512_BF16 or AMX: measured 1.38-1.46x over float32
    for the cpu preset, ``benchmarks/TRAINING_THROUGHPUT.md``); elsewhere bf16 is emulated and slower, so ``auto``
    stays in float32 there, and ``on`` warns (:class:`EmulatedBf16Warning`): on an AVX2-only AMD EPYC the cpu
    preset trained 10 images/s in bf16 against 99 in float32 (``benchmarks/TRAINING_THROUGHPUT_AVX2.md``).
    """
    if setting == "off":
        return None
    capability = _gpu_compute_capability()
    if capability is not None:
        return "mixed_bfloat16" if capability >= 8.0 else "mixed_float16"
    if native_bf16():
        return "mixed_bfloat16"
    if setting == "on":
        warnings.warn(
            "--mixed-precision on: this CPU has no native bfloat16 (AVX512_BF16 or AMX), so bf16 is emulated "
            "and training runs several times slower than in float32; --mixed-precision auto would use float32 here",
            EmulatedBf16Warning,
            stacklevel=2,
        )
        return "mixed_bfloat16"
    return None


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


#: Training images whose statistics the averaged weights' batch-norm layers get (see :class:`_AverageSwap`): a fixed,
#: seeded subset, un-augmented, in batches of 256 (a few seconds per epoch on 2 CPU cores).
AVERAGE_STATISTICS_IMAGES = 2048


def average_statistics_images(train_split: Split, seed: int) -> np.ndarray:
    """The training images (float32 pixels) the averaged weights' batch-norm statistics are computed on."""
    order = np.random.default_rng([seed, AVERAGE_STATISTICS_IMAGES]).permutation(len(train_split))
    return train_split.images[np.sort(order[:AVERAGE_STATISTICS_IMAGES])].astype(np.float32)


def trainable_normalizations(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The model's batch-norm layers that train (a frozen one, like a head phase's backbone's, keeps its statistics:
    its weights are not averaged either)."""
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def batch_norm_statistics(model: keras.Model) -> list[Any]:
    """The moving mean and variance variables of :func:`trainable_normalizations`, in order."""
    return [v for layer in trainable_normalizations(model) for v in (layer.moving_mean, layer.moving_variance)]


class _AverageSwap(keras.callbacks.SwapEMAWeights):
    """Keras' ``SwapEMAWeights`` with ``swap_on_epoch``: the weights' moving average is in the model for every
    validation and from the end of an epoch to the start of the next (so the best checkpoint saves it), the last
    step's weights otherwise. Three changes:

    * the average gets **batch-norm statistics of its own** (the moving mean and variance are not trainable, so the
      optimizer does not average them): recomputed on fixed training images whenever it goes in (once per training
      step at most), the last step's put back when it goes out. With the last step's statistics the average is
      another network's weights normalised by this one's numbers: from scratch at momentum 0.999 it answered nearly
      every val image with one class for 8 epochs (18.45 % after 8; 55.00 % with its own statistics, the last step's
      weights 54.86 %; ``benchmarks/average_statistics.py``).
      SWA recomputes them the same way (Izmailov et al. 2018, ``bn_update``: the mean of the batches' statistics).
    * swaps copy (TensorFlow's own swap adds and subtracts, rounding both sets of weights at every swap);
    * the end of a ``fit`` leaves the last step's weights in the model, as any other epoch end does (Keras puts the
      average there): the next phase continues from them, as a run resumed at that boundary from ``last.keras``
      does.

    A stopped and resumed run stays exact (the statistics depend only on the average and the images), and the
    recomputation puts dropout's random state back as it found it, so its extra forward passes leave the training
    itself (the last step's weights) where it would be without them.
    """

    def __init__(self, statistics_images: np.ndarray) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model: bool = False
        self._statistics_images = statistics_images
        self._last_step_statistics: list[np.ndarray] = []
        #: (optimizer step, the average's statistics at that step)
        self._average_statistics: tuple[int, list[np.ndarray]] | None = None

    def _swap_variables(self) -> None:
        entering = not self._ema_weights_in_model
        super()._swap_variables()
        statistics = batch_norm_statistics(self.model)
        if entering:
            self._last_step_statistics = [keras.ops.convert_to_numpy(v) for v in statistics]
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if self._average_statistics is None or self._average_statistics[0] != step:
                self._average_statistics = (step, self._recompute_statistics())
            values = self._average_statistics[1]
        else:
            values = self._last_step_statistics
        for variable, value in zip(statistics, values, strict=True):
            variable.assign(value)

    def _recompute_statistics(self) -> list[np.ndarray]:
        """The mean over fixed batches of each batch-norm layer's batch mean and variance, as the model stands."""
        layers = trainable_normalizations(self.model)
        if not layers:  # a head phase: its backbone's are frozen, and the head may have none
            return []
        randoms = _random_states(self.model)
        saved_randoms = [keras.ops.convert_to_numpy(v) for v in randoms]
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
        try:
            for i, start in enumerate(range(0, len(self._statistics_images), 256)):
                for layer in layers:  # batch i weighs 1/(i+1): after the last, the plain mean of all batches
                    layer.momentum = i / (i + 1)
                self.model(self._statistics_images[start : start + 256], training=True)
        finally:
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
            for variable, value in zip(randoms, saved_randoms, strict=True):
                variable.assign(value)
        return [keras.ops.convert_to_numpy(v) for v in batch_norm_statistics(self.model)]

    def on_train_end(self, logs: dict | None = None) -> None:
        # fit's finalize_variable_values has copied the optimizer's slot, which holds the last step's weights while
        # the average is in, into the model: the last step's statistics go back with them.
        if self._ema_weights_in_model:
            for variable, value in zip(batch_norm_statistics(self.model), self._last_step_statistics, strict=True):
                variable.assign(value)
            self._ema_weights_in_model = False

    def _tf_swap_variables(self, optimizer: keras.optimizers.Optimizer) -> None:
        self._backend_swap_variables(optimizer)

    def _finalize_ema_values(self) -> None:
        # Keras copies the model's weights (the average, swapped in) into the average slot here, so that fit's own
        # finalize_variable_values leaves the average in the model; without it that step restores the last step's.
        pass

    @contextlib.contextmanager
    def last_step_weights(self) -> Iterator[None]:
        """The last step's weights in the model (the average in the optimizer) for the duration."""
        swapped = self._ema_weights_in_model
        if swapped:
            self._swap_variables()
            self._ema_weights_in_model = False
        try:
            yield
        finally:
            if swapped:
                self._swap_variables()
                self._ema_weights_in_model = True


#: What early stopping and the plateau schedule count between epochs: Keras resets it when a fit begins, so the
#: resume point keeps it in ``state.json`` and puts it back when a run resumes inside the same phase.
_COUNTERS: dict[str, tuple[str, ...]] = {
    "early_stopping": ("wait", "best", "best_epoch"),
    "plateau": ("wait", "best", "cooldown_counter"),
}


def _plain(value: Any) -> Any:
    """A counter's value as JSON can hold it (Keras keeps ``best`` as a NumPy or backend scalar)."""
    return value if value is None or isinstance(value, int) else float(value)


class _ResumePoint(keras.callbacks.Callback):
    """After every epoch: the whole training state (weights, optimizer and its step, the counters of early stopping
    and of the plateau schedule) to ``last.keras`` and ``state.json``, each replaced atomically, so a killed run
    loses at most the epoch in progress. Comes last: once the epoch counts as done, its best checkpoint is on disk
    and a learning-rate cut at its end is in the saved optimizer. With weight averaging, ``last.keras`` holds the
    last step's weights and the average in the optimizer's variables."""

    def __init__(
        self,
        run_dir: Path,
        seconds_before: float,
        average: _AverageSwap | None = None,
        counters: dict[str, keras.callbacks.Callback] | None = None,
        restored: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.seconds_before = seconds_before
        self.started = time.time()
        self.average = average
        self.counters = counters or {}
        self.restored = restored or {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        # after the counting callbacks' own on_train_begin (they come earlier in the list), which zeroes them
        for name, callback in self.counters.items():
            for attribute, value in self.restored.get(name, {}).items():
                setattr(callback, attribute, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        partial = self.run_dir / "last.partial.keras"
        with self.average.last_step_weights() if self.average else contextlib.nullcontext():
            self.model.save(partial)
        os.replace(partial, self.run_dir / LAST_CHECKPOINT)
        _write_state(
            self.run_dir,
            epochs_done=epoch + 1,
            seconds=self.seconds_before + time.time() - self.started,
            random_states=[np.asarray(v).tolist() for v in _random_states(self.model)],
            counters={
                name: {attribute: _plain(getattr(callback, attribute)) for attribute in _COUNTERS[name]}
                for name, callback in self.counters.items()
            },
        )


LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "checkpoint.keras"


def _random_states(model: keras.Model) -> list:
    """The states of the model's random generators (dropout's): ``model.save`` leaves them out, so a resumed run
    would draw different dropout masks without them."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _restore_random_states(model: keras.Model, state: dict) -> None:
    for variable, value in zip(_random_states(model), state.get("random_states", []), strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def _write_state(
    run_dir: Path, *, epochs_done: int, seconds: float, random_states: list, counters: dict | None = None
) -> None:
    state = {
        "epochs_done": epochs_done,
        "seconds": round(seconds, 1),
        "random_states": random_states,
        "counters": counters or {},
    }
    partial = run_dir / "state.partial.json"
    partial.write_text(json.dumps(state) + "\n")
    os.replace(partial, run_dir / "state.json")


def _trim_history(run_dir: Path, epochs_done: int) -> None:
    """Cut ``history.csv`` back to the epochs ``state.json`` counts: a run killed after an epoch's log line but
    before its resume point repeats that epoch, which must neither be logged twice nor count as already saved."""
    history = run_dir / "history.csv"
    if not history.is_file():
        return
    lines = history.read_text().splitlines(keepends=True)
    if len(lines) > epochs_done + 1:
        partial = run_dir / "history.partial.csv"
        partial.write_text("".join(lines[: epochs_done + 1]))
        os.replace(partial, history)


def _read_state(run_dir: Path) -> dict:
    path = run_dir / "state.json"
    if not path.is_file() or not (run_dir / LAST_CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"--resume: {run_dir} has no state.json and {LAST_CHECKPOINT} (nothing to resume; "
            "a run writes them after its first epoch)"
        )
    return json.loads(path.read_text())


def _best_so_far(run_dir: Path) -> float | None:
    """The best val accuracy in the run's ``history.csv`` (None before the first epoch)."""
    history = run_dir / "history.csv"
    if not history.is_file():
        return None
    with open(history, newline="") as handle:
        values = [float(row["val_accuracy"]) for row in csv.DictReader(handle) if row.get("val_accuracy")]
    return max(values, default=None)


class _RawValidation(keras.callbacks.Callback):
    """With weight averaging: the val accuracy and loss of the last step's weights as ``raw_val_accuracy`` and
    ``raw_val_loss`` in the epoch's logs (``val_*`` are the average's), so ``history.csv`` shows what averaging
    gains. Must come before :class:`keras.callbacks.SwapEMAWeights` in the list: the model then still holds the
    last step's weights."""

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        super().__init__()
        self.images = images
        self.targets = targets

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        result = self.model.evaluate(self.images, self.targets, batch_size=256, verbose=0, return_dict=True)
        logs["raw_val_accuracy"] = result["accuracy"]
        logs["raw_val_loss"] = result["loss"]


def _callbacks(
    run_dir: Path,
    config: TrainConfig,
    seconds_before: float,
    val: tuple[np.ndarray, np.ndarray],
    restored: dict[str, dict[str, Any]],
    statistics_images: np.ndarray,
) -> list[keras.callbacks.Callback]:
    """The callbacks of one fit; ``restored``: the counters of early stopping and of the plateau schedule when the
    fit continues a phase a stopped run was in (else empty: they start afresh, as in an uninterrupted run);
    ``statistics_images``: what the weights' average gets its batch-norm statistics from (with ``--ema``)."""
    best = keras.callbacks.ModelCheckpoint(
        str(run_dir / BEST_CHECKPOINT),
        monitor="val_accuracy",
        mode="max",
        save_best_only=True,
        # a resumed run must beat the best epoch before the stop, not overwrite it with its first epoch
        initial_value_threshold=_best_so_far(run_dir),
    )
    history = keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)
    callbacks: list[keras.callbacks.Callback]
    if config.ema_momentum > 0:
        # Order matters: fit's validation has seen the average (swapped in around it); the last step's weights are
        # scored next, while the model holds them; then the average goes in for the best checkpoint (whose optimizer
        # state then holds the last step's weights in the average's place: it is read for its inference model
        # only), and the resume point saves the last step's weights with the average in the optimizer.
        average: _AverageSwap | None = _AverageSwap(statistics_images)
        callbacks = [_RawValidation(*val), history, average, best]
    else:
        average = None
        callbacks = [history, best]
    counters: dict[str, keras.callbacks.Callback] = {}
    if config.early_stopping_patience > 0:
        counters["early_stopping"] = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.early_stopping_patience
        )
    if config.schedule == "plateau":
        counters["plateau"] = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=config.reduce_lr_patience, min_lr=1e-6
        )
    return [*callbacks, *counters.values(), _ResumePoint(run_dir, seconds_before, average, counters, restored)]


def _learning_rate(
    config: TrainConfig, peak: float, epochs: int, per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if config.schedule == "plateau":
        return peak
    if config.schedule != "cosine":
        raise ValueError(f"schedule must be 'plateau' or 'cosine', not '{config.schedule}'")
    warmup = int(round(config.warmup_epochs * per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10 if warmup else peak,
        decay_steps=max(1, epochs * per_epoch - warmup),
        alpha=0.0,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def compile_training_model(
    model: keras.Model, config: TrainConfig, learning_rate: float, epochs: int, per_epoch: int
) -> None:
    """Compile ``model`` as a run of ``config`` does: its optimizer, schedule over ``epochs`` of ``per_epoch`` steps
    from ``learning_rate``, and label-smoothed cross-entropy."""
    rate = _learning_rate(config, learning_rate, epochs, per_epoch)
    # The average lives in the optimizer's variables, so last.keras carries it and a resumed run continues it.
    ema: dict[str, Any] = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum > 0 else {}
    if config.optimizer == "sgd":
        optimizer: keras.optimizers.Optimizer = keras.optimizers.SGD(
            rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay, **ema
        )
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, **ema)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', not '{config.optimizer}'")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


def build_training_model(inference_model: keras.Model, config: TrainConfig) -> keras.Model:
    """Wrap the inference model for training on FER-2013 pixels: resize, classify.

    Augmentation is not in this graph: it happens in the data pipeline (:mod:`training.batches`), where it is a pure
    function of the step, so a resumed run sees exactly the batches an uninterrupted one would.
    """
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="fer_pixels")
    return keras.Model(inputs, inference_model(fer_pixels_to_model_input(config.arch, inputs)), name="fer_training")


def _set_fine_tune_trainable(backbone: keras.Model, config: TrainConfig) -> None:
    """Unfreeze the backbone's top ``fine_tune_layers`` layers (all when from scratch); BatchNorm stays frozen."""
    backbone.trainable = True
    if config.trains_from_scratch:
        return
    cut = max(0, len(backbone.layers) - config.fine_tune_layers)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)


def _load_weights_from(model: keras.Model, path: Path, member: int = 0) -> None:
    """Copy the weights of the inference model saved at ``path`` (its network number ``member`` when it is an
    ensemble) into ``model`` (same architecture)."""
    if not path.is_file():
        raise FileNotFoundError(f"--init-from: no model file at {path}")
    networks = ensemble_members(load_inference_model(str(path)))
    if len(networks) > 1 and not 1 <= member <= len(networks):
        raise ValueError(
            f"--init-from: {path} is an ensemble of {len(networks)} networks; choose one with --init-member 1.."
            f"{len(networks)}"
        )
    if len(networks) == 1 and member > 1:
        raise ValueError(f"--init-from: {path} is one network, it has no member {member}")
    source = networks[member - 1] if len(networks) > 1 else networks[0]
    mine, theirs = model.get_weights(), source.get_weights()
    if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs, strict=True)):
        raise ValueError(
            f"--init-from: {path} is not a model of this architecture (its input is "
            f"{tuple(source.input_shape[1:])}, it has {source.count_params():,} parameters)"
        )
    model.set_weights(theirs)


@dataclass(frozen=True)
class _Phase:
    name: str
    epochs: int
    learning_rate: float


def _phases(config: TrainConfig) -> list[_Phase]:
    phases = []
    if not config.trains_from_scratch and config.head_epochs > 0:
        phases.append(_Phase("head", config.head_epochs, config.head_learning_rate))
    phases.append(_Phase("fine_tune", config.epochs, config.learning_rate))
    return phases


def train(
    config: TrainConfig | None,
    data: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int = 0,
    verbose: int | str = "auto",
) -> TrainResult:
    """Train ``config`` on ``data`` (folder root, Kaggle CSV or packed .npz), selecting on its ``val`` split.

    With ``resume`` the run in ``run_dir`` continues where it stopped (its own ``config.json``; ``config`` must be
    None): weights, optimizer state and step (hence the learning-rate schedule), epoch and the data stream are those
    an uninterrupted run would have had. ``stop_after`` > 0 trains at most that many epochs in this call and leaves
    the run resumable (the model is then not finished: no ``model.keras``).

    Raises:
        training.data.DataError: the data is unusable.
        training.model.WeightsUnavailableError: pretrained weights were asked for and cannot be had.
        FileNotFoundError: ``resume`` and the run folder holds nothing to resume.
    """
    run_dir = Path(run_dir)
    if resume:
        if config is not None:
            raise ValueError("--resume continues the run's own config.json; give no other training options")
        state = _read_state(run_dir)
        _trim_history(run_dir, int(state["epochs_done"]))
        config = TrainConfig.load(run_dir / "config.json")
    else:
        if config is None:
            raise ValueError("a config is needed unless resuming")
        if (run_dir / "state.json").exists():
            raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume or use a new folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")
        state = {"epochs_done": 0, "seconds": 0.0, "random_states": []}
    policy = mixed_precision_policy(config.mixed_precision)
    with global_policy(policy or "float32"):  # not inherited by later models in this process, even on failure
        return _run(config, data, run_dir, state, stop_after=stop_after, mixed=policy is not None, verbose=verbose)


def _run(
    config: TrainConfig,
    data: str | Path,
    run_dir: Path,
    state: dict,
    *,
    stop_after: int,
    mixed: bool,
    verbose: int | str,
) -> TrainResult:
    """The epochs of ``config`` not yet in ``state``, under the mixed-precision policy already set."""
    started = time.time()
    keras.utils.set_random_seed(config.seed)

    train_split, held_out = training_splits(config, data)
    val_split = read_split(data, "val")
    weights = _class_weights(config, train_split)
    teacher = run_teacher(run_dir, config.teacher, train_split) if config.teacher else None
    targets = (
        distillation_targets(train_split.labels, teacher.probabilities, config.distill_weight) if teacher else None
    )
    per_epoch = steps_per_epoch(len(train_split), config.batch_size)
    aug = Augmentation.scaled(config.augment, config.random_erasing)
    val = (val_split.images, keras.ops.convert_to_numpy(keras.ops.one_hot(val_split.labels, len(LABELS))))
    statistics_images = (
        average_statistics_images(train_split, config.seed) if config.ema_momentum > 0 else np.zeros((0, 1))
    )

    done = int(state["epochs_done"])
    budget_end = done + stop_after if stop_after > 0 else None
    model: keras.Model | None = None
    first_epoch = 0
    stopped_early = False
    for phase in _phases(config):
        last_epoch = first_epoch + phase.epochs
        if done >= last_epoch or stopped_early:
            first_epoch = last_epoch
            continue
        restored: dict[str, dict[str, Any]] = {}
        if model is None and done > first_epoch:
            # Resuming inside this phase: the saved training model carries its optimizer, step and trainability.
            model = keras.saving.load_model(run_dir / LAST_CHECKPOINT)
            _restore_random_states(model, state)
            restored = state.get("counters", {})
        else:
            if model is None:
                inference_model = build_inference_model(config.arch, pretrained=not config.init_from and done == 0)
                if config.init_from and done == 0:
                    _load_weights_from(inference_model, Path(config.init_from), config.init_member)
                model = build_training_model(inference_model, config)
                if done > 0:  # resuming at a phase boundary: the weights of the phase before
                    model.set_weights(keras.saving.load_model(run_dir / LAST_CHECKPOINT, compile=False).get_weights())
                    _restore_random_states(model, state)
            backbone = model.get_layer(INFERENCE_MODEL_NAME).get_layer(BACKBONE_NAME)
            if phase.name == "head":
                backbone.trainable = False
            else:
                _set_fine_tune_trainable(backbone, config)
            compile_training_model(model, config, phase.learning_rate, phase.epochs, per_epoch)
        end = last_epoch if budget_end is None else min(last_epoch, budget_end)
        if end <= done:
            break
        stream = training_batches(
            train_split,
            batch_size=config.batch_size,
            seed=config.seed,
            start_step=done * per_epoch,
            end_step=end * per_epoch,
            aug=aug,
            sample_weights=weights,
            workers=config.augment_workers,
            targets=targets,
            mixing=config.mixing,  # draws nothing unless enabled: an unmixed run's stream is unchanged
        )
        with contextlib.closing(stream):  # ends its augmentation threads when fit stops early too
            history = model.fit(
                stream,
                epochs=end,
                initial_epoch=done,
                steps_per_epoch=per_epoch,
                shuffle=False,  # the stream is already in its (seeded) order
                validation_data=val,
                callbacks=_callbacks(
                    run_dir, config, float(state["seconds"]) + time.time() - started, val, restored, statistics_images
                ),
                verbose=verbose,
            )
        done += len(history.epoch)
        stopped_early = done < end
        first_epoch = last_epoch
        if budget_end is not None and done >= budget_end and done < sum(p.epochs for p in _phases(config)):
            return TrainResult(
                run_dir, run_dir / LAST_CHECKPOINT, float("nan"), done, float(state["seconds"]) + time.time() - started
            )

    seconds = json.loads((run_dir / "state.json").read_text())["seconds"] if (run_dir / "state.json").exists() else 0.0
    best = load_inference_model(str(run_dir / BEST_CHECKPOINT))
    return _finish(
        run_dir,
        config,
        best,
        train_split,
        val_split,
        epochs_run=done,
        seconds=float(seconds),
        mixed=mixed,
        held_out=len(held_out),
        teacher=teacher,
    )


def _class_weights(config: TrainConfig, train_split: Split) -> dict[int, float] | None:
    """The loss's per-class weights under ``config`` (None when it trains unweighted): the run and its record use
    the same."""
    return class_weights(train_split.labels, power=config.class_weight_power) if config.class_weights else None


def _finish(
    run_dir: Path,
    config: TrainConfig,
    inference_model: keras.Model,
    train_split: Split,
    val_split: Split,
    *,
    epochs_run: int,
    seconds: float,
    mixed: bool,
    held_out: int,
    teacher: Teacher | None,
    interrupted: bool = False,
) -> TrainResult:
    """Save ``model.keras``, measure it on val and write ``run.json`` (the run record export puts in metadata;
    ``teacher``: the run's copy of its teacher file, when it distils)."""
    model_path = run_dir / "model.keras"
    inference_model.save(model_path)
    probabilities = predict_split(keras_predictor(inference_model), config.arch, val_split)
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
        "calibration_images": held_out,
        "train_class_counts": train_split.class_counts(),
        "train_fingerprint": train_split.fingerprint(),
        "val_fingerprint": val_split.fingerprint(),
        "class_weights": _class_weights(config, train_split),
        "seed": config.seed,
    }
    if config.ema_momentum > 0:
        record["ema_momentum"] = config.ema_momentum
    if config.mixing.enabled:
        record["mixing"] = {"mixup": config.mixup, "cutmix": config.cutmix, "probability": config.mix_probability}
    if teacher:
        record["teacher"] = {"file": config.teacher, "source": teacher.source, "weight": config.distill_weight}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return TrainResult(run_dir, model_path, val_accuracy, epochs_run, seconds)


def finalize(run_dir: str | Path, data: str | Path) -> TrainResult:
    """Finish a run that was stopped before its last epoch (time budget, killed machine) from its best checkpoint.

    Writes ``model.keras`` and ``run.json`` as ``train`` would, marked ``"interrupted": true``; the duration is
    the time from the run's ``config.json`` to its last ``history.csv`` line.
    """
    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir / "config.json")
    history = run_dir / "history.csv"
    with open(history) as handle:
        epochs_run = max(0, sum(1 for _ in handle) - 1)
    seconds = history.stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    train_split, held_out = training_splits(config, data)
    teacher = run_teacher(run_dir, config.teacher, train_split) if config.teacher else None
    inference_model = load_inference_model(str(run_dir / "checkpoint.keras"))
    return _finish(
        run_dir,
        config,
        inference_model,
        train_split,
        read_split(data, "val"),
        epochs_run=epochs_run,
        seconds=seconds,
        mixed=False,
        held_out=len(held_out),
        teacher=teacher,
        interrupted=True,
    )
