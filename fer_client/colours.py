"""One colour per emotion label, shared by the video overlay (cli) and the interview report."""

from __future__ import annotations

import cv2
import numpy as np


def colour_for(label: str) -> tuple[int, int, int]:
    """A stable BGR colour per label (the same hues as the web page for the usual FER labels)."""
    known = {
        "angry": (77, 72, 229),
        "disgust": (88, 167, 70),
        "fear": (198, 78, 142),
        "happy": (0, 180, 245),
        "neutral": (152, 141, 139),
        "sad": (221, 99, 62),
        "surprise": (21, 107, 247),
    }
    if label in known:
        return known[label]
    h = sum(ord(c) * 31**i for i, c in enumerate(label)) % 180
    hsv = np.array([[[h, 200, 230]]], dtype=np.uint8)
    b, g, r = (int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r
