"""What train, evaluate and export share: the served graph of a trained model, and predicting a split with it.

This module sits below the three commands (they import it, it imports none of them):

* :func:`fer_pixels_to_model_input` — FER-2013's 48x48 grayscale pixels -> the model's input size and channels;
* :func:`global_policy` — a Keras mixed-precision policy for the models built inside a ``with`` block;
* :func:`rebuild_float32` — the trained network rebuilt under float32 (training may have used mixed precision);
* :func:`served_model` / :func:`served_graph` — the graph that is exported: the float32 network, optionally
  averaged with its answer for the mirror image (test-time flip), optionally temperature-scaled;
* :func:`saved_model_predictor` — an exported SavedModel as a function from batches to probabilities;
* :func:`predict_split` — probabilities for every image of a split, fed as the service would feed them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training.config import ArchConfig
from training.data import Split
from training.labels import IMAGE_SIZE, LABELS
from training.model import (
    build_inference_model,
    gray_to_rgb,
    load_inference_model,
    with_temperature,
    with_test_time_augmentation,
)

#: A function from a float32 batch of model inputs (0-255) to class probabilities.
Predictor = Callable[[np.ndarray], np.ndarray]


def fer_pixels_to_model_input(arch: ArchConfig, images: Any) -> Any:
    """FER-2013 pixels ``(n, 48, 48, 1)`` -> the model's input: resized to its size, gray replicated to RGB if the
    model takes RGB. Works on numpy arrays and on symbolic Keras tensors (the training model uses it)."""
    x = images
    if arch.input_size != IMAGE_SIZE:
        x = keras.layers.Resizing(arch.input_size, arch.input_size, interpolation="bilinear", name="resize")(x)
    if arch.channels == 3:
        x = gray_to_rgb(x, name="data_gray_to_rgb")
    return x


@contextlib.contextmanager
def global_policy(name: str) -> Iterator[None]:
    """Keras' global mixed-precision policy is ``name`` inside the block and what it was after it, also when the
    block fails: models built later in the process must not inherit it."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def rebuild_float32(model: keras.Model, arch: ArchConfig) -> keras.Model:
    """The same network rebuilt under float32 with ``model``'s weights (training may have used mixed precision)."""
    with global_policy("float32"):
        clean = build_inference_model(arch, num_classes=model.output_shape[-1], pretrained=False)
    clean.set_weights(model.get_weights())
    return clean


def served_model(
    model_path: str | Path,
    trained: ArchConfig,
    test_time_flip: bool | None = None,
    temperature: float | None = None,
    test_time_zoom: float | None = None,
) -> tuple[keras.Model, ArchConfig]:
    """The graph that is exported (and evaluated) for a trained ``.keras`` model, and its architecture.

    ``trained`` is the architecture the model was trained with; ``test_time_flip``, ``test_time_zoom`` and
    ``temperature`` (``None``: as recorded there) choose which views of each crop the graph averages (its mirror
    image, its enlarged centre: `training.model.with_test_time_augmentation`) and which temperature scales the
    (averaged) probabilities.
    """
    arch = dataclasses.replace(
        trained,
        test_time_flip=trained.test_time_flip if test_time_flip is None else test_time_flip,
        test_time_zoom=trained.test_time_zoom if test_time_zoom is None else test_time_zoom,
        temperature=trained.temperature if temperature is None else temperature,
    )
    return served_graph(rebuild_float32(load_inference_model(str(model_path)), trained), arch), arch


def served_graph(inference_model: keras.Model, arch: ArchConfig) -> keras.Model:
    """``inference_model`` as served for ``arch``: with its test-time views and temperature if ``arch`` says so."""
    model = with_test_time_augmentation(inference_model, arch)
    if arch.temperature != 1.0:
        model = with_temperature(model, arch.temperature)
    return model


def keras_predictor(model: keras.Model) -> Predictor:
    """``model`` as a :data:`Predictor` (inference mode)."""
    return lambda x: np.asarray(model(x, training=False))


def arch_from_metadata(metadata: dict[str, Any]) -> ArchConfig:
    """The :class:`ArchConfig` recorded in an export's ``metadata.json`` (older exports lack newer fields)."""
    return ArchConfig.from_dict(metadata["architecture"])


def saved_model_predictor(path: Path) -> tuple[Predictor, ArchConfig, dict[str, Any]]:
    """An exported model folder as a :data:`Predictor`, its architecture and its metadata."""
    import tensorflow as tf

    metadata = json.loads((path / "metadata.json").read_text())
    sig = metadata["signature"]
    serve = tf.saved_model.load(str(path)).signatures[sig["key"]]

    def predict(x: np.ndarray) -> np.ndarray:
        return serve(**{sig["input"]: tf.constant(x, tf.float32)})[sig["output"]].numpy()

    return predict, arch_from_metadata(metadata), metadata


def predict_split(predict: Predictor, arch: ArchConfig, split: Split, batch_size: int = 256) -> np.ndarray:
    """Probabilities for every image of ``split``, fed through :func:`fer_pixels_to_model_input`."""
    out = [np.zeros((0, len(LABELS)), np.float32)]
    for start in range(0, len(split), batch_size):
        batch = split.images[start : start + batch_size].astype(np.float32)
        out.append(predict(np.asarray(fer_pixels_to_model_input(arch, batch))))
    return np.concatenate(out)
