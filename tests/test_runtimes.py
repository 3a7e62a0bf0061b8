"""Runtimes (issue 14): the same service on TensorFlow and OpenVINO, fp32/bf16/int8/auto, on the tiny test export.

``python -m training compile`` derives the OpenVINO IR beside the export (and the explain signature's IR) and
records its check in metadata.json; the service serves an IR whose check passed, converts the SavedModel at
start-up when there is none (fp32/bf16), and refuses a precision whose check failed, whose files changed after the
check, or int8 without its IR. The default is openvino with precision auto (int8 where its check passed on labelled
val images, i.e. holds parity; else bf16 where the CPU has native bf16; else fp32); with a checked explain IR it runs
without TensorFlow.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.errors import ModelLoadError
from service.model import load_model
from service.runtimes import OpenVINORuntime, openvino_native_bf16, resolve_precision, usable_cpus
from tests import photos
from tests.servers import running_service
from training.compile import THRESHOLDS, compile_export

pytest.importorskip("openvino")
pytest.importorskip("nncf")

#: The tiny test network is barely trained: its probabilities are all close to 1/7, so the top-1 class flips on
#: differences of a few thousandths and int8's top-1 agreement says nothing (57 % with a largest probability
#: difference of 0.002). Its int8 check bounds the probabilities instead; the shipped model is held to
#: training/compile.py's THRESHOLDS (agreement >= 98 %, accuracy within 0.5 points), measured in
#: benchmarks/PRECISION.md. On 42 val images one flipped answer is 2.4 points: no accuracy bound either.
TINY = {**THRESHOLDS, "int8": {"min_top1_agreement": 0.0, "max_prob_diff": 0.02, "max_accuracy_drop_points": 100.0}}
#: The (runtime, precision) settings each service test runs; the largest probability difference from TensorFlow
#: fp32 allowed through the service is the compile check's own bound for the precision served.
SERVED = [("tensorflow", "fp32"), *(("openvino", p) for p in ("auto", "fp32", "bf16", "int8"))]


def copy_export(exported_model: Path, root: Path) -> Path:
    target = root / "tiny" / "1"
    shutil.copytree(exported_model, target)
    return target


def section(version_dir: Path) -> dict[str, Any]:
    openvino: dict[str, Any] = json.loads((version_dir / "metadata.json").read_text())["openvino"]
    return openvino


@pytest.fixture(scope="module")
def compiled(exported_model: Path, tiny_folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny export with its OpenVINO IR (fp32, bf16, int8) compiled and checked."""
    version_dir = copy_export(exported_model, tmp_path_factory.mktemp("compiled"))
    compile_export(version_dir, data=tiny_folder_dataset, calibration_images=300, check_images=500, thresholds=TINY)
    return version_dir


def test_compile_writes_the_ir_and_the_metadata_section(compiled: Path, tiny_folder_dataset: Path) -> None:
    found = section(compiled)
    assert found["check"]["sample"].startswith("FER-2013 val (all 42 images")  # the tiny data set's val split
    assert found["check"]["labelled"] and 0.0 <= found["check"]["reference_accuracy"] <= 1.0
    assert set(found["precisions"]) == {"fp32", "bf16", "int8"}
    for precision, entry in found["precisions"].items():
        assert entry["passed"], (precision, entry)
        assert entry["reason"] is None
        assert entry["thresholds"] == TINY[precision]
        assert entry["top1_agreement"] >= TINY[precision]["min_top1_agreement"]
        assert entry["max_prob_diff"] <= TINY[precision]["max_prob_diff"]
        assert entry["accuracy_drop_points"] <= TINY[precision]["max_accuracy_drop_points"]  # labelled: measured
        for name in entry["files"]:
            assert (compiled / name).is_file() and len(entry["sha256"][name]) == 64
    assert found["precisions"]["fp32"]["files"] == ["openvino/fp32/model.xml", "openvino/fp32/model.bin"]
    assert found["precisions"]["bf16"]["files"] == found["precisions"]["fp32"]["files"]  # a hint, not a file
    assert "native_bf16" in found["precisions"]["bf16"]
    calibration = found["precisions"]["int8"]["calibration"]
    assert calibration["split"] == "train" and calibration["images"] == 42 and calibration["seed"] == 0
    assert calibration["data"] == str(tiny_folder_dataset)
    # the int8 IR really is quantized: its weights take well under half the fp32 IR's bytes
    fp32_bin = (compiled / "openvino/fp32/model.bin").stat().st_size
    assert (compiled / "openvino/int8/model.bin").stat().st_size < fp32_bin / 2
    # the explain signature (gradients: ReluGrad, MaxPoolGrad) as an IR, reproducing TensorFlow's maps
    explain = found["explain"]
    assert explain["passed"], explain
    assert explain["files"] == ["openvino/fp32/explain.xml", "openvino/fp32/explain.bin"]
    assert explain["class_agreement"] == 1.0 and explain["max_heatmap_diff"] <= 1e-3
    assert set(explain["outputs"]) == {"probabilities", "class_index", "heatmap"}


