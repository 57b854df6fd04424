"""breastmri/simulate/degrade.py: the 1.5T simulation, checked against the statistics it claims (Rician noise, SNR ratio,
background sigma), on synthetic magnitude data with a known native noise level."""

import math

import numpy as np
import pytest

from breastmri.config import ConfigError, load_config
from breastmri.simulate.air import estimate_background_sigma
from breastmri.simulate.degrade import (
    add_noise,
    decorrelated_target,
    degrade,
    expected_target,
    kspace_crop,
    series_rng,
    snr_ratio,
)


def rician(signal, sigma, rng):
    """Magnitude of signal + complex Gaussian noise (std sigma per channel)."""
    return np.abs(signal + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)))


def flat_phantom(n=8, size=64, body=44, signal=1.0, sigma=0.02, seed=0):
    """(n, size, size) float32: a flat square of `signal` (side `body`) in air, with native Rician noise.
    Returns (clean, inner) where inner is a boolean mask of the flat region away from its edges."""
    s = np.zeros((n, size, size))
    a = (size - body) // 2
    s[:, a:a + body, a:a + body] = signal
    inner = np.zeros((n, size, size), bool)
    inner[:, a + 4:a + body - 4, a + 4:a + body - 4] = True
    return rician(s, sigma, np.random.default_rng(seed)).astype(np.float32), inner


def textured_phantom(shape, air_fraction, sigma, seed=0):
    """Magnitude image(s) whose air (background) is `air_fraction` of the pixels; the body has a texture
    between 0.3 and 1.0, so it is not a single flat level."""
    rows, cols = shape[-2:]
    y, x = np.mgrid[:rows, :cols]
    r = np.hypot((y - rows / 2) / (rows / 2), (x - cols / 2) / (cols / 2))
    body = r < np.quantile(r, 1 - air_fraction)
    s = np.where(body, 0.3 + 0.7 * np.abs(np.sin(x / 5.0) * np.cos(y / 7.0)), 0.0)
    return rician(np.broadcast_to(s, shape), sigma, np.random.default_rng(seed))


def snr(stack, mask):
    values = stack[mask]
    return values.mean() / values.std()


def field_cfg(**changes):
    return load_config(overrides=[{"degrade": changes}])["degrade"]


def test_snr_ratio_from_fields_and_override():
    assert snr_ratio(field_cfg()) == pytest.approx(0.5)  # 1.5 T / 3 T, exponent 1
    assert snr_ratio(field_cfg(field_exponent=0.5)) == pytest.approx(math.sqrt(0.5))
    assert snr_ratio(field_cfg(snr_ratio=0.7)) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="snr_ratio"):
        snr_ratio(field_cfg(target_field_t=7.0))  # cannot simulate a higher SNR by adding noise
    with pytest.raises(ConfigError):
        snr_ratio(field_cfg(snr_ratio=0))


def test_series_rng_is_reproducible_and_per_series():
    a = series_rng(0, "1.2.3").standard_normal(5)
    assert np.array_equal(a, series_rng(0, "1.2.3").standard_normal(5))
    assert not np.array_equal(a, series_rng(0, "1.2.4").standard_normal(5))
    assert not np.array_equal(a, series_rng(1, "1.2.3").standard_normal(5))


@pytest.mark.parametrize("air_fraction", [0.2, 0.4, 0.6])
@pytest.mark.parametrize("shape", [(64, 64), (4, 48, 80)])
def test_background_sigma_within_15_percent(air_fraction, shape):
    sigma = 0.03
    image = textured_phantom(shape, air_fraction, sigma, seed=int(air_fraction * 10))
    assert estimate_background_sigma(image) == pytest.approx(sigma, rel=0.15)


def test_background_sigma_on_integer_dicom_values():
    """Stored DICOM values are integers; sigma of a few units must still come out right."""
    body = 800.0 * textured_phantom((96, 96), 0.4, sigma=0.0)  # noise-free texture, air = 0
    for sigma in (3.0, 12.0):
        image = np.round(rician(body, sigma, np.random.default_rng(3)))
        assert estimate_background_sigma(image) == pytest.approx(sigma, rel=0.15)


