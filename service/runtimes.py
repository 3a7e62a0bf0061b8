"""Runtimes: what executes the exported network for ``service.model.load_model``.

``TensorFlowRuntime`` calls the SavedModel's serving signature (and its ``explain`` signature) in TensorFlow.
``OpenVINORuntime`` runs the same network under OpenVINO: the IR that ``python -m training compile`` derived from
the SavedModel and checked against it (``<version>/openvino/``, recorded in metadata.json's ``openvino`` section),
or, for fp32/bf16 when there is none, the SavedModel converted at start-up. ``select_openvino_source`` decides
which, and refuses a precision whose check failed or whose files changed after the check (docs/model-contract.md).
Explanations under OpenVINO come from the compiled ``explain`` IR when its check passed
(``select_openvino_explain``), else from TensorFlow. The SavedModel and its metadata stay the one contract; the IR
is derived from it.

TensorFlow is imported only by ``TensorFlowRuntime``: a service on OpenVINO whose versions have a checked explain
IR (or no explain signature) never imports it, and runs in an image without it (Dockerfile target ``lean``).
"""

from __future__ import annotations

import hashlib
import logging
import os
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
#: ``--precision auto`` (the default): the fastest precision that holds parity with fp32 on val for the version
#: served (benchmarks/PRECISION.md): int8 where its compile check passed on labelled val images, else bf16 where the
#: CPU computes it natively, else fp32. See ``resolve_precision``.
AUTO = "auto"
#: OpenVINO's inference precision hint per served precision. bf16 is a hint on the fp32 IR: the CPU plugin runs the
#: maths in bfloat16 where the CPU has native bf16 (AVX512_BF16, AMX or AVX2-VNNI-2); on other AVX-512 CPUs it
#: *simulates* bf16 (slower than fp32), and on CPUs without AVX-512 it refuses the hint (compile_model raises).
#: int8 is its own quantized IR.
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def import_openvino() -> Any:
    """``import openvino``, with its usage telemetry already off: ``service/__init__.py`` makes
    ``openvino_telemetry`` unimportable before any module of the service runs, whichever import reaches OpenVINO
    first (this one, or Keras 3's inside TensorFlow)."""
    import openvino as ov

    return ov


def openvino_threads(setting: int = 0) -> int:
    """OpenVINO's inference threads for the ``openvino_threads`` setting: the setting itself, or for 0 the CPUs this
    process may use minus one (at least 1). The event loop and the face detection workers need a core of their own:
    on 2 cores OpenVINO's default (one thread per core) spins in ``sched_yield`` beside them, and 1 thread cut the
    service's CPU per pre-cropped face by about a quarter at the same throughput (README, Reliability and
    performance)."""
    if setting > 0:
        return setting
    return max(1, usable_cpus() - 1)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a Kubernetes CPU limit or
    ``docker run --cpus``), which the affinity does not show."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))  # ceil: 1.5 CPUs can run 2 threads
    except (OSError, ValueError):
        pass
    return cpus


def openvino_native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here: its ``OPTIMIZATION_CAPABILITIES`` lists ``BF16``
    only for AVX512_BF16 (incl. AMX) or AVX2-VNNI-2 CPUs (not for its bf16 simulation on other AVX-512 CPUs)."""
    try:
        ov = import_openvino()
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, no CPU plugin: no native bf16 to use
        return False


def int8_holds_parity(section: object) -> bool:
    """Whether a version's int8 IR holds parity with fp32: metadata.json's ``openvino`` section (``section``, None
    when absent) records its compile check as passed on labelled val images, i.e. within the top-1 agreement,
    probability and accuracy-drop bounds of ``training/compile.py``'s THRESHOLDS (the issue's parity rule)."""
    if section is None:
        return False
    try:
        entry = OpenVINOSection.model_validate(section).precisions.get("int8")
    except ValidationError:
        return False  # select_openvino_source says what is wrong with the section
    return entry is not None and entry.passed and entry.accuracy_drop_points is not None


def resolve_precision(runtime: str, precision: str, section: object = None) -> str:
    """The precision served for ``--precision`` (``auto`` resolved) for a version whose metadata.json has the
    ``openvino`` section ``section`` (None when absent): for openvino, int8 where it holds parity
    (:func:`int8_holds_parity`: the fastest, benchmarks/PRECISION.md), else bf16 where the CPU computes it natively
    (the shipped model holds parity in bf16), else fp32 (the bf16 hint is then simulated and slower, or refused);
    for tensorflow, fp32 (its bf16 rewrite is not checked against parity)."""
    if precision != AUTO:
        return precision
    if runtime == "openvino":
        if int8_holds_parity(section):
            return "int8"
        if openvino_native_bf16():
            return "bf16"
    return "fp32"


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
        tf = import_tensorflow("the tensorflow runtime")
        self._tf = tf
        self.precision = precision
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


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (it is not in the lean image), without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules (as tests block it) raises ValueError
        return False


def import_tensorflow(purpose: str) -> Any:
    """``import tensorflow`` (seconds, and hundreds of MB), only when a model needs it; ``ModelLoadError`` naming
    ``purpose`` when it is not installed (the lean image)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelLoadError(
            f"{purpose} needs TensorFlow, which this installation does not have (the lean image serves --runtime "
            "openvino only): use --runtime openvino, or the full image"
        ) from None
    return tf


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
    #: Points of val accuracy below the SavedModel's; None where the check sample was not labelled val images.
    accuracy_drop_points: float | None = None


