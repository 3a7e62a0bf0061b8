"""Network builders. The architecture is data (:class:`ArchConfig`); this module is the code that builds it.

Models built here:

* the **inference model** (named ``fer_model``): takes a batch of ``(size, size, channels)`` crops with pixel values
  0-255 in the metadata's colour mode and returns class probabilities. Every bit of preprocessing (channel
  replication, scaling to what the backbone expects) is inside it; this is what gets exported.
* the **training model** (built in :mod:`training.train`): FER-2013's 48x48 grayscale pixels -> the inference
  model's input size and channels -> the inference model.

Only built-in Keras layers are used, so a ``.keras`` file loads anywhere Keras 3 runs, whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import layers

from training.config import ArchConfig
from training.labels import LABELS

INFERENCE_MODEL_NAME = "fer_model"
BACKBONE_NAME = "backbone"
#: Name prefix of the networks inside an ensemble's inference model (``member1``, ``member2``, ...).
MEMBER_PREFIX = "member"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (typically: no internet for ``--weights imagenet``)."""


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and what input it expects."""

    build: Callable[[ArchConfig, str | None], keras.Model]
    #: Whether the backbone needs three channels (grayscale input is then replicated inside the graph).
    rgb: bool
    #: Scaling from 0-255 to the backbone's input range, as a Rescaling layer's (scale, offset); None if built in.
    rescale: tuple[float, float] | None
    pretrained: bool


def _application(factory: Callable[..., keras.Model]) -> Callable[[ArchConfig, str | None], keras.Model]:
    def build(arch: ArchConfig, weights: str | None) -> keras.Model:
        return factory(include_top=False, weights=weights, input_shape=(arch.input_size, arch.input_size, 3))

    return build


def _fer_cnn(arch: ArchConfig, weights: str | None) -> keras.Model:
    """A compact VGG-style CNN sized for CPU training at FER-2013's native 48x48: two 3x3 convs per block."""
    inputs = keras.Input((arch.input_size, arch.input_size, arch.channels))
    x = inputs
    for i, width in enumerate(arch.cnn_widths):
        for j in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv{j + 1}")(x)
            x = layers.BatchNormalization(name=f"block{i + 1}_bn{j + 1}")(x)
            x = layers.Activation("relu", name=f"block{i + 1}_relu{j + 1}")(x)
        x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    model = keras.Model(inputs, x, name=BACKBONE_NAME)
    if weights is not None:
        model.load_weights(weights)
    return model


def _fer_resnet(arch: ArchConfig, weights: str | None) -> keras.Model:
    """A small ResNet sized for CPU training at 48x48: a 3x3 stem, then one stage per width of two basic residual
    blocks (two 3x3 convs each, the identity added back before the second ReLU; He et al. 2016), halving the
    resolution at the start of every stage after the first (strided conv, 1x1 projection on the shortcut). The
    other proven from-scratch family on FER-2013 beside the VGG-style ``fer_cnn`` (issue 11), for ensembles whose
    members make different mistakes."""
    inputs = keras.Input((arch.input_size, arch.input_size, arch.channels))
    x = layers.Conv2D(arch.cnn_widths[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, width in enumerate(arch.cnn_widths):
        for j in range(2):
            name = f"stage{i + 1}_block{j + 1}"
            stride = 2 if i > 0 and j == 0 else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != width:
                shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
                shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
            y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
            y = layers.BatchNormalization(name=f"{name}_bn1")(y)
            y = layers.Activation("relu", name=f"{name}_relu1")(y)
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
            y = layers.BatchNormalization(name=f"{name}_bn2")(y)
            x = layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))
    model = keras.Model(inputs, x, name=BACKBONE_NAME)
    if weights is not None:
        model.load_weights(weights)
    return model


BACKBONES: dict[str, Backbone] = {
    "resnet50v2": Backbone(
        _application(keras.applications.ResNet50V2), rgb=True, rescale=(1 / 127.5, -1.0), pretrained=True
    ),
    "mobilenetv2": Backbone(
        _application(keras.applications.MobileNetV2), rgb=True, rescale=(1 / 127.5, -1.0), pretrained=True
    ),
    "efficientnetv2b0": Backbone(
        _application(keras.applications.EfficientNetV2B0), rgb=True, rescale=None, pretrained=True
    ),
    "fer_cnn": Backbone(_fer_cnn, rgb=False, rescale=(1 / 255.0, 0.0), pretrained=False),
    "fer_resnet": Backbone(_fer_resnet, rgb=False, rescale=(1 / 255.0, 0.0), pretrained=False),
}


