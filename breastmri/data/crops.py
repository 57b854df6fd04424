"""What a training sample is cut and turned by: a tissue-preferring crop window and one of the square's symmetries.
PairedSlices (supervised) and selfsup.selfsup_sample (self-supervised) draw both from the batch's generator."""

import numpy as np
from scipy import ndimage


def crop_position(clean, rng, patch, candidates, threshold):
    """Top-left (y, x) of a patch x patch crop of the (h, w) image `clean`: the best of `candidates` random
    positions by the count of pixels above `threshold` (tissue), so few crops are wasted on air while crops still
    cover the whole body (a best-of-few, not an argmax)."""
    h, w = clean.shape
    ys = rng.integers(0, h - patch + 1, size=candidates)
    xs = rng.integers(0, w - patch + 1, size=candidates)
    if candidates == 1:
        return int(ys[0]), int(xs[0])
    # Summed-area table of the tissue mask: each candidate's count is 4 lookups.
    tissue = np.asarray(clean, dtype=np.float32) > threshold
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = tissue.cumsum(0).cumsum(1)
    counts = table[ys + patch, xs + patch] - table[ys, xs + patch] - table[ys + patch, xs] + table[ys, xs]
    best = int(np.argmax(counts))  # ties (e.g. all air) keep the first, still a random position
    return int(ys[best]), int(xs[best])


def symmetry(noisy, clean, rng):
    """The same random flip / 90-degree rotation of both images (only 180 degrees for non-square ones); arrays
    (h, w) or (h, w, C), clean may be None (only noisy is turned)."""
    square = noisy.shape[0] == noisy.shape[1]
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    flip = bool(rng.integers(2))
    out = [None if a is None else np.rot90(a, turns) for a in (noisy, clean)]
    if flip:
        out = [None if a is None else a[:, ::-1] for a in out]
    return tuple(out)


FINE_SCALE_PX = (3.0, 6.0)  # the smooth fields whose zero crossings draw the lines: their correlation length
FINE_WIDTH = 0.08           # a line is where |field| < ~FINE_WIDTH (unit-variance field): about a pixel wide


def fine_structure(rng, shape, amplitude, gain=None):
    """Lines s of shape (H, W), a fraction of the signal to add to it (signal (1 + s)): sparse thin curvilinear lines,
    bright (vessels) and dark (septa), each the zero crossings of a smooth random field, their contrast drawn
    around `amplitude` (relative to the signal). Real anatomy's fine detail is such a few large values (its
    high-pass kurtosis 13 on a real dynamic, about 3 on the phantom); a network that never saw any learns to smooth
    it away. gain: (H, W) k-space amplitude of the acquisition (unshifted FFT layout, at most 1, 1 at the centre),
    which the lines are filtered by, so that they are about as sharp as the scan's band limit allows (a product of
    two band-limited images reaches a little beyond it)."""
    s = np.zeros(shape, np.float64)
    for sign in (1.0, -1.0):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(*FINE_SCALE_PX), mode="wrap")
        field /= max(float(field.std()), 1e-12)
        s += sign * amplitude * rng.uniform(0.5, 1.5) * np.exp(-(field / FINE_WIDTH) ** 2)
    if gain is not None:
        s = np.fft.ifft2(np.fft.fft2(s) * gain).real
    return s.astype(np.float32)
