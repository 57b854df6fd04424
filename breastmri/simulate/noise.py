"""The noise of a magnitude MR series, measured from what the series has: air, repeated frames, or texture.

    noise = measure_noise(magnitude, layout)     # {"sigma", "method", "estimates", "masked_background", ...}

Three estimates, each in the units of the series:
- background: the chi-law fit of the air (air.estimate_background_sigma), the classic estimate when there is air;
- frame_difference: the robust spread of the difference of two time points at each slice position (the first
  two, both before contrast, or the first and the closest after it that shares none of its noise where the
  dynamic shares noise between neighbouring frames (view sharing); else the same from the last frame back),
  inside the body, divided
  by sqrt(2) (both frames carry independent noise of the same level). Dynamic series repeat their anatomy before
  contrast arrives, so this needs no air at all;
- wavelet: the finest wavelet detail coefficients (Donoho & Johnstone), biased high by textured tissue.

A background masked to 0 (Philips, anonymised or processed archives) leaves no air to fit: the few dark pixels
left are partial-volume edges and read the noise several times too low. When the zeros form a spike (more than
2% of the pixels, which a Rayleigh background cannot produce) or the fit finds no air, the frame difference
decides; the wavelet estimate comes only after both. An air fit above the frame differences' estimate by more
than AIR_FIT_EXCESS (dark tissue taken for air, or noise that varies over the image) is not taken either.
"""

import math
import warnings

import numpy as np
import scipy.fft

from breastmri.registration import register_shifts, shift_frames
from breastmri.simulate.air import MIN_BACKGROUND_PIXELS, estimate_background_sigma, masked_background

# The version of the rules above and below that decide a series' noise: preprocessing's arrays_hash holds it, so
# arrays degraded under earlier rules are made again rather than reused (2: view-sharing pairs, KS_TOLERANCE; 3:
# view-sharing pairs from the last frame back when fewer than two frames come before contrast, AIR_FIT_EXCESS 1.5;
# 4: the smooth change taken off pairs not known to come before contrast, masks and label maps skipped).
NOISE_RULES = 4


def wavelet_sigma(stack):
    """Fallback noise sigma when there is no air: median absolute deviation of the finest wavelet detail
    coefficients (Donoho & Johnstone 1994, via skimage.restoration.estimate_sigma), averaged over slices.
    Valid for Gaussian noise, i.e. for the high-SNR parts of a magnitude image; textured tissue biases it high."""
    from skimage.restoration import (
        estimate_sigma,  # slow import, only needed without a background
    )

    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    with warnings.catch_warnings():  # a near-constant map (a mask, a parametric map) has no detail: nan, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.mean([estimate_sigma(s) for s in stack]))


def frame_difference_sigma(magnitude, layout, differences=None):
    """Noise sigma from two time points of a series (difference_images: two before contrast that share no noise,
    or two such from the last frame back when the first two hold contrast arriving): 1.4826 x the median absolute
    deviation of their registered, scaled difference over the body (difference_images), at every slice position
    that has both, or nan (fewer than two time points, or too few body pixels). differences: difference_images'
    result, when the caller has it already."""
    found = difference_images(magnitude, layout) if differences is None else differences
    if found is None or int(found[1].sum()) < MIN_BACKGROUND_PIXELS:
        return float("nan")
    diff = (found[0] + found[2])[found[1]]  # the level with the trend a pair across contrast had taken off
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))))


# Where air is a few percent of the image (a pelvis or a chest filling the field of view) the air fit can settle on
# dark tissue and read the noise many times too high (ProstateX's TWIST with its values dithered: 42 for 3.5). Noise
# that varies over the image does the same to a sum of squares of many channels: prescan normalization divides the
# image by the coils' sensitivity, and a 16-channel air whose noise varies 1.5x (2x) over the image fits as 8 (6)
# channels of 1.7x (2x) the body's noise, above the noise anywhere in it. The frame differences read the tissue's
# own noise, the one the SNR ratio is of; their other failures read high (motion, contrast), and view sharing, which
# makes them read low, is read past (_noise_pair). The demo's and the cohort's air fits read at most 1.15x their frame
# differences, ProstateX's TWIST 0.8x: an air fit above AIR_FIT_EXCESS times the frame differences' is not taken.
AIR_FIT_EXCESS = 1.5


