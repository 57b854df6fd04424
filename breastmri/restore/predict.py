"""Predict whole images with a fully convolutional model: padded to the network's multiple, or tiled.

Shared by training's validation, evaluation and enhance.py, so every path applies the model the same way.
Tiles overlap by the network's receptive margin and only their cores are kept, so tiled equals untiled (tested).
"""

import math
import time

import numpy as np

# Pixels per forward pass (batch x padded H x W). The default U-Net keeps roughly 200 float32 activations per
# pixel alive across its levels (~0.8 kB), so 2**21 pixels (8 slices of 512 x 512) stay around 1.7 GB. A single
# slice above the budget (e.g. a 2048 x 2048 matrix) is tiled; MR matrices (<= 1024) never need it.
MAX_PIXELS = 2**21
DEFAULT_TILE = 512


class EnhanceError(Exception):
    """Bad command-line input (missing model or input, unusable option); the CLI prints it on one line, exit 2."""


def receptive_margin(depth):
    """Pixels of context a U-Net output pixel depends on, on each side, rounded up to a multiple of 2**depth.

    Per level l (1..depth) the encoder's two 3x3 convs add 2 * 2**(l-1), its 2x2 pool 2**(l-1); the bottleneck's
    convs add 2 * 2**depth; the decoder's convs again 2 * 2**(l-1) (a stride-2 2x2 transposed conv reads one
    coarse pixel and adds nothing). Sum: 7 * 2**depth - 5 (23 px for depth 2, 51 for depth 3). Rounding up keeps
    tile origins on the pooling grid, which a U-Net needs to be shift-equivariant.
    """
    multiple = 2**depth
    return math.ceil((7 * multiple - 5) / multiple) * multiple


# --------------------------------------------------------------------------------------------------------------
# Prediction on normalized stacks
# --------------------------------------------------------------------------------------------------------------

def _forward(model, batch, timings=None):
    """One forward pass: float32 (B, h, w) or (B, h, w, C) -> float32 (B, h, w).

    predict_on_batch runs Keras' traced predict function (traced with reduce_retracing, so new slice sizes stop
    costing a retrace after the first few); on CPU it is ~1.5x faster than an eager model(x) call."""
    start = time.perf_counter()
    batch = batch[..., None] if batch.ndim == 3 else batch  # (B, h, w) one channel, or (B, h, w, C) with context
    out = np.asarray(model.predict_on_batch(batch), dtype=np.float32)[..., 0]
    if len(out) != len(batch):  # a model built under MirroredStrategy returns every replica's copy: call it
        out = np.asarray(model(batch, training=False), dtype=np.float32)[..., 0]
    if timings is not None:
        timings.append(time.perf_counter() - start)
    return out


def _forward_batched(model, images, batch_size, timings=None):
    out = np.empty(images.shape[:3], np.float32)
    for start in range(0, len(images), batch_size):
        out[start:start + batch_size] = _forward(model, images[start:start + batch_size], timings)
    return out


def tile_windows(length, tile, margin):
    """Windows along one axis: [(window_start, core_start, core_end)], windows of length min(tile, length).

    The cores (tile - 2 * margin long) cover [0, length) without overlap. Each window is the core widened by
    `margin` on both sides and shifted back inside the image at the borders, so every core pixel has `margin`
    pixels of real context on each side or sits at the image border, where the whole image has the same border
    (zero padding of the 'same' convolutions) as the tile. length, tile and margin are multiples of 2**depth.
    """
    if length <= tile:
        return [(0, 0, length)]
    core = tile - 2 * margin
    windows = []
    for core_start in range(0, length, core):
        core_end = min(core_start + core, length)
        start = min(max(core_start - margin, 0), length - tile)
        windows.append((start, core_start, core_end))
    return windows


def default_tile(multiple, margin):
    """DEFAULT_TILE, or a larger multiple of 2**depth for a U-Net so deep that its margins would fill the tile."""
    return max(DEFAULT_TILE, math.ceil(4 * margin / multiple) * multiple)


def check_tile(tile, multiple, margin):
    """Raise EnhanceError unless a tile side leaves a core of at least one pooling cell inside its margins."""
    if not isinstance(tile, int) or tile % multiple or tile < 2 * margin + multiple:
        smallest = 2 * margin + multiple
        raise EnhanceError(f"--tile {tile}: the tile side must be a multiple of {multiple} (2**depth) and at least "
                           f"{smallest} (2 x the {margin} px margin + {multiple}); e.g. --tile "
                           f"{max(smallest, 256) if max(smallest, 256) % multiple == 0 else smallest}")


def predict_tiled(model, padded, tile, margin, batch_size=8, timings=None):
    """U-Net output of padded (n, H, W[, C]) float32 computed tile by tile; H, W, tile, margin multiples of 2**depth.

    Each tile of side `tile` is run with `margin` pixels of context around its core and only the core is kept
    (no blending). margin = receptive_margin(depth) covers the whole receptive field, so a core pixel sees
    exactly the values it would see in the whole image: tiled equals untiled up to float32 rounding (measured
    6e-8 for depth 2 and 3; the tests require < 1e-3). Shorter margins leave seams: 2e-3 / 2e-2 / 7e-2 with
    20 / 12 / 4 px at depth 2 (random weights, normalized units).
    """
    n, rows, cols = padded.shape[:3]
    win_r, win_c = tile_windows(rows, tile, margin), tile_windows(cols, tile, margin)
    h, w = min(tile, rows), min(tile, cols)
    places = [(i, r, c) for i in range(n) for r in win_r for c in win_c]
    out = np.empty((n, rows, cols), np.float32)
    for start in range(0, len(places), batch_size):
        chunk = places[start:start + batch_size]
        tiles = np.stack([padded[i, r0:r0 + h, c0:c0 + w] for i, (r0, _, _), (c0, _, _) in chunk])
        pred = _forward(model, tiles, timings)
        for k, (i, (r0, ra, rb), (c0, ca, cb)) in enumerate(chunk):
            out[i, ra:rb, ca:cb] = pred[k, ra - r0:rb - r0, ca - c0:cb - c0]
    return out


