"""The one canonical FER-2013 label order, declared once for the whole training package."""

from __future__ import annotations

#: Output order of every model this package trains (alphabetical, as the folder layout names them).
LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

#: The original Kaggle CSV numbers the classes differently: 0=angry 1=disgust 2=fear 3=happy 4=sad 5=surprise 6=neutral.
CSV_CODE_TO_LABEL: dict[int, str] = {
    0: "angry",
    1: "disgust",
    2: "fear",
    3: "happy",
    4: "sad",
    5: "surprise",
    6: "neutral",
}

#: Split names of the folder layout and their CSV ``Usage`` values.
SPLIT_TO_USAGE: dict[str, str] = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}

#: FER-2013 images are 48x48 grayscale.
IMAGE_SIZE = 48
