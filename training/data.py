"""Reading FER-2013 in the layouts people have: Kaggle CSV, folder-per-class, or a packed ``.npz``.

Every reader returns a :class:`Split` of ``uint8`` images shaped ``(N, 48, 48, 1)`` and integer labels in the
canonical order of :data:`training.labels.LABELS`. Bad data is collected and reported together in one
:class:`DataError`, never skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.labels import CSV_CODE_TO_LABEL, IMAGE_SIZE, LABELS, SPLIT_TO_USAGE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_MAX_LISTED_PROBLEMS = 20


class DataError(ValueError):
    """The data set is unusable as given; ``problems`` lists every problem found (file or row, and what)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more" if len(problems) > _MAX_LISTED_PROBLEMS else ""
        )
        super().__init__(f"{len(problems)} problem(s) in {source}:\n  {shown}{more}")


@dataclass(frozen=True)
class Split:
    """One split of the data set: images ``(N, 48, 48, 1)`` uint8 and labels ``(N,)`` int32 (indices into LABELS)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Number of images per label, in canonical order."""
        counts = np.bincount(self.labels, minlength=len(LABELS))
        return {label: int(n) for label, n in zip(LABELS, counts, strict=True)}

    def fingerprint(self) -> str:
        """A short SHA-256 of pixels and labels: identifies exactly which data a model saw."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.labels).astype("<i4").tobytes())
        return digest.hexdigest()[:16]


def _check_classes(split: Split, source: str) -> None:
    empty = [label for label, n in split.class_counts().items() if n == 0]
    if empty:
        raise DataError(source, [f"class '{label}' has no images" for label in empty])


def read_folder(root: Path | str, split: str) -> Split:
    """Read ``<root>/<split>/<label>/*`` images (48x48 grayscale expected).

    Raises:
        DataError: the split folder is missing, a label folder is unknown, an image is unreadable or not 48x48,
            or a class is empty.
    """
    from PIL import Image, UnidentifiedImageError

    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(str(split_dir), [f"split folder '{split_dir}' does not exist"])
    problems: list[str] = []
    files: list[tuple[Path, int]] = []
    for entry in sorted(split_dir.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name not in LABELS:
            problems.append(f"{entry}: unknown label folder (expected one of {', '.join(LABELS)})")
            continue
        label = LABELS.index(entry.name)
        files.extend((f, label) for f in sorted(entry.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES)
    images = np.zeros((len(files), IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
    labels = np.zeros(len(files), dtype=np.int32)
    for i, (path, label) in enumerate(tqdm(files, desc=f"decode {split}", unit="img", leave=False, disable=None)):
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            problems.append(f"{path}: unreadable image ({exc.__class__.__name__})")
            continue
        if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
            problems.append(f"{path}: size {pixels.shape[1]}x{pixels.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
            continue
        images[i, :, :, 0] = pixels
        labels[i] = label
    if problems:
        raise DataError(str(split_dir), problems)
    result = Split(images, labels)
    _check_classes(result, str(split_dir))
    return result


def read_csv(path: Path | str, split: str) -> Split:
    """Read one split (``train``/``val``/``test``) of the original Kaggle ``fer2013.csv`` (emotion,pixels,Usage).

    Raises:
        DataError: missing columns, a bad emotion code, a row without exactly 48*48 pixel values in 0..255,
            or an empty class.
    """
    usage = SPLIT_TO_USAGE[split]
    problems: list[str] = []
    rows: list[tuple[int, np.ndarray]] = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(str(path), [f"missing column(s): {', '.join(sorted(missing))}"])
        for row in tqdm(reader, desc=f"parse {split}", unit="row", leave=False, disable=None):
            line = reader.line_num
            if row["Usage"] != usage:
                continue
            try:
                label = LABELS.index(CSV_CODE_TO_LABEL[int(row["emotion"])])
            except (KeyError, ValueError):
                problems.append(f"{path}:{line}: emotion code {row['emotion']!r} is not one of 0..6")
                continue
            values = (row["pixels"] or "").split()
            if len(values) != IMAGE_SIZE * IMAGE_SIZE:
                problems.append(f"{path}:{line}: {len(values)} pixel values, expected {IMAGE_SIZE * IMAGE_SIZE}")
                continue
            try:
                pixels = np.array([int(v) for v in values], dtype=np.int64)
            except ValueError:
                problems.append(f"{path}:{line}: pixel values are not integers")
                continue
            if pixels.min() < 0 or pixels.max() > 255:
                problems.append(f"{path}:{line}: pixel values outside 0..255")
                continue
            rows.append((label, pixels.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 1)))
    if problems:
        raise DataError(str(path), problems)
    if not rows:
        raise DataError(str(path), [f"no rows with Usage={usage}"])
    result = Split(np.stack([r[1] for r in rows]), np.array([r[0] for r in rows], dtype=np.int32))
    _check_classes(result, f"{path} ({usage})")
    return result


def _decode_blob(blob: np.ndarray, offsets: np.ndarray, split: str) -> np.ndarray:
    """Decode images stored back to back in ``blob`` (``offsets[i]:offsets[i+1]``) into (N, 48, 48, 1) uint8."""
    from PIL import Image

    images = np.zeros((len(offsets) - 1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
    for i in tqdm(range(len(images)), desc=f"decode {split}", unit="img", leave=False, disable=None):
        with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())) as img:
            images[i, :, :, 0] = np.asarray(img.convert("L"))
    return images


def read_packed(path: Path | str, split: str) -> Split:
    """Read one split from an ``.npz`` written by :func:`pack`: raw pixels (``<split>_images``) or the original
    encoded files back to back (``<split>_encoded`` + ``<split>_offsets``)."""
    with np.load(path) as packed:
        if f"{split}_labels" not in packed:
            raise DataError(str(path), [f"no split '{split}' in packed file (has: {sorted(packed.files)})"])
        labels_in_file = tuple(str(x) for x in packed["labels"])
        if labels_in_file != LABELS:
            raise DataError(str(path), [f"label order {labels_in_file} differs from {LABELS}"])
        if f"{split}_images" in packed:
            images = packed[f"{split}_images"]
        else:
            images = _decode_blob(packed[f"{split}_encoded"], packed[f"{split}_offsets"], split)
        return Split(images, packed[f"{split}_labels"].astype(np.int32))


def _encoded_files(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The folder layout's files as they are (no re-encoding), back to back, with offsets and labels."""
    read_folder(root, split)  # validates every file first: a packed file never carries bad data
    chunks, labels = [], []
    for c, label in enumerate(LABELS):
        for f in sorted((root / split / label).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                chunks.append(f.read_bytes())
                labels.append(c)
    offsets = np.cumsum([0] + [len(b) for b in chunks]).astype(np.int64)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), offsets, np.array(labels, dtype=np.uint8)


def read_split(source: Path | str, split: str) -> Split:
    """Read ``split`` from a folder root, a Kaggle CSV or a packed ``.npz``, chosen by what ``source`` is."""
    source = Path(source)
    if source.suffix == ".csv":
        return read_csv(source, split)
    if source.suffix == ".npz":
        return read_packed(source, split)
    if source.is_dir():
        return read_folder(source, split)
    raise DataError(str(source), ["not a folder, a .csv or a .npz file"])


def pack(
    source: Path | str, out: Path | str, splits: tuple[str, ...] = ("train", "val"), encoding: str = "pixels"
) -> Path:
    """Write ``splits`` into one ``.npz``: ``pixels`` stores decoded uint8 arrays (deflate-compressed, 71 MiB for
    FER-2013 train+val, fastest to read); ``jpeg`` stores a folder layout's original files back to back
    (48 MiB: what fits, with code and wheels, into a 64 MiB upload to a GPU machine)."""
    arrays: dict[str, np.ndarray] = {"labels": np.array(LABELS)}
    for split in splits:
        if encoding == "jpeg":
            if not Path(source).is_dir():
                raise DataError(str(source), ["--encoding jpeg needs the folder layout (it keeps the original files)"])
            blob, offsets, labels = _encoded_files(Path(source), split)
            arrays.update({f"{split}_encoded": blob, f"{split}_offsets": offsets, f"{split}_labels": labels})
        else:
            data = read_split(source, split)
            arrays[f"{split}_images"] = data.images
            arrays[f"{split}_labels"] = data.labels.astype(np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    out.write_bytes(buffer.getvalue())
    return out


def class_weights(labels: np.ndarray, num_classes: int = len(LABELS), power: float = 1.0) -> dict[int, float]:
    """Class weights ``(n / (k * count_c)) ** power``, rescaled so the average image still weighs 1.

    ``power`` 1 is fully balanced: rare classes (disgust) count as much as common ones in the loss. Between 0 and 1
    it leans toward the rare classes without ignoring how rare they are (0.5: disgust 4x happy instead of 16x), and
    the rescaling keeps the loss's scale, so the learning rate of a recipe still fits.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError("every class needs at least one example to weight it")
    if power < 0:
        raise ValueError(f"class weight power must be >= 0, got {power}")
    raw = (len(labels) / (num_classes * counts)) ** power
    raw /= (counts * raw).sum() / len(labels)
    return {c: float(raw[c]) for c in range(num_classes)}