def test_the_service_loads_the_compiled_ir_and_converts_without_it(compiled: Path, exported_model: Path) -> None:
    for precision in ("fp32", "bf16", "int8"):
        runtime = load_model(compiled, runtime="openvino", precision=precision).runtime
        assert isinstance(runtime, OpenVINORuntime)
        assert runtime.source == compiled / f"openvino/{'int8' if precision == 'int8' else 'fp32'}/model.xml"
    # no IR (the session's export has never been compiled): fp32 is converted at start-up, int8 is refused
    converted = load_model(exported_model, runtime="openvino").runtime
    assert isinstance(converted, OpenVINORuntime) and converted.source == exported_model
    with pytest.raises(ModelLoadError, match="int8 needs the quantized OpenVINO IR.*python -m training compile"):
        load_model(exported_model, runtime="openvino", precision="int8")
    with pytest.raises(ModelLoadError, match="int8 needs --runtime openvino"):
        load_model(exported_model, runtime="tensorflow", precision="int8")
    with pytest.raises(ValidationError, match="int8 needs runtime openvino"):
        Settings(model_dir=exported_model, runtime="tensorflow", precision="int8")
    assert Settings(model_dir=exported_model, precision="int8").runtime == "openvino"  # the default runtime


def test_the_default_is_openvino_with_int8_where_it_holds_parity_else_bf16_where_the_cpu_has_it(
    compiled: Path, exported_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(model_dir=exported_model)
    assert (settings.runtime, settings.precision) == ("openvino", "auto")
    # int8 passed its check on labelled val images (parity): the default serves it
    default = load_model(compiled).runtime  # load_model's defaults are the service's
    assert isinstance(default, OpenVINORuntime) and default.precision == "int8"
    assert default.source == compiled / "openvino/int8/model.xml"
    # no IR (never compiled): converted at start-up, bf16 or fp32 as the CPU has it
    uncompiled = load_model(exported_model).runtime
    assert isinstance(uncompiled, OpenVINORuntime) and uncompiled.source == exported_model
    assert uncompiled.precision == ("bf16" if openvino_native_bf16() else "fp32")
    # int8 whose parity was not measured (checked on random crops) or whose check failed is not the default
    found = section(compiled)
    unlabelled = {**found, "precisions": {**found["precisions"]}}
    unlabelled["precisions"]["int8"] = {**found["precisions"]["int8"], "accuracy_drop_points": None}
    failed = {**found, "precisions": {**found["precisions"]}}
    failed["precisions"]["int8"] = {**found["precisions"]["int8"], "passed": False, "reason": "agreement 90 %"}
    monkeypatch.setattr("service.runtimes.openvino_native_bf16", lambda: True)
    assert resolve_precision("openvino", "auto", found) == "int8"
    for other in (unlabelled, failed, None):
        assert resolve_precision("openvino", "auto", other) == "bf16"
    assert resolve_precision("tensorflow", "auto", found) == "fp32"  # TensorFlow's bf16 rewrite is not checked
    # bf16 only where OpenVINO computes it natively (elsewhere its bf16 hint is simulated, or refused)
    monkeypatch.setattr("service.runtimes.openvino_native_bf16", lambda: False)
    assert resolve_precision("openvino", "auto", failed) == "fp32"
    assert resolve_precision("openvino", "bf16") == "bf16"  # asked for explicitly: served (with a warning)


def test_openvino_explains_with_the_compiled_ir_as_tensorflow_does(
    compiled: Path, exported_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = load_model(compiled)
    assert isinstance(model.runtime, OpenVINORuntime) and model.runtime.explains_with == "openvino"
    crops = np.random.default_rng(3).integers(0, 256, (4, *model.input_size, 1), dtype=np.uint8)
    classes = np.array([-1, 2, -1, 5], np.int32)
    ours = model.explain(crops, classes)
    theirs = load_model(compiled, runtime="tensorflow").explain(crops, classes)
    assert list(ours.classes) == list(theirs.classes) and list(ours.classes)[1] == 2
    np.testing.assert_allclose(ours.heatmaps, theirs.heatmaps, atol=1e-4)
    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-4)
    # no explain IR (the export was never compiled): TensorFlow explains
    uncompiled = load_model(exported_model).runtime
    assert isinstance(uncompiled, OpenVINORuntime) and uncompiled.explains_with == "tensorflow"
    # an explain IR changed after its check is not used: TensorFlow explains, and the log says why
    version_dir = copy_export(compiled, tmp_path)
    (version_dir / "openvino/fp32/explain.bin").write_bytes(b"\0" * 64)
    changed = load_model(version_dir).runtime
    assert isinstance(changed, OpenVINORuntime) and changed.explains_with == "tensorflow"
    assert "is not the file that passed the OpenVINO explain check" in caplog.text


def test_the_service_runs_without_tensorflow(compiled: Path, exported_model: Path) -> None:
    """What the lean image (Dockerfile target ``lean``) relies on: with TensorFlow not importable, the default
    runtime serves a compiled version, explanations included; an uncompiled one is converted at start-up and
    served without explanations; --runtime tensorflow is refused with the reason."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # not installed, as in the lean image
        import numpy as np
        from service.errors import ModelLoadError
        from service.model import load_model

        model = load_model({str(compiled)!r})
        crops = np.random.default_rng(0).integers(0, 256, (3, *model.input_size, 1), dtype=np.uint8)
        model.warm_up((1, 3))
        assert model.runtime.explains_with == "openvino"
        assert model.explain(crops, np.array([-1, 2, -1], np.int32)).heatmaps.shape == (3, *model.input_size)
        uncompiled = load_model({str(exported_model)!r})
        assert uncompiled.predict(crops).shape == (3, 7) and not uncompiled.can_explain
        try:
            load_model({str(compiled)!r}, runtime="tensorflow")
        except ModelLoadError as exc:
            assert "needs TensorFlow" in str(exc), exc
        else:
            raise AssertionError("runtime tensorflow without TensorFlow")
        assert sys.modules["tensorflow"] is None
        # OpenVINO's usage telemetry (a forked process per event) is off: its module never loaded
        assert sys.modules["openvino_telemetry"] is None
        print("served without tensorflow")
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served without tensorflow" in done.stdout


@pytest.fixture(scope="module")
def reference(compiled: Path) -> Iterator[dict[str, Any]]:
    """What the service answers on TensorFlow fp32 (the reference the others are compared with)."""
    yield served(compiled, "tensorflow", "fp32")


def served(version_dir: Path, runtime: str, precision: str) -> dict[str, Any]:
    """/predict on a one-face photo and /predict/batch on three photos through the real app."""
    with running_service(version_dir.parent, runtime=runtime, precision=precision) as service:
        with httpx.Client(timeout=120) as client:
            (info,) = client.get(service.url + "/v1/models").json()["versions"]
            one = client.post(service.url + "/predict", files={"file": ("a.jpg", photos.one_face_jpeg(), "image/jpeg")})
            batch = client.post(
                service.url + "/predict/batch",
                files=[
                    ("files", ("a.jpg", photos.one_face_jpeg(), "image/jpeg")),
                    ("files", ("b.jpg", photos.no_face_jpeg(), "image/jpeg")),
                    ("files", ("c.jpg", photos.several_faces_jpeg(), "image/jpeg")),
                ],
            )
        assert service.state.model.runtime.name == runtime
    resolved = resolve_precision(runtime, precision, section(version_dir))
    assert (info["runtime"], info["precision"], info["precision_setting"]) == (runtime, resolved, precision)
    assert info["explanations_runtime"] == runtime  # the compiled explain IR under OpenVINO
    assert one.status_code == 200, one.text
    assert batch.status_code == 200, batch.text
    return {"one": one.json(), "batch": batch.json()}


def faces(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [*answer["one"]["faces"], *(face for result in answer["batch"]["results"] for face in result["faces"])]


@pytest.mark.parametrize(("runtime", "precision"), SERVED, ids=lambda v: str(v))
def test_the_service_answers_alike_on_every_runtime_and_precision(
    compiled: Path, reference: dict[str, Any], runtime: str, precision: str
) -> None:
    answer = reference if (runtime, precision) == ("tensorflow", "fp32") else served(compiled, runtime, precision)
    assert [len(r["faces"]) for r in answer["batch"]["results"]] == [1, 0, 3]
    got, expected = faces(answer), faces(reference)
    assert [face["box"] for face in got] == [face["box"] for face in expected]
    served_as = resolve_precision(runtime, precision, section(compiled))
    tolerance = 0.0 if runtime == "tensorflow" else TINY[served_as]["max_prob_diff"]
    for ours, theirs in zip(got, expected, strict=True):
        assert sum(ours["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        ours_p = np.array(list(ours["probabilities"].values()))
        theirs_p = np.array(list(theirs["probabilities"].values()))
        assert np.abs(ours_p - theirs_p).max() <= tolerance + 1e-6, (runtime, precision, ours_p, theirs_p)
        margin = np.sort(theirs_p)[-1] - np.sort(theirs_p)[-2]
        if margin > 2 * tolerance:  # a clear winner stays the winner
            assert ours["emotion"] == theirs["emotion"]
        assert ours["emotion"] == max(ours["probabilities"], key=ours["probabilities"].get)


def test_a_corrupted_ir_fails_its_check_and_the_service_refuses_it(compiled: Path, tmp_path: Path) -> None:
    version_dir = copy_export(compiled, tmp_path)
    weights = version_dir / "openvino/fp32/model.bin"
    wrong = np.random.default_rng(0).normal(0, 1, weights.stat().st_size // 4).astype(np.float32)
    weights.write_bytes(wrong.tobytes())  # wrong weights, and shape constants the .bin holds: it may not even run
    _, checked = compile_export(version_dir, data=None, precisions=("fp32", "bf16"), check_only=True)
    for precision in ("fp32", "bf16"):
        entry = checked["precisions"][precision]
        assert not entry["passed"]
        assert re.search("largest probability difference|non-finite outputs|OpenVINO cannot run it", entry["reason"]), (
            entry
        )
        assert section(version_dir)["precisions"][precision]["passed"] is False
        with pytest.raises(ModelLoadError, match=f"OpenVINO {precision} .* failed its check against the SavedModel"):
            load_model(version_dir, runtime="openvino", precision=precision)
    # through the service's start-up: the same message, and the service does not come up
    refused = "OpenVINO fp32 .* failed its check against the SavedModel at compile time: "
    with pytest.raises(RuntimeError, match=refused):
        with running_service(version_dir.parent, runtime="openvino", precision="fp32"):
            pass
    # int8 was not re-checked: its record (passed) and files still hold, so it is still served
    assert load_model(version_dir, runtime="openvino", precision="int8").runtime.name == "openvino"


def test_an_ir_changed_after_its_check_is_refused(compiled: Path, tmp_path: Path) -> None:
    version_dir = copy_export(compiled, tmp_path)
    weights = version_dir / "openvino/int8/model.bin"
    weights.write_bytes(bytes(weights.stat().st_size))  # its metadata still says passed
    with pytest.raises(ModelLoadError, match="is not the file that passed the OpenVINO int8 check"):
        load_model(version_dir, runtime="openvino", precision="int8")
    (version_dir / "openvino/fp32/model.bin").unlink()  # a missing fp32 IR: converted at start-up instead
    runtime = load_model(version_dir, runtime="openvino", precision="fp32").runtime
    assert isinstance(runtime, OpenVINORuntime) and runtime.source == version_dir


def test_openvino_runs_a_call_on_the_threads_the_setting_asks_for(exported_model: Path) -> None:
    import os

    crops = np.random.default_rng(4).integers(0, 256, (5, 24, 24, 1)).astype(np.float32)
    one = load_model(exported_model, runtime="openvino", precision="fp32", openvino_threads=1)
    assert isinstance(one.runtime, OpenVINORuntime) and one.runtime.threads == 1
    default = load_model(exported_model, runtime="openvino", precision="fp32")
    # 0 (the default): a core is left to the event loop and face detection
    assert default.runtime.threads == max(1, usable_cpus() - 1)  # type: ignore[attr-defined]
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
    np.testing.assert_allclose(one.predict(crops), default.predict(crops), atol=1e-5)
    with pytest.raises(ValidationError, match="openvino_threads"):
        Settings(openvino_threads=-1)


def _keras_macs(network_file: Path) -> int:
    """Multiply-accumulates per crop of one Keras network, counted from its own layers (not from any IR)."""
    import keras

    total = 0
    # every layer of the nested model, as training.train.trainable_normalizations walks it
    for layer in keras.models.load_model(network_file, compile=False)._flatten_layers():
        if isinstance(layer, keras.layers.Conv2D):  # kernel (kh, kw, in, out); output (batch, h, w, out)
            total += int(np.prod(layer.output.shape[1:3])) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def test_model_cost_counts_the_whole_graphs_multiply_accumulates(
    compiled: Path, exported_model: Path, trained_run: Path
) -> None:
    # benchmarks/model_cost.py's work per face: every network pass of the exported graph, in the compiled IR and in
    # the SavedModel converted at the call; both must equal the network's own count times its passes
    from benchmarks.model_cost import graph_macs
    from training.config import ArchConfig

    passes = ArchConfig.from_dict(json.loads((exported_model / "metadata.json").read_text())["architecture"]).passes
    expected = passes * _keras_macs(trained_run / "model.keras")
    assert expected > 0
    assert graph_macs(compiled) == expected
    assert graph_macs(exported_model) == expected
