"""Training batches as a pure function of the global step: augmentation in numpy, exact resume, any backend.

Batch ``s`` is always the same images with the same augmentation, whatever happened before it: the images of
epoch ``e`` come from a permutation seeded by ``(seed, e)`` and every random draw of batch ``s`` from a generator
seeded by ``(seed, s)``. A run resumed at step ``s`` therefore sees exactly the batches an uninterrupted run would
have seen, without saving any random-generator state. Plain numpy, so the same code feeds Keras on TensorFlow (CPU)
and on JAX (the GPU machine, which has no TensorFlow).

The augmentation works on FER-2013's 48x48 grayscale pixels (0-255) before any resizing to the model's input:

* a random affine warp per image: mirror (p = 0.5), rotation, zoom and shift (ranges scaled by ``strength``),
  sampled bilinearly, edges filled with the nearest pixel;
* random brightness and contrast;
* random erasing (Zhong et al. 2017): with probability ``erasing`` one rectangle of 2-25 % of the image is filled
  with uniform noise, which makes the network use the whole face instead of one cue.

After the per-image augmentation, a batch may be **mixed** (:class:`Mixing`): each image with another of the same
batch, the targets and loss weights in the images' proportion (:func:`mix`): mixup (Zhang et al. 2018, a weighted
sum of the two images) or CutMix (Yun et al. 2019, a rectangle of the other image pasted in). Keras has both as
layers (``keras.layers.MixUp``, ``keras.layers.CutMix``), but they draw from a backend seed generator inside the
graph and mix only images and labels; here the draws come from the step's generator like every other, so a mixed
stream keeps the exact resume and is the same on TensorFlow and JAX, and each image's class weight still weighs its
own share of the loss.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from training.data import Split
from training.labels import LABELS


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random augmentation; :meth:`scaled` derives them from one strength (0 disables all)."""

    rotation_degrees: float = 0.0
    zoom: float = 0.0
    shift: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    flip: bool = False
    erasing: float = 0.0

    @classmethod
    def scaled(cls, strength: float, erasing: float = 0.0) -> Augmentation:
        """The default ranges times ``strength`` (1 = rotation 10 degrees, zoom 10 %, shift 10 %, ...)."""
        if strength <= 0:
            return cls(erasing=erasing)
        return cls(
            rotation_degrees=10 * strength,
            zoom=0.1 * strength,
            shift=0.1 * strength,
            brightness=20 * strength,
            contrast=0.2 * strength,
            flip=True,
            erasing=erasing,
        )


