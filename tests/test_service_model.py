"""Loading the exported model: the contract checks of service/model.py on the real export and on broken copies,
under the default runtime (OpenVINO, converting the uncompiled tiny export at start-up) and TensorFlow."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import ModelLoadError
from service.model import load_model, resolve_model_dir


def broken_copy(
    exported_model: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None, version: str = "1"
) -> Path:
    target = tmp_path / "tiny" / version
    shutil.copytree(exported_model, target)
    if edit is not None:
        path = target / "metadata.json"
        metadata = json.loads(path.read_text())
        edit(metadata)
        path.write_text(json.dumps(metadata))
    return target


def test_loads_the_real_export_and_predicts_probabilities(exported_model: Path) -> None:
    model = load_model(exported_model)
    meta = json.loads((exported_model / "metadata.json").read_text())
    assert model.labels == meta["labels"]
    assert model.input_size == (meta["input"]["height"], meta["input"]["width"])
    model.warm_up((1, 4))
    crops = np.random.default_rng(1).integers(0, 256, (5, *model.input_size, meta["input"]["channels"]), dtype=np.uint8)
    probabilities = model.predict(crops)
    assert probabilities.shape == (5, len(meta["labels"]))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="the model takes"):
        model.predict(crops[:, :10])


def test_name_folder_serves_the_highest_numeric_version(exported_model: Path, tmp_path: Path) -> None:
    for version in ("2", "10"):
        broken_copy(exported_model, tmp_path, lambda m, v=version: m.update(version=v), version=version)
    (tmp_path / "tiny" / "latest").mkdir()  # not numeric: ignored
    assert resolve_model_dir(tmp_path / "tiny") == tmp_path / "tiny" / "10"
    assert load_model(tmp_path / "tiny").metadata.version == "10"


def _labels_mismatch(m: dict[str, Any]) -> None:
    m["labels"] = m["labels"][:-1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_labels_mismatch, "outputs 7 classes but metadata.json lists 6 labels"),
        (lambda m: m["input"].update(height=32, width=32), "does not match metadata"),
        (lambda m: m["input"].update(channels=3), "color_mode 'grayscale' needs 1"),
        (lambda m: m["input"].update(color_mode="cmyk"), "input.color_mode"),
        (lambda m: m["input"].update(height=2), "input.height"),
        (lambda m: m["signature"].update(key="predict"), "signature 'predict'"),
        (lambda m: m["signature"].update(input="pixels"), "metadata names 'pixels'"),
        (lambda m: m["signature"].update(output="logits"), "metadata names 'logits'"),
        (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda m: m.pop("labels"), "labels: Field required"),
        (lambda m: m.update(labels=["a", "a", "b", "c", "d", "e", "f"]), "labels must be non-empty and unique"),
    ],
)
@pytest.mark.parametrize("runtime", ["openvino", "tensorflow"])
def test_contract_violations_refuse_with_one_clear_message(
    exported_model: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str, runtime: str
) -> None:
    """(A signature key other than serving_default: TensorFlow says the SavedModel has no such signature, OpenVINO
    that it converts serving_default only.)"""
    target = broken_copy(exported_model, tmp_path, edit)
    with pytest.raises(ModelLoadError) as info:
        load_model(target, runtime=runtime)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_files(exported_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither a model version folder"):
        load_model(tmp_path / "empty")
    no_meta = broken_copy(exported_model, tmp_path / "a")
    (no_meta / "metadata.json").unlink()
    (no_meta / "saved_model.pb").unlink()
    with pytest.raises(ModelLoadError, match="neither a model version folder"):
        load_model(no_meta)
    bad_json = broken_copy(exported_model, tmp_path / "b")
    (bad_json / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is not valid JSON"):
        load_model(bad_json)
    no_graph = broken_copy(exported_model, tmp_path / "c")
    (no_graph / "saved_model.pb").unlink()
    with pytest.raises(ModelLoadError, match="has no saved_model.pb"):
        load_model(no_graph)
    corrupt = broken_copy(exported_model, tmp_path / "d")
    (corrupt / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load the SavedModel"):
        load_model(corrupt, runtime="tensorflow")
    with pytest.raises(ModelLoadError, match="cannot load the SavedModel|OpenVINO cannot read"):
        load_model(corrupt)  # the default runtime, openvino


def _cpu_runs_onednn_bf16() -> bool:
    """TensorFlow's oneDNN bfloat16 rewrite needs AVX-512 (or AVX-NE-CONVERT); elsewhere bf16 leaves the model as is."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512f" in flags or "avx_ne_convert" in flags


def test_tensorflow_bf16_precision_really_computes_in_bfloat16_and_stays_close_to_fp32(exported_model: Path) -> None:
    """TensorFlow's bf16 (its oneDNN rewrite; OpenVINO's is in tests/test_runtimes.py). What only bf16 does: the
    probabilities differ from fp32's by bfloat16 rounding (an fp32 run would match exactly), and no more than that.
    (The precision switch is process-wide in TensorFlow and applies to functions optimised after it is set, so
    each model is called right after it is loaded; loading resets the switch.)"""
    if not _cpu_runs_onednn_bf16():
        pytest.skip("this CPU has no AVX-512: TensorFlow does not rewrite the model to bfloat16 here")
    meta = load_model(exported_model, runtime="tensorflow").metadata.input
    crops = np.random.default_rng(2).integers(0, 256, (8, meta.height, meta.width, meta.channels), dtype=np.uint8)
    bf16 = load_model(exported_model, runtime="tensorflow", precision="bf16").predict(crops)
    fp32 = load_model(exported_model, runtime="tensorflow", precision="fp32").predict(crops)
    again = load_model(exported_model, runtime="tensorflow", precision="fp32").predict(crops)
    assert np.max(np.abs(again - fp32)) < 1e-6  # fp32 is reproducible to float noise
    difference = np.max(np.abs(bf16 - fp32))
    assert 1e-5 < difference < 0.05, difference
    assert np.allclose(bf16.sum(axis=1), 1.0, atol=1e-2)
