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

from typing import Any

import keras

from training.config import ArchConfig
from training.model import build_explain_model, explain_layer

SIGNATURE_KEY = "explain"
CLASS_INPUT = "class_index"
HEATMAP_OUTPUT = "heatmap"


def explain_function(served: keras.Model, inference_model: keras.Model, arch: ArchConfig,
                     output_name: str) -> tuple[Any, dict[str, Any]]:
    """The ``explain`` tf.function for ``served`` (the exported probabilities) and its metadata section."""
    import tensorflow as tf

    explain_model = build_explain_model(inference_model, arch)
    _, height, width, channels = served.input_shape
    map_height, map_width = explain_model.output_shape[0][1:3]

    def cam(images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            activations, logits = explain_model(images, training=False)
            tape.watch(activations)
            scores = tf.gather(logits, classes, batch_dims=1)
        # Crops are independent in inference mode, so the gradient of the sum is each crop's own gradient.
        gradients = tape.gradient(scores, activations)
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1, keepdims=True))
        return tf.image.resize(tf.cast(maps, tf.float32), [height, width], method="bilinear")[..., 0]

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="images"),
                                  tf.TensorSpec([None], tf.int32, name=CLASS_INPUT)])
    def explain(images: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = served(images, training=False)
        top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        classes = tf.where(class_index >= 0, class_index, top)
        maps = cam(images, classes)
        if arch.test_time_flip:
            mirrored = cam(tf.reverse(images, axis=[2]), classes)
            maps = (maps + tf.reverse(mirrored, axis=[2])) / 2
        peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
        maps = tf.math.divide_no_nan(maps, peak)
        return {output_name: probabilities, CLASS_INPUT: classes, HEATMAP_OUTPUT: maps}

    section = {"signature": SIGNATURE_KEY, "method": "grad-cam", "layer": explain_layer(arch),
               "layer_resolution": [int(map_height), int(map_width)], "heatmap_resolution": [height, width],
               "class_input": CLASS_INPUT, "heatmap_output": HEATMAP_OUTPUT, "value_range": [0, 1],
               "test_time_flip": arch.test_time_flip}
    return explain, section