def pad_to_multiple(stack, multiple):
    """Reflect-pad (n, H, W[, C]) to sides that are multiples of `multiple`; returns (padded, (top, left))."""
    rows, cols = stack.shape[1:3]
    extra_r, extra_c = -rows % multiple, -cols % multiple
    top, left = extra_r // 2, extra_c // 2
    if not extra_r and not extra_c:
        return stack, (0, 0)
    # Reflection continues the anatomy and noise texture across the border; zeros would be a fake edge.
    pad = [(0, 0), (top, extra_r - top), (left, extra_c - left)] + [(0, 0)] * (stack.ndim - 3)
    return np.pad(stack, pad, mode="reflect" if min(rows, cols) > 1 else "edge"), (top, left)


def predict_padded(model, stack, multiple, batch_size=8, timings=None):
    """Model output for a normalized stack at its own grid: float32 (n, H, W) or, with context channels,
    (n, H, W, C) -> (n, H, W). Reflect-padded to a
    multiple of `multiple` and cropped back. main.py evaluates (and validates) through this very function, so a
    slice enhanced here and the same slice evaluated there see the same pixels."""
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    rows, cols = stack.shape[1:3]
    padded, (top, left) = pad_to_multiple(stack, multiple)
    out = _forward_batched(model, np.ascontiguousarray(padded), batch_size, timings)
    return np.ascontiguousarray(out[:, top:top + rows, left:left + cols])


# --------------------------------------------------------------------------------------------------------------
# The anatomy common to a slice position's frames: the projection's (model.common_anatomy)
# --------------------------------------------------------------------------------------------------------------

MIN_COMMON_FRAMES = 3  # fewer frames at a position: their mean is no better than a frame, nothing is taken back
LEVEL_BINS = 24        # signal levels the floor's change is read in: log-spaced over LEVEL_DECADES below the top
LEVEL_DECADES = 3
LEVEL_MIN_PIXELS = 32  # a level read from fewer pixels is left to its neighbours' (too few to average the anatomy out)


def common_change(pred, projection, bins=LEVEL_BINS):
    """(H, W): what the network changed alike in every frame of one slice position, against its projection
    channel, less the part that follows the signal level alone.

    pred, projection: (T, H, W) on the normalized scale. The change alike in every frame is the mean over the
    frames of pred - projection. Part of it is the noise floor the network learned (a 3T-like target has a lower
    floor than the degraded input, the same shift wherever the signal is the same, largest in the dark and
    falling off as sigma^2 / level above it): a smooth function of the signal level, read here as the change's mean
    in `bins` bins of the frames' mean projection (above its darkest 0.1%), log-spaced over LEVEL_DECADES below
    the brightest pixel so that the dark levels, where the floor moves, are resolved and the bright ones, where
    tissue texture lives, are not (a bin there spans a third of its level: the texture is not read as a level),
    interpolated between the bins' mean levels and kept. What is left, anatomy moved or smoothed alike in every
    frame, is returned to be taken back (model.common_anatomy projection, keep_common): the anatomy the frames
    share, averaged over T frames and nearly free of noise, stays the projection's, and a spatial prior learned on
    the phantom's anatomy cannot rewrite a real scan's anatomy in every frame alike (docs/real_data.md). No noise
    level is needed."""
    change = np.mean(np.asarray(pred, np.float64) - np.asarray(projection, np.float64), axis=0)
    level = np.mean(np.asarray(projection, np.float64), axis=0)
    level = level - np.percentile(level, 0.1)
    top = float(level.max())
    if not top > 0:  # a flat image: nothing follows the level but a constant
        return (change - change.mean()).astype(np.float32)
    edges = np.geomspace(top * 10.0 ** -LEVEL_DECADES, top, bins)
    which = np.searchsorted(edges, level).ravel()          # 0: at or below the lowest edge
    count = np.bincount(which, minlength=bins + 1)
    filled = count >= min(LEVEL_MIN_PIXELS, count.max())
    mean_change = np.bincount(which, change.ravel(), bins + 1)[filled] / count[filled]
    centre = np.bincount(which, level.ravel(), bins + 1)[filled] / count[filled]
    return (change - np.interp(level, centre, mean_change)).astype(np.float32)


def keep_common(pred, inputs, groups, channel):
    """pred (n, H, W) with each group's common_change taken back from its frames, in place; groups: lists of
    indices into pred and inputs (n, H, W, C), the frames of one slice position each (fewer than
    MIN_COMMON_FRAMES: left alone); channel: the projection channel of inputs. Returns pred."""
    for group in groups:
        if len(group) >= MIN_COMMON_FRAMES:
            pred[group] -= common_change(pred[group], inputs[group][..., channel])
    return pred
