"""The noise read from the air: the chi law of a magnitude image's dark pixels (noise.measure_noise's first estimate).

    sigma, channels = estimate_background_sigma(image, with_channels=True)
    mean = chi_mean(amplitude, sigma, channels)       # E[magnitude] of a sum of squares of `channels` channels
    masked_background(magnitude)                      # air set to 0 by the scanner or an archive

Air holds noise alone: Rayleigh for one receive channel, a chi law of 2n degrees of freedom for a sum of squares of
n. Its fit needs real air (not masked to 0) and more than a few percent of the image.
"""

import functools
import math

import numpy as np
from scipy import special

# Background selection for the fit: air pixels are taken as those below the law's 86% quantile (for one channel,
# Rayleigh, that is 2 sigma: 1 - exp(-2) = 86%), so the cut keeps most of the air while excluding the
# partial-volume pixels at the body edge, which sit just above the noise and bias a looser cut upwards (on a
# single-channel tree: +6-9% at 3 sigma, +2-4% at 2 sigma).
BACKGROUND_COVERAGE = -math.expm1(-2.0)
# The air of a sum of squares of n receive channels follows a chi law with 2n degrees of freedom (Constantinides,
# Atalar & McVeigh, MRM 1997;38:852-857); n = 1 is Rayleigh. The fit tries every n up to this many.
MAX_CHANNELS = 32
# A background must hold at least this many pixels and this fraction of the image to be trusted.
MIN_BACKGROUND_PIXELS = 200
MIN_BACKGROUND_FRACTION = 0.02
# How far (Kolmogorov-Smirnov) the dark pixels may lie from the fitted law. Real air is no perfect chi law (ghosts,
# partial volume, quantization): its fits miss by up to 0.03 (ProstateX's diffusion series; the demo's 0.003-0.016),
# far more than the 1% critical value of 10^5 pixels (0.005). Dark tissue mixed into the air misses by more:
# suppressed fat at 3 sigma beside the air by 0.06-0.08 (read as 1.3-2.2x the noise), as do ProstateX's VIBE
# series, whose fits read 8-15x their air.
KS_TOLERANCE = 0.04


# chi_mean's table: E[M]/sigma at A/sigma from 0 to CHI_TABLE_END, interpolated linearly (at most 1e-5 sigma off;
# a training batch reads it for every target pixel), and its expansion beyond.
CHI_TABLE_END = 50.0
_CHI_SNR = np.linspace(0.0, CHI_TABLE_END, 20001)


@functools.lru_cache(maxsize=None)
def _chi_table(channels):
    """E[M]/sigma of `channels` channels on _CHI_SNR, exact: sqrt(2) Gamma(N + 1/2) / Gamma(N) 1F1(-1/2; N; -snr^2/2)."""
    scale = math.sqrt(2.0) * math.exp(special.gammaln(channels + 0.5) - special.gammaln(channels))
    return scale * special.hyp1f1(-0.5, channels, -_CHI_SNR * _CHI_SNR / 2.0)


def chi_mean(amplitude, sigma, channels=1):
    """E[M] of the sum-of-squares magnitude of `channels` receive channels, M = sqrt(sum_i |A w_i + sigma n_i|^2)
    with unit weights (sum w_i^2 = 1) and complex unit Gaussians n_i, elementwise (float64, units of amplitude): a
    noncentral chi law of 2 `channels` degrees of freedom (Constantinides et al. 1997); one channel (or 0, no air
    to fit) is Rician.

    E[M] = sigma sqrt(2) Gamma(N + 1/2) / Gamma(N) 1F1(-1/2; N; -A^2 / (2 sigma^2)) (for N = 1 the Laguerre
    form of Gudbjartsson & Patz), tabulated once per N (_chi_table); above A/sigma = CHI_TABLE_END its expansion
    sqrt(A^2 + (2N - 1) sigma^2), good to 1e-5 sigma there."""
    channels = max(int(channels), 1)
    snr = np.abs(np.asarray(amplitude, dtype=np.float64)) / sigma
    tabulated = np.interp(snr, _CHI_SNR, _chi_table(channels))
    return sigma * np.where(snr > CHI_TABLE_END, np.sqrt(snr * snr + (2 * channels - 1)), tabulated)


