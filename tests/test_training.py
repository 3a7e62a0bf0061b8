"""The training package end to end on tiny generated data: readers and their errors, class weights,
train -> evaluate -> export, the export's self-check, and the real ResNet50V2 signature."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PER_CLASS, write_csv_dataset, write_folder_dataset
from training.data import DataError, class_weights, pack, read_csv, read_folder, read_split
from training.labels import LABELS

ROOT = Path(__file__).resolve().parents[1]


# --- data: folder layout ------------------------------------------------------------------------------------------


def test_folder_layout_reads_every_class(tiny_folder_dataset: Path) -> None:
    split = read_folder(tiny_folder_dataset, "train")
    assert split.images.shape == (PER_CLASS * len(LABELS), 48, 48, 1)
    assert split.images.dtype == np.uint8
    assert split.class_counts() == {label: PER_CLASS for label in LABELS}
    # class_image() makes brightness grow with the label index: labels must line up with the folders
    means = [split.images[split.labels == c].mean() for c in range(len(LABELS))]
    assert means == sorted(means)


def test_folder_layout_reports_every_problem_with_its_file(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path, per_class=2, splits=("train",))
    (root / "train" / "contempt").mkdir()
    (root / "train" / "happy" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (64, 64)).save(root / "train" / "sad" / "big.png")
    with pytest.raises(DataError) as info:
        read_folder(root, "train")
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "contempt: unknown label folder" in message
    assert "broken.jpg: unreadable image" in message
    assert "big.png: size 64x64, expected 48x48" in message


def test_folder_layout_rejects_an_empty_class(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path, per_class=2, splits=("train",))
    for f in (root / "train" / "disgust").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="class 'disgust' has no images"):
        read_folder(root, "train")


def test_missing_split_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_folder(tmp_path, "val")


# --- data: Kaggle CSV ----------------------------------------------------------------------------------------------


def test_csv_maps_kaggle_codes_to_the_canonical_order(tmp_path: Path) -> None:
    csv_split = read_csv(write_csv_dataset(tmp_path / "fer.csv"), "train")
    folder_split = read_folder(write_folder_dataset(tmp_path / "folder"), "train")
    assert csv_split.class_counts() == {label: PER_CLASS for label in LABELS}
    # same generator, same seed: identical pixels per class in both layouts (JPEG aside), so class means agree
    for c in range(len(LABELS)):
        assert (
            abs(csv_split.images[csv_split.labels == c].mean() - folder_split.images[folder_split.labels == c].mean())
            < 2
        )


def test_csv_reports_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    path = write_csv_dataset(tmp_path / "fer.csv", per_class=2)
    lines = path.read_text().splitlines()
    lines.append("3,1 2 3,Training")  # too few pixels
    lines.append("9," + " ".join(["0"] * 2304) + ",Training")  # unknown code
    lines.append("3," + " ".join(["300"] * 2304) + ",Training")  # out of range
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_csv(path, "train")
    message = str(info.value)
    assert "3 problem(s)" in message
    assert f":{len(lines) - 2}: 3 pixel values, expected 2304" in message
    assert f":{len(lines) - 1}: emotion code '9' is not one of 0..6" in message
    assert f":{len(lines)}: pixel values outside 0..255" in message


def test_csv_without_required_columns_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("label,pixels\n1,0 0\n")
    with pytest.raises(DataError, match="missing column"):
        read_csv(path, "train")


@pytest.mark.parametrize("encoding", ["pixels", "jpeg"])
def test_packed_npz_round_trips(tiny_folder_dataset: Path, tmp_path: Path, encoding: str) -> None:
    packed = pack(tiny_folder_dataset, tmp_path / "fer.npz", encoding=encoding)
    for split in ("train", "val"):
        original, restored = read_split(tiny_folder_dataset, split), read_split(packed, split)
        np.testing.assert_array_equal(original.images, restored.images)
        np.testing.assert_array_equal(original.labels, restored.labels)
        assert original.fingerprint() == restored.fingerprint()


def test_class_weights_balance_the_classes() -> None:
    labels = np.array([0] * 10 + [1] * 30 + [2] * 60)
    weights = class_weights(labels, num_classes=3)
    assert weights[0] > weights[1] > weights[2]
    # each class contributes the same total weight: count * weight is constant
    totals = [n * weights[c] for c, n in enumerate((10, 30, 60))]
    assert max(totals) == pytest.approx(min(totals))


def test_class_weight_power_leans_less_and_keeps_the_average_weight() -> None:
    labels = np.array([0] * 10 + [1] * 30 + [2] * 60)
    full, half = class_weights(labels, num_classes=3), class_weights(labels, num_classes=3, power=0.5)
    assert half[0] > half[1] > half[2]
    assert half[0] / half[2] == pytest.approx((full[0] / full[2]) ** 0.5)
    # the average image weighs 1 whatever the power, so a recipe's learning rate still fits
    for weights in (full, half, class_weights(labels, num_classes=3, power=0.0)):
        assert sum(n * weights[c] for c, n in enumerate((10, 30, 60))) / len(labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="power"):
        class_weights(labels, num_classes=3, power=-1.0)


# --- train -> evaluate -> export -----------------------------------------------------------------------------------


def test_forced_bf16_on_a_cpu_without_native_bf16_warns_and_auto_stays_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    from training import train

    # the hardware's answers are the inputs here (this host may or may not have bf16 or a GPU); the policy is tested
    monkeypatch.setattr(train, "_gpu_compute_capability", lambda: None)
    monkeypatch.setattr(train, "native_bf16", lambda: False)
    with pytest.warns(train.EmulatedBf16Warning, match="no native bfloat16"):
        assert train.mixed_precision_policy("on") == "mixed_bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train.mixed_precision_policy("auto") is None
        assert train.mixed_precision_policy("off") is None
    monkeypatch.setattr(train, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train.mixed_precision_policy("on") == "mixed_bfloat16"
        assert train.mixed_precision_policy("auto") == "mixed_bfloat16"
    # a GPU: bf16 from compute capability 8.0 (A100, H100/H200), float16 before it, float32 only when asked
    for capability, policy in ((9.0, "mixed_bfloat16"), (8.0, "mixed_bfloat16"), (7.5, "mixed_float16")):
        monkeypatch.setattr(train, "_gpu_compute_capability", lambda c=capability: c)
        assert train.mixed_precision_policy("auto") == policy
        assert train.mixed_precision_policy("off") is None


def test_train_writes_a_complete_run_folder(trained_run: Path) -> None:
    for name in ("config.json", "history.csv", "checkpoint.keras", "model.keras", "run.json"):
        assert (trained_run / name).is_file(), name
    run = json.loads((trained_run / "run.json").read_text())
    assert run["epochs_run"] >= 1 and run["backend"] == "tensorflow"
    assert len(run["train_fingerprint"]) == 16
    assert sorted(run["class_weights"]) == [str(c) for c in range(len(LABELS))]


def test_finalize_completes_a_stopped_run_from_its_checkpoint(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import shutil

    from training.train import finalize

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for name in ("config.json", "history.csv", "checkpoint.keras"):  # what a killed run leaves behind
        shutil.copy(trained_run / name, stopped / name)
    result = finalize(stopped, tiny_folder_dataset)
    run = json.loads((stopped / "run.json").read_text())
    held_out = round(0.2 * PER_CLASS)  # the smoke preset holds 20 % of each class out for the temperature
    assert run["interrupted"] is True and run["epochs_run"] == 2
    assert run["train_images"] == (PER_CLASS - held_out) * len(LABELS)
    assert run["calibration_images"] == held_out * len(LABELS)
    assert (stopped / "model.keras").is_file() and 0.0 <= result.val_accuracy <= 1.0


def test_init_from_continues_from_an_earlier_model_and_refuses_another_architecture(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import dataclasses

    from training.config import PRESETS, TrainConfig
    from training.model import load_inference_model
    from training.train import train

    smoke = PRESETS["smoke"]
    # learning rate 0: the optimiser changes nothing, so the continued run ends with the earlier model's trained
    # weights (BatchNorm's moving statistics aside, which a training pass still updates)
    frozen = dataclasses.replace(
        smoke, epochs=1, learning_rate=0.0, augment=0.0, weight_decay=0.0, init_from=str(trained_run / "model.keras")
    )
    train(frozen, tiny_folder_dataset, tmp_path / "continued", verbose=0)
    assert TrainConfig.load(tmp_path / "continued" / "config.json").init_from.endswith("model.keras")
    fresh = dataclasses.replace(frozen, init_from="")
    train(fresh, tiny_folder_dataset, tmp_path / "fresh", verbose=0)

    def kernels(run: Path) -> list[np.ndarray]:
        return [np.asarray(w) for w in load_inference_model(str(run / "model.keras")).trainable_weights]

    earlier = kernels(trained_run)
    assert all(np.array_equal(a, b) for a, b in zip(kernels(tmp_path / "continued"), earlier, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(kernels(tmp_path / "fresh"), earlier, strict=True))

    wider = dataclasses.replace(frozen, arch=dataclasses.replace(smoke.arch, cnn_widths=(8, 16)))
    with pytest.raises(ValueError, match="not a model of this architecture"):
        train(wider, tiny_folder_dataset, tmp_path / "wider", verbose=0)


def test_init_from_an_ensemble_starts_from_the_member_chosen(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import dataclasses

    from training.config import PRESETS
    from training.ensemble import combine
    from training.model import load_inference_model
    from training.train import train

    smoke = PRESETS["smoke"]
    other = dataclasses.replace(smoke, seed=99, holdout_seed=smoke.split_seed)
    train(other, tiny_folder_dataset, tmp_path / "other", verbose=0)
    ensemble = combine([trained_run, tmp_path / "other"], tmp_path / "ensemble")
    frozen = dataclasses.replace(
        smoke, epochs=1, learning_rate=0.0, augment=0.0, weight_decay=0.0, init_from=str(ensemble)
    )
    with pytest.raises(ValueError, match="--init-member 1..2"):
        train(frozen, tiny_folder_dataset, tmp_path / "unchosen", verbose=0)
    train(dataclasses.replace(frozen, init_member=2), tiny_folder_dataset, tmp_path / "second", verbose=0)

    def kernels(model: Path) -> list[np.ndarray]:
        return [np.asarray(w) for w in load_inference_model(str(model)).trainable_weights]

    second, first = kernels(tmp_path / "other" / "model.keras"), kernels(trained_run / "model.keras")
    continued = kernels(tmp_path / "second" / "model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(continued, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(continued, first, strict=True))


def test_evaluate_gives_the_same_numbers_for_keras_and_savedmodel(
    trained_run: Path, exported_model: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    from training.evaluate import evaluate

    from_keras = evaluate(
        trained_run / "model.keras", tiny_folder_dataset, tmp_path / "keras", history=trained_run / "history.csv"
    )
    from_export = evaluate(exported_model, tiny_folder_dataset, tmp_path / "export")
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "images"):
        assert from_keras[key] == from_export[key], key
    assert sum(map(sum, from_keras["confusion_matrix"])) == PER_CLASS * len(LABELS)
    for name in ("metrics.json", "confusion_matrix.json", "confusion_matrix.png", "training_curves.png", "report.md"):
        assert (tmp_path / "keras" / name).is_file(), name
    assert "macro-F1" in (tmp_path / "keras" / "report.md").read_text()


def test_test_time_flip_exports_the_mean_over_the_mirror_image_and_evaluates_the_same(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import tensorflow as tf

    from training.evaluate import evaluate, load_predictor
    from training.export import export_model

    report = tmp_path / "report"
    from_keras = evaluate(trained_run / "model.keras", tiny_folder_dataset, report, test_time_flip=True)
    assert from_keras["test_time_flip"] is True
    with pytest.raises(ValueError, match="test_time_flip"):  # a plain export cannot carry the flipped figures
        export_model(trained_run / "model.keras", tmp_path / "models", name="plain", version="1", report_dir=report)
    out = export_model(
        trained_run / "model.keras",
        tmp_path / "models",
        name="flip",
        version="1",
        report_dir=report,
        test_time_flip=True,
    )
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["architecture"]["test_time_flip"] is True
    assert metadata["evaluation"]["accuracy"] == from_keras["accuracy"]

    # The served graph answers the mean of the plain model's answers for the crop and its mirror image.
    plain, arch, _ = load_predictor(trained_run / "model.keras")
    crops = np.random.default_rng(3).integers(0, 256, (4, 24, 24, 1)).astype(np.float32)
    crops[:, :, :12] = 0  # left-right asymmetric, so the mirror image really is different
    expected = (plain(crops) + plain(crops[:, :, ::-1].copy())) / 2
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(crops))["probabilities"].numpy(), expected, atol=1e-5)
    assert not np.allclose(plain(crops), expected, atol=1e-4)

    from_export = evaluate(out, tiny_folder_dataset, tmp_path / "export")
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "test_time_flip"):
        assert from_keras[key] == from_export[key], key
    with pytest.raises(ValueError, match="at export"):
        load_predictor(out, test_time_flip=False)


def test_test_time_zoom_exports_the_mean_over_the_enlarged_centre_and_the_mirror_images(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import tensorflow as tf

    from training.evaluate import evaluate, load_predictor
    from training.export import export_model

    report = tmp_path / "report"
    from_keras = evaluate(
        trained_run / "model.keras", tiny_folder_dataset, report, test_time_flip=True, test_time_zoom=1.2
    )
    assert from_keras["test_time_zoom"] == 1.2
    with pytest.raises(ValueError, match="test_time_zoom"):  # an export without the zoomed view
        export_model(
            trained_run / "model.keras",
            tmp_path / "models",
            name="x",
            version="1",
            report_dir=report,
            test_time_flip=True,
        )
    out = export_model(
        trained_run / "model.keras",
        tmp_path / "models",
        name="zoom",
        version="1",
        report_dir=report,
        test_time_flip=True,
        test_time_zoom=1.2,
    )
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["architecture"]["test_time_zoom"] == 1.2 and metadata["explain"]["test_time_zoom"] == 1.2

    # Four views: the crop, its centre 20 of 24 pixels enlarged back to 24 (bilinear), and both mirror images.
    plain, _, _ = load_predictor(trained_run / "model.keras")
    crops = np.random.default_rng(5).integers(0, 256, (4, 24, 24, 1)).astype(np.float32)
    crops[:, :, :12] = 0
    centre = tf.image.resize(crops[:, 2:22, 2:22], [24, 24], method="bilinear").numpy()
    views = [crops, centre, crops[:, :, ::-1].copy(), centre[:, :, ::-1].copy()]
    expected = sum(plain(view) for view in views) / 4
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(crops))["probabilities"].numpy(), expected, atol=1e-5)
    assert not np.allclose((plain(views[0]) + plain(views[2])) / 2, expected, atol=1e-4)

    from_export = evaluate(out, tiny_folder_dataset, tmp_path / "export")
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "test_time_flip", "test_time_zoom"):
        assert from_keras[key] == from_export[key], key
    with pytest.raises(ValueError, match="at export"):
        load_predictor(out, test_time_zoom=1.0)

    maps = (
        tf.saved_model.load(str(out))
        .signatures["explain"](images=tf.constant(crops), class_index=tf.constant([-1] * 4, tf.int32))["heatmap"]
        .numpy()
    )
    assert maps.shape == (4, 24, 24) and maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)


def test_a_test_time_zoom_below_one_is_refused() -> None:
    from training.config import ArchConfig

    with pytest.raises(ValueError, match="test_time_zoom"):
        ArchConfig(test_time_zoom=0.9)
    assert ArchConfig(input_size=48, test_time_zoom=1.1).test_time_crop == 44
    assert ArchConfig(input_size=48, test_time_zoom=1.1).test_time_crop_start == 2


def test_export_writes_the_contract(exported_model: Path) -> None:
    import tensorflow as tf

    assert exported_model.parts[-2:] == ("tiny", "1")
    metadata = json.loads((exported_model / "metadata.json").read_text())
    assert metadata["labels"] == list(LABELS)
    assert metadata["input"] == {
        "height": 24,
        "width": 24,
        "channels": 1,
        "color_mode": "grayscale",
        "dtype": "float32",
        "value_range": [0, 255],
    }
    assert metadata["export"]["self_check_max_abs_diff"] <= metadata["export"]["self_check_tolerance"]
    assert metadata["training"]["train_fingerprint"]
    serve = tf.saved_model.load(str(exported_model)).signatures["serving_default"]
    batch = np.random.default_rng(1).integers(0, 256, (3, 24, 24, 1)).astype(np.float32)
    probabilities = serve(images=tf.constant(batch))["probabilities"].numpy()
    assert probabilities.shape == (3, len(LABELS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_export_refuses_to_overwrite_and_self_check_catches_a_mismatch(trained_run: Path, tmp_path: Path) -> None:
    from training.export import ExportMismatchError, export_model

    export_model(trained_run / "model.keras", tmp_path, name="m", version="1")
    with pytest.raises(FileExistsError):
        export_model(trained_run / "model.keras", tmp_path, name="m", version="1")
    # a negative tolerance cannot be met: the check must fail and leave no half-written version behind
    with pytest.raises(ExportMismatchError):
        export_model(trained_run / "model.keras", tmp_path, name="m", version="2", tolerance=-1.0)
    assert not (tmp_path / "m" / "2").exists()


def test_cli_help_for_every_command() -> None:
    for command in ("pack", "train", "evaluate", "export", "finalize", "teach"):
        out = subprocess.run(
            [sys.executable, "-m", "training", command, "--help"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout
        assert "usage: python -m training " + command in out


def test_cli_reports_bad_data_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train",
            "--preset",
            "smoke",
            "--data",
            str(tmp_path),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "error: 1 problem(s)" in result.stderr and "Traceback" not in result.stderr


def test_imagenet_weights_unavailable_is_a_clear_error(tmp_path: Path) -> None:
    """No network here: asking for ImageNet weights must stop with a message naming --weights none."""
    from training.config import ArchConfig
    from training.model import WeightsUnavailableError, build_inference_model

    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        build_inference_model(ArchConfig(backbone="mobilenetv2", input_size=32, weights="imagenet"))


def test_real_resnet50v2_at_224_exports_the_expected_signature(tmp_path: Path) -> None:
    """The flagship architecture builds and exports with the contract's shapes (random weights, no training)."""
    import tensorflow as tf

    from training.config import ArchConfig
    from training.export import write_saved_model
    from training.model import build_inference_model

    model = build_inference_model(ArchConfig(backbone="resnet50v2", input_size=224, weights="none"))
    assert model.get_layer("backbone").name == "backbone" and model.count_params() > 23_000_000
    write_saved_model(model, tmp_path / "resnet")
    serve = tf.saved_model.load(str(tmp_path / "resnet")).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, 224, 224, 1] and spec.name == "images"
    out = serve(images=tf.zeros([2, 224, 224, 1]))["probabilities"]
    assert out.shape == (2, len(LABELS))
    # Each weight stored once, as float32: the flagship fits the 100 MB budget for committed model files.
    stored = sum(f.stat().st_size for f in (tmp_path / "resnet").rglob("*") if f.is_file())
    assert stored < 1.05 * 4 * model.count_params() and stored < 100_000_000


