"""A finished run folder as a few small files, and back: how a model trained on a lent GPU machine comes home.

That machine returns at most 8 files of 16 MiB each (64 MiB in all), and a ResNet50V2 ``.keras`` file is 94 MB. A
*compact archive* holds what ``evaluate``, ``ensemble`` and ``export`` need of a run folder: the inference model's
weights (arrays of at least :data:`HALF_MIN_SIZE` values as float16, half the bytes; the small ones - BatchNorm
statistics, biases - stay float32) and the run's ``config.json``, ``run.json`` and ``history.csv``. It is one
``.npz`` written in parts of at most ``part_bytes`` (``NAME.npz.000``, ``.001``, ...). :func:`expand` rebuilds the
architecture from ``config.json``, loads the weights and writes ``model.keras`` and the text files into a run folder.

float16 keeps 11 significant bits: the rebuilt model's probabilities differ from the original's by about 1e-3, far
below what moves a FER-2013 accuracy figure (``tests/test_training.py`` checks the round trip).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

#: Arrays with at least this many values are stored as float16 (convolution and dense kernels).
HALF_MIN_SIZE = 4096
#: The run folder's text files an archive carries (those present; an ensemble run's members' histories too).
RUN_FILES = ("config.json", "run.json", "history.csv", "history-member*.csv")
_MAX_PARTS = 1000
_WEIGHT_PREFIX = "weight_"
_FILE_PREFIX = "file_"
_PART_SUFFIX_DIGITS = 3


def _half_if_large(array: np.ndarray, half_min_size: int) -> np.ndarray:
    if array.dtype != np.float32 or array.size < half_min_size:
        return array
    half = array.astype(np.float16)
    return half if np.isfinite(half).all() else array  # out of float16's range: keep it exact


def compact(
    run_dir: str | Path, out: str | Path, *, part_bytes: int = 15 * 2**20, half_min_size: int = HALF_MIN_SIZE
) -> list[Path]:
    """Write ``run_dir``'s model (``model.keras``) and text files as the archive ``out`` (``NAME.npz``), in parts of
    at most ``part_bytes``; returns the parts written. Arrays of ``half_min_size`` values or more are stored as
    float16.

    Raises:
        FileNotFoundError: the run folder has no ``model.keras`` or no ``config.json``.
        ValueError: ``part_bytes`` is not positive, or so small that the archive would need over 1000 parts.
    """
    from training.model import load_inference_model

    if part_bytes < 1:
        raise ValueError(f"the part size must be positive, not {part_bytes} bytes")
    run_dir, out = Path(run_dir), Path(out)
    for needed in ("model.keras", "config.json"):
        if not (run_dir / needed).is_file():
            raise FileNotFoundError(f"{run_dir} has no {needed} (finish the run first: python -m training finalize)")
    weights = load_inference_model(str(run_dir / "model.keras")).get_weights()
    arrays = {f"{_WEIGHT_PREFIX}{i:04d}": _half_if_large(np.asarray(w), half_min_size) for i, w in enumerate(weights)}
    for pattern in RUN_FILES:
        for path in sorted(run_dir.glob(pattern)):
            arrays[f"{_FILE_PREFIX}{path.name}"] = np.frombuffer(path.read_bytes(), np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    data = buffer.getvalue()
    if -(-len(data) // part_bytes) > _MAX_PARTS:
        raise ValueError(f"{len(data):,} bytes in parts of {part_bytes:,} would be over {_MAX_PARTS} parts")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{out.name}.[0-9][0-9][0-9]"):
        stale.unlink()
    parts = []
    for number, start in enumerate(range(0, len(data), part_bytes)):
        part = out.parent / f"{out.name}.{number:0{_PART_SUFFIX_DIGITS}d}"
        part.write_bytes(data[start : start + part_bytes])
        parts.append(part)
    return parts


def expand(archive: str | Path, run_dir: str | Path) -> Path:
    """Rebuild a run folder from the archive ``archive`` (``NAME.npz``, read from its parts ``NAME.npz.000`` ...):
    ``config.json``, ``run.json``, ``history.csv`` and ``model.keras`` (float32). Returns the ``model.keras`` path.

    Raises:
        FileNotFoundError: no part of the archive exists.
        FileExistsError: ``run_dir`` exists and is not empty (nothing is overwritten).
        ValueError: the parts do not form an archive of a model of the architecture its config describes.
    """
    from training.config import TrainConfig
    from training.inference import global_policy
    from training.model import build_inference_model

    archive, run_dir = Path(archive), Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already holds files; expand into a new folder")
    parts = sorted(archive.parent.glob(f"{archive.name}.[0-9][0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(f"no parts {archive}.000, .001, ... to expand")
    expected = [archive.parent / f"{archive.name}.{n:0{_PART_SUFFIX_DIGITS}d}" for n in range(len(parts))]
    if parts != expected:
        raise ValueError(f"the parts of {archive} are not numbered 000 to {len(parts) - 1:03d} without gaps")
    try:
        contents = np.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)))
    except (OSError, ValueError) as exc:  # a truncated or foreign file
        raise ValueError(f"{archive} is not a compact run archive: {exc}") from exc
    with contents:
        files = {k[len(_FILE_PREFIX) :]: contents[k].tobytes() for k in contents.files if k.startswith(_FILE_PREFIX)}
        weights = [contents[k] for k in sorted(k for k in contents.files if k.startswith(_WEIGHT_PREFIX))]
    if "config.json" not in files:
        raise ValueError(f"{archive} carries no config.json")
    config = TrainConfig.from_dict(json.loads(files["config.json"]))
    with global_policy("float32"):  # the weights are float32 whatever the run trained in
        model = build_inference_model(config.arch, pretrained=False)
    mine = model.get_weights()
    if len(mine) != len(weights) or any(a.shape != b.shape for a, b in zip(mine, weights, strict=True)):
        raise ValueError(f"{archive}: its weights are not those of the architecture in its config.json")
    model.set_weights([w.astype(m.dtype) for w, m in zip(weights, mine, strict=True)])
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (run_dir / name).write_bytes(data)
    model_path = run_dir / "model.keras"
    model.save(model_path)
    return model_path
