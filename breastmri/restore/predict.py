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


def common_change(pred, projection, sigma, reference_ratio):
    """(H, W): what the network changed alike in every frame of one slice position, against its projection
    channel: the mean over the frames of pred - the projection, the projection first moved from the degraded
    input's noise floor to the target's (Rician mean inverted with the input's sigma, put back with sigma x
    reference_ratio: the target's noise relative to the input's, networks.keeps_common; 0 puts none back, None
    leaves the floor alone: Gaussian data), as tpca is scored against the 3T image.

    pred, projection: (T, H, W) on the normalized scale, zero signal at 0. Subtracting the map from every frame
    (model.common_anatomy projection) leaves the network what differs between the frames and gives the anatomy
    they share, averaged over T frames and nearly free of noise, back to the projection: a spatial prior learned
    on the phantom's anatomy then cannot rewrite a real scan's anatomy in every frame alike
    (docs/real_data.md). sigma 0 (no noise measured): the projection as it is."""
    from breastmri.restore.denoisers import rician_bias_correction, rician_mean

    projection = np.asarray(projection, np.float32)
    if sigma > 0 and reference_ratio is not None:
        projection = rician_bias_correction(np.maximum(projection, 0), sigma)
        if reference_ratio > 0:
            projection = rician_mean(projection, sigma * reference_ratio)
    return np.mean(np.asarray(pred, np.float32) - projection, axis=0).astype(np.float32)


def keep_common(pred, inputs, groups, channel, sigma, reference_ratio, zero=0.0):
    """pred (n, H, W) with each group's common_change taken back from its frames, in place; groups: lists of
    indices into pred and inputs (n, H, W, C), the frames of one slice position each (fewer than
    MIN_COMMON_FRAMES: left alone); channel: the projection channel of inputs; zero: the normalized value of no
    signal in both. Returns pred."""
    zero = np.float32(zero)
    for group in groups:
        if len(group) >= MIN_COMMON_FRAMES:
            pred[group] -= common_change(pred[group] - zero, inputs[group][..., channel] - zero, sigma,
                                         reference_ratio)
    return pred