def test_background_sigma_is_nan_without_background():
    assert math.isnan(estimate_background_sigma(np.zeros((64, 64))))  # masked / zero-filled air
    assert math.isnan(estimate_background_sigma(np.ones((64, 64))))  # no air at all
    flat_tissue = 1.0 + 0.01 * np.random.default_rng(0).standard_normal((64, 64))
    assert math.isnan(estimate_background_sigma(flat_tissue))


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_field_model_reaches_the_configured_snr_ratio(ratio):
    clean, inner = flat_phantom(sigma=0.02)
    noisy, info = degrade(clean, field_cfg(snr_ratio=ratio), series_rng(0, "s"))
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert snr(noisy, inner) / snr(clean, inner) == pytest.approx(ratio, rel=0.10)
    assert info["model"] == "field" and info["sigma_method"] == "background"
    assert info["sigma_source"] == pytest.approx(0.02, rel=0.15)
    assert info["sigma_added"] == pytest.approx(info["sigma_source"] * math.sqrt(1 / ratio**2 - 1), rel=1e-6)
    # The air of the result is Rayleigh again, at the target noise level.
    assert estimate_background_sigma(noisy) == pytest.approx(0.02 / ratio, rel=0.15)
    assert noisy.min() >= 0  # a magnitude


def test_field_model_default_halves_snr_from_3t_to_1_5t():
    clean, inner = flat_phantom(sigma=0.01, seed=2)
    noisy, info = degrade(clean, field_cfg(), series_rng(0, "default"))
    assert info["snr_ratio"] == pytest.approx(0.5)
    assert snr(noisy, inner) / snr(clean, inner) == pytest.approx(0.5, rel=0.10)


def test_field_model_with_coarser_matrix_keeps_the_snr_ratio_and_blurs():
    """Truncating k-space rings near edges (as a real coarse matrix does), so the noise is measured across
    slices that share the same signal: pooled per-pixel std, which the deterministic ringing does not enter."""
    clean, inner = flat_phantom(n=16, sigma=0.02, seed=4)
    noisy, _ = degrade(clean, field_cfg(resolution_scale=0.5), series_rng(0, "lowres"))

    def snr_across_slices(stack):
        values = stack[:, inner[0]].astype(np.float64)
        return values.mean() / np.sqrt(values.var(axis=0, ddof=1).mean())

    assert snr_across_slices(noisy) / snr_across_slices(clean) == pytest.approx(0.5, rel=0.10)
    # The edge of the square is spread over more pixels: mean edge step over rows is smaller.
    row = noisy.mean(axis=(0, 1))
    assert np.max(np.diff(row)) < 0.8 * np.max(np.diff(clean.mean(axis=(0, 1))))


def test_field_model_respects_the_zero_signal_offset():
    """Normalized data has zero signal at -lo/(hi-lo): shifting clean and zero together shifts the result."""
    clean, _ = flat_phantom(sigma=0.02, seed=5)
    a, _ = degrade(clean, field_cfg(), series_rng(0, "z"))
    b, _ = degrade(clean - 0.1, field_cfg(), series_rng(0, "z"), zero=-0.1)
    np.testing.assert_allclose(b, a - 0.1, atol=1e-5)


def test_gaussian_model_sigma_within_5_percent():
    clean, _ = flat_phantom(sigma=0.02, seed=6)
    cfg = load_config(overrides=["degrade.model=gaussian", "degrade.sigma=0.05"])["degrade"]
    noisy, info = degrade(clean, cfg, series_rng(0, "g"))
    difference = noisy.astype(np.float64) - clean
    assert difference.std() == pytest.approx(0.05, rel=0.05)
    assert abs(difference.mean()) < 0.005
    assert info["sigma_added"] == 0.05 and info["model"] == "gaussian"
    assert info["snr_ratio"] == pytest.approx(info["sigma_source"] / math.hypot(info["sigma_source"], 0.05))