def measure_noise(magnitude, layout=None, disagreement=0.3, differences=None):
    """{"sigma", "method", "estimates": {method: value}, "masked_background": bool, "disagree": bool,
    "air_fit_rejected": bool (AIR_FIT_EXCESS), "background_channels": the chi law's channels the air fits (0: none)}.

    method: background where the air is real (not masked) and fits a chi law (Rayleigh for one channel, the sum of
    squares of several) at no more than AIR_FIT_EXCESS times the frame differences' estimate; else frame_difference
    where
    the series repeats its anatomy; else wavelet; else none (a noise-free image). disagree: two finite estimates
    differ by more than `disagreement` (30%), which preprocessing reports: one of them reads something else than
    the noise (masking, motion, correlated noise, texture)."""
    magnitude = np.asarray(magnitude, np.float32)
    # Below a millionth of the brightest value there is no noise worth the name (float round-off, edges).
    floor = 1e-6 * float(np.max(np.abs(magnitude), initial=0.0))
    masked = masked_background(magnitude)
    background, channels = estimate_background_sigma(magnitude, with_channels=True)
    estimates = {"background": background, "frame_difference": frame_difference_sigma(magnitude, layout, differences)}
    usable = {name: value for name, value in estimates.items() if np.isfinite(value) and value > floor}
    rejected = "background" in usable and "frame_difference" in usable \
        and usable["background"] > AIR_FIT_EXCESS * usable["frame_difference"]
    if rejected:
        usable.pop("background")  # the fit took dark tissue for air (see AIR_FIT_EXCESS)
    if "background" in usable and not masked:
        method = "background"
    elif "frame_difference" in usable:
        method = "frame_difference"
    else:
        estimates["wavelet"] = wavelet_sigma(magnitude)
        usable = {name: value for name, value in estimates.items() if np.isfinite(value) and value > floor}
        method = "wavelet" if "wavelet" in usable else "background" if "background" in usable else "none"
    # A noise-free (synthetic) image: the field model then has nothing to scale and adds no noise; use
    # degrade.model=gaussian for such data. preprocessing.py reports these series in its summary.
    sigma = usable.get(method, 0.0)
    values = [v for v in estimates.values() if np.isfinite(v) and v > floor]  # a rejected air fit among them
    disagree = len(values) > 1 and max(values) > (1 + disagreement) * min(values)
    return {"sigma": float(sigma), "method": method, "masked_background": masked, "disagree": bool(disagree),
            "air_fit_rejected": bool(rejected),
            "estimates": {name: round(float(v), 6) for name, v in estimates.items() if np.isfinite(v)},
            "background_channels": int(channels)}


def series_sigma(stack, zero=0.0, layout=None):
    """(sigma, method) of the noise of a normalized magnitude stack (n, H, W) whose zero signal lies at `zero`
    (measure_noise). What degrade() records for a series, and what main.py and enhance.py measure on a noisy
    series to undo the Rician bias of a self-supervised model's output (denoisers.correct_rician_mean)."""
    noise = measure_noise(np.asarray(stack, dtype=np.float32) - np.float32(zero), layout)
    return noise["sigma"], noise["method"]


# --------------------------------------------------------------------------------------------------------------
# The spatial spectrum of the noise. Scanners acquire a smaller matrix than they reconstruct (zero-filled) and
# filter k-space, so their noise is correlated between neighbouring pixels (a real breast DCE slice: 0.68 and 0.56
# along the two axes). The spectrum is modelled as separable, rows x cols, which is what a k-space window and
# zero-filling along each axis produce: two 1-D power spectra, each with mean 1 over its frequencies (a white axis
# is all ones), defined on the frequencies of the full image and resampled to any crop.
# --------------------------------------------------------------------------------------------------------------

