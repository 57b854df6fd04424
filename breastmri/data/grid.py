"""The square grid of a thesis-style run (preprocess.image_size S): pad a slice to a square, never distorting its
aspect ratio, resize to S x S, and undo both exactly. preprocessing.py writes its arrays on this grid and
enhance.py maps a scan onto it and back; a run with image_size null keeps each scan's own matrix and needs none.
"""

import cv2
import numpy as np


def pad_to_square(img, value=0.0):
    """Pad (H, W) or (n, H, W) symmetrically (extra pixel at the bottom/right) to a square of side max(H, W).

    value: what the padding holds. preprocessing pads with the normalized value of zero signal, -lo/(hi-lo):
    outside the field of view a scanner records nothing, and un-normalizing the padding gives exactly 0."""
    img = np.asarray(img)
    rows, cols = img.shape[-2:]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    pad = [(0, 0)] * (img.ndim - 2) + [(top, side - rows - top), (left, side - cols - left)]
    return np.pad(img, pad, mode="constant", constant_values=value)


def _interpolation(src_side, dst_side):
    # INTER_AREA averages when shrinking (no aliasing); INTER_CUBIC when enlarging (sharper than linear).
    return cv2.INTER_AREA if dst_side < src_side else cv2.INTER_CUBIC


def square_slice(img, size, pad_value=0.0):
    square = pad_to_square(np.asarray(img, dtype=np.float32), pad_value)
    if square.shape[0] == size:
        return square
    return cv2.resize(square, (size, size), interpolation=_interpolation(square.shape[0], size))


def resize_square(stack, size, pad_value=0.0):
    """(n, H, W) -> float32 (n, size, size): pad to a square (aspect ratio kept), then resize each slice."""
    stack = np.asarray(stack)
    out = np.empty((stack.shape[0], size, size), dtype=np.float32)
    for i, img in enumerate(stack):
        out[i] = square_slice(img, size, pad_value)
    return out


def unresize_square(stack, shape):
    """Exact geometric inverse of resize_square: (n, S, S) or (S, S) -> (n, rows, cols) or (rows, cols).
    Resizes back to the padded square side max(rows, cols), then crops the padding that pad_to_square added."""
    rows, cols = shape
    stack = np.asarray(stack, dtype=np.float32)
    squeeze = stack.ndim == 2
    if squeeze:
        stack = stack[None]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    out = np.empty((stack.shape[0], rows, cols), dtype=np.float32)
    for i, img in enumerate(stack):
        if img.shape[0] != side:
            img = cv2.resize(img, (side, side), interpolation=_interpolation(img.shape[0], side))
        out[i] = img[top:top + rows, left:left + cols]
    return out[0] if squeeze else out
