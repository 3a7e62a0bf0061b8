"""Runtimes: what executes the exported network for ``service.model.load_model``.

``TensorFlowRuntime`` calls the SavedModel's serving signature (and its ``explain`` signature) in TensorFlow.
``OpenVINORuntime`` runs the same network under OpenVINO: the IR that ``python -m training compile`` derived from
the SavedModel and checked against it (``<version>/openvino/``, recorded in metadata.json's ``openvino`` section),
or, for fp32/bf16 when there is none, the SavedModel converted at start-up. ``select_openvino_source`` decides
which, and refuses a precision whose check failed or whose files changed after the check (docs/model-contract.md).
The SavedModel and its metadata stay the one contract; the IR is derived from it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.contract import DEFAULT_EXPLAIN, ExplainSpec, SignatureSpec
from service.errors import ExplanationsUnavailableError, ModelLoadError, describe_validation_errors

log = logging.getLogger(__name__)

#: The runtimes ``--runtime`` chooses from, and the precisions each serves.
RUNTIMES = ("tensorflow", "openvino")
PRECISIONS = {"tensorflow": ("fp32", "bf16"), "openvino": ("fp32", "bf16", "int8")}
#: OpenVINO's inference precision hint per served precision. bf16 is a hint on the fp32 IR (the CPU plugin runs
#: the maths in bfloat16 where the CPU has native bf16, and ignores it elsewhere); int8 is its own quantized IR.
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def _default_explain() -> ExplainSpec:
    return DEFAULT_EXPLAIN


class Runtime(Protocol):
    """Runs the exported network: float32 crops ``(N, H, W, C)`` in 0..255 -> probabilities ``(N, labels)``."""

    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Explained:
    """What the ``explain`` signature returns for ``N`` crops."""

    probabilities: np.ndarray  # (N, labels) float32, as ``predict`` returns
    classes: np.ndarray  # (N,) int: the class each map explains
    heatmaps: np.ndarray  # (N, height, width) float32 in 0..1, in the crop's coordinates


@runtime_checkable
class ExplainingRuntime(Protocol):
    """A runtime that may also run the export's ``explain`` signature (``can_explain`` says whether it has one)."""

    can_explain: bool

    def explain(self, batch: np.ndarray, classes: np.ndarray) -> Explained: ...


