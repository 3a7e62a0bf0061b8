"""Which images a run trains on and which it holds out: the per-class limit and the calibration hold-out.

Both are pure functions of the run's config (and seed), so ``evaluate --calibrate`` finds exactly the images the
run never saw, from the run's ``config.json`` alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.data import Split, read_split
from training.labels import LABELS


def limit_per_class(split: Split, limit: int, seed: int) -> Split:
    """At most ``limit`` images of each class (random but seeded); ``limit <= 0`` keeps everything."""
    if limit <= 0:
        return split
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(split.labels == c))[:limit] for c in range(len(LABELS))])
    keep.sort()
    return Split(split.images[keep], split.labels[keep])


def calibration_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out ``fraction`` of every class (seeded): ``(what to train on, what to fit the temperature on)``."""
    if fraction <= 0:
        return split, Split(split.images[:0], split.labels[:0])
    rng = np.random.default_rng([seed, 424242])
    held = np.concatenate(
        [
            rng.permutation(idx)[: max(1, round(fraction * len(idx)))]
            for idx in (np.flatnonzero(split.labels == c) for c in range(len(LABELS)))
            if len(idx) > 1
        ]
    )
    mask = np.zeros(len(split), bool)
    mask[held] = True
    return Split(split.images[~mask], split.labels[~mask]), Split(split.images[mask], split.labels[mask])


def training_splits(config: TrainConfig, data: str | Path) -> tuple[Split, Split]:
    """``(images trained on, images held out for the temperature)`` of ``data``'s train split for ``config``."""
    everything = limit_per_class(read_split(data, "train"), config.limit_per_class, config.split_seed)
    return calibration_split(everything, config.calibration_fraction, config.split_seed)
