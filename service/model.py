"""Load and validate an exported model (docs/model-contract.md) and run it on batches of face crops.

``load_model`` resolves the model folder, reads ``metadata.json`` into ``ModelMetadata``, loads the SavedModel
through a ``Runtime`` and checks the two against each other. Any violation raises ``ModelLoadError`` with one
message naming what is wrong. Nothing model-specific (sizes, labels, colour mode) is hard-coded here: it all comes
from the metadata and the signature.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from service.contract import DEFAULT_EXPLAIN as DEFAULT_EXPLAIN
from service.contract import MAX_INPUT_SIDE as MAX_INPUT_SIDE
from service.contract import METADATA_FILE as METADATA_FILE
from service.contract import SUPPORTED_SCHEMA_VERSIONS as SUPPORTED_SCHEMA_VERSIONS
from service.contract import ExplainSpec as ExplainSpec
from service.contract import InputSpec as InputSpec
from service.contract import ModelMetadata as ModelMetadata
from service.contract import SignatureSpec as SignatureSpec
from service.errors import ExplanationsUnavailableError, ModelLoadError, describe_validation_errors
from service.runtimes import (
    AUTO,
    PRECISIONS,
    OpenVINORuntime,
    resolve_precision,
    select_openvino_explain,
    select_openvino_source,
    tensorflow_available,
)
from service.runtimes import EXPLANATIONS_UNAVAILABLE as EXPLANATIONS_UNAVAILABLE
from service.runtimes import Explained as Explained
from service.runtimes import ExplainingRuntime as ExplainingRuntime
from service.runtimes import Runtime as Runtime
from service.runtimes import TensorFlowRuntime as TensorFlowRuntime

log = logging.getLogger(__name__)


def read_metadata(version_dir: Path) -> ModelMetadata:
    """Read and validate ``<version_dir>/metadata.json``; raises ``ModelLoadError``."""
    path = version_dir / METADATA_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing (see docs/model-contract.md)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    try:
        metadata = ModelMetadata.model_validate(raw)
        metadata.check_consistent()
    except ValidationError as exc:
        problems = describe_validation_errors(exc.errors(), root="(root)")
        raise ModelLoadError(f"{path} violates the model contract: {problems}") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path} violates the model contract: {exc}") from None
    return metadata


def resolve_model_dir(path: str | Path) -> Path:
    """A version folder as is, or a name folder's highest numeric version; raises ``ModelLoadError``."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    if (path / METADATA_FILE).is_file() or (path / "saved_model.pb").is_file():
        return path
    versions = [child for child in path.iterdir() if child.is_dir() and child.name.isdigit()]
    if not versions:
        raise ModelLoadError(
            f"{path} is neither a model version folder (no {METADATA_FILE}) nor a model name "
            "folder (no numeric version sub-folder)"
        )
    return max(versions, key=lambda child: int(child.name))


