"""The realism statistics (breastmri/evaluate/realism.py) read back what a synthetic series was made with."""

import numpy as np
import pytest

from breastmri.evaluate.realism import breast_region, statistics
from breastmri.simulate.noise import shaped_noise, spectrum_correlation, zero_filled_spectrum


def _series(spectrum=None, sigma=10.0, n=12, size=96, seed=0):
    """A torso entering from the bottom edge with a breast above it, constant over time for 4 frames, then
    enhancing by 50%; complex noise of sigma (shaped by spectrum), magnitude."""
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size) ** 2 / (0.6 * size) ** 2 + (xx - size / 2) ** 2 / (0.4 * size) ** 2) < 1
    signal = np.where(body, 300.0, 0.0)
    level = np.array([1.0] * 4 + [1.5] * (n - 4))
    clean = level[:, None, None] * signal[None]
    real, imag = shaped_noise(clean.shape, spectrum, np.random.default_rng(seed))
    return np.hypot(clean + sigma * real, sigma * imag), body


def test_statistics_of_white_noise():
    frames, body = _series()
    region = breast_region(frames)
    assert region.sum() > 0 and not region[-1].any()  # the chest wall side (the bottom edge) is left out
    s = statistics(frames, times_s=np.arange(12) * 16.4)
    assert s["snr"] == pytest.approx(300 / 10, rel=0.1)
    assert s["noise_correlation"] == pytest.approx([0, 0], abs=0.05)
    assert s["frames_before_contrast"] == 4 and s["spacing_s"] == pytest.approx(16.4)
    assert s["largest_shift_px"] < 0.2


def test_statistics_of_correlated_noise():
    spectrum = zero_filled_spectrum(96, 96, (0.5, 0.58))
    frames, _ = _series(spectrum)
    s = statistics(frames)
    assert s["noise_correlation"] == pytest.approx(spectrum_correlation(spectrum), abs=0.08)
    assert s["snr"] == pytest.approx(30, rel=0.15)