def test_degrade_is_reproducible_per_series():
    clean, _ = flat_phantom(n=2, sigma=0.02)
    a, _ = degrade(clean, field_cfg(), series_rng(3, "uid-a"))
    b, _ = degrade(clean, field_cfg(), series_rng(3, "uid-a"))
    c, _ = degrade(clean, field_cfg(), series_rng(3, "uid-b"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_fallbacks_without_background():
    rng = np.random.default_rng(0)
    all_tissue = (0.8 + 0.02 * rng.standard_normal((2, 64, 64))).astype(np.float32)  # no air in the FOV
    _, info = degrade(all_tissue, field_cfg(), series_rng(0, "w"))
    assert info["sigma_method"] == "wavelet"
    assert info["sigma_source"] == pytest.approx(0.02, rel=0.25)
    noise_free = np.zeros((2, 32, 32), np.float32)
    noise_free[:, 8:24, 8:24] = 1.0
    noisy, info = degrade(noise_free, field_cfg(), series_rng(0, "n"))
    assert info["sigma_method"] == "none" and info["sigma_added"] == 0
    np.testing.assert_allclose(noisy, noise_free, atol=1e-6)


def test_kspace_crop():
    image = np.random.default_rng(0).random((2, 32, 48)).astype(np.float32)
    same, kept = kspace_crop(image, 1.0)
    assert kept == 1.0
    np.testing.assert_allclose(same.real, image, atol=1e-5)
    low, kept = kspace_crop(image, 0.5)
    assert kept == pytest.approx(0.25)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(low), axes=(-2, -1)))
    keep = np.zeros((32, 48), bool)
    keep[16 - 8:16 + 8, 24 - 12:24 + 12] = True
    assert spectrum[:, ~keep].max() < 1e-3 * spectrum.max()


def test_unknown_model_is_an_error():
    with pytest.raises(ConfigError, match="degrade.model"):
        degrade(np.zeros((1, 8, 8), np.float32), field_cfg(model="poisson"), series_rng(0, "x"))


@pytest.mark.parametrize("model", ["field", "gaussian"])
def test_decorrelated_target_noise_is_uncorrelated_with_the_input(model):
    # The 3T image's noise reaches the degraded input, so the plain 3T target's noise is correlated with the
    # input's (by sigma_3T / sigma_1.5T = 0.5 here); the decorrelated target's is not, at the predicted variance.
    truth = np.zeros((16, 64, 64), np.float32)
    truth[:, 8:56, 8:56] = 0.6
    inner = np.zeros(truth.shape, bool)
    inner[:, 10:54, 10:54] = True
    clean = rician(truth, 0.02, np.random.default_rng(3)).astype(np.float32)
    noisy, info = degrade(clean, field_cfg(model=model, sigma=0.0346), series_rng(0, model))
    target = decorrelated_target(clean, noisy, info["sigma_source"], info["sigma_added"])
    n_input, n_3t, n_target = (a[inner] - truth[inner] for a in (noisy, clean, target))
    assert np.corrcoef(n_input, n_3t)[0, 1] == pytest.approx(0.5, abs=0.05)
    assert abs(np.corrcoef(n_input, n_target)[0, 1]) < 0.03
    c = (info["sigma_source"] / info["sigma_added"]) ** 2
    assert n_target.std() == pytest.approx(0.02 * math.sqrt(1 + c), rel=0.05)
    assert abs(n_target.mean()) < 0.002  # no bias in tissue
    with pytest.raises(ValueError, match="added noise"):
        decorrelated_target(clean, clean, 0.02, 0.0)


@pytest.mark.parametrize("channels", [1, 4, 8])
def test_expected_target_is_the_mean_of_a_sum_of_squares_magnitude(channels):
    # N channels of unit weights, each with complex noise of sigma, combined by root sum of squares (the phantom's
    # scanner); the target is the mean magnitude over draws, floor included, from no signal to high SNR.
    sigma, zero = 0.02, -0.1
    amplitude = np.array([0.0, 0.02, 0.05, 0.1, 0.3, 1.0, 3.0])
    rng = np.random.default_rng(channels)
    draws = rng.standard_normal((2, channels, 200_000, 1)) * sigma
    weight = 1 / math.sqrt(channels)
    magnitude = np.sqrt(((amplitude * weight + draws[0]) ** 2 + draws[1] ** 2).sum(axis=0))
    target = expected_target(amplitude + zero, sigma, channels, zero) - zero
    assert target == pytest.approx(magnitude.mean(axis=0), abs=2e-4)
    assert target[0] > 0.02 * 1.2 * math.sqrt(channels)  # the floor grows with the channels
    assert expected_target(amplitude, sigma, 0) == pytest.approx(expected_target(amplitude, sigma, 1))  # no air


def test_the_added_noise_raises_the_mean_square_by_its_own_power_whatever_the_channels():
    # What the degraded input adds to the expected 3T magnitude does not depend on the 3T image's channels: the
    # mean square grows by 2 sigma_added^2 for one channel and for eight, so the target transfers between floors.
    sigma, added = 0.02, 0.035
    amplitude = np.full((400_000,), 0.05, np.float32)
    rng = np.random.default_rng(1)
    for channels in (1, 8):
        noise = rng.standard_normal((2, channels, amplitude.size)) * sigma
        source = np.sqrt(((amplitude / math.sqrt(channels) + noise[0]) ** 2 + noise[1] ** 2).sum(axis=0))
        noisy = add_noise(source.astype(np.float32), "field", added, rng)
        assert (noisy.astype(np.float64) ** 2).mean() - (source.astype(np.float64) ** 2).mean() == pytest.approx(
            2 * added ** 2, rel=0.03)