def _resolve_weights(arch: ArchConfig, backbone: Backbone) -> str | None:
    if arch.weights == "none":
        return None
    if arch.weights == "imagenet" and not backbone.pretrained:
        raise WeightsUnavailableError(
            f"backbone '{arch.backbone}' has no ImageNet weights; use --weights none or a weights file"
        )
    return arch.weights


def build_backbone(arch: ArchConfig, weights: str | None) -> keras.Model:
    """Build the configured backbone; ``weights`` is ``None``, ``"imagenet"`` or a file path."""
    backbone = BACKBONES[arch.backbone]
    try:
        model = backbone.build(arch, weights)
    except Exception as exc:  # keras raises plain Exceptions (URLError, HTTPError, ...) when the download fails
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"could not download ImageNet weights for {arch.backbone} ({exc.__class__.__name__}: {exc}). "
                "Connect to the internet, pass a local weights file with --weights PATH, or train from random "
                "initialisation with --weights none."
            ) from exc
        raise
    model.name = BACKBONE_NAME
    return model


def build_inference_model(arch: ArchConfig, num_classes: int = len(LABELS), *, pretrained: bool = True) -> keras.Model:
    """The exported network: 0-255 crops in the metadata's colour mode -> class probabilities.

    ``pretrained=False`` builds the same architecture with random weights (used to rebuild a trained model
    under float32 before export, where the weights are copied over anyway). An ensemble (``arch.ensemble > 1``)
    builds its networks side by side (:func:`ensemble_of`), each of its own architecture (``arch.networks()``).
    """
    networks = arch.networks()
    if len(networks) > 1:
        return ensemble_of([build_inference_model(n, num_classes, pretrained=pretrained) for n in networks])
    if arch.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone '{arch.backbone}' (known: {', '.join(sorted(BACKBONES))})")
    if arch.color_mode not in ("grayscale", "rgb"):
        raise ValueError(f"color_mode must be 'grayscale' or 'rgb', not '{arch.color_mode}'")
    backbone = BACKBONES[arch.backbone]
    base = build_backbone(arch, _resolve_weights(arch, backbone) if pretrained else None)

    inputs = keras.Input((arch.input_size, arch.input_size, arch.channels), name="images")
    x = inputs
    if backbone.rgb and arch.channels == 1:
        x = gray_to_rgb(x, name="gray_to_rgb")
    if backbone.rescale is not None:
        x = layers.Rescaling(backbone.rescale[0], offset=backbone.rescale[1], name="rescale")(x)
    # A pretrained backbone always runs its BatchNorm in inference mode, also when unfrozen for fine-tuning
    # (keras-io's transfer-learning guide): updating those statistics on a small data set destroys them.
    x = base(x, training=False) if backbone.pretrained and arch.weights != "none" else base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    # Dropout only in front of the classifier: a second dropout straight after pooling (measured) kept a
    # from-scratch CNN at chance level for the first epochs.
    x = layers.Dense(arch.dense_units, use_bias=False, name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Activation("relu", name="head_relu")(x)
    x = layers.Dropout(arch.dropout, name="head_dropout")(x)
    # Softmax in float32 even under mixed precision: probabilities must sum to 1 to float32 accuracy.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=INFERENCE_MODEL_NAME)


def ensemble_of(members: list[keras.Model]) -> keras.Model:
    """One inference model whose probabilities are the mean of ``members``' (inference models of one architecture,
    renamed ``member1``, ``member2``, ...). Averaging probabilities of independently trained networks is the
    classic ensemble: their errors are partly independent, so the mean is right more often than each member."""
    images = keras.Input(members[0].input_shape[1:], name="images")
    for number, member in enumerate(members, 1):
        member.name = f"{MEMBER_PREFIX}{number}"
    outputs = layers.Average(name="probabilities")([member(images) for member in members])
    return keras.Model(images, outputs, name=INFERENCE_MODEL_NAME)


def ensemble_members(inference_model: keras.Model) -> list[keras.Model]:
    """The single networks of an inference model: an ensemble's members, or the model itself."""
    members = [
        layer
        for layer in inference_model.layers
        if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)
    ]
    return members or [inference_model]


def explain_layer(arch: ArchConfig) -> str:
    """The backbone layer whose activations Grad-CAM weighs: the last convolutional block, before any pooling
    (``fer_cnn``: its last block's second ReLU; ``fer_resnet``: its last block's output; the keras.applications
    backbones: their output)."""
    if arch.backbone == "fer_cnn":
        return f"block{len(arch.cnn_widths)}_relu2"
    if arch.backbone == "fer_resnet":
        return f"stage{len(arch.cnn_widths)}_block2_out"
    return {"resnet50v2": "post_relu", "mobilenetv2": "out_relu", "efficientnetv2b0": "top_activation"}[arch.backbone]


