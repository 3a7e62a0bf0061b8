"""Grad-CAM (Selvaraju et al. 2017) in the exported graph: the ``explain`` signature of the SavedModel.

For each crop and a class ``c`` (requested, or the served top class), the activations ``A`` of the backbone's last
convolutional block (:func:`training.model.explain_layer`) are weighted by the spatial mean of the gradient of the
class score ``z_c`` with respect to them; the map is ``relu(sum_k w_k A_k)``, resized bilinearly to the crop's size
and divided by its maximum (0..1; an all-zero map stays zero). With test-time flip the map of the mirror image is
mirrored back and averaged with the crop's own, exactly as the probabilities are, so the mirrored crop gives the
mirrored map. The temperature does not change maps (it scales every score alike).

The signature takes the serving inputs plus ``class_index`` (int32 per crop, ``-1`` = the top class) and returns
``probabilities`` (identical to ``serving_default``'s), ``class_index`` (the class explained) and ``heatmap``
(``(n, height, width)`` float32 in 0..1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training.config import ArchConfig
from training.model import build_explain_model, explain_layer, zoomed_centre

SIGNATURE_KEY = "explain"
CLASS_INPUT = "class_index"
HEATMAP_OUTPUT = "heatmap"


def explain_function(
    served: keras.Model, inference_model: keras.Model, arch: ArchConfig, output_name: str
) -> tuple[Any, dict[str, Any]]:
    """The ``explain`` tf.function for ``served`` (the exported probabilities) and its metadata section."""
    import tensorflow as tf

    explain_model = build_explain_model(inference_model, arch)
    _, height, width, channels = served.input_shape
    map_height, map_width = explain_model.output_shape[0][1:3]

    def cam(images: tf.Tensor, classes: tf.Tensor, size: tuple[int, int] = (height, width)) -> tf.Tensor:
        with tf.GradientTape() as tape:
            outputs = explain_model(images, training=False)
            activations, logits = outputs[0::2], outputs[1::2]
            tape.watch(activations)
            scores = tf.add_n([tf.gather(z, classes, batch_dims=1) for z in logits])
        # Crops (and an ensemble's members) are independent in inference mode, so the gradient of the sum is each
        # crop's own gradient with respect to each member's own activations.
        gradients = tape.gradient(scores, activations)
        maps = tf.add_n(
            [
                tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, axis=[1, 2], keepdims=True) * a, axis=-1, keepdims=True))
                for g, a in zip(gradients, activations, strict=True)
            ]
        ) / len(activations)  # an ensemble's map: the mean of its members' maps
        return tf.image.resize(tf.cast(maps, tf.float32), list(size), method="bilinear")[..., 0]

    def views_cam(images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        """The mean of the maps of the views the served graph averages, each put back where it lies in the crop."""
        maps = [cam(images, classes)]
        if arch.test_time_zoom > 1:
            start, side = arch.test_time_crop_start, arch.test_time_crop
            zoomed = cam(zoomed_centre(images, arch), classes, (side, side))
            # the zoomed view saw only the centre: its map covers that square, and is zero around it
            pad = [[0, 0], [start, height - side - start], [start, width - side - start]]
            maps.append(tf.pad(zoomed, pad))
        return tf.add_n(maps) / len(maps)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, height, width, channels], tf.float32, name="images"),
            tf.TensorSpec([None], tf.int32, name=CLASS_INPUT),
        ]
    )
    def explain(images: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = served(images, training=False)
        top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        classes = tf.where(class_index >= 0, class_index, top)
        maps = views_cam(images, classes)
        if arch.test_time_flip:
            mirrored = views_cam(tf.reverse(images, axis=[2]), classes)
            maps = (maps + tf.reverse(mirrored, axis=[2])) / 2
        peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
        maps = tf.math.divide_no_nan(maps, peak)
        return {output_name: probabilities, CLASS_INPUT: classes, HEATMAP_OUTPUT: maps}

    section = {
        "signature": SIGNATURE_KEY,
        "method": "grad-cam",
        "layer": explain_layer(arch),
        "layer_resolution": [int(map_height), int(map_width)],
        "heatmap_resolution": [height, width],
        "class_input": CLASS_INPUT,
        "heatmap_output": HEATMAP_OUTPUT,
        "value_range": [0, 1],
        "test_time_flip": arch.test_time_flip,
        "test_time_zoom": arch.test_time_zoom,
    }
    return explain, section


#: ``(model inputs, classes or -1) -> heatmaps (n, height, width)``.
Explainer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def saved_model_explainer(path: Path) -> Explainer:
    """The ``explain`` signature of an export as an :data:`Explainer`; ``ValueError`` if the export has none."""
    import tensorflow as tf

    signatures = tf.saved_model.load(str(path)).signatures
    if SIGNATURE_KEY not in signatures:
        raise ValueError(
            f"{path} has no '{SIGNATURE_KEY}' signature (exported before explanations existed); "
            "export it again to get maps"
        )
    explain = signatures[SIGNATURE_KEY]

    def run(images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        out = explain(images=tf.constant(images, tf.float32), class_index=tf.constant(classes, tf.int32))
        return out[HEATMAP_OUTPUT].numpy()

    return run


def keras_explainer(served: keras.Model, inference_model: keras.Model, arch: ArchConfig) -> Explainer:
    """The same computation for a ``.keras`` model before export."""
    import tensorflow as tf

    explain, _ = explain_function(served, inference_model, arch, "probabilities")

    def run(images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return explain(tf.constant(images, tf.float32), tf.constant(classes, tf.int32))[HEATMAP_OUTPUT].numpy()

    return run


def contact_sheet(
    pixels: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    explainer: Explainer,
    per_class: int,
    path: Path,
    class_names: tuple[str, ...],
) -> dict[str, int]:
    """A PNG with, per true class, up to ``per_class`` correctly and ``per_class`` wrongly classified images side by
    side, each with the map of its predicted class over it. ``pixels`` are the grayscale images shown (FER-2013's
    48x48) and what ``explainer`` receives. Returns how many of each were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = probabilities.argmax(axis=1)
    columns = 2 * per_class
    fig, axes = plt.subplots(len(class_names), columns, figsize=(1.4 * columns, 1.55 * len(class_names)), squeeze=False)
    drawn = {"correct": 0, "wrong": 0}
    for row, name in enumerate(class_names):
        correct = np.flatnonzero((labels == row) & (predicted == row))[:per_class]
        wrong = np.flatnonzero((labels == row) & (predicted != row))[:per_class]
        chosen = (
            [(i, "correct") for i in correct]
            + [(None, "")] * (per_class - len(correct))
            + [(i, "wrong") for i in wrong]
            + [(None, "")] * (per_class - len(wrong))
        )
        picked = [i for i, _ in chosen if i is not None]
        maps = explainer(pixels[picked], predicted[picked]) if picked else np.zeros((0,))
        for column, ((index, kind), ax) in enumerate(zip(chosen, axes[row], strict=True)):
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:  # an annotation, not a y label: it stays when the cell is empty and its axes are off
                ax.annotate(
                    name, xy=(-0.12, 0.5), xycoords="axes fraction", rotation=90, ha="right", va="center", fontsize=9
                )
            if index is None:
                ax.axis("off")
                continue
            drawn[kind] += 1
            heat = maps[picked.index(index)]
            height, width = pixels.shape[1:3]
            ax.imshow(pixels[index][..., 0], cmap="gray", vmin=0, vmax=255)
            # the map is at the model's input size: stretch it over the shown image
            ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            colour = "green" if kind == "correct" else "red"
            ax.set_title(f"{class_names[predicted[index]]} {probabilities[index].max():.2f}", fontsize=7, color=colour)
    fig.suptitle(
        "Grad-CAM of the predicted class: correct (left half, green) and wrong (right half, red) per true class",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
