"""How an input is drawn in a report: as an image or as bars.

An input of shape ``input_shape`` (without batch dimension) is drawn as an image when it is

* ``[C, H, W]`` with ``C`` 1 (grey) or 3 (RGB) and ``H, W >= 2`` (channels first, as torch uses);
* ``[H, W]`` with ``H, W >= 4`` (grey);
* a flat vector ``[D]`` whose length is a perfect square ``D = s * s`` with ``s >= 4``: it is drawn as an
  ``s x s`` grey image, row-major (the bundled 8x8 digits, 64 features, are drawn this way). Shorter vectors
  (4, 9 features) are more likely tabular than images and are drawn as bars.

Everything else (tabular features, sequences) is drawn as bars, one per input entry.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["image_layout", "as_image"]


def image_layout(input_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """``(height, width, channels)`` when inputs of ``input_shape`` are drawn as images, else None.

    Example:
        >>> image_layout((64,)), image_layout((3, 32, 32)), image_layout((5,))
        ((8, 8, 1), (32, 32, 3), None)
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 2:
        return shape[1], shape[2], shape[0]
    if len(shape) == 2 and min(shape) >= 4:
        return shape[0], shape[1], 1
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side >= 4 and side * side == shape[0]:
            return side, side, 1
    return None


def as_image(x: np.ndarray, layout: tuple[int, int, int]) -> np.ndarray:
    """One input (any shape with ``H * W * C`` entries, channels first) as ``[H, W]`` (grey) or ``[H, W, 3]``."""
    h, w, c = layout
    arr = np.asarray(x, dtype=np.float64).reshape(c, h, w)
    return arr[0] if c == 1 else np.transpose(arr, (1, 2, 0))