def estimate_background_sigma(image, with_channels=False):
    """Noise sigma of a magnitude image (one slice (H, W) or a stack (n, H, W)) from its air background.

    In air the magnitude of complex Gaussian noise is Rayleigh(sigma) for one receive channel (Henkelman, Med Phys
    1985;12:232-233; Gudbjartsson & Patz 1995) and a chi law with 2n degrees of freedom and the same scale for the
    sum of squares of n channels; in tissue both are close to Gaussian with that sigma. For each n up to
    MAX_CHANNELS, as Sijbers et al. (MRI 1998;16:87-90) do for Rayleigh, we start from the mode of the histogram of
    the dark pixels (the mode of the chi law is sigma sqrt(2n - 1)), then refine with the second moment of the
    pixels below the law's 86% quantile, corrected for the truncation, iterated to a fixed point; the n whose
    truncated law is closest to the pixels (Kolmogorov-Smirnov) wins. The dark part of the histogram is
    dominated by the air peak as long as air is more than a few percent of the image (tested for 20-60%).

    Returns sigma in the units of `image` (zero signal must be 0: pass magnitudes, not shifted values), or
    nan when there is no usable background (too few dark pixels, a background that fits no chi law, or one of
    exact zeros as written by masking or zero padding). Exact zeros are ignored when they are a spike (> 2% of
    the pixels), which no chi background can produce unless sigma is below one integer step. with_channels:
    return (sigma, n) instead (n = 0 with nan). Channels whose noise is correlated, or weighted, read as fewer
    channels of a larger sigma, which is still the noise of the combined image in tissue."""
    nothing = (float("nan"), 0) if with_channels else float("nan")
    x = np.asarray(image, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return nothing
    x = x[x >= 0]  # magnitudes; negative values are not noise of any kind we model
    if masked_background(x):
        x = x[x != 0]
    if x.size > 1_000_000:  # a regular subsample is plenty for a histogram and a second moment
        x = x[:: x.size // 500_000]
    if x.size < MIN_BACKGROUND_PIXELS:
        return nothing
    x.sort()
    # The mode of the histogram of the darker half of the pixels. If air is < 50% of the image, the range reaches
    # into tissue but the narrow, tall air peak still dominates; if air is > 50%, the median lies in the air.
    half = x[: x.size // 2 + 1]
    # Stored DICOM values are integers: detect the quantization step of the dark pixels (0 for continuous data);
    # it enters as Sheppard's correction (rounding adds step^2/12 to the mean square) and in the fit test below.
    distinct = np.unique(half)
    step = float(np.min(np.diff(distinct))) if 4 * distinct.size < half.size and distinct.size > 1 else 0.0
    bins = int(np.clip(np.sqrt(half.size), 16, 512))
    counts, edges = np.histogram(half, bins=bins)
    counts = np.convolve(counts, np.ones(3) / 3, mode="same")  # tame single-bin noise
    peak = int(np.argmax(counts))
    mode = 0.5 * (edges[peak] + edges[peak + 1])
    cumulative = np.cumsum(x * x)
    best = None
    for channels in range(1, MAX_CHANNELS + 1):
        fit = _chi_fit(x, cumulative, channels, mode / math.sqrt(2 * channels - 1), step)
        if fit is not None and (best is None or fit[1] < best[1]):
            best = (fit[0], fit[1], fit[2], channels)
    if best is None:
        return nothing
    sigma, distance, n_background, channels = best
    # Is it a chi law at all? A constant image, a flat tissue region or uniform clutter also converge to some
    # "sigma"; the Kolmogorov-Smirnov distance rejects them. The tolerance is the 1% critical value
    # 1.63/sqrt(n), floored at KS_TOLERANCE.
    if distance > max(KS_TOLERANCE, 1.63 / math.sqrt(n_background)):
        return nothing
    return (float(sigma), channels) if with_channels else float(sigma)


def _chi_fit(x, cumulative, channels, sigma, step):
    """(sigma, Kolmogorov-Smirnov distance, background pixels) of the chi law of 2 `channels` degrees of freedom
    fitted to the sorted pixels x below its 86% quantile, from a starting sigma; None when no background holds.
    E[x^2; x < c] for x^2 / sigma^2 ~ chi2(k) is k sigma^2 F_{k+2}(c^2 / sigma^2) (F: the chi2 CDF)."""
    k = 2 * channels
    cut = math.sqrt(2 * special.gammaincinv(k / 2, BACKGROUND_COVERAGE))  # the quantile, in units of sigma
    truncated_m2 = k * special.gammainc(k / 2 + 1, cut * cut / 2) / BACKGROUND_COVERAGE
    for _ in range(100):
        n_below = int(np.searchsorted(x, cut * sigma))
        if n_below < MIN_BACKGROUND_PIXELS:
            return None
        new = math.sqrt(max(cumulative[n_below - 1] / n_below - step**2 / 12, 0.0) / truncated_m2)
        if new == 0:
            return None
        if abs(new - sigma) <= 1e-6 * sigma:
            sigma = new
            break
        sigma = new
    background = x[: int(np.searchsorted(x, cut * sigma))]
    if background.size < max(MIN_BACKGROUND_PIXELS, MIN_BACKGROUND_FRACTION * x.size) or not sigma > 0:
        return None
    # For integer data the comparison is made at the distinct values, with the model CDF taken half a
    # quantization step higher.
    values, counts = np.unique(background, return_counts=True)
    empirical = np.cumsum(counts) / background.size
    cdf = special.gammainc(k / 2, (values + step / 2) ** 2 / (2 * sigma**2)) / BACKGROUND_COVERAGE
    if step:
        distance = np.max(np.abs(empirical - cdf))
    else:
        distance = max(np.max(np.abs(empirical - cdf)), np.max(np.abs(empirical - counts / background.size - cdf)))
    return sigma, float(distance), background.size


def masked_background(magnitude):
    """True when more than 2% of a series' pixels are exactly 0: an air the scanner or an archive set to 0, or noise
    of a few integer counts rounded to 0 (ProstateX's VIBE series: 2.3-2.6%, scattered). The air's fit then leaves
    the zeros out (a spike no chi law of that sigma holds); enhance.py keeps 0 only where they form regions
    (masked_region)."""
    magnitude = np.asarray(magnitude)
    return bool(np.count_nonzero(magnitude == 0) > 0.02 * magnitude.size)


MASK_BLOCK = 5  # masked_region: a zero belongs to a mask when a MASK_BLOCK x MASK_BLOCK block of zeros holds it


def masked_region(magnitude):
    """Boolean like `magnitude` (n, H, W): the pixels of regions set to 0 (every zero within a MASK_BLOCK-square
    block of zeros), or None when the series is not masked (masked_background). Scattered zeros, noise rounded to
    0 in dark air or tissue, are not part of it."""
    from scipy import ndimage

    magnitude = np.asarray(magnitude)
    if not masked_background(magnitude):
        return None
    block = np.ones((1,) * (magnitude.ndim - 2) + (MASK_BLOCK, MASK_BLOCK), bool)
    region = ndimage.binary_opening(magnitude == 0, structure=block)
    return region if region.any() else None
