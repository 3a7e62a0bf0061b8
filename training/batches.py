"""Training batches as a pure function of the global step: stateless augmentation, exact resume.

Batch ``s`` is always the same images with the same augmentation, whatever happened before it: the images of
epoch ``e`` come from a permutation seeded by ``(seed, e)`` and every random draw of batch ``s`` from a stateless
generator seeded by ``(seed, s)``. A run resumed at step ``s`` therefore sees exactly the batches an uninterrupted
run would have seen, without saving any random-generator state.

The augmentation works on FER-2013's 48x48 grayscale pixels (0-255) before any resizing to the model's input:

* a random affine warp per image: mirror (p = 0.5), rotation, zoom and shift (ranges scaled by ``strength``),
  edges filled with the nearest pixel;
* random brightness and contrast;
* random erasing (Zhong et al. 2017): with probability ``erasing`` one rectangle of 2-25 % of the image is filled
  with uniform noise, which makes the network use the whole face instead of one cue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

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
    def scaled(cls, strength: float, erasing: float = 0.0) -> "Augmentation":
        """The default ranges times ``strength`` (1 = rotation 10 degrees, zoom 10 %, shift 10 %, ...)."""
        if strength <= 0:
            return cls(erasing=erasing)
        return cls(rotation_degrees=10 * strength, zoom=0.1 * strength, shift=0.1 * strength,
                   brightness=20 * strength, contrast=0.2 * strength, flip=True, erasing=erasing)


def _uniform(seed: tf.Tensor, salt: int, shape: tuple[int, ...] | list, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed + tf.constant([0, salt], tf.int64) * 7919,
                                       minval=low, maxval=high)


def augment(images: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Augment a float32 batch ``(n, h, w, 1)`` of 0-255 pixels; the same ``seed`` always gives the same result."""
    n = tf.shape(images)[0]
    size = float(images.shape[1])
    centre = (size - 1) / 2
    x = images
    if aug.flip or aug.rotation_degrees or aug.zoom or aug.shift:
        angle = _uniform(seed, 1, [n], -1.0, 1.0) * (aug.rotation_degrees * math.pi / 180)
        scale = 1.0 + _uniform(seed, 2, [n], -1.0, 1.0) * aug.zoom
        tx = _uniform(seed, 3, [n], -1.0, 1.0) * aug.shift * size
        ty = _uniform(seed, 4, [n], -1.0, 1.0) * aug.shift * size
        mirror = tf.where(_uniform(seed, 5, [n], 0.0, 1.0) < (0.5 if aug.flip else 0.0), -1.0, 1.0)
        # The transform maps each *output* pixel to the input pixel it samples: the inverse of
        # "mirror, rotate and scale about the centre, then shift", i.e. M = F R(-angle) / scale.
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        m00, m01, m10, m11 = mirror * cos, mirror * sin, -sin, cos
        ox, oy = centre + tx, centre + ty
        transforms = tf.stack([m00, m01, centre - (m00 * ox + m01 * oy),
                               m10, m11, centre - (m10 * ox + m11 * oy),
                               tf.zeros_like(angle), tf.zeros_like(angle)], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="NEAREST")
    if aug.brightness or aug.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        contrast = 1.0 + _uniform(seed, 6, [n, 1, 1, 1], -1.0, 1.0) * aug.contrast
        brightness = _uniform(seed, 7, [n, 1, 1, 1], -1.0, 1.0) * aug.brightness
        x = tf.clip_by_value((x - mean) * contrast + mean + brightness, 0.0, 255.0)
    if aug.erasing > 0:
        area = _uniform(seed, 8, [n, 1, 1, 1], 0.02, 0.25) * size * size
        log_ratio = _uniform(seed, 9, [n, 1, 1, 1], math.log(0.3), math.log(3.3))
        height = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), size)
        width = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), size)
        top = _uniform(seed, 10, [n, 1, 1, 1], 0.0, 1.0) * (size - height)
        left = _uniform(seed, 11, [n, 1, 1, 1], 0.0, 1.0) * (size - width)
        rows = tf.reshape(tf.range(size), [1, -1, 1, 1])
        cols = tf.reshape(tf.range(size), [1, 1, -1, 1])
        inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
        erase = inside & (_uniform(seed, 12, [n, 1, 1, 1], 0.0, 1.0) < aug.erasing)
        x = tf.where(erase, _uniform(seed, 13, tf.shape(x), 0.0, 255.0), x)
    return x


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Whole batches per epoch (the remainder of each epoch's permutation is left out, differently each epoch)."""
    return max(1, images // batch_size)


def epoch_order(images: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the images: a permutation seeded by ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(images)


def training_batches(split: Split, *, batch_size: int, seed: int, start_step: int, end_step: int, aug: Augmentation,
                     sample_weights: dict[int, float] | None = None) -> tf.data.Dataset:
    """Batches ``start_step .. end_step - 1`` of the deterministic stream: ``(pixels, one-hot labels, weights)``.

    ``pixels`` are float32 ``(batch, 48, 48, 1)`` in 0-255; ``weights`` are the class weights of the labels (all 1
    without ``sample_weights``). Label smoothing is left to the loss.
    """
    per_epoch = steps_per_epoch(len(split), batch_size)
    first_epoch, last_epoch = start_step // per_epoch, (max(end_step, start_step + 1) - 1) // per_epoch
    # Only the epochs this stream touches are materialised (a few MB each).
    orders = np.stack([epoch_order(len(split), seed, e)[: per_epoch * batch_size]
                       for e in range(first_epoch, last_epoch + 1)]).astype(np.int32)
    images = tf.constant(split.images)
    labels = tf.constant(split.labels.astype(np.int32))
    weight_table = tf.constant([(sample_weights or {}).get(c, 1.0) for c in range(len(LABELS))], tf.float32)
    order_table = tf.constant(orders.reshape(-1))

    def batch(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        epoch, index = step // per_epoch, step % per_epoch
        start = ((epoch - first_epoch) * per_epoch + index) * batch_size
        picked = order_table[start:start + batch_size]
        x = tf.cast(tf.gather(images, picked), tf.float32)
        x = augment(x, tf.stack([tf.constant(seed, tf.int64), step]), aug)
        y = tf.gather(labels, picked)
        return x, tf.one_hot(y, len(LABELS)), tf.gather(weight_table, y)

    steps = tf.data.Dataset.range(start_step, end_step)
    return steps.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
