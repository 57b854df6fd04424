import numpy as np
import pytest

from breastmri.restore import denoisers
from breastmri.restore.denoisers import (
    METHODS,
    denoise,
    estimate_sigma,
    phantom,
    rician_bias_correction,
    rician_mean,
    rician_noise,
)

SIGMA = 0.05


@pytest.fixture(scope="module")
def noisy_phantom():
    truth = phantom(64)
    return truth, rician_noise(truth, SIGMA, np.random.default_rng(0))


@pytest.fixture(scope="module")
def plain_outputs(noisy_phantom):
    """Each method run once without the correction (bm3d included: one call for the whole module)."""
    _, noisy = noisy_phantom
    return {method: denoise(method, noisy, SIGMA, rician=False) for method in METHODS}


def mse(a, b, where=None):
    err = (np.asarray(a, np.float64) - b) ** 2
    return err.mean() if where is None else err[where].mean()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rician", [False, True])
def test_output_and_lower_mse(method, rician, noisy_phantom, plain_outputs):
    truth, noisy = noisy_phantom
    out = plain_outputs[method]
    if rician:
        out = rician_bias_correction(out, SIGMA)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert np.all(np.isfinite(out))
    assert mse(out, truth) < mse(noisy, truth)


def test_rician_flag_applies_the_correction(noisy_phantom, plain_outputs):
    _, noisy = noisy_phantom
    corrected = denoise("nlm", noisy, SIGMA, rician=True)
    assert corrected.dtype == np.float32
    # plain_outputs holds the float32 output, so the two differ only by float32 rounding
    np.testing.assert_allclose(corrected, rician_bias_correction(plain_outputs["nlm"], SIGMA), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_rician_correction_reduces_air_bias(method, noisy_phantom, plain_outputs):
    truth, _ = noisy_phantom
    air = truth == 0
    plain = plain_outputs[method]
    corrected = rician_bias_correction(plain, SIGMA)
    assert abs(corrected[air].mean()) < 0.5 * abs(plain[air].mean())
    assert plain[air].mean() > SIGMA  # the uncorrected air sits near sigma*sqrt(pi/2)


@pytest.mark.parametrize("method", ["nlm", "bm3d"])
def test_rician_correction_lowers_low_signal_mse(method, noisy_phantom, plain_outputs):
    truth, _ = noisy_phantom
    low = truth < 0.2  # air and the two dark regions (SNR 1 and 2)
    plain = plain_outputs[method]
    assert mse(rician_bias_correction(plain, SIGMA), truth, low) < 0.5 * mse(plain, truth, low)


@pytest.mark.slow
def test_mean_inversion_beats_alternatives_in_dark_tissue():
    # At 64 px the dark regions are a few edge-blurred pixels wide; 128 px is needed to see tissue.
    rows = denoisers.compare_rician(size=128, sigma=SIGMA, seed=0, methods=("nlm", "bm3d"))
    for method in ("nlm", "bm3d"):
        by_variant = {r["variant"]: r for r in rows if r["method"] == method}
        rician = by_variant["rician"]
        assert rician["mse_dark"] < by_variant["gaussian"]["mse_dark"]
        assert rician["mse_dark"] < by_variant["second_moment"]["mse_dark"]
        assert abs(rician["bias_dark"]) < abs(by_variant["second_moment"]["bias_dark"])


def test_reference_sigma_restores_a_noise_floor(noisy_phantom, plain_outputs):
    truth, noisy = noisy_phantom
    air = truth == 0
    reference = denoise("nlm", noisy, SIGMA, reference_sigma=0.02)
    amplitude = rician_bias_correction(plain_outputs["nlm"], SIGMA)
    np.testing.assert_allclose(reference, rician_mean(amplitude, 0.02), atol=1e-5)
    # at least the reference's air floor (E[M] is increasing in A), far below the uncorrected air
    assert 0.02 * np.sqrt(np.pi / 2) <= reference[air].mean() < 0.6 * plain_outputs["nlm"][air].mean()
    with pytest.raises(ValueError, match="rician=True"):
        denoise("nlm", noisy, SIGMA, rician=False, reference_sigma=0.02)


def test_rician_mean_matches_simulation_and_inverts():
    rng = np.random.default_rng(1)
    for amplitude in (0.0, 0.05, 0.2):
        samples = rician_noise(np.full(200_000, amplitude), SIGMA, rng)
        assert rician_mean(amplitude, SIGMA) == pytest.approx(samples.mean(), rel=3e-3)
    assert rician_mean(0.0, 1.0) == pytest.approx(np.sqrt(np.pi / 2))
    amplitudes = np.linspace(0, 60 * SIGMA, 500)
    np.testing.assert_allclose(rician_bias_correction(rician_mean(amplitudes, SIGMA), SIGMA), amplitudes,
                               atol=2e-4 * SIGMA, rtol=1e-4)
    below_noise = np.array([0.0, 0.5 * SIGMA, 1.2 * SIGMA])
    assert np.all(rician_bias_correction(below_noise, SIGMA) == 0)


def test_estimate_sigma_on_gaussian_noise():
    rng = np.random.default_rng(2)
    noisy = 0.5 + 0.04 * rng.standard_normal((64, 64))
    assert estimate_sigma(noisy) == pytest.approx(0.04, rel=0.1)


def test_sigma_none_uses_the_estimate(noisy_phantom):
    _, noisy = noisy_phantom
    np.testing.assert_array_equal(denoise("wavelet", noisy, None, rician=False),
                                  denoise("wavelet", noisy, estimate_sigma(noisy), rician=False))


def test_bad_input_raises(noisy_phantom):
    _, noisy = noisy_phantom
    with pytest.raises(ValueError, match="unknown denoiser"):
        denoise("median", noisy, SIGMA)
    with pytest.raises(ValueError, match="shaped"):
        denoise("tv", noisy[None], SIGMA)
    with pytest.raises(ValueError, match="sigma"):
        denoise("tv", noisy, 0.0)


def test_compare_rician_reports_all_variants():
    rows = denoisers.compare_rician(size=32, methods=("wavelet",))
    assert [r["variant"] for r in rows] == ["noisy", "gaussian", "rician", "second_moment"]
    assert rows[2]["air_mean"] < rows[1]["air_mean"]


@pytest.mark.parametrize("method", denoisers.MULTIFRAME)
def test_multiframe_methods_use_the_repeated_frames(method):
    """Four noisy frames of one phantom: grouping along time beats the best single-frame result."""
    truth = np.stack([phantom(64)] * 4)
    noisy = rician_noise(truth, SIGMA, np.random.default_rng(1))
    out = denoisers.denoise_frames(method, noisy, SIGMA)
    assert out.shape == noisy.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert mse(out, truth) < 0.2 * mse(noisy, truth)
    single = denoise("bm3d", noisy[0], SIGMA)
    assert mse(out[0], truth[0]) < mse(single, truth[0])
    plain = denoisers.denoise_frames(method, noisy, SIGMA, rician=False)
    # the same Rician step as the 2-D methods (bm4d runs are not bit-identical from call to call)
    np.testing.assert_allclose(out, rician_bias_correction(plain, SIGMA), atol=1e-3)


@pytest.mark.parametrize("method", denoisers.MULTIFRAME)
def test_registration_lets_the_multiframe_methods_follow_moving_frames(method):
    """Frames of one phantom moved by sub-pixel shifts, as a patient settles: with register=True (what the
    benchmark gives every multi-frame method) each method denoises the aligned frames and returns every frame on
    its own grid, closer to that frame's truth than without registration."""
    from breastmri.registration import shift_frames

    shifts = np.array([[0, 0], [1.4, -0.6], [-0.8, 1.1], [0.5, 1.5]], np.float32)
    truth = shift_frames(np.stack([phantom(64)] * 4), -shifts)
    noisy = rician_noise(np.clip(truth, 0, None), SIGMA, np.random.default_rng(1))
    errors = {register: mse(denoisers.denoise_frames(method, noisy, SIGMA, register=register), truth)
              for register in (False, True)}
    assert errors[True] < 0.9 * errors[False], errors   # bm4d 0.82, mppca and tpca lower


def test_mppca_on_the_slab_of_a_position_equals_the_whole_volume_there():
    """The benchmark denoises only mppca_slab(Z, k) to score position k: that must not change position k."""
    rng = np.random.default_rng(3)
    truth = np.stack([np.stack([phantom(24) * (1 + 0.1 * t + 0.05 * z) for z in range(7)]) for t in range(5)])
    noisy = rician_noise(truth, SIGMA, rng)                                    # (T=5, Z=7, 24, 24)
    whole = denoisers.denoise_frames("mppca", noisy, rician=False, patch_radius=1)
    reached = set()
    for k in range(7):
        lo, hi = denoisers.mppca_slab(7, k)
        assert lo <= k < hi and hi - lo >= 3
        reached.add(hi - lo)
        slab = denoisers.denoise_frames("mppca", noisy[:, lo:hi], rician=False, patch_radius=1)
        np.testing.assert_allclose(slab[:, k - lo], whole[:, k], rtol=1e-5, atol=1e-6)
    assert reached == {3, 4, 5}                                                # ends and middle: k - 2 .. k + 2
    # one slab too thin (k +- 1 only) is not the same: the test can fail
    thin = denoisers.denoise_frames("mppca", noisy[:, 2:5], rician=False, patch_radius=1)
    assert np.abs(thin[:, 1] - whole[:, 3]).max() > 1e-4
    assert denoisers.mppca_slab(2, 1) == (1, 2) and denoisers.mppca_slab(1, 0) == (0, 1)


def test_multiframe_methods_explain_what_they_cannot_take():
    frames = rician_noise(phantom(32)[None], SIGMA, np.random.default_rng(0))
    for method in ("mppca", "tpca", "nordic"):
        with pytest.raises(ValueError, match="at least 2 time points"):
            denoisers.denoise_frames(method, frames, SIGMA)
    for method in ("bm4d", "tpca", "nordic"):
        with pytest.raises(ValueError, match="one slice position"):
            denoisers.denoise_frames(method, np.stack([frames] * 2), SIGMA)
    with pytest.raises(ValueError, match="unknown multi-frame"):
        denoisers.denoise_frames("bm3d", frames, SIGMA)
    stack = np.concatenate([frames] * 3)
    with pytest.raises(ValueError, match="at least 8 x 8"):
        denoisers.denoise_frames("tpca", stack, SIGMA, window=(slice(0, 4), slice(None)))
    with pytest.raises(ValueError, match="two slices"):
        denoisers.denoise_frames("tpca", stack, SIGMA, window=(slice(0, 16, 2), slice(None)))