@pytest.mark.parametrize("pre_contrast", [1, 4])
def test_noise_is_read_from_two_frames_without_contrast_arriving(pre_contrast):
    """A breast DCE of one pre-contrast frame (Duke, I-SPY): its first two frames differ by the contrast arriving,
    which read as noise (and as strongly correlated noise); the last two then give the noise. With four frames
    before contrast the first two do, as before."""
    from breastmri.simulate.noise import frame_difference_sigma, frames_before_contrast

    rng = np.random.default_rng(3)
    y, x = np.mgrid[:64, :64]
    body = np.hypot(y - 32, x - 32) < 26
    enhancing = 40.0 * np.exp(-((y - 28.0) ** 2 + (x - 36.0) ** 2) / (2 * 12.0 ** 2))  # a third of the body
    times, positions, sigma = 8, 2, 2.0
    frames, layout = [], []
    for t in range(times):
        # enhancement arrives at `pre_contrast`, broad and smooth, then grows slowly
        share = 0.0 if t < pre_contrast else 0.7 + 0.3 * (t - pre_contrast) / times
        for k in range(positions):
            signal = 100.0 + enhancing * share + 20.0 * np.sin(x / 5.0 + k)
            frames.append(signal * body + sigma * rng.standard_normal((64, 64)))
            layout.append((t, k))
    frames = np.asarray(frames, np.float32)
    stack = frames.reshape(times, positions, 64, 64)
    assert frames_before_contrast(stack) == pre_contrast
    assert frame_difference_sigma(frames, layout) == pytest.approx(sigma, rel=0.1)


@pytest.mark.parametrize("pre_contrast", [10, 1], ids=["no contrast", "one frame before contrast"])
@pytest.mark.parametrize("shared", [0.0, 0.5])
def test_noise_is_read_from_frames_that_do_not_share_it(shared, pre_contrast):
    """View sharing (TWIST, DISCO) gives neighbouring frames a share of the same noise: frame t's noise here is
    sqrt(1 - shared) w(t) + sqrt(shared) w(t - 1), so frames one apart share `shared` of it and frames two apart
    nothing. Frames 0 and 1 then differ by sqrt(1 - shared) of the noise (0.71 of it at 0.5, what ProstateX's TWIST
    reads); frames 0 and 2 by all of it. Independent frames keep the first two. With one frame before contrast
    (the rest enhanced alike) the pair is read the same way from the last frame back."""
    from breastmri.simulate.noise import _noise_pair, frame_difference_sigma

    rng = np.random.default_rng(5)
    y, x = np.mgrid[:64, :64]
    body = np.hypot(y - 32, x - 32) < 28  # no air to fit outside: masked to 0
    times, positions, sigma = 10, 3, 2.0
    white = rng.standard_normal((times + 1, positions, 64, 64))
    noise = math.sqrt(1 - shared) * white[1:] + math.sqrt(shared) * white[:-1]
    signal = (100.0 + 20.0 * np.sin(x / 5.0) * np.cos(y / 7.0)) * body
    enhancement = np.where(np.arange(times) < pre_contrast, 1.0, 1.6)[:, None, None, None]
    frames = (signal * enhancement + sigma * noise) * body  # (T, P, H, W): repeated anatomy
    layout = [(t, k) for t in range(times) for k in range(positions)]
    flat = frames.reshape(-1, 64, 64).astype(np.float32)
    index = {tk: i for i, tk in enumerate(layout)}
    first, last = (0, 1) if pre_contrast > 1 else (times - 2, times - 1)
    expected = (first, last) if shared == 0 else ((0, 2) if pre_contrast > 1 else (times - 3, times - 1))
    assert _noise_pair(flat, index, list(range(times))) == (*expected, pre_contrast > 1)
    assert frame_difference_sigma(flat, layout) == pytest.approx(sigma, rel=0.08)