def build_explain_model(inference_model: keras.Model, arch: ArchConfig) -> keras.Model:
    """``images -> [activations of explain_layer(arch), class logits]`` per network (``[a1, z1, a2, z2, ...]`` for
    an ensemble's members, in order), sharing ``inference_model``'s layers.

    The logits are the classifier's input times its kernel plus bias (the softmax's argument): Grad-CAM weighs the
    activations by the gradient of the class *score*, not of its probability.
    """
    networks = ensemble_members(inference_model)
    if len(networks) == 1:
        return _network_explain_model(networks[0], arch, "fer_explain")
    images = keras.Input(inference_model.input_shape[1:], name="images")
    outputs = []
    # each member's part is a model of its own: the members' layer names repeat
    for network, network_arch in zip(networks, arch.networks(), strict=True):
        outputs.extend(_network_explain_model(network, network_arch, f"{network.name}_explain")(images))
    return keras.Model(images, outputs, name="fer_explain")


def _network_explain_model(network: keras.Model, arch: ArchConfig, name: str) -> keras.Model:
    backbone = network.get_layer(BACKBONE_NAME)
    split = keras.Model(
        backbone.inputs, [backbone.get_layer(explain_layer(arch)).output, backbone.output], name="backbone_split"
    )
    images = keras.Input(network.input_shape[1:], name="images")
    names = {layer.name for layer in network.layers}
    x = gray_to_rgb(images, name="gray_to_rgb") if "gray_to_rgb" in names else images
    if "rescale" in names:
        x = network.get_layer("rescale")(x)
    activations, x = split(x)
    for layer_name in ("pool", "head_dense", "head_bn", "head_relu", "head_dropout"):
        x = network.get_layer(layer_name)(x)
    classifier = network.get_layer("probabilities")
    logits = keras.ops.matmul(x, classifier.kernel) + classifier.bias
    return keras.Model(images, [activations, logits], name=name)


def zoomed_centre(images, arch: ArchConfig):
    """The zoomed test-time view of a batch of crops (symbolic or eager): the centre ``arch.test_time_crop`` pixels
    square, enlarged back to ``arch.input_size`` (bilinear)."""
    start, side = arch.test_time_crop_start, arch.test_time_crop
    centre = images[:, start : start + side, start : start + side, :]
    return keras.ops.image.resize(centre, (arch.input_size, arch.input_size), interpolation="bilinear")


def with_test_time_augmentation(model: keras.Model, arch: ArchConfig) -> keras.Model:
    """``model`` whose answer is the mean of its answers for the views of each crop that ``arch`` asks for.

    * ``arch.test_time_flip``: the left-right mirror image. Faces are left-right symmetric in what they express, so
      the mirror is a second, equally valid view of the same crop (+1.8 points on FER-2013 val for the shipped CNN).
    * ``arch.test_time_zoom`` > 1: the centre ``arch.test_time_crop`` pixels enlarged back to the input size
      (bilinear), a tighter framing of the face; the nets train with random zooms of +-10 %, so it is a view they
      know (chosen on the calibration hold-out of training images, not on val: see the README).
    """
    images = keras.Input(model.input_shape[1:], name="images")
    views = [images]
    if arch.test_time_zoom > 1:
        views.append(zoomed_centre(images, arch))
    if arch.test_time_flip:
        views += [keras.ops.flip(view, axis=2) for view in views]  # NHWC: axis 2 is the width
    if len(views) == 1:
        return model
    outputs = layers.Average(name="probabilities")([model(view) for view in views])
    return keras.Model(images, outputs, name=f"{model.name}_with_views")


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` whose probabilities ``p`` become ``softmax(log p / temperature)`` (temperature scaling).

    The class ranking is unchanged; a temperature above 1 softens over-confident answers. ``training.calibration``
    fits it on held-out training images.
    """
    images = keras.Input(model.input_shape[1:], name="images")
    log_p = keras.ops.log(keras.ops.maximum(model(images), 1e-7))
    outputs = layers.Softmax(dtype="float32", name="probabilities")(log_p / temperature)
    return keras.Model(images, outputs, name=f"{model.name}_calibrated")


def gray_to_rgb(x, name: str):
    """Replicate a one-channel tensor to three channels (how grayscale crops feed an RGB backbone)."""
    return layers.Concatenate(axis=-1, name=name)([x, x, x])


def load_inference_model(path: str) -> keras.Model:
    """Load a ``.keras`` file holding an inference model or a training checkpoint (the inference part is returned)."""
    model = keras.saving.load_model(path, compile=False)
    if model.name == INFERENCE_MODEL_NAME:
        return model
    try:
        return model.get_layer(INFERENCE_MODEL_NAME)
    except ValueError:
        raise ValueError(f"{path} holds neither a '{INFERENCE_MODEL_NAME}' model nor a training checkpoint") from None