WHITE = None  # a spectrum of None is white noise


QUIET_BLOCK, QUIET_LIMIT = 16, 1.3  # difference_images keeps the blocks whose spread is typical (_quiet_blocks)


def body_of(image, fraction=0.1):
    """Boolean, image's shape (..., H, W): where each (H, W) image exceeds `fraction` of its own 99th percentile.
    On a mean frame, the body: the region the noise of repeated frames is read in, and that the real-data
    statistics (evaluate.realism) and the real-data benchmark score."""
    image = np.asarray(image)
    return image > fraction * np.percentile(image, 99, axis=(-2, -1), keepdims=True)


# Contrast arrival (frames_before_contrast): the ENHANCING_SHARE of the body whose later half gains most over frame
# 0, their mean signal (smoothed by CONTRAST_BLUR_PX); contrast is there when it rises by more than MIN_ENHANCEMENT
# of frame 0's, and has arrived at the first of ARRIVAL_HOLD frames in a row that rise by more than ARRIVAL_SHARE
# of the largest rise.
ENHANCING_SHARE, CONTRAST_BLUR_PX, MIN_ENHANCEMENT, ARRIVAL_SHARE, ARRIVAL_HOLD = 0.02, 2.0, 0.2, 0.1, 3


def frames_before_contrast(frames, region=None):
    """How many frames come before contrast arrives in a dynamic `frames` (T, ..., H, W), zero signal at 0; all of
    them when its most-enhancing pixels (ENHANCING_SHARE of `region`, boolean (..., H, W); default the body of the
    mean frame) rise by less than MIN_ENHANCEMENT (no contrast: repeated acquisitions). Arrival is the first frame
    from which they stay above ARRIVAL_SHARE of their largest rise for ARRIVAL_HOLD frames (a pulsating vessel
    does not); smoothed first, frame 0's noise does not choose them. The later half of the dynamic must be mostly
    after contrast (a real DCE is: its post-contrast frames span minutes). The mean of a whole region is no
    detector: the bowel, a breathing chest or the heart's ghosts move it by several percent before contrast, and
    an enhancing lesion or vessel is a few percent of it (ProstateX's TWIST: the body mean stays within 3% of
    frame 0 for 30 frames; its most-enhancing pixels show the first traces at frame 8 and pass a tenth of their
    rise at frame 10). The onset read at a share of the rise lags the first traces: a caller that needs frames
    free of contrast stops a frame or two earlier."""
    from scipy import ndimage

    frames = np.asarray(frames, np.float64)
    region = body_of(frames.mean(axis=0)) if region is None else np.asarray(region, bool)
    if len(frames) < 2 or not region.any():
        return len(frames)
    smooth = ndimage.gaussian_filter(frames, (0,) * (frames.ndim - 2) + (CONTRAST_BLUR_PX,) * 2)
    gain = smooth[len(frames) // 2:].mean(axis=0) - smooth[0]
    chosen = region & (gain >= np.quantile(gain[region], 1 - ENHANCING_SHARE))
    curve = np.array([frame[chosen].mean() for frame in smooth])
    rise = curve - curve[0]
    if curve[0] <= 0 or rise.max() < MIN_ENHANCEMENT * curve[0]:
        return len(frames)
    above = rise > ARRIVAL_SHARE * rise.max()
    return next((t for t in range(len(frames)) if above[t:t + ARRIVAL_HOLD].all()), len(frames))


def difference_images(magnitude, layout, body_fraction=0.1):
    """(noise images (m, H, W), body masks (m, H, W)) from two time points at each slice position that has both,
    or None (fewer than two time points, or no body): the closest pair of frames before contrast whose noise is
    independent (_noise_pair: the first two, unless the dynamic shares noise between neighbouring frames), else
    the same from the last frame back (a breast DCE of one pre-contrast frame: the first pair holds contrast
    arriving, which would read as noise, and strongly correlated noise).

    magnitude: (n, H, W) with zero signal at 0; layout: (time_index, position_index) per slice. Each pair is
    _pair_difference's."""
    if layout is None or len(layout) != len(magnitude):
        return None
    index = {tk: i for i, tk in enumerate(layout)}
    times = sorted({t for t, _ in layout})
    if len(times) < 2:
        return None
    t0, t1, still = _noise_pair(magnitude, index, times)
    found = [_pair_difference(magnitude, index[(t0, k)], index[(t1, k)], body_fraction, detrend=not still)
             for t, k in layout if t == t0 and (t1, k) in index]
    found = [pair for pair in found if pair is not None]
    return tuple(np.stack(part) for part in zip(*found)) if found else None


def _pair_difference(magnitude, a, b, body_fraction=0.1, detrend=False):
    """(noise image (H, W), body mask (H, W), trend (H, W)) of slices a and b of `magnitude` (one position, two time
    points), or None (too little body). The second frame is first moved onto the first (registration.register_shifts and
    shift_frames: phase correlation to 1/20 px, then a Fourier shift, which is all-pass and keeps white noise white
    at the same level) and scaled to it (the median ratio in the body: a b-value or a T1 saturation changes the
    level of all tissue alike); the difference of two frames with independent noise of level sigma,
    d = (f1 - a f0) / sqrt(1 + a^2), then has level sigma. The body is where the mean of the two frames exceeds
    body_fraction of its 99th percentile and neither frame is masked to 0: there the magnitude is close to
    Gaussian. Blocks that change more than the typical block (a breathing chest, a beating heart and its ghosts:
    _quiet_blocks) and pixels more than 3.5 robust sigmas off (contrast arriving between the frames, motion left
    at an edge after the rigid shift) are left out of the mask. detrend: for frames not known to come before
    contrast (_noise_pair), the difference's smooth part (`trend`, a Gaussian of DETREND_PX within the body; 0
    otherwise) is taken off the noise image: contrast arriving or washing out changes tissue smoothly, and read as
    noise it made white noise look correlated (0.22-0.27 between neighbours where the noise had 0.01). Its spectrum
    is read without the trend; its level with it (frame_difference_sigma), since strongly correlated noise keeps
    much of its power in the smooth part (a neighbour correlation of 0.8 would read 9% low without it)."""
    pair = np.asarray(magnitude[[a, b]], np.float32)
    first = pair[0].astype(np.float64)
    second = shift_frames(pair[1:], register_shifts(pair)[1:])[0].astype(np.float64)
    mean = (first + second) / 2
    body = body_of(mean, body_fraction) & (first != 0) & (magnitude[b] != 0)
    if np.count_nonzero(body) < 16:
        return None
    scale = float(np.median(second[body]) / np.median(first[body]))
    diff = (second - scale * first) / math.sqrt(1 + scale * scale)
    trend = np.zeros_like(diff)
    if detrend:
        from scipy import ndimage

        weight = ndimage.gaussian_filter(body.astype(np.float64), DETREND_PX)
        trend = ndimage.gaussian_filter(np.where(body, diff, 0.0), DETREND_PX) / np.maximum(weight, 1e-6)
    body = _noise_only(diff - trend, body)
    return np.where(body, diff - trend, 0.0), body, np.where(body, trend, 0.0)


DETREND_PX = 4.0  # _pair_difference's detrend: the width of the smooth change taken off an unverified pair


def _noise_only(diff, body):
    """body (boolean (H, W)) less where the difference image `diff` is not noise: the blocks that change more than the
    typical block (_quiet_blocks) and pixels beyond 3.5 robust sigmas (contrast arriving, motion left at an edge),
    which would dominate the correlations and the spectrum read from it, means all."""
    body = body & _quiet_blocks(diff, body)
    centre = np.median(diff[body])
    spread = 1.4826 * np.median(np.abs(diff[body] - centre))
    return body & (np.abs(diff - centre) <= 3.5 * spread)


# View sharing (Siemens TWIST, GE DISCO, Philips keyhole) fills part of each frame's k-space from its neighbours, so
# neighbouring frames share part of their noise: their difference reads the noise low and more correlated in space
# than it is (ProstateX's TWIST: 3.37 from frames 0-1, 4.3-4.6 two frames apart). The differences of three equally
# spaced frames, d1 = f(g) - f(0) and d2 = f(2g) - f(g), correlate -0.5 when the frames' noise is independent and
# (2 r(g) - r(2g) - 1) / (2 - 2 r(g)) when frames g apart share a fraction r(g) of it, i.e. towards 0 (ProstateX:
# -0.19 at g = 1, -0.45 at g = 2). The noise is read from the closest frames whose differences correlate at most
# SHARED_NOISE.
SHARED_NOISE = -0.35
MIN_CORRELATION_PIXELS = 2000  # a correlation's standard error is about 1/sqrt(n): 0.02 here


def _noise_pair(magnitude, index, times, positions=3):
    """The two time points difference_images reads the noise from. frames_before_contrast, on the `positions`
    middle slice positions that have every time point, says which frames come before contrast: the first frame
    and the closest one whose noise is independent of it (the first gap g whose frames 0, g, 2g all come before
    contrast and differ as independent noise does: SHARED_NOISE; the next frame when none does, or when too few
    frames come before contrast to tell). With fewer than two frames before contrast the same from the last frame
    back over the dynamic's later half (frames -1, -1 - g, -1 - 2g), where the signal changes least. Returns
    (t0, t1, still): still when both frames are known to come before contrast (or the dynamic has none); a dynamic
    of fewer than 4 frames cannot tell, and its first two are taken, not still."""
    if len(times) < 4:  # too few frames for frames_before_contrast to choose its pixels from a later half
        return times[0], times[1], False
    complete = sorted({k for _, k in index if all((t, k) in index for t in times)})
    if not complete:
        return times[0], times[1], False
    middle = complete[len(complete) // 2 - positions // 2:][:positions]
    stack = np.stack([magnitude[[index[(t, k)] for k in middle]] for t in times])  # (T, P, H, W)
    before = frames_before_contrast(stack)
    still = before >= 2
    first, usable = (times, before) if still else (times[::-1], len(times) // 2)
    gap = next((g for g in range(1, (usable - 1) // 2 + 1)
                if _difference_correlation(magnitude, index, [first[0], first[g], first[2 * g]], middle)
                <= SHARED_NOISE), 1)
    return (*sorted((first[0], first[gap]), key=times.index), still)


def _difference_correlation(magnitude, index, frames, positions):
    """The correlation of the differences f1 - f0 and f2 - f1 of three frames over `positions`, where both are
    noise (the body of their mean, quiet blocks, within 3.5 robust sigmas), or nan with fewer than
    MIN_CORRELATION_PIXELS. All three are moved onto f0 first: f1 registered apart in each difference would read
    motion between the frames as shared noise."""
    first, second = [], []
    for k in positions:
        stack = np.asarray(magnitude[[index[(t, k)] for t in frames]], np.float32)
        moved = np.concatenate([stack[:1], shift_frames(stack[1:], register_shifts(stack)[1:])]).astype(np.float64)
        body = body_of(moved.mean(axis=0)) & np.all(stack != 0, axis=0)
        d1, d2 = moved[1] - moved[0], moved[2] - moved[1]
        for d in (d1, d2):
            if np.count_nonzero(body) < 16:
                break
            body = _noise_only(d, body)
        first.append(d1[body])
        second.append(d2[body])
    if sum(len(x) for x in first) < MIN_CORRELATION_PIXELS:
        return float("nan")
    return float(np.corrcoef(np.concatenate(first), np.concatenate(second))[0, 1])


def _quiet_blocks(diff, body, block=QUIET_BLOCK, limit=QUIET_LIMIT):
    """Boolean (H, W): the body blocks (block x block px, at least half body) whose robust spread of the difference
    is at most `limit` times the median block's. A breathing chest, a beating heart and its ghosts change between
    any two frames and would read as noise; the quiet blocks (the breast, still before contrast) hold the noise
    alone. All of the body when fewer than 4 blocks qualify."""
    spreads = {}
    for i in range(0, diff.shape[0] - block + 1, block):
        for j in range(0, diff.shape[1] - block + 1, block):
            inside = body[i:i + block, j:j + block]
            if inside.sum() >= block * block // 2:
                values = diff[i:i + block, j:j + block][inside]
                spreads[(i, j)] = np.median(np.abs(values - np.median(values)))
    if len(spreads) < 4:
        return np.ones_like(body)
    typical = float(np.median(list(spreads.values())))
    quiet = np.zeros_like(body)
    for (i, j), spread in spreads.items():
        quiet[i:i + block, j:j + block] = spread <= limit * typical
    return quiet


def lag_correlation(images, masks, axis, lag=1):
    """The correlation coefficient of images (m, H, W) with themselves shifted by `lag` pixels along `axis` (1: rows,
    2: columns), over the pixel pairs that both lie in the masks; nan with fewer than 3 pairs."""
    head, tail = [slice(None)] * 3, [slice(None)] * 3
    head[axis], tail[axis] = slice(None, -lag), slice(lag, None)
    both = masks[tuple(head)] & masks[tuple(tail)]
    x, y = images[tuple(head)][both], images[tuple(tail)][both]
    return float(np.corrcoef(x, y)[0, 1]) if x.size > 2 else float("nan")


def neighbour_correlation(images, masks):
    """[rows, cols]: the correlation of noise images (m, H, W) with their neighbouring pixel along each axis."""
    return [lag_correlation(images, masks, axis) for axis in (1, 2)]


def noise_spectrum(differences, max_lag=16):
    """{"rows": [...], "cols": [...]}: the separable power spectrum of a series' noise, from its frame differences
    (difference_images); WHITE (None) when the series does not repeat its anatomy (differences None).

    Along each axis, the correlation of the difference images with themselves shifted by 0..max_lag pixels is
    taken over the pixel pairs that both lie in the masks (so the mask's holes and edges do not enter, as they would
    a periodogram), tapered by a Hann window over the lags, and Fourier transformed into a power spectrum on the
    image's frequencies (negative values from the finite lags clipped), with mean 1."""
    if differences is None:
        return WHITE
    images, masks = differences[:2]
    spectrum = {}
    for name, axis in (("rows", 1), ("cols", 2)):
        n = images.shape[axis]
        lags = min(max_lag, n // 2 - 1)
        acf = np.zeros(n)
        acf[0] = 1.0
        for lag in range(1, lags + 1):
            value = lag_correlation(images, masks, axis, lag)
            taper = 0.5 * (1 + math.cos(math.pi * lag / (lags + 1)))
            acf[lag] = acf[n - lag] = taper * (value if np.isfinite(value) else 0.0)
        power = np.fft.fft(acf).real
        power = np.clip(power, 1e-3 * max(power.max(), 1e-12), None)
        spectrum[name] = (power / power.mean()).round(5).tolist()
    return spectrum


def spectrum_correlation(spectrum):
    """[rows, cols]: the lag-1 correlation of noise drawn with `spectrum` (the real part of the inverse Fourier
    transform of each axis' power, at lag 1 over lag 0); [0, 0] for white noise, 0 along an axis of one pixel."""
    if spectrum is WHITE:
        return [0.0, 0.0]
    out = []
    for name in ("rows", "cols"):
        acf = np.fft.ifft(np.asarray(spectrum[name], np.float64)).real
        out.append(float(acf[1] / acf[0]) if len(acf) > 1 else 0.0)  # an axis of one pixel has no neighbour
    return out


def _resampled(power, n):
    """A 1-D power spectrum on len(power) frequencies, read at the n frequencies of another length (periodic)."""
    power = np.asarray(power, np.float64)
    if len(power) == n:
        return power
    source, target = np.fft.fftfreq(len(power)), np.fft.fftfreq(n)
    order = np.argsort(source)
    values = np.interp(target, source[order], power[order], period=1.0)
    return values / values.mean()


def spectrum_power(spectrum, shape):
    """The separable power (H, W) of `spectrum` on an image of shape (..., H, W), unshifted FFT layout, mean 1."""
    h, w = shape[-2:]
    return np.outer(_resampled(spectrum["rows"], h), _resampled(spectrum["cols"], w))


def shaped_noise(shape, spectrum, rng):
    """Complex Gaussian noise of shape (..., H, W) with standard deviation 1 per channel and the given separable
    spectrum: white complex noise filtered in k-space by the square root of the power (mean power 1, so the
    per-pixel variance is unchanged). Returns (real, imag) float32 arrays; white noise when spectrum is WHITE."""
    if spectrum is WHITE:
        return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    # White complex noise is white in k-space too (an orthonormal transform keeps its statistics), so the draws are
    # taken as k-space samples directly, only where the spectrum is not zero (a zero-filled acquisition leaves most
    # of k-space empty): one inverse transform, a fraction of the draws.
    gain = np.sqrt(spectrum_power(spectrum, shape)).astype(np.float32)
    acquired = gain > 0
    kspace = np.zeros(shape, np.complex64)
    n = int(np.prod(shape[:-2], dtype=np.int64)) * int(acquired.sum())
    kspace[..., acquired] = (rng.standard_normal(n, dtype=np.float32) + 1j * rng.standard_normal(
        n, dtype=np.float32)).reshape(shape[:-2] + (-1,)) * gain[acquired]
    shaped = scipy.fft.ifft2(kspace, norm="ortho", workers=-1)
    return shaped.real.astype(np.float32), shaped.imag.astype(np.float32)


def acquired_lines(n, fraction):
    """k-space lines acquired along an axis of n pixels reconstructed from `fraction` of them (at least 1)."""
    return max(1, round(n * fraction))


def zero_filled_spectrum(rows, cols, fractions, taper=0.0):
    """The noise spectrum of an image reconstructed at rows x cols from the central fractions (rows, cols) of
    k-space, zero-filled, through a k-space filter: a Tukey window that is 1 over the inner (1 - taper) of the
    acquired frequencies and falls as a half cosine to 0 at their edge (taper 0: a box), 0 on the zero-filled
    frequencies. Power is the window squared, each axis scaled to mean 1."""
    spectrum = {}
    for name, n, fraction in (("rows", rows, fractions[0]), ("cols", cols, fractions[1])):
        keep = acquired_lines(n, fraction)
        frequency = np.rint(np.fft.fftfreq(n) * n)
        acquired = (frequency >= -(keep // 2)) & (frequency < keep - keep // 2)  # exactly `keep` lines, DC included
        edge = keep / 2 + 0.5  # the window reaches 0 half a line beyond the outermost acquired line
        flat = (1 - taper) * edge
        k = np.abs(frequency)
        window = np.where(k <= flat, 1.0, 0.5 * (1 + np.cos(np.pi * (k - flat) / max(edge - flat, 1e-9))))
        power = np.where(acquired, window, 0.0) ** 2
        spectrum[name] = (power / power.mean()).tolist()
    return spectrum
