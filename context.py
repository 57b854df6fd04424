"""What a slice's input stack holds besides the slice itself: its neighbours in time and space, a pre-contrast
guide, and its projection onto the time courses of its position (model.context). One module for training
(data_factory.PairedSlices) and inference (enhance.py), so both assemble the same stacks.

    channels, guide = context_slices(lookup, t, k, n_times, n_positions, offsets, precontrast_frames, fallback)
    inputs = context_stack(normalized_series, layout, offsets, precontrast_frames, projection)   # (n, H, W, C)

A DCE series images each slice position at T time points; (t, k) names a frame by its time index and position.
Neighbours are reflected at the ends of the series and a missing frame falls back to the target itself, so any
series, down to a single frame, gives a stack of the same channels.
"""

import collections
import math

import numpy as np

# What model.context asks the network to see (model.context_offsets builds it from the config): channel offsets
# [(dt, dk)], the target (0, 0) first; the number of pre-contrast frames averaged into a guide (0: none); whether a
# projection channel follows.
Context = collections.namedtuple("Context", "offsets precontrast_frames projection", defaults=(0, False))


def reflect(i, n):
    """Index i reflected into range(n) without repeating the edge (-1 -> 1, n -> n - 2), as np.pad's 'reflect'."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


# temporal_projection keeps the principal components whose eigenvalue exceeds PROJECTION_EDGE x the upper
# Marchenko-Pastur edge of pure noise (1 + sqrt(T / N))^2 sigma^2, sigma^2 from the smallest eigenvalue. The margin
# was chosen on the demo validation patients (1.2: 29.99 dB, 1.5: 30.07, 2.0: 29.71 body PSNR of the projection
# alone against the truth; input 27.64); the plain edge keeps 6-7 of 8 components: the noise is not the same everywhere (Rician at low signal, motion between frames), so components
# just above the edge are mostly noise. A repeated frame (a missing frame's fallback) makes the smallest
# eigenvalue ~0 and the projection ~the identity: no denoising, no harm.
PROJECTION_EDGE = 1.5


def temporal_projection(frames):
    """(T, H, W) frames of one slice position over time -> (T, H, W), every frame projected onto the principal
    temporal components of the stack that stand above the noise.

    A DCE position holds few distinct time courses (fat, gland, vessels, lesion; Veraart's MP-PCA uses the same
    redundancy locally): its T x T temporal covariance over the N pixels has a few large eigenvalues and T - r
    near the noise level sigma^2. The noise of a frame is spread over all T components, so keeping the r large
    ones keeps about r / T of its variance. Global over the slice: cheap (one T x T eigenproblem), but a time course
    that few pixels share (a small lesion) may fall under the edge, so the network gets this as one channel
    beside the frame itself, never instead of it (model.context.projection). One frame (T = 1), or frames with
    non-finite values, are returned as they are."""
    frames = np.asarray(frames, np.float32)
    n_times = len(frames)
    if n_times < 2:
        return frames.copy()
    x = frames.reshape(n_times, -1)
    mean = x.mean(1, keepdims=True, dtype=np.float64).astype(np.float32)
    x = x - mean
    covariance = (x @ x.T).astype(np.float64) / x.shape[1]
    if not np.all(np.isfinite(covariance)):  # NaN/inf frames: left as they are for the callers' checks to report
        return frames.copy()
    values, vectors = np.linalg.eigh(covariance)
    ratio = math.sqrt(n_times / x.shape[1])
    noise = max(values[0], 0.0) / (1 - ratio) ** 2
    kept = vectors[:, values > PROJECTION_EDGE * noise * (1 + ratio) ** 2].astype(np.float32)
    return ((kept @ (kept.T @ x)) + mean).reshape(frames.shape)


def context_slices(lookup, t, k, n_times, n_positions, offsets, precontrast_frames, fallback):
    """Slice indices of a target frame (t, k)'s input channels and of its pre-contrast guide frames.

    lookup: {(time_index, position_index): slice index} of one series; offsets: [(dt, dk)] of the channels, the
    target (0, 0) first (model.context_offsets); time and slice neighbours are reflected at the ends of the
    series (a series of one time point repeats its frame); a frame missing from the lookup (an irregular series)
    falls back to `fallback`, the target itself. precontrast_frames N: the first N time points at position k (as
    many as exist), averaged into the guide channel by the caller. Used by PairedSlices and by enhance.py, so
    both assemble the same stacks."""
    channels = [lookup.get((reflect(t + dt, n_times), reflect(k + dk, n_positions)), fallback) for dt, dk in offsets]
    guide = [lookup.get((f, k), fallback) for f in range(min(precontrast_frames, n_times))]
    return channels, guide


def position_frames(lookup, k, n_times, fallback):
    """Slice indices of every time point at position k (the stack temporal_projection takes), in time order;
    a missing frame falls back to `fallback`, the target itself."""
    return [lookup.get((f, k), fallback) for f in range(n_times)]


def context_stack(images, layout, offsets, precontrast_frames, projection=False):
    """(n, H, W) normalized frames of one series -> (n, H, W, C) model inputs, by context_slices (and
    temporal_projection, one per position, for a projection channel). layout: (time_index, position_index) per
    frame (preprocessing's Series.layout)."""
    lookup = {tk: i for i, tk in enumerate(layout)}
    n_times, n_positions = 1 + max(t for t, _ in layout), 1 + max(k for _, k in layout)
    projected = {}
    out = []
    for i, (t, k) in enumerate(layout):
        channels, guide = context_slices(lookup, t, k, n_times, n_positions, offsets, precontrast_frames, i)
        stack = [images[c] for c in channels] + ([np.mean([images[g] for g in guide], axis=0)] if guide else [])
        if projection:
            frames = tuple(position_frames(lookup, k, n_times, i))
            if frames not in projected:
                projected[frames] = temporal_projection(np.asarray(images)[list(frames)])
            stack.append(projected[frames][t])
        out.append(np.stack(stack, axis=-1))
    return np.stack(out).astype(np.float32)