class TensorFlowRuntime:
    """The SavedModel's serving signature, called directly (never ``model.predict`` per request).

    ``precision="bf16"`` turns on TensorFlow's oneDNN auto-mixed-precision graph rewrite, which runs the
    matrix maths in bfloat16 (fast on CPUs with AVX512_BF16/AMX). The switch is process-wide in TensorFlow; it
    takes effect for functions optimised after it is set, i.e. for models loaded afterwards.
    """

    name = "tensorflow"

    def __init__(
        self,
        saved_model_dir: Path,
        signature: SignatureSpec,
        *,
        precision: str = "fp32",
        explain: ExplainSpec | None = None,
    ) -> None:
        import tensorflow as tf

        self._tf = tf
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": precision == "bf16"})
        if precision == "bf16" and not _cpu_has_bf16():
            log.warning("precision=bf16 requested but this CPU does not report avx512_bf16/amx: expect it slower")
        try:
            self._loaded = tf.saved_model.load(str(saved_model_dir))
        except Exception as exc:  # TF raises a zoo of types (OSError, ValueError, ...) for unreadable models
            raise ModelLoadError(
                f"cannot load the SavedModel in {saved_model_dir}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        signatures = dict(self._loaded.signatures)
        if signature.key not in signatures:
            raise ModelLoadError(
                f"the SavedModel in {saved_model_dir} has no signature '{signature.key}' "
                f"(it has: {sorted(signatures) or 'none'})"
            )
        self._fn = signatures[signature.key]
        _, inputs = self._fn.structured_input_signature
        if set(inputs) != {signature.input}:
            raise ModelLoadError(
                f"signature '{signature.key}' takes inputs {sorted(inputs)}, metadata names '{signature.input}'"
            )
        outputs = self._fn.structured_outputs
        if signature.output not in outputs:
            raise ModelLoadError(
                f"signature '{signature.key}' returns {sorted(outputs)}, metadata names '{signature.output}'"
            )
        self.input_shape: tuple[int | None, ...] = tuple(inputs[signature.input].shape.as_list() or ())
        self.input_dtype: str = inputs[signature.input].dtype.name
        self.output_shape: tuple[int | None, ...] = tuple(outputs[signature.output].shape.as_list() or ())
        self._input_name = signature.input
        self._output_name = signature.output
        self._explain = explain or _default_explain()
        self._explain_fn = self._explain_signature(signatures, signature, explain, saved_model_dir)
        self.can_explain = self._explain_fn is not None

    def _explain_signature(
        self, signatures: dict[str, Any], serving: SignatureSpec, declared: ExplainSpec | None, where: Path
    ) -> Any:
        """The ``explain`` signature, checked against the contract, or None when the export has none (an export
        from before explanations: it is served, and explanations are answered ``explanations_unavailable``)."""
        spec = self._explain
        fn = signatures.get(spec.signature)
        if fn is None:
            if declared is not None:
                log.warning(
                    "metadata.json names an explain signature '%s' the SavedModel in %s lacks: explanations are "
                    "unavailable for this model",
                    spec.signature,
                    where,
                )
            return None
        _, inputs = fn.structured_input_signature
        if set(inputs) != {serving.input, spec.class_input}:
            raise ModelLoadError(
                f"signature '{spec.signature}' takes inputs {sorted(inputs)}, the contract needs "
                f"'{serving.input}' and '{spec.class_input}'"
            )
        missing = {serving.output, spec.class_input, spec.heatmap_output} - set(fn.structured_outputs)
        if missing:
            raise ModelLoadError(
                f"signature '{spec.signature}' returns {sorted(fn.structured_outputs)}, the contract also needs "
                f"{sorted(missing)}"
            )
        return fn

    def predict(self, batch: np.ndarray) -> np.ndarray:
        tensor = self._tf.constant(batch, dtype=self._tf.float32)
        return np.asarray(self._fn(**{self._input_name: tensor})[self._output_name].numpy())

    def explain(self, batch: np.ndarray, classes: np.ndarray) -> Explained:
        """Probabilities, explained classes and Grad-CAM maps for ``batch`` (``classes``: index per crop, -1 = top)."""
        if self._explain_fn is None:
            raise ExplanationsUnavailableError(EXPLANATIONS_UNAVAILABLE)
        tf, spec = self._tf, self._explain
        out = self._explain_fn(
            **{self._input_name: tf.constant(batch, dtype=tf.float32), spec.class_input: tf.constant(classes, tf.int32)}
        )
        return Explained(
            probabilities=np.asarray(out[self._output_name].numpy()),
            classes=np.asarray(out[spec.class_input].numpy()),
            heatmaps=np.asarray(out[spec.heatmap_output].numpy()),
        )


#: The message of ``explanations_unavailable`` for a model without the ``explain`` signature.
EXPLANATIONS_UNAVAILABLE = (
    "explanations unavailable for this model (its export has no 'explain' signature: export it again with the "
    "current training package)"
)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --- OpenVINO ---------------------------------------------------------------------------------------------------


class OpenVINOCheck(BaseModel):
    """One precision's entry in metadata.json's ``openvino`` section (written by ``python -m training compile``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    files: list[str] = Field(min_length=1)  # relative to the version folder: the IR's .xml and .bin
    sha256: dict[str, str]  # of each file, as checked
    passed: bool
    reason: str | None = None  # why the check failed (None when it passed)


class OpenVINOSection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    precisions: dict[str, OpenVINOCheck]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_openvino_source(version_dir: Path, precision: str, section: object) -> Path:
    """What OpenVINO loads for ``precision``: the compiled IR's ``.xml`` when metadata.json's ``openvino`` section
    (``section``, None when absent) records it with a passed check and its files are the ones checked, otherwise
    ``version_dir`` itself (the SavedModel, converted at start-up; fp32 and bf16 only). Raises ``ModelLoadError``
    for a precision whose check failed, whose files changed after the check, or int8 without its IR."""
    if precision not in PRECISIONS["openvino"]:
        raise ModelLoadError(f"the openvino runtime serves {', '.join(PRECISIONS['openvino'])}, not {precision!r}")
    compile_again = f"python -m training compile --model {version_dir}"
    entry: OpenVINOCheck | None = None
    if section is not None:
        try:
            entry = OpenVINOSection.model_validate(section).precisions.get(precision)
        except ValidationError as exc:
            problems = describe_validation_errors(exc.errors(), root="openvino")
            raise ModelLoadError(
                f"{version_dir}/metadata.json has an invalid openvino section ({problems}); run `{compile_again}`"
            ) from None
    if entry is None:
        if precision == "int8":
            raise ModelLoadError(
                f"precision int8 needs the quantized OpenVINO IR (calibrated at compile time), which {version_dir} "
                f"does not have: run `{compile_again}`"
            )
        log.info("no compiled OpenVINO %s IR in %s: converting the SavedModel at start-up", precision, version_dir)
        return version_dir
    if not entry.passed:
        raise ModelLoadError(
            f"OpenVINO {precision} of {version_dir} failed its check against the SavedModel at compile time: "
            f"{entry.reason or 'no reason recorded'}; serve another precision or --runtime tensorflow"
        )
    root = version_dir.resolve()
    files = [version_dir / name for name in entry.files]
    if set(entry.sha256) != set(entry.files) or any(not f.resolve().is_relative_to(root) for f in files):
        raise ModelLoadError(
            f"{version_dir}/metadata.json's openvino {precision} entry must list files inside the version folder "
            f"with a sha256 for each; run `{compile_again}`"
        )
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        if precision == "int8":
            raise ModelLoadError(f"the OpenVINO int8 IR is missing ({', '.join(missing)}): run `{compile_again}`")
        log.warning("the OpenVINO %s IR is missing (%s): converting the SavedModel at start-up", precision, missing)
        return version_dir
    for name, path in zip(entry.files, files, strict=True):
        actual = _sha256(path)
        if actual != entry.sha256[name]:
            raise ModelLoadError(
                f"{path} is not the file that passed the OpenVINO {precision} check (sha256 {actual[:16]}, checked "
                f"{entry.sha256[name][:16]}): it changed after compiling; run `{compile_again}`"
            )
    xml = [f for f in files if f.suffix == ".xml"]
    if len(xml) != 1:
        raise ModelLoadError(f"the OpenVINO {precision} entry must list one .xml file; run `{compile_again}`")
    return xml[0]


class OpenVINORuntime:
    """The network under OpenVINO's CPU plugin: an IR (``source`` ending in ``.xml``) or the SavedModel folder
    converted at start-up (``ov.convert_model``, its ``serving_default`` signature).

    ``precision`` sets the inference precision hint: fp32 is f32 (OpenVINO's own default is bf16 on CPUs with
    native bf16), bf16 runs the fp32 IR in bfloat16 (only where the CPU has native bf16; elsewhere it is fp32),
    int8 is the quantized IR. OpenVINO cannot run the Grad-CAM ``explain`` signature (it needs gradients):
    ``explainer``, when given, answers explanations (TensorFlow in fp32).
    """

    name = "openvino"

    def __init__(
        self,
        source: Path,
        signature: SignatureSpec,
        *,
        precision: str = "fp32",
        explainer: ExplainingRuntime | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ModelLoadError(
                "the openvino runtime needs the 'openvino' package: pip install 'fer-service[openvino]'"
            ) from None

        if precision not in OPENVINO_HINTS:
            raise ModelLoadError(f"the openvino runtime serves {', '.join(OPENVINO_HINTS)}, not {precision!r}")
        if precision == "bf16" and not _cpu_has_bf16():
            log.warning("precision=bf16 requested but this CPU has no native bf16: OpenVINO runs fp32 instead")
        self.source = source
        self.precision = precision
        core = ov.Core()
        try:
            model = core.read_model(str(source)) if source.suffix == ".xml" else ov.convert_model(str(source))
        except Exception as exc:  # OpenVINO raises RuntimeError/OSError/... with long multi-line messages
            raise ModelLoadError(
                f"OpenVINO cannot read {source}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            ) from None
        inputs = {name: port for port in model.inputs for name in port.get_names()}
        outputs = {name: port for port in model.outputs for name in port.get_names()}
        if signature.input not in inputs:
            raise ModelLoadError(f"{source} takes inputs {sorted(inputs)}, metadata names '{signature.input}'")
        if signature.output not in outputs:
            raise ModelLoadError(f"{source} returns {sorted(outputs)}, metadata names '{signature.output}'")
        shape = inputs[signature.input].get_partial_shape()
        self.input_shape: tuple[int | None, ...] = (
            () if shape.rank.is_dynamic else tuple(None if d.is_dynamic else d.get_length() for d in shape)
        )
        element = inputs[signature.input].get_element_type()
        self.input_dtype: str = "float32" if element == ov.Type.f32 else element.get_type_name()
        out_shape = outputs[signature.output].get_partial_shape()
        self.output_shape: tuple[int | None, ...] = (
            () if out_shape.rank.is_dynamic else tuple(None if d.is_dynamic else d.get_length() for d in out_shape)
        )
        try:
            self._compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]})
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot compile {source} for the CPU: {type(exc).__name__}: {exc}") from None
        self._input = self._compiled.input(signature.input)
        self._output = self._compiled.output(signature.output)
        self._local = threading.local()  # one infer request per calling thread (a request is not thread-safe)
        self._explainer = explainer
        self.can_explain = explainer is not None and explainer.can_explain

    def predict(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(request.get_tensor(self._output).data, dtype=np.float32, copy=True)

    def explain(self, batch: np.ndarray, classes: np.ndarray) -> Explained:
        if self._explainer is None or not self._explainer.can_explain:
            raise ExplanationsUnavailableError(EXPLANATIONS_UNAVAILABLE)
        return self._explainer.explain(batch, classes)
