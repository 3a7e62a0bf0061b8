"""Training configuration: plain typed values, a ``smoke`` switch for CI, saved next to every artifact."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.batches import Mixing


@dataclass(frozen=True)
class ArchConfig:
    """What the network is; recorded in the model metadata so the service needs nothing else."""

    backbone: str = "resnet50v2"
    input_size: int = 224
    #: Colour mode of the *served* input. FER-2013 is grayscale, so models take grayscale crops and any
    #: replication to the backbone's three channels happens inside the graph.
    color_mode: str = "grayscale"
    #: ``imagenet`` (download, the default for pretrained backbones), ``none`` or a path to a weights file.
    weights: str = "imagenet"
    dense_units: int = 256
    dropout: float = 0.4
    #: Width of each block of the compact ``fer_cnn`` backbone, or of each stage of ``fer_resnet`` (ignored by
    #: keras.applications backbones).
    cnn_widths: tuple[int, ...] = (16, 32, 64, 128)
    #: Inference only (set at export): average the answers for the crop and its mirror image. Training ignores it.
    test_time_flip: bool = False
    #: Inference only (set at export): above 1, the graph also answers for the centre of the crop enlarged by this
    #: factor (``test_time_crop`` pixels square, resized back to the input size) and averages that view's answer
    #: with the crop's own (with test-time flip, each view's mirror image too). 1 = the crop only.
    test_time_zoom: float = 1.0
    #: Inference only (set at export from the evaluation report): probabilities are ``softmax(log p / T)``, T fitted
    #: on held-out training images so that confidence matches accuracy. 1 = uncalibrated.
    temperature: float = 1.0
    #: Members of an ensemble: networks trained with different seeds, whose probabilities the inference model
    #: averages (``python -m training ensemble`` sets it; ``train`` trains one network).
    ensemble: int = 1
    #: The members' own architectures when they differ (a mixed ensemble, e.g. ``fer_cnn`` and ``fer_resnet`` nets
    #: on the same input); empty: ``ensemble`` networks of this architecture. The fields above then describe the
    #: first member, and the input (size, colour mode) is every member's.
    members: tuple[ArchConfig, ...] = ()

    def __post_init__(self) -> None:
        if not 1.0 <= self.test_time_zoom <= 2.0:
            raise ValueError(f"test_time_zoom must be between 1 (no zoomed view) and 2, not {self.test_time_zoom}")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def test_time_crop(self) -> int:
        """Side in pixels of the centre square that the zoomed test-time view enlarges to ``input_size``."""
        return round(self.input_size / self.test_time_zoom)

    @property
    def test_time_crop_start(self) -> int:
        """Row and column where that centre square starts."""
        return (self.input_size - self.test_time_crop) // 2

    @property
    def views(self) -> int:
        """Test-time views the served graph answers each crop with: the crop, its zoomed centre, their mirrors."""
        return (2 if self.test_time_flip else 1) * (2 if self.test_time_zoom > 1 else 1)

    @property
    def passes(self) -> int:
        """Network passes per crop: every network on every view (what the served graph's CPU cost scales with)."""
        return len(self.networks()) * self.views

    def networks(self) -> list[ArchConfig]:
        """The architecture of each network of the inference model, in order (one for a single network)."""
        if self.members:
            return list(self.members)
        return [dataclasses.replace(self, ensemble=1)] * self.ensemble

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ArchConfig:
        """An architecture from its JSON form (``config.json``, metadata); fields a newer version added and this
        one does not know are ignored, fields an older one lacked take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in values.items() if k in known}
        if "cnn_widths" in fields:
            fields["cnn_widths"] = tuple(fields["cnn_widths"])
        if "members" in fields:
            fields["members"] = tuple(cls.from_dict(m) for m in fields["members"])
        return cls(**fields)


@dataclass(frozen=True)
class TrainConfig:
    """How it is trained. Derived values are properties, written as the formula that derives them."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    batch_size: int = 64
    #: Phase 1: head only, backbone frozen (skipped when the backbone starts from random weights).
    head_epochs: int = 5
    head_learning_rate: float = 1e-3
    #: Phase 2: the top ``fine_tune_layers`` backbone layers unfrozen (all of them when training from scratch).
    epochs: int = 30
    learning_rate: float = 1e-4
    fine_tune_layers: int = 60
    #: ``adamw`` or ``sgd`` (SGD with Nesterov momentum 0.9, the recipe of the best from-scratch FER-2013 nets).
    optimizer: str = "adamw"
    #: ``plateau`` (halve the rate when val loss stalls) or ``cosine`` (linear warm-up, then cosine decay to 0,
    #: defined by the optimizer's global step so a resumed run continues on the same curve).
    schedule: str = "plateau"
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-4
    class_weights: bool = True
    #: With ``class_weights``: 1 = fully balanced, 0.5 = the square root of it (see ``data.class_weights``).
    class_weight_power: float = 1.0
    label_smoothing: float = 0.0
    #: 0 disables augmentation; 1 is the default strength; values scale rotation, zoom, shift and contrast.
    augment: float = 1.0
    #: Probability of random erasing per training image (0 = off).
    random_erasing: float = 0.0
    #: Mixing of image pairs within each batch (``batches.Mixing``): the Beta alpha of mixup and of CutMix (0 = off;
    #: both on: even odds per batch) and the share of batches mixed.
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_probability: float = 1.0
    #: Threads that augment batches ahead of the training step. 1 suits a CPU, whose cores train; a GPU trains
    #: ResNet50V2 at 224 faster (4,849 images/s on an H200) than one thread augments there (2,843-4,154 images/s).
    #: The batches are the same whatever the number.
    augment_workers: int = 1
    #: Share of each class of the train split held out (seeded) to fit the temperature on; 0 = none.
    calibration_fraction: float = 0.0
    #: 0 disables early stopping.
    early_stopping_patience: int = 8
    reduce_lr_patience: int = 3
    #: ``auto``: mixed_bfloat16 on a GPU of compute capability 8.0+ (mixed_float16 on older ones) and on a CPU with
    #: native bf16 (AVX512_BF16/AMX), else off;
    #: ``on`` forces the device's mixed policy, ``off`` trains in float32.
    mixed_precision: str = "auto"
    seed: int = 1337
    #: Seed of the calibration hold-out (and the per-class limit) when it must differ from ``seed``: members of an
    #: ensemble train with different seeds but share one hold-out, so the ensemble's temperature is fitted on
    #: images none of them saw. ``None`` = ``seed``.
    holdout_seed: int | None = None
    #: Use at most this many training images per class (0 = all); the smoke setting uses it to stay fast.
    limit_per_class: int = 0
    #: Start from the weights of this ``.keras`` model (an earlier run's, same architecture) instead of from the
    #: backbone's initial weights: continues a run that stopped while it was still improving. "" = off.
    init_from: str = ""
    #: When ``init_from`` is an ensemble: start from its member number ``init_member`` (1-based). 0 = a single network.
    init_member: int = 0
    #: Distillation: a ``.npz`` of an export's probabilities on the images this run trains on (``python -m training
    #: teach``); each target is then ``(1 - distill_weight) * one-hot + distill_weight * teacher``. "" = off.
    teacher: str = ""
    distill_weight: float = 0.5
    #: Weight averaging: the optimizer keeps an exponential moving average of the trainable weights with this
    #: momentum (0.998 averages over the last ~500 steps), and validation (hence early stopping and the plateau
    #: schedule), the best checkpoint and the finished model use the average, not the last step's weights.
    #: The average's batch-norm statistics are its own, recomputed on fixed training images (``train._AverageSwap``).
    #: 0 = off.
    ema_momentum: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be at least 0 and below 1, not {self.ema_momentum}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be between 0 and 1, not {self.distill_weight}")
        if not self.teacher and self.distill_weight != TrainConfig.distill_weight:
            raise ValueError("a distillation weight without a teacher (--teacher): nothing to weigh")
        Mixing(self.mixup, self.cutmix, self.mix_probability)  # checks the alphas and the share

    @property
    def mixing(self) -> Mixing:
        """How the training batches are mixed (``Mixing.enabled`` is false when they are not)."""
        return Mixing(self.mixup, self.cutmix, self.mix_probability)

    @property
    def trains_from_scratch(self) -> bool:
        return self.arch.weights == "none"

    @property
    def split_seed(self) -> int:
        """The seed that decides which train images are held out (``holdout_seed``, else ``seed``)."""
        return self.seed if self.holdout_seed is None else self.holdout_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        return cls(arch=ArchConfig.from_dict(values.pop("arch", {})), **values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# What 2 CPU cores train in about two idle hours: a VGG-style CNN at FER-2013's native 48x48 (4 blocks of two
# 3x3 convs, 32-256 wide, 1.2 M parameters) with the from-scratch recipe of the best published FER-2013 nets:
# SGD with Nesterov momentum, warm-up then cosine decay, label smoothing, random affine + erasing augmentation.
# 5 % of train is held out for the temperature (never val).
_CPU = TrainConfig(
    arch=ArchConfig(
        backbone="fer_cnn",
        input_size=48,
        weights="none",
        dense_units=256,
        dropout=0.4,
        cnn_widths=(32, 64, 128, 256),
    ),
    batch_size=128,
    head_epochs=0,
    epochs=50,
    learning_rate=0.05,
    optimizer="sgd",
    schedule="cosine",
    warmup_epochs=1.0,
    weight_decay=5e-4,
    class_weights=False,
    label_smoothing=0.1,
    augment=1.0,
    random_erasing=0.5,
    calibration_fraction=0.05,
    early_stopping_patience=0,
    mixed_precision="off",
)

#: Named starting points; every field can still be overridden on the command line.
PRESETS: dict[str, TrainConfig] = {
    # The flagship: ImageNet ResNet50V2 at 224, fine-tuned. Needs a GPU (about 80 min per epoch on 2 CPU cores).
    "flagship": TrainConfig(),
    "cpu": _CPU,
    # The same recipe on the other proven from-scratch family, a small ResNet at 48x48 (a 3x3 stem, four stages of
    # two basic residual blocks, 32-256 wide, 2.87 M parameters): an ensemble member that makes other mistakes than
    # the VGG-style nets (its first stage runs at full resolution: more compute per image than ``cpu``).
    "cpu_resnet": dataclasses.replace(_CPU, arch=dataclasses.replace(_CPU.arch, backbone="fer_resnet")),
    # Seconds, for tests and CI: a tiny CNN on a tiny input.
    "smoke": TrainConfig(
        arch=ArchConfig(
            backbone="fer_cnn", input_size=24, weights="none", dense_units=16, dropout=0.1, cnn_widths=(4, 8)
        ),
        batch_size=16,
        head_epochs=0,
        epochs=2,
        learning_rate=1e-3,
        limit_per_class=8,
        calibration_fraction=0.2,
    ),
}
