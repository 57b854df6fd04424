"""Rigid in-plane registration of the frames of one slice position, and moving frames by sub-pixel shifts.

    shifts = register_shifts(frames)        # (T, 2): what moves each of the (T, H, W) frames onto the first
    aligned = shift_frames(frames, shifts)  # a Fourier shift: all-pass, so each frame's noise keeps its spectrum

Below every stage: the temporal context and its projection (data.context), the denoisers' multi-frame runs, the
noise-free self-supervised targets and the noise measurement from frame differences (simulate.noise) all register
with these, so every part of the pipeline aligns frames the same way.
"""

import numpy as np

# Rigid in-plane registration: phase correlation to 1 / REGISTER_UPSAMPLE px; a shift larger than
# REGISTER_MAX_SHIFT px is taken as a failed registration (a frame whose contrast changed too much) and left at 0;
# REGISTER_PAD px of reflection keep the Fourier shift from wrapping one edge onto the other.
REGISTER_UPSAMPLE, REGISTER_MAX_SHIFT, REGISTER_PAD = 20, 10.0, 18  # pad >= the largest shift + 8


def register_shifts(frames, upsample=REGISTER_UPSAMPLE, max_shift=REGISTER_MAX_SHIFT):
    """(T, 2) float32 in-plane shifts (rows, cols) that move each of the (T, H, W) frames onto the first:
    shift_frames(frames, shifts) aligns them. The peak of the phase correlation (skimage), refined to 1 / upsample
    px; rigid, so elastic motion is left. The first frame's shift is 0; a shift past max_shift px is set to 0.
    Plain cross-correlation, not phase-normalized: whitening weights the noise-only high frequencies like the
    anatomy's, which pulled sub-pixel shifts of smooth tissue towards 0 (1.2 px found as 0.2; on the benchmark
    slices 33.57 dB instead of 33.62 for the projection)."""
    from scipy import fft
    from skimage.registration import phase_cross_correlation

    frames = np.asarray(frames, np.float32)
    shifts = np.zeros((len(frames), 2), np.float32)
    if not np.all(np.isfinite(frames)):  # nothing to register; the callers report non-finite values
        return shifts
    # The correlation wraps around: anatomy cut by the image edge (a chest wall, a crop through tissue) adds a
    # peak at zero shift and pulls the estimate towards it (a 96 px crop: a third of the shift). Removing the mean
    # and tapering the edges fixed that but biased static frames by up to 0.25 px where contrast arrived
    # (tests/test_context.py's tissues), so it is left as it is: the demo's anatomy sits inside air.
    spectra = fft.fft2(frames)
    flat = np.ptp(frames.reshape(len(frames), -1), axis=1) == 0  # no anatomy to register (a flat frame)
    for t in range(1, len(frames)):
        if flat[0] or flat[t]:
            continue
        shift = phase_cross_correlation(spectra[0], spectra[t], space="fourier", upsample_factor=upsample,
                                      normalization=None)[0]
        if np.all(np.isfinite(shift)) and np.abs(shift).max() <= max_shift:
            shifts[t] = shift
    return shifts


def shift_frames(frames, shifts, spline=False, pad=REGISTER_PAD):
    """(T, H, W) frames, frame t moved by shifts[t] px (out[y] = in[y - shift]), float32.

    A Fourier shift by default: it keeps each frame's noise spectrum, which the projection's noise estimate and
    Marchenko-Pastur edge rely on, and shifting back undoes it up to the ringing of what crossed the edges (RMS <
    10% of the noise 12 px inside the edge, tested); reflected by `pad` px so nothing wraps around. spline: a
    quintic spline instead (_spline_shift: scipy.ndimage.shift's values, separable), local to within 1e-6 past a
    few px, so a window of the output needs only a margin of the input; it smooths a sub-pixel shift's high
    frequencies slightly. The registered projection moves the frames with the first and its output back with the
    second: on the 16 benchmark slices 33.97 dB, against 33.61 Fourier both ways, 33.84 spline both ways, 33.29
    cubic spline both ways."""
    frames, shifts = np.asarray(frames, np.float32), np.asarray(shifts, np.float32).reshape(-1, 2)
    if not np.any(shifts):
        return frames.copy()
    if spline:
        return np.stack([_spline_shift(f, s) for f, s in zip(frames, shifts)])
    from scipy import fft

    pad = max(0, min(pad, min(frames.shape[1:]) - 2))
    # odd sides: no Nyquist frequency, whose phase a real output cannot carry (the shift would not be undone); of
    # only the factors 3, 5, 7 as well, for speed (192 + 2 x 18 + 1 = 229 is prime: 38 ms for 8 frames, 243: 7 ms)
    padded = np.pad(frames, [(0, 0)] + [(pad, _odd_fast_length(n + 2 * pad) - n - pad) for n in frames.shape[1:]],
                    mode="reflect")
    h, w = padded.shape[1:]
    # the phase ramp is separable: one exponential per axis and frame, their outer product
    ramp = (np.exp(-2j * np.pi * shifts[:, 0, None] * np.fft.fftfreq(h)).astype(np.complex64)[:, :, None]
            * np.exp(-2j * np.pi * shifts[:, 1, None] * np.fft.rfftfreq(w)).astype(np.complex64)[:, None, :])
    moved = fft.irfft2(fft.rfft2(padded) * ramp, s=(h, w))
    return np.ascontiguousarray(moved[:, pad:pad + frames.shape[1], pad:pad + frames.shape[2]], dtype=np.float32)


def _spline_shift(frame, shift):
    """(H, W) frame moved by shift (rows, cols) px with a quintic B-spline, mirrored at the edges, float32: what
    scipy.ndimage.shift(frame, shift, order=5, mode="mirror") returns (to float32 round-off, tested), one axis at
    a time. A translation moves every pixel by the same fraction, so along each axis the spline's 6 weights are
    the same everywhere: 6 shifted adds instead of ndimage's 36-point 2-D kernel per pixel (512^2: 21 ms, not 83)."""
    from scipy import ndimage

    out = np.asarray(frame, np.float64)
    for axis, s in enumerate(np.asarray(shift, np.float64)):
        if s == 0:
            continue
        coefficients = ndimage.spline_filter1d(out, order=5, axis=axis, mode="mirror")
        start = int(np.floor(-s))  # out[i] reads the spline at i - s = i + start + fraction
        fraction = -s - start
        lo, n = max(0, 2 - start), out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (lo, max(0, start + 3))
        coefficients = np.pad(coefficients, pad, mode="reflect")  # numpy's reflect is ndimage's mirror
        out = sum(_bspline5(fraction - j) * np.take(coefficients, range(lo + start + j, lo + start + j + n), axis)
                  for j in range(-2, 4))
    return out.astype(np.float32)


def _bspline5(t):
    """The centred quintic B-spline at t."""
    t = abs(t)
    return sum(c * max(k - t, 0.0) ** 5 for c, k in ((1, 3), (-6, 2), (15, 1))) / 120


def _odd_fast_length(n):
    """The smallest odd number >= n whose only prime factors are 3, 5 and 7 (a fast FFT length)."""
    m = n + 1 - n % 2
    while True:
        k = m
        for p in (3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2