def test_contrast_arriving_between_the_only_frames_is_not_read_as_correlated_noise():
    """A DCE of pre, early and late frames (I-SPY) has no pair before contrast: the noise is read from its first
    two, across the arrival. The smooth rise of the enhancing tissue read as noise made white noise look correlated
    (0.27 between neighbours; the added 1.5T noise was shaped to match); the difference's smooth part is taken off
    pairs not known to come before contrast, and the white noise reads white."""
    from breastmri.simulate.noise import difference_images, neighbour_correlation

    rng = np.random.default_rng(4)
    size, positions, sigma = 128, 3, 5.0
    y, x = np.mgrid[:size, :size]
    body = np.hypot(y - 64, x - 64) < 58
    tissue = (200.0 + 30.0 * np.sin(x / 6.0) * np.cos(y / 9.0)) * body
    uptake = 1.0 + 0.8 * np.exp(-((y - 50) ** 2 + (x - 70) ** 2) / (2 * 18.0 ** 2))  # a broad enhancing region
    frames = np.stack([[tissue * (uptake if t else 1.0) * (1 + 0.1 * (t == 2)) + sigma * rng.standard_normal(
        (size, size)) for _ in range(positions)] for t in range(3)]).astype(np.float32)
    layout = [(t, k) for t in range(3) for k in range(positions)]
    differences = difference_images(frames.reshape(-1, size, size), layout)
    assert np.all(np.abs(neighbour_correlation(*differences[:2])) < 0.06)


def test_strongly_correlated_noise_keeps_its_level_in_a_pair_across_contrast():
    """The smooth part a pair across contrast has taken off holds much of a strongly correlated noise's power
    (neighbour correlation 0.9: the detrended difference read the level 18% low); the level is read with it, the
    spectrum without it."""
    from scipy import ndimage

    from breastmri.simulate.noise import difference_images, frame_difference_sigma

    rng = np.random.default_rng(1)
    size, sigma = 128, 5.0
    y, x = np.mgrid[:size, :size]
    tissue = (200.0 + 30.0 * np.sin(x / 6.0) * np.cos(y / 9.0)) * (np.hypot(y - 64, x - 64) < 58)

    def correlated():
        real, imag = (ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5) for _ in range(2))
        return (real + 1j * imag) / real.std()

    frames = np.stack([[np.abs(tissue + sigma * correlated()) for _ in range(3)] for _ in range(3)])
    layout = [(t, k) for t in range(3) for k in range(3)]
    flat = frames.reshape(-1, size, size).astype(np.float32)
    assert frame_difference_sigma(flat, layout, difference_images(flat, layout)) == pytest.approx(sigma, rel=0.08)


@pytest.mark.parametrize("fat_sigmas", [3.0, 5.0])
def test_suppressed_fat_is_not_fitted_as_air(fat_sigmas):
    """A fat-suppressed breast: 43% of the image is fat left at a few sigma, beside 39% of air. The darkest half
    of the histogram then holds the fat, and the chi-law fit settled on the mixture (here 1.44x the noise at 3
    sigma; 1.8-2.2x, or 0.43x at 5 sigma, in other layouts: an SNR ratio of 0.25 or 0.8 where 0.5 was asked),
    accepted by a Kolmogorov-Smirnov tolerance of 0.1. Such fits miss the law by 0.06-0.08, real air's by at most
    0.03: below KS_TOLERANCE, and the frame differences decide the others."""
    from breastmri.simulate.noise import measure_noise

    rng = np.random.default_rng(11)
    size, sigma, times = 128, 0.02, 6
    y, x = np.mgrid[:size, :size] / size
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.56) / 0.42) ** 2 < 1
    gland = body & (np.sin(20 * x) * np.cos(14 * y) > 0.3)
    amplitude = np.where(gland, 1.0, np.where(body, fat_sigmas * sigma, 0.0))
    frames = rician(np.broadcast_to(amplitude, (times, size, size)), sigma, rng).astype(np.float32)
    layout = [(t, 0) for t in range(times)]
    noise = measure_noise(frames, layout)
    assert noise["sigma"] == pytest.approx(sigma, rel=0.1), noise