# --- the loaded model -------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A validated model: its metadata, where it came from and the runtime that executes it."""

    metadata: ModelMetadata
    path: Path
    runtime: Runtime

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of a crop."""
        return self.metadata.input.height, self.metadata.input.width

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, len(labels))`` for uint8 crops ``(N, H, W, C)`` in the model's colour mode."""
        meta = self.metadata.input
        expected = (meta.height, meta.width, meta.channels)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise ValueError(f"crops have shape {crops.shape}, the model takes (N, {expected})")
        probabilities = np.asarray(self.runtime.predict(crops.astype(np.float32, copy=False)))
        if probabilities.shape != (crops.shape[0], len(self.labels)):
            raise ValueError(f"the model returned shape {probabilities.shape} for {crops.shape[0]} crops")
        return probabilities

    @property
    def can_explain(self) -> bool:
        """Whether the export has the ``explain`` signature (docs/model-contract.md)."""
        return isinstance(self.runtime, ExplainingRuntime) and self.runtime.can_explain

    def explain(self, crops: np.ndarray, classes: np.ndarray) -> Explained:
        """Probabilities, the explained classes and Grad-CAM maps ``(N, H, W)`` in 0..1 for uint8 crops ``(N, H, W,
        C)``; ``classes`` is a label index per crop, -1 for the top class. Raises ``ExplanationsUnavailableError``
        when the export has no ``explain`` signature."""
        if not isinstance(self.runtime, ExplainingRuntime) or not self.runtime.can_explain:
            raise ExplanationsUnavailableError(EXPLANATIONS_UNAVAILABLE)
        meta = self.metadata.input
        expected = (meta.height, meta.width, meta.channels)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise ValueError(f"crops have shape {crops.shape}, the model takes (N, {expected})")
        count = crops.shape[0]
        if classes.shape != (count,) or np.any(classes < -1) or np.any(classes >= len(self.labels)):
            raise ValueError(f"classes must be {count} label indices or -1")
        out = self.runtime.explain(crops.astype(np.float32, copy=False), classes.astype(np.int32, copy=False))
        if (
            out.probabilities.shape != (count, len(self.labels))
            or out.classes.shape != (count,)
            or out.heatmaps.shape != (count, meta.height, meta.width)
        ):
            raise ValueError(
                f"the explain signature returned shapes {out.probabilities.shape}, {out.classes.shape}, "
                f"{out.heatmaps.shape} for {count} crops"
            )
        return out

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the model once per batch size so the first requests do not pay for graph optimisation; checks that
        every output row is a probability distribution (the contract: softmax output)."""
        meta = self.metadata.input
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            crops = rng.integers(0, 256, size=(size, meta.height, meta.width, meta.channels), dtype=np.uint8)
            try:
                probabilities = self.predict(crops)
            except ValueError as exc:
                raise ModelLoadError(f"warm-up failed: {exc}") from None
            sums = probabilities.sum(axis=1)
            if (
                not np.all(np.isfinite(probabilities))
                or not np.allclose(sums, 1.0, atol=1e-3)
                or probabilities.min() < 0
            ):
                raise ModelLoadError(
                    f"the model's output is not a probability distribution (row sums "
                    f"{sums.min():.4f}..{sums.max():.4f}); the contract needs softmax output"
                )
            if self.can_explain:
                try:
                    maps = self.explain(crops, np.full(size, -1, np.int32)).heatmaps
                except ValueError as exc:
                    raise ModelLoadError(f"warm-up of the explain signature failed: {exc}") from None
                if not np.all(np.isfinite(maps)) or maps.min() < 0 or maps.max() > 1 + 1e-4:
                    raise ModelLoadError("the explain signature's heatmaps are not in 0..1 as the contract says")


def _check_against_signature(
    metadata: ModelMetadata, runtime: TensorFlowRuntime | OpenVINORuntime, where: Path
) -> None:
    shape = runtime.input_shape
    if len(shape) != 4:
        raise ModelLoadError(
            f"{where}: input '{metadata.signature.input}' has rank {len(shape)} "
            f"(shape {list(shape)}), the contract needs rank 4 [batch, height, width, channels]"
        )
    expected = (metadata.input.height, metadata.input.width, metadata.input.channels)
    for axis, (actual, wanted) in enumerate(zip(shape[1:], expected, strict=True), start=1):
        if actual is not None and actual != wanted:
            raise ModelLoadError(
                f"{where}: input shape {list(shape)} does not match metadata "
                f"[batch, {expected[0]}, {expected[1]}, {expected[2]}] (axis {axis})"
            )
    if runtime.input_dtype != "float32":
        raise ModelLoadError(f"{where}: input dtype is {runtime.input_dtype}, the contract needs float32")
    out = runtime.output_shape
    if len(out) != 2:
        raise ModelLoadError(
            f"{where}: output '{metadata.signature.output}' has shape {list(out)}, the contract needs [batch, labels]"
        )
    if out[1] is not None and out[1] != len(metadata.labels):
        raise ModelLoadError(
            f"{where}: the model outputs {out[1]} classes but metadata.json lists {len(metadata.labels)} labels"
        )


def load_model(
    model_dir: str | Path,
    *,
    precision: str = AUTO,
    runtime: Literal["tensorflow", "openvino"] | str = "openvino",
    openvino_threads: int = 0,
) -> LoadedModel:
    """Resolve, read, load and validate a model (no warm-up); raises ``ModelLoadError`` naming the problem.

    The defaults are the service's: ``runtime="openvino"`` runs the IR ``python -m training compile`` derived and
    checked (or, for fp32/bf16 without one, the SavedModel converted at start-up; see
    ``service.runtimes.select_openvino_source``), and ``precision="auto"`` is int8 where the version's int8 IR holds
    parity on val, else bf16 where the CPU computes it natively, else fp32 (``service.runtimes.resolve_precision``).
    Explanations under OpenVINO come from the compiled explain IR when its check passed, else from TensorFlow (fp32)
    where it is installed, else they are unavailable. ``runtime="tensorflow"`` runs the SavedModel in TensorFlow."""
    version_dir = resolve_model_dir(model_dir)
    metadata = read_metadata(version_dir)
    if not (version_dir / "saved_model.pb").is_file():
        raise ModelLoadError(f"{version_dir} has no saved_model.pb (see docs/model-contract.md)")
    if runtime not in PRECISIONS:
        raise ModelLoadError(f"unknown runtime {runtime!r} (choose one of {', '.join(PRECISIONS)})")
    if precision != AUTO and precision not in PRECISIONS[runtime]:
        raise ModelLoadError(
            f"the {runtime} runtime serves precisions {', '.join(PRECISIONS[runtime])}, not {precision!r}"
            + (" (int8 needs --runtime openvino)" if precision == "int8" else "")
        )
    section = (metadata.model_extra or {}).get("openvino")
    precision = resolve_precision(runtime, precision, section)
    loaded: TensorFlowRuntime | OpenVINORuntime
    if runtime == "openvino":
        source = select_openvino_source(version_dir, precision, section)
        explain_spec = metadata.explain or DEFAULT_EXPLAIN
        explain_ir = (
            select_openvino_explain(version_dir, section, explain_spec, metadata.signature.output)
            if metadata.explain is not None
            else None
        )
        explainer = None
        if metadata.explain is not None and explain_ir is None:
            if tensorflow_available():
                explainer = TensorFlowRuntime(
                    version_dir, metadata.signature, precision="fp32", explain=metadata.explain
                )
            else:
                log.warning(
                    "%s has no checked OpenVINO explain IR and TensorFlow is not installed: explanations are "
                    "unavailable for this version (python -m training compile writes the IR)",
                    version_dir,
                )
        loaded = OpenVINORuntime(
            source,
            metadata.signature,
            precision=precision,
            explainer=explainer,
            explain_ir=explain_ir,
            explain=explain_spec,
            threads=openvino_threads,
        )
    else:
        loaded = TensorFlowRuntime(version_dir, metadata.signature, precision=precision, explain=metadata.explain)
    _check_against_signature(metadata, loaded, version_dir)
    return LoadedModel(metadata=metadata, path=version_dir, runtime=loaded)