class OpenVINOExplainCheck(OpenVINOCheck):
    """The section's ``explain`` entry: the ``explain`` signature as an fp32 IR, checked against TensorFlow's."""

    outputs: dict[str, str] = Field(default_factory=dict)  # contract output name -> the IR's tensor name


class OpenVINOSection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    precisions: dict[str, OpenVINOCheck]
    explain: OpenVINOExplainCheck | None = None


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
    files = _checked_files(version_dir, entry, f"OpenVINO {precision}", compile_again)
    if files is None:
        if precision == "int8":
            raise ModelLoadError(f"the OpenVINO int8 IR is missing: run `{compile_again}`")
        log.warning("the OpenVINO %s IR is missing: converting the SavedModel at start-up", precision)
        return version_dir
    return files


def _checked_files(version_dir: Path, entry: OpenVINOCheck, what: str, compile_again: str) -> Path | None:
    """The ``.xml`` of ``entry`` when its files are the ones checked; None when one is missing; ``ModelLoadError``
    when one changed after the check or the entry is malformed."""
    root = version_dir.resolve()
    files = [version_dir / name for name in entry.files]
    if set(entry.sha256) != set(entry.files) or any(not f.resolve().is_relative_to(root) for f in files):
        raise ModelLoadError(
            f"{version_dir}/metadata.json's {what} entry must list files inside the version folder "
            f"with a sha256 for each; run `{compile_again}`"
        )
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        log.warning("%s: files missing (%s)", what, ", ".join(missing))
        return None
    for name, path in zip(entry.files, files, strict=True):
        actual = _sha256(path)
        if actual != entry.sha256[name]:
            raise ModelLoadError(
                f"{path} is not the file that passed the {what} check (sha256 {actual[:16]}, checked "
                f"{entry.sha256[name][:16]}): it changed after compiling; run `{compile_again}`"
            )
    xml = [f for f in files if f.suffix == ".xml"]
    if len(xml) != 1:
        raise ModelLoadError(f"the {what} entry must list one .xml file; run `{compile_again}`")
    return xml[0]


@dataclass(frozen=True)
class ExplainIR:
    """The compiled ``explain`` IR and the names of its outputs (contract name -> the IR's tensor name)."""

    xml: Path
    outputs: dict[str, str]


def select_openvino_explain(version_dir: Path, section: object, explain: ExplainSpec, output: str) -> ExplainIR | None:
    """The ``explain`` IR ``python -m training compile`` derived and checked, or None (then TensorFlow explains,
    where it is installed) when the section has none, its check failed, its files changed or it lacks an output
    the contract needs; the reason is logged. Never raises: explanations are optional, predictions are not."""
    if section is None:
        return None
    compile_again = f"python -m training compile --model {version_dir}"
    try:
        entry = OpenVINOSection.model_validate(section).explain
    except ValidationError:
        return None  # select_openvino_source reports the invalid section
    if entry is None:
        return None
    if not entry.passed:
        log.warning(
            "the OpenVINO explain IR of %s failed its check at compile time (%s): explanations come from TensorFlow",
            version_dir,
            entry.reason or "no reason recorded",
        )
        return None
    missing = {output, explain.class_input, explain.heatmap_output} - set(entry.outputs)
    if missing:
        log.warning("the OpenVINO explain IR of %s names no output for %s", version_dir, sorted(missing))
        return None
    try:
        xml = _checked_files(version_dir, entry, "OpenVINO explain", compile_again)
    except ModelLoadError as exc:
        log.warning("%s: explanations come from TensorFlow", exc)
        return None
    return None if xml is None else ExplainIR(xml, dict(entry.outputs))