def _affine(images: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Mirror, rotate, zoom and shift each image about its centre; bilinear sampling, edge pixels repeated."""
    n, height, width, _ = images.shape
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    angle = rng.uniform(-1, 1, n) * math.radians(aug.rotation_degrees)
    scale = 1 + rng.uniform(-1, 1, n) * aug.zoom
    shift_x = rng.uniform(-1, 1, n) * aug.shift * width
    shift_y = rng.uniform(-1, 1, n) * aug.shift * height
    mirror = np.where(rng.uniform(0, 1, n) < (0.5 if aug.flip else 0.0), -1.0, 1.0)
    # Each output pixel samples the input at the inverse transform: M = F R(-angle) / scale about the shifted centre.
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    m00, m01, m10, m11 = (v[:, None, None] for v in (mirror * cos, mirror * sin, -sin, cos))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = xs[None] - centre_x - shift_x[:, None, None]
    dy = ys[None] - centre_y - shift_y[:, None, None]
    src_x = np.clip(centre_x + m00 * dx + m01 * dy, 0, width - 1)
    src_y = np.clip(centre_y + m10 * dx + m11 * dy, 0, height - 1)
    x0, y0 = np.floor(src_x).astype(np.intp), np.floor(src_y).astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    idx = np.arange(n)[:, None, None]
    top = images[idx, y0, x0] * (1 - wx) + images[idx, y0, x1] * wx
    bottom = images[idx, y1, x0] * (1 - wx) + images[idx, y1, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _erase(images: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    n, height, width, _ = images.shape
    area = rng.uniform(0.02, 0.25, n) * height * width
    ratio = np.exp(rng.uniform(math.log(0.3), math.log(3.3), n))
    box_h = np.minimum(np.sqrt(area * ratio), height)
    box_w = np.minimum(np.sqrt(area / ratio), width)
    top = rng.uniform(0, 1, n) * (height - box_h)
    left = rng.uniform(0, 1, n) * (width - box_w)
    chosen = rng.uniform(0, 1, n) < probability
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + box_h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + box_w)[:, None, None])
        & np.asarray(chosen)[:, None, None]
    )
    noise = rng.uniform(0, 255, images.shape).astype(np.float32)
    return np.where(inside[..., None], noise, images)


def augment(images: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Augment a float32 batch ``(n, h, w, 1)`` of 0-255 pixels with draws from ``rng`` (seed it for repeatability)."""
    x = images.astype(np.float32)
    if aug.flip or aug.rotation_degrees or aug.zoom or aug.shift:
        x = _affine(x, rng, aug)
    if aug.brightness or aug.contrast:
        n = len(x)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        contrast = 1 + rng.uniform(-1, 1, (n, 1, 1, 1)) * aug.contrast
        brightness = rng.uniform(-1, 1, (n, 1, 1, 1)) * aug.brightness
        x = np.clip((x - mean) * contrast + mean + brightness, 0, 255).astype(np.float32)
    if aug.erasing > 0:
        x = _erase(x, rng, aug.erasing)
    return x


@dataclass(frozen=True)
class Mixing:
    """Mixing of image pairs within a batch; each ``alpha`` is the Beta(alpha, alpha) the mixing ratio is drawn from
    (1 = uniform; 0 = that kind off). With both on, each mixed batch is mixup or CutMix with even odds."""

    mixup: float = 0.0
    cutmix: float = 0.0
    #: Share of batches mixed (the others are left as they are).
    probability: float = 1.0

    def __post_init__(self) -> None:
        for flag, alpha in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if not (math.isfinite(alpha) and alpha >= 0):
                raise ValueError(f"{flag} takes a Beta alpha, 0 (off) or positive, not {alpha}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"--mix-probability is a share of batches, between 0 and 1, not {self.probability}")
        if self.probability != 1.0 and self.mixup == self.cutmix == 0:
            raise ValueError("a share of mixed batches (--mix-probability) without --mixup or --cutmix: nothing to mix")

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.probability > 0


def mix(
    images: np.ndarray, targets: np.ndarray, weights: np.ndarray, rng: np.random.Generator, mixing: Mixing
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mix a batch with a permutation of itself: image ``i`` takes the share ``lam`` of its own pixels and
    ``1 - lam`` of its partner ``j``'s (one draw per batch, as both papers do; CutMix pastes a rectangle of
    ``1 - lam`` of the area, clipped at the edges, ``lam`` then recomputed from the pasted area). The loss weight
    is ``w = lam * w_i + (1 - lam) * w_j`` and the target ``(lam * w_i * y_i + (1 - lam) * w_j * y_j) / w``, so that
    ``w * CE(target) = lam * w_i * CE(y_i) + (1 - lam) * w_j * CE(y_j)``: each image's class weight weighs its own
    share of the loss (mixing the weights and targets apart would pull the class weights towards 1), with label
    smoothing too, which is linear in the target. Without class weights (all 1) this is plain mixup/CutMix."""
    if not mixing.enabled or rng.uniform() >= mixing.probability:
        return images, targets, weights
    use_cutmix = mixing.cutmix > 0 and (mixing.mixup <= 0 or rng.uniform() < 0.5)
    alpha = mixing.cutmix if use_cutmix else mixing.mixup
    lam = float(rng.beta(alpha, alpha))
    partner = rng.permutation(len(images))
    if use_cutmix:
        height, width = images.shape[1:3]
        side = math.sqrt(1.0 - lam)
        centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
        top, bottom = (int(np.clip(round(centre_y + d * side * height / 2), 0, height)) for d in (-1, 1))
        left, right = (int(np.clip(round(centre_x + d * side * width / 2), 0, width)) for d in (-1, 1))
        mixed = images.copy()
        mixed[:, top:bottom, left:right] = images[partner, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        mixed = (lam * images + (1.0 - lam) * images[partner]).astype(images.dtype)
    own = np.float32(lam) * weights
    other = np.float32(1.0 - lam) * weights[partner]
    weight = own + other
    target = (own[:, None] * targets + other[:, None] * targets[partner]) / weight[:, None]
    return mixed, target.astype(np.float32), weight.astype(np.float32)


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Whole batches per epoch (the remainder of each epoch's permutation is left out, differently each epoch)."""
    return max(1, images // batch_size)


def epoch_order(images: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the images: a permutation seeded by ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(images)


def training_batches(
    split: Split,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    end_step: int,
    aug: Augmentation,
    sample_weights: dict[int, float] | None = None,
    workers: int = 1,
    targets: np.ndarray | None = None,
    mixing: Mixing | None = None,
) -> Generator[tuple[np.ndarray, np.ndarray, np.ndarray], None, None]:
    """Batches ``start_step .. end_step - 1`` of the deterministic stream: ``(pixels, targets, weights)``.

    ``pixels`` are float32 ``(batch, 48, 48, 1)`` in 0-255; the targets are the labels one-hot, or the rows of
    ``targets`` (``(len(split), 7)``, e.g. ``distill.distillation_targets``) when given; ``weights`` are the class
    weights of the labels (all 1 without ``sample_weights``); ``mixing`` then mixes each batch (:func:`mix`, targets
    and weights alike). Label smoothing is left to the loss. Keras' ``fit``
    takes the iterator with ``steps_per_epoch`` (and prefetches it on a background thread). ``workers`` > 1
    augments that many batches at once on threads (numpy releases the GIL in its array work) and still yields them
    in step order, the same batches as one worker: one thread fed 2,843-4,154 images/s on the H200 machine, which
    bounds a GPU that trains faster.
    """
    per_epoch = steps_per_epoch(len(split), batch_size)
    weight_table = np.array([(sample_weights or {}).get(c, 1.0) for c in range(len(LABELS))], np.float32)
    if targets is None:
        targets = np.eye(len(LABELS), dtype=np.float32)[split.labels]
    elif targets.shape != (len(split), len(LABELS)):
        raise ValueError(f"targets of shape {targets.shape} for {len(split)} images and {len(LABELS)} classes")

    def picks() -> Iterator[tuple[int, np.ndarray]]:
        order, order_epoch = np.arange(0), -1
        for step in range(start_step, end_step):
            epoch, index = divmod(step, per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(len(split), seed, epoch), epoch
            yield step, order[index * batch_size : (index + 1) * batch_size]

    def batch(step: int, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, step])
        x = augment(split.images[picked], rng, aug)
        plain = x, targets[picked], weight_table[split.labels[picked]]
        # Drawn after the augmentation's draws, so a stream without mixing is the one it always was.
        return mix(*plain, rng, mixing) if mixing is not None else plain

    if workers <= 1:
        for step, picked in picks():
            yield batch(step, picked)
        return
    queued = picks()
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(batch, *p) for p in itertools.islice(queued, 2 * workers))
        try:
            while pending:
                ready = pending.popleft().result()
                pending.extend(pool.submit(batch, *p) for p in itertools.islice(queued, 1))
                yield ready
        finally:  # the consumer stopped early (end of fit, an error): drop what was queued
            for future in pending:
                future.cancel()