def test_an_air_fit_far_above_the_frame_differences_is_not_taken():
    """An air that fits its chi law but reads the noise more than AIR_FIT_EXCESS times the frame differences'
    estimate is not taken (here the frames share most of their noise, so the air's level is not the frames'
    independent noise); the frame differences decide, the rejection is recorded and counts as a disagreement."""
    from breastmri.simulate.noise import measure_noise

    rng = np.random.default_rng(2)
    y, x = np.mgrid[:96, :96]
    body = np.hypot(y - 48, x - 48) < 30
    signal = np.where(body, 100.0 + 20.0 * np.sin(x / 5.0), 0.0)
    shared = 3.0 * (rng.standard_normal((96, 96)) + 1j * rng.standard_normal((96, 96)))
    frames = np.stack([np.abs(signal + shared + 0.5 * (rng.standard_normal((96, 96))
                                                       + 1j * rng.standard_normal((96, 96)))) for _ in range(6)])
    noise = measure_noise(frames.astype(np.float32), [(t, 0) for t in range(6)])
    assert noise["estimates"]["background"] > 3 * noise["estimates"]["frame_difference"]
    assert noise["method"] == "frame_difference" and noise["air_fit_rejected"] and noise["disagree"]


@pytest.mark.parametrize("spread", [1.0, 1.5, 2.0])
def test_noise_that_varies_over_a_prescan_normalized_image_is_read_in_the_tissue(spread):
    """Prescan normalization divides a 16-channel sum of squares by the coils' sensitivity (here varying `spread`x
    along the diagonal), so the noise varies over the image. The air's chi-law fit took the mixture for 6-8
    channels of a sigma 1.7-2x the body's, above the noise anywhere in it (an SNR ratio of 0.28-0.34 for 0.5); an
    air fit above AIR_FIT_EXCESS times the frame differences is not taken, and the noise is read in the tissue.
    Uniform noise is still read from the air."""
    from breastmri.simulate.noise import measure_noise

    rng = np.random.default_rng(0)
    rows, cols, times, channels, sigma = 96, 128, 6, 16, 12.0
    y, x = np.mgrid[:rows, :cols].astype(float)
    image = np.zeros((rows, cols))
    image[((y - 0.95 * rows) / (0.42 * rows)) ** 2 + ((x - cols / 2) / (0.47 * cols)) ** 2 < 1] = 420.0  # chest
    for cx in (0.28, 0.72):  # two fat-suppressed breasts with their glands
        breast = (((y - 0.55 * rows) / (0.38 * rows)) ** 2 + ((x - cx * cols) / (0.2 * cols)) ** 2 < 1) & (y < 0.62 * rows)
        image[breast] = 60.0
        gland = breast & (((y - 0.42 * rows) / (0.12 * rows)) ** 2 + ((x - cx * cols) / (0.1 * cols)) ** 2 < 1)
        image[gland] = 300.0 + 10.0 * np.sin(x[gland] / 2.0) * np.cos(y[gland] / 3.0)
    sensitivity = np.exp(np.log(spread) * ((x / (cols - 1) + y / (rows - 1)) / 2 - 0.5))
    frames = []
    for _ in range(times):
        coils = image * sensitivity / np.sqrt(channels) + sigma * rng.standard_normal((channels, rows, cols))
        squares = (coils ** 2).sum(axis=0) + ((sigma * rng.standard_normal((channels, rows, cols))) ** 2).sum(axis=0)
        frames.append(np.rint(np.sqrt(squares) / sensitivity))
    noise = measure_noise(np.stack(frames).astype(np.float32), [(t, 0) for t in range(times)])
    body_noise = float(np.median((sigma / sensitivity)[image > 0]))
    assert noise["method"] == ("background" if spread == 1.0 else "frame_difference"), noise
    assert 0.8 < noise["sigma"] / body_noise < 1.2, (noise, body_noise)


def test_motion_between_frames_is_not_read_as_shared_noise():
    """Independent noise, every other frame moved by half a pixel: registered apart in each difference, frame 1's
    noise was shifted between the two differences and their correlation read -0.31 (shared noise); the three frames
    are now moved onto frame 0 together, and the first two frames stay the pair."""
    from scipy.ndimage import fourier_shift

    from breastmri.simulate.noise import _noise_pair

    rng = np.random.default_rng(5)
    y, x = np.mgrid[:96, :96]
    body = np.hypot(y - 48, x - 48) < 44
    signal = (100.0 + 20.0 * np.sin(x / 5.0) * np.cos(y / 7.0)) * body
    moved = np.real(np.fft.ifft2(fourier_shift(np.fft.fft2(signal), (0, 0.5))))
    frames = np.stack([(moved if t % 2 else signal) + 2.0 * rng.standard_normal((3, 96, 96)) for t in range(10)])
    flat = (frames * body).reshape(-1, 96, 96).astype(np.float32)
    index = {(t, k): t * 3 + k for t in range(10) for k in range(3)}
    assert _noise_pair(flat, index, list(range(10))) == (0, 1, True)