class OpenVINORuntime:
    """The network under OpenVINO's CPU plugin: an IR (``source`` ending in ``.xml``) or the SavedModel folder
    converted at start-up (``Core.read_model`` on the folder: OpenVINO's own TensorFlow frontend reads its
    ``serving_default`` signature; TensorFlow is not imported).

    ``precision`` sets the inference precision hint: fp32 is f32 (OpenVINO's own default is bf16 on CPUs with
    native bf16), bf16 runs the fp32 IR in bfloat16 (fast only where the CPU has native bf16: see
    ``OPENVINO_HINTS``), int8 is the quantized IR. Explanations: ``explain_ir`` (the ``explain`` signature compiled
    and checked by ``python -m training compile``, run in f32), else ``explainer`` (TensorFlow, fp32), else none.
    """

    name = "openvino"

    def __init__(
        self,
        source: Path,
        signature: SignatureSpec,
        *,
        precision: str = "fp32",
        explainer: ExplainingRuntime | None = None,
        explain_ir: ExplainIR | None = None,
        explain: ExplainSpec | None = None,
        threads: int = 0,
    ) -> None:
        self._threads = openvino_threads(threads)
        try:
            ov = import_openvino()
        except ImportError:
            raise ModelLoadError(
                "the openvino runtime needs the 'openvino' package (a dependency of fer-service: reinstall it)"
            ) from None

        if precision not in OPENVINO_HINTS:
            raise ModelLoadError(f"the openvino runtime serves {', '.join(OPENVINO_HINTS)}, not {precision!r}")
        if precision == "bf16" and not openvino_native_bf16():
            log.warning(
                "precision=bf16 on a CPU without native bf16: OpenVINO simulates it (slower than fp32) where the CPU "
                "has AVX-512 and refuses it elsewhere; --precision auto chooses fp32 here"
            )
        self.source = source
        self.precision = precision
        core = ov.Core()
        if source.suffix != ".xml" and signature.key != "serving_default":
            raise ModelLoadError(
                f"the openvino runtime converts the SavedModel's 'serving_default' signature, but metadata.json names "
                f"'{signature.key}': compile the export (python -m training compile) or use --runtime tensorflow"
            )
        try:
            # read_model reads an IR, or a SavedModel folder through the same TensorFlow frontend as ov.convert_model
            # (same graph, same outputs), without ov.convert_model's usage telemetry: that forks a process per event
            # (55 for the tiny test export) trying to reach Google Analytics, which outlive the service and hold its
            # stdout/stderr open.
            model = core.read_model(str(source))
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
        self._compiled = self._compile(core, model, OPENVINO_HINTS[precision], source)
        #: the threads OpenVINO really runs a call on (what it compiled with, read back)
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self._input = self._compiled.input(signature.input)
        self._output = self._compiled.output(signature.output)
        self._local = threading.local()  # one infer request per calling thread (a request is not thread-safe)
        self._explainer = explainer
        self._explain_ir: Any = None
        self.explains_with: str | None = None
        if explain_ir is not None:
            self._explain_ir = self._load_explain_ir(core, explain_ir, signature, explain or _default_explain())
            self.explains_with = "openvino"
        elif explainer is not None and explainer.can_explain:
            self.explains_with = "tensorflow"
        self.can_explain = self.explains_with is not None

    def _compile(self, core: Any, model: Any, hint: str, source: Path) -> Any:
        try:
            return core.compile_model(
                model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": self._threads}
            )
        except Exception as exc:
            message = " ".join(str(exc).split())[:300]
            raise ModelLoadError(
                f"OpenVINO cannot compile {source} for the CPU: {type(exc).__name__}: {message}"
            ) from None

    def _load_explain_ir(self, core: Any, ir: ExplainIR, signature: SignatureSpec, spec: ExplainSpec) -> Any:
        """The explain IR compiled in f32 (Grad-CAM maps are normalised by their peak: bf16 can move the peak and
        change a whole map), with its input and output ports in contract order."""
        try:
            model = core.read_model(str(ir.xml))
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot read {ir.xml}: {type(exc).__name__}") from None
        compiled = self._compile(core, model, "f32", ir.xml)
        try:
            ports = (
                compiled.input(signature.input),
                compiled.input(spec.class_input),
                compiled.output(ir.outputs[signature.output]),
                compiled.output(ir.outputs[spec.class_input]),
                compiled.output(ir.outputs[spec.heatmap_output]),
            )
        except (RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"{ir.xml} lacks an input or output the explain contract needs: {exc}") from None
        return compiled, ports

    def predict(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(request.get_tensor(self._output).data, dtype=np.float32, copy=True)

    def explain(self, batch: np.ndarray, classes: np.ndarray) -> Explained:
        if self._explain_ir is not None:
            compiled, (images, class_in, probs, class_out, heatmap) = self._explain_ir
            request = getattr(self._local, "explain_request", None)
            if request is None:
                request = self._local.explain_request = compiled.create_infer_request()
            request.infer(
                {
                    images: np.ascontiguousarray(batch, dtype=np.float32),
                    class_in: np.ascontiguousarray(classes, dtype=np.int32),
                }
            )
            return Explained(
                probabilities=np.array(request.get_tensor(probs).data, dtype=np.float32, copy=True),
                classes=np.array(request.get_tensor(class_out).data, dtype=np.int64, copy=True),
                heatmaps=np.array(request.get_tensor(heatmap).data, dtype=np.float32, copy=True),
            )
        if self._explainer is None or not self._explainer.can_explain:
            raise ExplanationsUnavailableError(EXPLANATIONS_UNAVAILABLE)
        return self._explainer.explain(batch, classes)
