"""Export: a trained ``.keras`` model -> ``models/<name>/<version>/`` SavedModel + ``metadata.json`` (the contract).

See ``docs/model-contract.md``. Export needs the TensorFlow backend; the ``.keras`` file may come from any backend.
After writing, the export is reloaded and compared with the Keras model on a sample batch; a mismatch is an error
and the half-written version folder is removed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training import explain as explaining
from training.config import ArchConfig, TrainConfig
from training.inference import rebuild_float32, served_graph
from training.labels import LABELS
from training.model import load_inference_model

SCHEMA_VERSION = 1
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
#: Largest allowed |Keras - SavedModel| difference of any probability on the self-check batch.
DEFAULT_TOLERANCE = 1e-5


class ExportMismatchError(RuntimeError):
    """The reloaded SavedModel does not reproduce the Keras model's outputs within the tolerance."""


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def write_saved_model(model: keras.Model, path: Path, explain: Any = None) -> None:
    """Write ``model`` as a SavedModel whose ``serving_default`` maps ``images`` to ``probabilities``; ``explain``
    (a tf.function from :func:`training.explain.explain_function`) adds the ``explain`` signature.

    A plain ``tf.Module`` holding the traced function and the model's TensorFlow variables, rather than
    ``keras.export.ExportArchive``: the archive saves every weight twice (its ``variables`` and ``_all_variables``
    lists hold different wrappers of the same weights), which doubled the files (ResNet50V2: 188 MB instead
    of 94 MB).
    """
    import tensorflow as tf

    _, height, width, channels = model.input_shape

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(images, training=False)}

    module = tf.Module()
    module.weights = [weight.value for weight in model.weights]  # the tf.Variables the traced function reads
    module.serve = serve
    signatures = {SIGNATURE_KEY: serve}
    if explain is not None:
        module.explain = explain
        signatures[explaining.SIGNATURE_KEY] = explain
    tf.saved_model.save(module, str(path), signatures=signatures)


def self_check(model: keras.Model, path: Path, sample: np.ndarray, tolerance: float) -> float:
    """Max |difference| between Keras and the reloaded SavedModel on ``sample``; raises above ``tolerance``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures[SIGNATURE_KEY]
    exported = serve(**{INPUT_NAME: tf.constant(sample, tf.float32)})[OUTPUT_NAME].numpy()
    expected = np.asarray(model(sample, training=False))
    diff = float(np.max(np.abs(exported - expected)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportMismatchError(
            f"SavedModel output differs from the Keras model by {diff:.3g} (tolerance {tolerance:.1g})"
        )
    return diff


def build_metadata(
    *,
    name: str,
    version: str,
    arch: ArchConfig,
    labels: tuple[str, ...],
    evaluation: dict[str, Any] | None,
    training: dict[str, Any] | None,
    self_check_diff: float,
    tolerance: float,
    explain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metadata.json`` document of docs/model-contract.md."""
    import tensorflow as tf

    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "labels": list(labels),
        "input": {
            "height": arch.input_size,
            "width": arch.input_size,
            "channels": arch.channels,
            "color_mode": arch.color_mode,
            "dtype": "float32",
            "value_range": [0, 255],
        },
        "signature": {"key": SIGNATURE_KEY, "input": INPUT_NAME, "output": OUTPUT_NAME},
        "architecture": dataclasses.asdict(arch),  # a mixed ensemble's members included
        "evaluation": evaluation,
        "training": training,
        **({"explain": explain} if explain else {}),
        "export": {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "self_check_max_abs_diff": self_check_diff,
            "self_check_tolerance": tolerance,
        },
    }


def _read_json(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def export_model(
    model_path: str | Path,
    out_root: str | Path,
    *,
    name: str,
    version: str,
    config_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    sample: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    test_time_flip: bool | None = None,
    test_time_zoom: float | None = None,
) -> Path:
    """Export ``model_path`` to ``<out_root>/<name>/<version>/`` and return that folder.

    ``config_path`` defaults to ``config.json`` beside the model (written by ``train``); the run record
    ``run.json`` beside it, if present, goes into the metadata's ``training`` section. ``report_dir`` is an
    evaluation report folder (``python -m training evaluate``): its figures go into ``evaluation`` and the
    folder is copied beside the SavedModel. ``test_time_flip`` (default: the config's) exports the graph that
    averages each crop's answer with its mirror image's, ``test_time_zoom`` (default: the config's) the one that
    also averages in its enlarged centre (`training.model.with_test_time_augmentation`); evaluate the ``.keras``
    model with the same choices for the report. The report's temperature (``evaluate --calibrate``)
    is built into the graph.

    Raises:
        FileExistsError: the version folder exists and ``force`` is false.
        ExportMismatchError: the self-check failed (the version folder is removed).
    """
    model_path = Path(model_path)
    config_path = Path(config_path) if config_path else model_path.parent / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no training config at {config_path} (pass --config)")
    config = TrainConfig.load(config_path)
    flip = config.arch.test_time_flip if test_time_flip is None else test_time_flip
    zoom = config.arch.test_time_zoom if test_time_zoom is None else test_time_zoom
    report = _read_json(Path(report_dir) / "metrics.json") if report_dir else None
    for option, exported, default in (("test_time_flip", flip, False), ("test_time_zoom", zoom, 1.0)):
        if report is not None and report.get(option, default) != exported:
            raise ValueError(
                f"the report in {report_dir} was made with {option}={report.get(option, default)}, the export "
                f"uses {exported}: its figures would not describe this model"
            )
    # The temperature comes from the report that measured it (evaluate --calibrate), so figures and graph agree.
    temperature = float(report.get("temperature", 1.0)) if report is not None else config.arch.temperature
    out_dir = Path(out_root) / name / str(version)
    if out_dir.exists():
        if not force:
            raise FileExistsError(f"{out_dir} already exists (choose another --version or pass --force)")
        shutil.rmtree(out_dir)

    arch = dataclasses.replace(config.arch, test_time_flip=flip, test_time_zoom=zoom, temperature=temperature)
    inference_model = rebuild_float32(load_inference_model(str(model_path)), config.arch)
    model = served_graph(inference_model, arch)
    explain, explain_section = explaining.explain_function(model, inference_model, arch, OUTPUT_NAME)
    if sample is None:
        rng = np.random.default_rng(0)
        sample = rng.integers(0, 256, size=(8, *model.input_shape[1:]), dtype=np.uint8)
    sample = sample.astype(np.float32)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_saved_model(model, out_dir, explain)
        diff = self_check(model, out_dir, sample, tolerance)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise

    run = _read_json(model_path.parent / "run.json")
    training = {"config": config.to_dict(), **(run or {})}
    metadata = build_metadata(
        name=name,
        version=str(version),
        arch=arch,
        labels=LABELS,
        evaluation=report,
        training=training,
        self_check_diff=diff,
        tolerance=tolerance,
        explain=explain_section,
    )
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    if report_dir:
        shutil.copytree(report_dir, out_dir / "report")
    return out_dir