# --- the CPU recipe: deterministic batches, exact resume, calibration -----------------------------------------------


def test_training_batches_are_a_pure_function_of_the_step() -> None:
    from training.batches import Augmentation, training_batches
    from training.data import Split

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (100, 48, 48, 1), dtype=np.uint8), rng.integers(0, 7, 100).astype(np.int32))
    aug = Augmentation.scaled(1.0, erasing=0.5)
    whole = [b[0] for b in training_batches(split, batch_size=16, seed=5, start_step=0, end_step=14, aug=aug)]
    tail = [b[0] for b in training_batches(split, batch_size=16, seed=5, start_step=9, end_step=14, aug=aug)]
    assert len(whole) == 14 and len(tail) == 5
    for a, b in zip(whole[9:], tail, strict=True):
        np.testing.assert_array_equal(a, b)
    # three threads augmenting ahead give the same batches in the same order, across an epoch's end too
    weights = {c: 1.0 + c for c in range(len(LABELS))}
    one, three = (
        list(
            training_batches(
                split, batch_size=16, seed=5, start_step=9, end_step=14, aug=aug, sample_weights=weights, workers=w
            )
        )
        for w in (1, 3)
    )
    assert len(three) == len(one) == len(tail)
    for a, b in zip(three, one, strict=True):  # pixels, one-hot labels and weights alike
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(one[0][0], tail[0])
    # augmentation really changes the pixels, and a different seed gives a different stream
    plain = [b[0] for b in training_batches(split, batch_size=16, seed=5, start_step=0, end_step=1, aug=Augmentation())]
    other = [b[0] for b in training_batches(split, batch_size=16, seed=6, start_step=0, end_step=1, aug=aug)]
    assert not np.array_equal(plain[0], whole[0]) and not np.array_equal(other[0], whole[0])
    assert whole[0].min() >= 0 and whole[0].max() <= 255
    # no augmentation: the batch is exactly the permuted images
    np.testing.assert_array_equal(plain[0], split.images[np.random.default_rng([5, 0]).permutation(100)[:16]])


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mixing_blends_images_targets_and_weights_in_one_proportion(kind: str) -> None:
    """Image ``i`` is flat grey ``10 * i`` with one-hot target ``i`` and class weight ``c_i``. After mixing image
    ``i`` with ``j`` in the share ``s`` (``s_i = lam``, ``s_j = 1 - lam``), the loss ``w * CE(t)`` must be
    ``sum_k s_k * c_k * CE(e_k)``: so ``w * t = s * c``, ``w = s @ c``, and the image's mean is ``s @ greys`` (the
    blend weight or the pasted area is the share). CutMix pastes pixels without blending them, a rectangle of at
    most ``1 - lam`` of the area for the ratio ``lam`` it drew; with both on, some batches are each."""
    from training.batches import Mixing, mix

    n = len(LABELS)
    greys = 10.0 * np.arange(n, dtype=np.float32)
    images = np.broadcast_to(greys[:, None, None, None], (n, 48, 48, 1)).astype(np.float32)
    targets = np.eye(n, dtype=np.float32)
    class_weights = np.linspace(0.5, 4.0, n, dtype=np.float32)
    mixing = Mixing(mixup=0.4 if kind != "cutmix" else 0.0, cutmix=1.0 if kind != "mixup" else 0.0)
    pasted = blended = 0
    for seed in range(24):
        x, t, w = mix(images, targets, class_weights, np.random.default_rng(seed), mixing)
        assert x.shape == images.shape and x.dtype == t.dtype == w.dtype == np.float32
        np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)
        shares = w[:, None] * t / class_weights  # each image's own share and its partner's
        assert ((shares > 1e-6).sum(axis=1) <= 2).all()
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(w, shares @ class_weights, atol=1e-5)
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), shares @ greys, atol=1e-3)
        if np.array_equal(x, images):
            continue
        if np.isin(x, greys).all():
            pasted += 1
            if kind == "cutmix":  # the draws mix() made first: the batch's coin, then the ratio
                replay = np.random.default_rng(seed)
                replay.uniform()
                lam = replay.beta(1.0, 1.0)
                area = 1.0 - np.diag(shares)[np.diag(shares) < 1 - 1e-6]
                assert (area <= (1 - lam) + 2.5 / 48).all()
        else:
            blended += 1
    assert {"mixup": blended >= 20 and not pasted, "cutmix": pasted >= 20 and not blended}.get(
        kind, pasted >= 5 and blended >= 5
    )
    # off, or no batch chosen: the batch as it was
    for off in (Mixing(), Mixing(mixup=0.4, probability=0.0)):
        x, t, w = mix(images, targets, class_weights, np.random.default_rng(0), off)
        assert x is images and t is targets and w is class_weights
    for bad in ({"mixup": -0.1}, {"cutmix": float("nan")}, {"mixup": float("inf")}):
        with pytest.raises(ValueError, match="Beta alpha"):
            Mixing(**bad)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Mixing(cutmix=1.0, probability=1.5)
    with pytest.raises(ValueError, match="nothing to mix"):
        Mixing(probability=0.5)


def test_a_mixed_stream_is_a_pure_function_of_the_step_and_leaves_the_unmixed_stream_as_it_was() -> None:
    from training.batches import Augmentation, Mixing, training_batches
    from training.data import Split

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (100, 48, 48, 1), dtype=np.uint8), rng.integers(0, 7, 100).astype(np.int32))
    aug = Augmentation.scaled(1.0, erasing=0.5)
    mixing = Mixing(mixup=0.2, cutmix=1.0, probability=0.5)
    weights = {c: 1.0 + c for c in range(len(LABELS))}
    common = {"batch_size": 16, "seed": 5, "end_step": 14, "aug": aug, "sample_weights": weights}
    whole = list(training_batches(split, start_step=0, mixing=mixing, **common))  # type: ignore[arg-type]
    tail = list(training_batches(split, start_step=9, mixing=mixing, workers=2, **common))  # type: ignore[arg-type]
    for a, b in zip(whole[9:], tail, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    plain = list(training_batches(split, start_step=0, **common))  # type: ignore[arg-type]
    mixed = [not np.array_equal(a[1], b[1]) for a, b in zip(whole, plain, strict=True)]
    assert 2 <= sum(mixed) <= 12  # about half the batches are mixed; the others are the plain stream's
    for (x, t, w), (px, pt, pw), was_mixed in zip(whole, plain, mixed, strict=True):
        if was_mixed:  # the class weights are mixed with the images (1-8 here), not left as the images' own
            assert not np.array_equal(w, pw) and 1.0 <= w.min() and w.max() <= 7.0
        else:
            for a, b in ((x, px), (t, pt), (w, pw)):
                np.testing.assert_array_equal(a, b)


def test_train_mixes_its_batches_only_when_told(tiny_folder_dataset: Path, tmp_path: Path) -> None:
    """Same seed, one epoch: a run whose mixing never picks a batch (share 0) is the plain run to the bit, one that
    mixes every batch ends elsewhere."""
    import dataclasses

    import keras

    from training.config import PRESETS
    from training.train import train

    config = dataclasses.replace(PRESETS["smoke"], epochs=1)
    runs = {
        name: dataclasses.replace(config, **overrides)
        for name, overrides in {
            "plain": {},
            "never": {"mixup": 0.4, "cutmix": 1.0, "mix_probability": 0.0},
            "always": {"mixup": 0.4, "cutmix": 1.0},
        }.items()
    }
    weights = {}
    for name, run_config in runs.items():
        train(run_config, tiny_folder_dataset, tmp_path / name, verbose=0)
        weights[name] = keras.saving.load_model(tmp_path / name / "last.keras").get_weights()
    for a, b in zip(weights["plain"], weights["never"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(weights["plain"], weights["always"], strict=True))


def test_the_affine_warp_mirrors_exactly() -> None:
    from training.batches import Augmentation, augment

    image = np.random.default_rng(1).integers(0, 256, (1, 48, 48, 1)).astype(np.float32)
    mirror_only = Augmentation(flip=True)
    mirrored = []
    for seed in range(8):  # some seeds mirror, the others leave the image as it is
        out = augment(image, np.random.default_rng(seed), mirror_only)
        mirrored.append(np.allclose(out, image[:, :, ::-1], atol=1e-3))
        assert mirrored[-1] or np.allclose(out, image, atol=1e-3)
    assert any(mirrored) and not all(mirrored)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ema_momentum": 0.9},
        {"ema_momentum": 0.9, "head_epochs": 1},
        {"schedule": "plateau", "reduce_lr_patience": 1, "early_stopping_patience": 5, "learning_rate": 0.5},
        {"mixup": 0.4, "cutmix": 1.0, "mix_probability": 0.8},
    ],
    ids=[
        "plain",
        "weight-averaging",
        "weight-averaging-stopped-between-the-head-and-fine-tuning-phases",
        "plateau-schedule-and-early-stopping",
        "mixup-and-cutmix",
    ],
)
def test_a_stopped_and_resumed_run_ends_exactly_where_an_uninterrupted_one_does(
    tiny_folder_dataset: Path, tmp_path: Path, overrides: dict
) -> None:
    """Weights, optimizer state and step (with the weights' moving average when there is one), schedule (the
    plateau schedule's cuts and counters too), dropout masks and the data stream all continue exactly, also when
    the stop falls between the phases of a run from a pretrained backbone."""
    import dataclasses

    import keras

    from training.config import PRESETS
    from training.model import BACKBONE_NAME, build_inference_model
    from training.train import train

    config = PRESETS["smoke"]
    head_epochs = overrides.get("head_epochs", 0)
    if head_epochs:  # a head phase needs a pretrained backbone: this one's own initial weights, from a file
        weights = tmp_path / "backbone.weights.h5"
        build_inference_model(config.arch).get_layer(BACKBONE_NAME).save_weights(weights)
        config = dataclasses.replace(config, arch=dataclasses.replace(config.arch, weights=str(weights)))
    config = dataclasses.replace(
        config,
        **{
            "head_epochs": 0,
            "epochs": 3 - head_epochs,
            "optimizer": "sgd",
            "schedule": "cosine",
            "warmup_epochs": 1,
            "random_erasing": 0.5,
            "label_smoothing": 0.1,
            "early_stopping_patience": 0,
        }
        | overrides,
    )
    whole = train(config, tiny_folder_dataset, tmp_path / "whole", verbose=0)
    stopped = train(config, tiny_folder_dataset, tmp_path / "parts", stop_after=1, verbose=0)
    assert stopped.epochs_run == 1 and not (tmp_path / "parts" / "model.keras").exists()
    if config.ema_momentum:  # the stop is not trivially exact: the average is not the last step's weights
        saved = keras.saving.load_model(tmp_path / "parts" / "last.keras")
        average = [np.asarray(v) for v in saved.optimizer.variables if "average" in v.path]
        assert any(not np.allclose(a, np.asarray(w)) for a, w in zip(average, saved.trainable_weights, strict=True))
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tiny_folder_dataset, tmp_path / "parts", verbose=0)
    train(None, tiny_folder_dataset, tmp_path / "parts", resume=True, stop_after=1, verbose=0)
    resumed = train(None, tiny_folder_dataset, tmp_path / "parts", resume=True, verbose=0)
    assert resumed.epochs_run == whole.epochs_run == 3

    a = keras.saving.load_model(tmp_path / "whole" / "last.keras")
    b = keras.saving.load_model(tmp_path / "parts" / "last.keras")
    if config.schedule == "plateau":  # the schedule did cut the rate, so the resumed run had cuts to repeat
        assert float(np.asarray(a.optimizer.learning_rate)) < config.learning_rate
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations) > 0
    for x, y in zip(
        a.get_weights() + [np.asarray(v) for v in a.optimizer.variables],
        b.get_weights() + [np.asarray(v) for v in b.optimizer.variables],
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=1e-6)
    # the best checkpoint is the same epoch's: a resumed run does not forget the best epoch before its stop
    best_whole = keras.saving.load_model(tmp_path / "whole" / "checkpoint.keras").get_weights()
    best_parts = keras.saving.load_model(tmp_path / "parts" / "checkpoint.keras").get_weights()
    for x, y in zip(best_whole, best_parts, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    with open(tmp_path / "whole" / "history.csv") as w, open(tmp_path / "parts" / "history.csv") as p:
        assert len(w.readlines()) == len(p.readlines()) == 4
    record = json.loads((tmp_path / "parts" / "run.json").read_text())
    assert record.get("mixing") == (
        {"mixup": config.mixup, "cutmix": config.cutmix, "probability": config.mix_probability}
        if config.mixing.enabled
        else None
    )


def test_a_run_killed_after_logging_an_epoch_but_before_its_resume_point_repeats_it_once(
    tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    """The repeated epoch is logged once, and what the lost one logged does not stand as the best to beat."""
    import csv
    import dataclasses

    from training.config import PRESETS
    from training.train import train

    config = dataclasses.replace(PRESETS["smoke"], epochs=2)
    train(config, tiny_folder_dataset, tmp_path / "run", stop_after=1, verbose=0)
    history = tmp_path / "run" / "history.csv"
    with open(history, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # the second epoch's line as a kill right after CSVLogger would leave it, claiming a val accuracy nothing reaches
    with open(history, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerow(rows[0] | {"epoch": "1", "val_accuracy": "2.0"})
    train(None, tiny_folder_dataset, tmp_path / "run", resume=True, verbose=0)
    with open(history, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert all(float(row["val_accuracy"]) <= 1.0 for row in rows)


def test_swapping_the_weights_average_in_and_out_is_exact_and_gives_it_its_own_batch_norm_statistics() -> None:
    """The swap copies (TensorFlow's own swap, add and subtract, rounds both sets of weights at every swap); the
    average's batch-norm statistics are the mean of its batch statistics on the given images, the last step's come
    back exactly when it goes out, and dropout's random state is as it was."""
    import keras

    from training.train import _AverageSwap, _random_states

    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dropout(0.5)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9), loss="mse")
    model.fit(rng.normal(size=(16, 3)), rng.normal(size=(16, 4)), batch_size=4, verbose=0)
    model.set_weights([w + rng.normal(size=w.shape).astype(w.dtype) * 1e3 for w in model.get_weights()])
    weights = [np.asarray(v).copy() for v in model.trainable_weights]
    statistics = [np.asarray(v).copy() for v in model.non_trainable_weights if "moving" in v.path]
    randoms = [np.asarray(v).copy() for v in _random_states(model)]
    average = [np.asarray(v).copy() for v in model.optimizer.variables if "average" in v.path]
    images = rng.normal(size=(512, 3)).astype(np.float32)

    def statistics_of(kernel: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
        """The mean over the two batches of 256 of the batch mean and variance of the Dense layer's output."""
        batches = [images[:256] @ kernel + bias, images[256:] @ kernel + bias]
        return [np.mean([b.mean(axis=0) for b in batches], axis=0), np.mean([b.var(axis=0) for b in batches], axis=0)]

    expected = statistics_of(average[0], average[1])  # the Dense layer's averaged weights
    assert not np.allclose(expected[0], statistics[0], rtol=1e-3)
    swap = _AverageSwap(images)
    swap.set_model(model)
    for _ in range(3):
        swap.on_test_begin()
        assert all(np.array_equal(np.asarray(v), a) for v, a in zip(model.trainable_weights, average, strict=True))
        moving = [np.asarray(v) for v in model.non_trainable_weights if "moving" in v.path]
        for got, want in zip(moving, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-4)
        swap.on_test_end()
        assert all(np.array_equal(np.asarray(v), w) for v, w in zip(model.trainable_weights, weights, strict=True))
        moving = [np.asarray(v) for v in model.non_trainable_weights if "moving" in v.path]
        assert all(np.array_equal(got, was) for got, was in zip(moving, statistics, strict=True))
        assert all(np.array_equal(np.asarray(v), r) for v, r in zip(_random_states(model), randoms, strict=True))
    assert model.layers[1].momentum == pytest.approx(0.99)  # the layer's own, back after the recomputation
    # a training step moves the average: the next swap recomputes its statistics instead of reusing the last ones
    model.train_on_batch(rng.normal(size=(4, 3)), rng.normal(size=(4, 4)))
    moved = [np.asarray(v).copy() for v in model.optimizer.variables if "average" in v.path]
    assert not np.allclose(moved[0], average[0])
    swap.on_test_begin()
    moving = [np.asarray(v) for v in model.non_trainable_weights if "moving" in v.path]
    for got, want in zip(moving, statistics_of(moved[0], moved[1]), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4)
    swap.on_test_end()


def test_weight_averaging_validates_and_keeps_the_average_and_logs_the_last_steps_weights_beside_it(
    tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import csv
    import dataclasses

    import keras

    from training.config import PRESETS
    from training.splits import training_splits
    from training.train import average_statistics_images, train

    def first_bn(model: keras.Model) -> keras.layers.BatchNormalization:
        return model.get_layer("fer_model").get_layer("backbone").get_layer("block1_bn1")

    config = dataclasses.replace(PRESETS["smoke"], epochs=2, ema_momentum=0.9)
    train(config, tiny_folder_dataset, tmp_path / "run", stop_after=1, verbose=0)
    last = keras.saving.load_model(tmp_path / "run" / "last.keras")
    assert last.optimizer.use_ema and last.optimizer.ema_momentum == pytest.approx(0.9)
    average = [np.asarray(v) for v in last.optimizer.variables if "average" in v.path]
    trainable = [np.asarray(v) for v in last.trainable_weights]
    assert len(average) == len(trainable) > 0
    # the resume point holds the last step's weights (the average rides in the optimizer) ...
    assert any(not np.allclose(a, w) for a, w in zip(average, trainable, strict=True))
    # ... and the best checkpoint (epoch 1, the only one) holds the average
    best = keras.saving.load_model(tmp_path / "run" / "checkpoint.keras")
    for a, w in zip(average, [np.asarray(v) for v in best.trainable_weights], strict=True):
        np.testing.assert_allclose(a, w, rtol=0, atol=1e-6)
    # ... with batch-norm statistics of its own: the first layer's are those of the average's first convolution
    # on the fixed training images (one batch of 256 at most here), not the last step's
    average_bn = first_bn(best)
    assert not np.allclose(np.asarray(average_bn.moving_mean), np.asarray(first_bn(last).moving_mean))
    images = average_statistics_images(training_splits(config, tiny_folder_dataset)[0], config.seed)
    assert len(images) <= 256
    x = best.get_layer("resize")(images)
    x = best.get_layer("fer_model").get_layer("rescale")(x)
    convolved = np.asarray(best.get_layer("fer_model").get_layer("backbone").get_layer("block1_conv1")(x))
    np.testing.assert_allclose(np.asarray(average_bn.moving_mean), convolved.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(average_bn.moving_variance), convolved.var(axis=(0, 1, 2)), rtol=1e-3)

    train(None, tiny_folder_dataset, tmp_path / "run", resume=True, verbose=0)
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert {"val_accuracy", "val_loss", "raw_val_accuracy", "raw_val_loss"} <= set(rows[0])
    # validation judged other weights than the last step's
    assert any(row["val_loss"] != row["raw_val_loss"] for row in rows)

    with pytest.raises(ValueError, match="ema_momentum"):
        dataclasses.replace(config, ema_momentum=1.0)


def test_resume_needs_a_resumable_run(tmp_path: Path, tiny_folder_dataset: Path) -> None:
    from training.train import train

    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(None, tiny_folder_dataset, tmp_path, resume=True)
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--resume", str(tmp_path), "--epochs", "3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "drop epochs" in result.stderr


def test_temperature_fit_recovers_a_known_temperature_and_lowers_the_calibration_error() -> None:
    from training import calibration

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (4000, 7))
    labels = np.array([rng.choice(7, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    overconfident = calibration.scale(calibrated, 1 / 2.5)  # as if the network's logits were 2.5x too large
    assert calibration.fit_temperature(overconfident, labels) == pytest.approx(2.5, rel=0.1)
    before = calibration.expected_calibration_error(overconfident, labels)
    after = calibration.expected_calibration_error(calibration.scale(overconfident, 2.5), labels)
    assert after < 0.03 < before
    assert (calibration.scale(overconfident, 2.5).argmax(1) == overconfident.argmax(1)).all()


def test_calibrated_export_builds_the_reported_temperature_into_the_graph(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import tensorflow as tf

    from training import calibration
    from training.evaluate import evaluate, load_predictor
    from training.export import export_model

    report = tmp_path / "report"
    m = evaluate(trained_run / "model.keras", tiny_folder_dataset, report, calibrate=True)
    temperature = m["calibration"]["temperature"]
    assert m["temperature"] == temperature and "held out" in m["calibration"]["fitted_on"]
    assert {"ece_before", "ece", "nll_before", "nll"} <= set(m["calibration"])
    assert (report / "reliability.png").stat().st_size > 1000 and "Calibration" in (report / "report.md").read_text()
    out = export_model(trained_run / "model.keras", tmp_path / "models", name="cal", version="1", report_dir=report)
    assert json.loads((out / "metadata.json").read_text())["architecture"]["temperature"] == temperature

    plain, _, _ = load_predictor(trained_run / "model.keras")
    crops = np.random.default_rng(3).integers(0, 256, (4, 24, 24, 1)).astype(np.float32)
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    served = serve(images=tf.constant(crops))["probabilities"].numpy()
    np.testing.assert_allclose(served, calibration.scale(plain(crops), temperature), atol=1e-5)
    again = evaluate(out, tiny_folder_dataset, tmp_path / "export")
    assert again["accuracy"] == m["accuracy"] and again["calibration"]["ece"] == pytest.approx(
        m["calibration"]["ece"], abs=1e-3
    )


# --- explanations: the Grad-CAM signature ---------------------------------------------------------------------------


def test_export_adds_a_grad_cam_signature_whose_maps_follow_the_input(trained_run: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from training.export import export_model

    out = export_model(trained_run / "model.keras", tmp_path, name="explained", version="1", test_time_flip=True)
    section = json.loads((out / "metadata.json").read_text())["explain"]
    assert section["signature"] == "explain" and section["heatmap_resolution"] == [24, 24]
    assert section["layer"] == "block2_relu2" and section["layer_resolution"] == [12, 12]
    loaded = tf.saved_model.load(str(out))
    explain, serve = loaded.signatures["explain"], loaded.signatures["serving_default"]

    rng = np.random.default_rng(7)
    face = rng.integers(0, 256, (1, 24, 24, 1)).astype(np.float32)
    face[:, 6:18, 4:10] = 255  # something left-right asymmetric for the network to look at
    blank = np.full((1, 24, 24, 1), 128, np.float32)
    crops = np.concatenate([face, blank, face[:, :, ::-1]])
    result = explain(images=tf.constant(crops), class_index=tf.constant([-1, -1, -1], tf.int32))
    maps = result["heatmap"].numpy()
    assert maps.shape == (3, 24, 24) and maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps[0].max() == pytest.approx(1.0)
    np.testing.assert_allclose(
        result["probabilities"].numpy(), serve(images=tf.constant(crops))["probabilities"], atol=1e-6
    )
    top = result["probabilities"].numpy().argmax(axis=1)
    np.testing.assert_array_equal(result["class_index"].numpy(), top)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)  # a face's map is not a blank crop's
    np.testing.assert_allclose(maps[2], maps[0][:, ::-1], atol=1e-5)  # the mirrored crop gives the mirrored map

    other = int((top[0] + 1) % len(LABELS))  # a requested class is the one explained, with its own map
    asked = explain(images=tf.constant(face), class_index=tf.constant([other], tf.int32))
    assert int(asked["class_index"].numpy()[0]) == other
    assert not np.allclose(asked["heatmap"].numpy()[0], maps[0], atol=1e-3)


def test_every_backbone_names_an_explain_layer() -> None:
    from training.config import ArchConfig
    from training.model import build_explain_model, build_inference_model

    model = build_inference_model(ArchConfig(backbone="resnet50v2", input_size=64, weights="none"))
    activations, logits = build_explain_model(model, ArchConfig(backbone="resnet50v2", input_size=64)).outputs
    assert tuple(activations.shape[1:3]) == (2, 2) and tuple(logits.shape[1:]) == (len(LABELS),)


def test_the_small_resnet_trains_exports_and_explains(tiny_folder_dataset: Path, tmp_path: Path) -> None:
    """``fer_resnet`` (the ``cpu_resnet`` preset's backbone) at a tiny width: a real run, exported, answering and
    explaining through the SavedModel's signatures like the VGG-style nets."""
    import dataclasses

    import tensorflow as tf

    from training.config import PRESETS
    from training.export import export_model
    from training.model import build_inference_model
    from training.train import train

    full = build_inference_model(PRESETS["cpu_resnet"].arch)
    assert any(layer.name == "stage4_block2_add" for layer in full.get_layer("backbone").layers)
    assert full.get_layer("backbone").output.shape[1:3] == (6, 6)  # 48 -> 48, 24, 12, 6: three strided stages

    smoke = PRESETS["smoke"]
    config = dataclasses.replace(smoke, arch=dataclasses.replace(smoke.arch, backbone="fer_resnet"), epochs=1)
    run = train(config, tiny_folder_dataset, tmp_path / "run", verbose=0)
    out = export_model(run.run_dir / "model.keras", tmp_path / "models", name="resnet", version="1")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["architecture"]["backbone"] == "fer_resnet"
    loaded = tf.saved_model.load(str(out))
    crops = np.random.default_rng(2).integers(0, 256, (3, 24, 24, 1)).astype(np.float32)
    probabilities = loaded.signatures["serving_default"](images=tf.constant(crops))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    maps = loaded.signatures["explain"](images=tf.constant(crops), class_index=tf.constant([-1] * 3, tf.int32))
    heat = maps["heatmap"].numpy()
    assert heat.shape == (3, 24, 24) and 0.0 <= heat.min() and heat.max() <= 1.0


def test_evaluate_draws_an_explanation_sheet_and_says_when_an_export_cannot(
    trained_run: Path, exported_model: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import shutil

    from training.evaluate import evaluate

    m = evaluate(trained_run / "model.keras", tiny_folder_dataset, tmp_path / "keras", explain=2)
    assert m["explanations"]["correct"] + m["explanations"]["wrong"] > 0
    assert (tmp_path / "keras" / "explanations.png").stat().st_size > 5000
    assert "explanations.png" in (tmp_path / "keras" / "report.md").read_text()
    evaluate(exported_model, tiny_folder_dataset, tmp_path / "export", explain=1)
    assert (tmp_path / "export" / "explanations.png").is_file()

    # an export from before explanations: a SavedModel with serving_default only
    from training.export import write_saved_model
    from training.model import load_inference_model

    old = tmp_path / "old"
    shutil.copytree(exported_model, old)
    shutil.rmtree(old / "variables")
    (old / "saved_model.pb").unlink()
    write_saved_model(load_inference_model(str(trained_run / "model.keras")), old)
    with pytest.raises(ValueError, match="no 'explain' signature"):
        evaluate(old, tiny_folder_dataset, tmp_path / "old-report", explain=1)


# --- ensembles and recovered runs -----------------------------------------------------------------------------------


def test_an_ensemble_of_two_runs_serves_the_mean_of_their_answers_with_one_temperature_and_grad_cam(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    import dataclasses

    import tensorflow as tf

    from training.config import PRESETS
    from training.ensemble import EnsembleError, combine, member_histories
    from training.evaluate import evaluate, load_predictor
    from training.export import export_model
    from training.train import train

    smoke = PRESETS["smoke"]
    # Another seed, the same held-out images: the ensemble's temperature is fitted on what neither member saw.
    second = train(
        dataclasses.replace(smoke, seed=7, holdout_seed=smoke.seed), tiny_folder_dataset, tmp_path / "b", verbose=0
    )
    ensemble = combine([trained_run, second.run_dir], tmp_path / "ens")
    assert json.loads((tmp_path / "ens" / "config.json").read_text())["arch"]["ensemble"] == 2

    # Each member's training history travels with it, numbered by its place in the ensemble, for the report.
    histories = member_histories(tmp_path / "ens")
    assert [h.name for h in histories] == ["history-member1.csv", "history-member2.csv"]
    for carried, run in zip(histories, (trained_run, second.run_dir), strict=True):
        assert carried.read_bytes() == (run / "history.csv").read_bytes()

    report = tmp_path / "report"
    m = evaluate(ensemble, tiny_folder_dataset, report, calibrate=True, test_time_flip=True, history=histories)
    assert "held out" in m["calibration"]["fitted_on"]
    assert (report / "training_curves.png").stat().st_size > 0
    assert "![training curves](training_curves.png)" in (report / "report.md").read_text()
    out = export_model(ensemble, tmp_path / "models", name="ens", version="1", report_dir=report, test_time_flip=True)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["architecture"]["ensemble"] == 2 and len(metadata["training"]["ensemble_of"]) == 2

    crops = np.random.default_rng(5).integers(0, 256, (4, 24, 24, 1)).astype(np.float32)
    crops[:, :, :12] = 0
    members = [load_predictor(run / "model.keras")[0] for run in (trained_run, second.run_dir)]
    mean = sum((p(crops) + p(crops[:, :, ::-1].copy())) / 2 for p in members) / 2
    from training import calibration

    expected = calibration.scale(mean, m["temperature"])
    loaded = tf.saved_model.load(str(out))
    served = loaded.signatures["serving_default"](images=tf.constant(crops))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not np.allclose(members[0](crops), members[1](crops), atol=1e-3)  # two different networks

    maps = loaded.signatures["explain"](images=tf.constant(crops), class_index=tf.constant([-1] * 4, tf.int32))
    heat = maps["heatmap"].numpy()
    assert heat.shape == (4, 24, 24) and 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.5
    np.testing.assert_allclose(maps["probabilities"].numpy(), served, atol=1e-6)

    # An ensemble grows by one network: the ensemble run contributes its members, none is retrained.
    third = train(
        dataclasses.replace(smoke, seed=11, holdout_seed=smoke.seed), tiny_folder_dataset, tmp_path / "d", verbose=0
    )
    grown = combine([tmp_path / "ens", third.run_dir], tmp_path / "ens3")
    assert json.loads((tmp_path / "ens3" / "config.json").read_text())["arch"]["ensemble"] == 3
    assert len(json.loads((tmp_path / "ens3" / "run.json").read_text())["ensemble_of"]) == 3
    grown_histories = member_histories(tmp_path / "ens3")
    assert [h.name for h in grown_histories] == [f"history-member{n}.csv" for n in (1, 2, 3)]
    assert grown_histories[2].read_bytes() == (third.run_dir / "history.csv").read_bytes()
    three = [*members, load_predictor(third.run_dir / "model.keras")[0]]
    np.testing.assert_allclose(load_predictor(grown)[0](crops), sum(p(crops) for p in three) / 3, atol=1e-5)

    # A weaker member is replaced without its run folder: drop it by number, the others keep their order.
    swapped = combine([tmp_path / "ens3"], tmp_path / "swapped", drop=[1])
    assert json.loads((tmp_path / "swapped" / "config.json").read_text())["arch"]["ensemble"] == 2
    kept_records = json.loads((tmp_path / "swapped" / "run.json").read_text())["ensemble_of"]
    assert kept_records == json.loads((tmp_path / "ens3" / "run.json").read_text())["ensemble_of"][1:]
    np.testing.assert_allclose(load_predictor(swapped)[0](crops), sum(p(crops) for p in three[1:]) / 2, atol=1e-5)
    swapped_histories = member_histories(tmp_path / "swapped")
    assert [h.name for h in swapped_histories] == ["history-member1.csv", "history-member2.csv"]
    assert swapped_histories[1].read_bytes() == (third.run_dir / "history.csv").read_bytes()
    with pytest.raises(EnsembleError, match=r"cannot drop network\(s\) \[4\]"):
        combine([tmp_path / "ens3"], tmp_path / "no-such", drop=[4])
    with pytest.raises(EnsembleError, match="at least two networks"):
        combine([tmp_path / "ens3"], tmp_path / "too-few", drop=[1, 2])

    # A member that trained on the images the temperature is fitted on is refused, with the reason.
    other = train(dataclasses.replace(smoke, seed=7, epochs=1), tiny_folder_dataset, tmp_path / "c", verbose=0)
    with pytest.raises(EnsembleError, match="holdout-seed"):
        combine([trained_run, other.run_dir], tmp_path / "refused")
    with pytest.raises(EnsembleError, match="at least two"):
        combine([trained_run], tmp_path / "alone")


def test_a_mixed_ensemble_of_a_vgg_and_a_resnet_serves_their_mean_explains_and_recovers(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path
) -> None:
    """Members of different architectures on the same input (``fer_cnn`` and ``fer_resnet``): one graph, the mean
    of their answers, a Grad-CAM map from each member's own last block, and ``recover`` rebuilds it from the export.
    A member on another input is refused."""
    import dataclasses

    import tensorflow as tf

    from training.config import PRESETS
    from training.ensemble import EnsembleError, combine, recover
    from training.evaluate import load_predictor
    from training.export import export_model
    from training.inference import saved_model_predictor
    from training.train import train

    smoke = PRESETS["smoke"]
    resnet = dataclasses.replace(
        smoke, arch=dataclasses.replace(smoke.arch, backbone="fer_resnet"), seed=5, holdout_seed=smoke.seed, epochs=1
    )
    second = train(resnet, tiny_folder_dataset, tmp_path / "resnet", verbose=0)
    model = combine([trained_run, second.run_dir], tmp_path / "mixed")
    arch = json.loads((tmp_path / "mixed" / "config.json").read_text())["arch"]
    assert arch["ensemble"] == 2 and [m["backbone"] for m in arch["members"]] == ["fer_cnn", "fer_resnet"]

    crops = np.random.default_rng(6).integers(0, 256, (4, 24, 24, 1)).astype(np.float32)
    members = [load_predictor(run / "model.keras")[0] for run in (trained_run, second.run_dir)]
    np.testing.assert_allclose(load_predictor(model)[0](crops), (members[0](crops) + members[1](crops)) / 2, atol=1e-5)

    out = export_model(model, tmp_path / "models", name="mixed", version="1")
    metadata = json.loads((out / "metadata.json").read_text())
    assert [m["backbone"] for m in metadata["architecture"]["members"]] == ["fer_cnn", "fer_resnet"]
    loaded = tf.saved_model.load(str(out))
    maps = loaded.signatures["explain"](images=tf.constant(crops), class_index=tf.constant([-1] * 4, tf.int32))
    assert maps["heatmap"].numpy().shape == (4, 24, 24)

    recovered = recover(out, tmp_path / "recovered")
    exported, _, _ = saved_model_predictor(out)
    np.testing.assert_allclose(load_predictor(recovered)[0](crops), exported(crops), atol=1e-5)

    bigger = dataclasses.replace(smoke, arch=dataclasses.replace(smoke.arch, input_size=32), seed=9, epochs=1)
    other = train(bigger, tiny_folder_dataset, tmp_path / "bigger", verbose=0)
    with pytest.raises(EnsembleError, match="another input"):
        combine([trained_run, other.run_dir], tmp_path / "refused")


def test_recover_rebuilds_a_run_folder_from_an_export_that_serves_the_same_answers(
    exported_model: Path, tmp_path: Path
) -> None:
    from training.ensemble import recover
    from training.evaluate import load_predictor
    from training.inference import saved_model_predictor

    model = recover(exported_model, tmp_path / "run")
    assert {"model.keras", "config.json", "run.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recovered_from"] == "tiny/1"
    crops = np.random.default_rng(9).integers(0, 256, (6, 24, 24, 1)).astype(np.float32)
    exported, _, _ = saved_model_predictor(exported_model)
    np.testing.assert_allclose(load_predictor(model)[0](crops), exported(crops), atol=1e-5)
    with pytest.raises(FileExistsError):
        recover(exported_model, tmp_path / "run")


def test_evaluate_refuses_a_history_it_cannot_draw_before_predicting(
    trained_run: Path, tiny_folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.__main__ import main

    empty_run = tmp_path / "recovered"  # a run folder without history.csv, as `recover` writes one
    empty_run.mkdir()
    base = ["evaluate", "--model", str(trained_run / "model.keras"), "--data", str(tiny_folder_dataset)]
    assert main([*base, "--out", str(tmp_path / "a"), "--history", str(empty_run)]) == 2
    assert "holds no training history" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--history", str(tmp_path / "typo.csv")]) == 2
    assert "no training history at" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before any work
    assert main([*base, "--out", str(tmp_path / "c"), "--history", str(trained_run)]) == 0
    assert (tmp_path / "c" / "training_curves.png").is_file()


def test_a_compact_archive_in_parts_rebuilds_the_run_with_float16_kernels(trained_run: Path, tmp_path: Path) -> None:
    from training.compact import compact, expand
    from training.evaluate import load_predictor

    # kernels of 16 values or more go float16 (the default, 4096, leaves a smoke model's all float32)
    parts = compact(trained_run, tmp_path / "out" / "run.npz", part_bytes=4096, half_min_size=16)
    assert len(parts) > 1 and all(p.stat().st_size <= 4096 for p in parts)
    assert [p.name for p in parts] == [f"run.npz.{n:03d}" for n in range(len(parts))]
    model = expand(tmp_path / "out" / "run.npz", tmp_path / "back")
    for name in ("config.json", "run.json", "history.csv"):
        assert (tmp_path / "back" / name).read_bytes() == (trained_run / name).read_bytes(), name
    crops = np.random.default_rng(3).integers(0, 256, (8, 24, 24, 1)).astype(np.float32)
    original, rebuilt = load_predictor(trained_run / "model.keras")[0](crops), load_predictor(model)[0](crops)
    assert not np.array_equal(original, rebuilt)  # the kernels did go through float16 ...
    np.testing.assert_allclose(rebuilt, original, atol=5e-3)  # ... and the answers did not move
    parts[1].unlink()  # a lost part is an error, not a model with missing weights
    with pytest.raises(ValueError, match="without gaps"):
        expand(tmp_path / "out" / "run.npz", tmp_path / "again")
    with pytest.raises(FileNotFoundError):
        expand(tmp_path / "out" / "none.npz", tmp_path / "again")
    with pytest.raises(ValueError, match="must be positive"):
        compact(trained_run, tmp_path / "out" / "zero.npz", part_bytes=0)


def test_compact_and_expand_from_the_command_line(trained_run: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=ROOT)

    done = cli("compact", str(trained_run), "--out", str(tmp_path / "a.npz"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.npz.000").is_file() and "1 part(s)" in done.stdout
    done = cli("expand", str(tmp_path / "a.npz"), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "model.keras").is_file()
    refused = cli("compact", str(tmp_path), "--out", str(tmp_path / "b.npz"))  # no model.keras there
    assert refused.returncode == 2 and "has no model.keras" in refused.stderr


def test_the_gpu_run_script_trains_finishes_and_archives_every_candidate(tmp_path: Path) -> None:
    """scripts/gpu_runs.sh end to end on tiny data: what a lent GPU machine runs, here on the CPU (TensorFlow
    backend, SMOKE=1: one epoch each; the flagship left out, a ResNet50V2 epoch is minutes here). Its three
    candidates train in parallel processes, come back as compact archives and expand into runs that evaluate."""
    import os
    import tarfile

    from training.compact import expand

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "run.sh").write_bytes((ROOT / "scripts" / "gpu_runs.sh").read_bytes())
    (bundle / "training").symlink_to(ROOT / "training")
    pack(write_folder_dataset(tmp_path / "data", per_class=20), bundle / "fer2013.npz", encoding="jpeg")
    env = dict(
        os.environ,
        SMOKE="1",
        FLAGSHIP_EPOCHS="0",
        CANDIDATES="mix1 wide2",
        KERAS_BACKEND="tensorflow",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    # OUT_DIR relative to where it is called from, as a device call passes it
    done = subprocess.run(
        ["bash", "bundle/run.sh", "out", "600"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "mix1.npz.000", "wide2.npz.000"]
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert {"runs/mix1.log", "runs/wide2/history.csv", "runs/mix1/run.json"} <= set(logs.getnames())
        mixed = logs.extractfile("runs/mix1/run.json")
        assert mixed is not None and json.load(mixed)["mixing"] == {"mixup": 0.2, "cutmix": 1.0, "probability": 1.0}
    expand(out / "wide2.npz", tmp_path / "wide2")
    with pytest.raises(FileExistsError):  # an expanded run is never overwritten
        expand(out / "wide2.npz", tmp_path / "wide2")
    run = json.loads((tmp_path / "wide2" / "run.json").read_text())
    assert run["epochs_run"] == 1 and run["backend"] == "tensorflow" and run["class_weights"] is not None
    config = json.loads((tmp_path / "wide2" / "config.json").read_text())
    assert config["arch"]["cnn_widths"] == [64, 128, 256, 512] and config["augment_workers"] == 3
    assert config["class_weights"] and config["class_weight_power"] == 0.5
    # a candidate it does not know is refused before anything trains, with a failing exit status
    env["CANDIDATES"] = "wide9"
    refused = subprocess.run(
        ["bash", "bundle/run.sh", "out2", "600"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert refused.returncode == 1 and "unknown candidate wide9" in refused.stderr


def test_an_architecture_counts_its_test_time_views_and_network_passes() -> None:
    from training.config import ArchConfig

    assert (ArchConfig().views, ArchConfig().passes) == (1, 1)
    shipped_like = ArchConfig(ensemble=5, test_time_flip=True, test_time_zoom=1.1)
    assert (shipped_like.views, shipped_like.passes) == (4, 20)
    mixed = ArchConfig(test_time_flip=True, members=(ArchConfig(backbone="fer_cnn"), ArchConfig(backbone="fer_resnet")))
    assert (mixed.views, mixed.passes) == (2, 4)
