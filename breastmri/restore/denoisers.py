"""Classical denoisers for the benchmark: non-local means, total variation, wavelet shrinkage and BM3D on one
slice, and two multi-frame methods that also use the repeated DCE time points: BM4D over (x, y, t) and MP-PCA
over the time axis (denoise_frames, at the end of the module's docstring).

Every function works on one normalized slice (H, W) (0 = air, ~1 = bright tissue, not clipped) and
returns float32 (H, W) on the same scale. `sigma` is always the noise level in the same normalized
units: the parameter sigma of the Rician distribution of the magnitude image, i.e. the standard
deviation of the Gaussian noise on each of the real and imaginary channels before the magnitude
was taken (Gudbjartsson & Patz 1995, MRM 34:910).

    noisy = rician_noise(phantom(64), sigma=0.05, rng=np.random.default_rng(0))
    out = denoise("nlm", noisy, sigma=0.05)              # Rician-corrected (default)
    out = denoise("bm3d", noisy, sigma=0.05, rician=False)  # plain Gaussian assumption
    out = denoise("tv", noisy, sigma=0.05, reference_sigma=0.02)  # to compare with a reference that has
                                                                  # its own Rician floor (sigma 0.02)

Rician handling. Magnitude MR noise is Rician, not Gaussian: in air the magnitude is Rayleigh
distributed with mean sigma*sqrt(pi/2) ~ 1.25 sigma (not 0), and at low SNR every pixel is biased
upwards. The four denoisers assume zero-mean additive Gaussian noise, so on magnitude data they
converge to the local *expectation* E[M] of the magnitude, not to the underlying amplitude A.
With `rician=True` we run the denoiser as usual and then invert the Rician expectation,

    E[M] = sigma * sqrt(pi/2) * L_1/2(-A^2 / (2 sigma^2))              (Rice 1944; Gudbjartsson & Patz 1995)
    A_hat = E^-1(denoised)          (0 where denoised <= sigma*sqrt(pi/2), the mean of pure noise)

This is the "exact unbiased inverse" step of Foi's variance-stabilization pipeline (Foi 2011,
"Noise estimation and removal in MR imaging: the variance-stabilization approach", ISBI,
doi:10.1109/ISBI.2011.5872758) with the identity in place of his stabilizing transform: the forward
transform needs tabulated functions, while the inverse of the plain Rician mean has a closed form.
We chose it over the second-moment correction sqrt(max(x^2 - 2 sigma^2, 0)) (McGibney & Smith 1993,
Med Phys 20:1077; used on squared magnitudes by Nowak 1999, IEEE TIP 8:1408, and Manjon et al. 2008,
Med Image Anal 12:514) because a denoiser's output estimates E[M], not E[M^2]; the second-moment
formula applied to it over-corrects (a true amplitude of 1 sigma comes out as 0.63 sigma).
`python breastmri/restore/denoisers.py` compares the variants on a synthetic Rician phantom (128x128, sigma 0.05,
seed 0; MSE against the noise-free truth; "dark" = tissue at 0.05 and 0.1, SNR 1-2):

    method   variant        mse      mse_air  mse_dark  bias_dark  air_mean
    nlm      gaussian       2.25e-3  4.03e-3  7.20e-4   +0.021     0.063
    nlm      rician         2.59e-4  2.74e-4  4.29e-4   +0.0002    0.009
    nlm      second moment  1.79e-4  8.6e-5   6.35e-4   -0.013     0.001
    bm3d     gaussian       2.23e-3  4.01e-3  7.34e-4   +0.022     0.063
    bm3d     rician         2.39e-4  2.57e-4  3.41e-4   +0.002     0.008
    bm3d     second moment  1.80e-4  1.02e-4  6.26e-4   -0.013     0.001

The correction lowers the whole-slice MSE 3-9x (wavelet 2.9x, tv 6x, nlm 8.7x, bm3d 9.3x). In dark
tissue the mean inversion is the least biased; its MSE there is the lowest for nlm and bm3d in
every seed tried (0-4, 128 px), while for tv the two corrections are close (the second moment won 3
of 5 seeds) and for wavelet it gains little over no correction (none in 1 of 5 seeds). The
second-moment formula zeroes air more aggressively (its cut-off sqrt(2) sigma lies above the air
mean), so it wins in air and on the whole slice, at the price of a downward bias in dark tissue
(nlm/bm3d, 192 px, two seeds: -30% at amplitude 0.05 and -8% at 0.1, against +6% and +3% for the
mean inversion). Air keeps a small positive residual after the mean inversion (0.15-0.4 sigma): the
inverse is steep just above the noise mean, so leftover fluctuations of the denoised air map to
small positive amplitudes.

Parameters of each method (sigma is the Rician sigma above):
- nlm: skimage.restoration.denoise_nl_means, fast_mode=True, patch_size=5, patch_distance=6,
  h=0.8*sigma and sigma=sigma (with sigma given, skimage subtracts the expected noise from the patch
  distances and recommends a smaller h, ~0.8 sigma in fast mode).
- tv: skimage.restoration.denoise_tv_chambolle with weight = TV_WEIGHT_PER_SIGMA * sigma
  (= 0.75 sigma), eps=2e-4, max_num_iter=200 (skimage defaults). The factor was tuned once by grid
  search (k in 0.25..2) for the lowest MSE under Gaussian noise at sigma 0.02, 0.05 and 0.1 on three
  images: the shapes phantom below (128x128), skimage's Shepp-Logan phantom and camera image (both
  downsampled to 200/256 px). k = 0.75 was best in 7 of the 9 cases and within 30% of the best MSE in
  all (camera at sigma 0.02 preferred 0.5); 1.0 was 11-74% worse than the best, 0.5 up to 2x worse.
- wavelet: skimage.restoration.denoise_wavelet, method="BayesShrink" (Chang et al. 2000), mode="soft",
  wavelet="db1", sigma=sigma, rescale_sigma=True, default number of levels. db1 (Haar, skimage's
  default) gave a lower MSE than sym8 in the same tuning runs, on the phantom and the camera image.
- bm3d: bm3d.bm3d(noisy, sigma_psd=sigma), default "np" profile (Dabov et al. 2007; Makinen et al. 2020). Slow:
  7-9 s per 512x512 slice on two cores.

Multi-frame methods (denoise_frames): the frames of one DCE slice position image the same anatomy at every time
point with independent noise, so a denoiser that groups along time sees several noise draws of one structure.
- bm4d: bm4d.bm4d(stack, sigma_psd=sigma) on the (H, W, T) stack of one slice position, default "np" profile
  (Maggioni et al. 2013, IEEE TIP 22:119; Makinen et al. 2020): 3-D blocks matched across space and time,
  collaborative hard thresholding then Wiener filtering, for white Gaussian noise of std sigma. About 4 s per
  192x192 frame on two shared cores (a stack of 8 frames: ~33 s).
- mppca: dipy.denoise.localpca.mppca on the (H, W, Z, T) volume of a series (its slice positions as Z, its
  time points as the 4th axis), patch_radius (r, r, min(1, (Z-1)//2)) (Veraart et al. 2016, NeuroImage 142:394):
  each local patch's voxels x time points matrix is reduced to the principal components above the
  Marchenko-Pastur noise edge, with sigma estimated from the same spectrum, so no sigma is given. With T time
  points a patch needs more than T voxels; the default r = 2 gives 75. ~25 s per 192x192x8x8 series.
  Every output voxel is a weighted mean of the estimates of the patches that contain it, so position k depends
  only on positions k +- 2 z-radius (mppca_slab): denoising that slab gives position k exactly what the whole
  volume gives, at a fraction of the cost (the benchmark scores single slices that way).
- tpca: the local temporal projection the default U-Net gets as an input channel (context.temporal_projection,
  kind "local", or "guarded" with register=True: registered, and put back towards the frame where it took off
  more than noise), on its own: the (T, H, W) frames of one slice position, 8x8
  blocks every 4 px, each block's time courses shrunk towards the components above the Marchenko-Pastur edge. No
  parameter to calibrate; ~100x cheaper than mppca per frame. The benchmark runs it so that the network is
  compared with its own classical part.
- nordic: patch_denoise's NordicDenoiser (Moeller et al. 2021, NeuroImage 226:117539; the patch-denoise package of
  Comby et al. 2023) on the (T, H, W) frames of one slice position: every NORDIC_PATCH^2 patch (stride 1) as a
  pixels x time points matrix, its singular values below sigma times the mean largest singular value of 10 unit
  noise matrices of its shape (Monte Carlo, seeded here) set to zero, overlapping patches averaged with weight
  1 / (2 + components kept). The optimal-shrinkage local PCA of the issue's anchors: the noise level
  is given (sigma, as bm4d's), not estimated. The patch was chosen on 4 slice positions of the demo's validation
  patients (body PSNR against the truth, input 33.35): 4 px 35.19, 5 px 35.32, 6 px 35.27, 7 px 35.14, 9 px 34.76;
  patch_denoise's Gavish-Donoho shrinkers scored 35.20 (nuclear norm) and 34.51 (operator norm), and its
  Frobenius one is broken in patch-denoise 1.4.4 (its square root also takes the division by the singular value,
  and nothing below the noise edge is zeroed: 13.0 dB). ~0.7 s per 192x192 frame on 2 cores.
register=True moves every frame onto the first at its slice position first (rigid, in-plane:
registration.register_shifts and shift_frames) and the output back: the registration the default U-Net's projection
gets, given to every multi-frame method so that all of them read the same motion-corrected time courses.
All assume Gaussian noise, as the 2-D methods do: with rician=True the Rician mean is inverted the same way.
bm3d and bm4d are free for non-commercial use only (their licence); the benchmark uses them, the model does not.
"""

import argparse
import logging
import time

import numpy as np

from breastmri.simulate.air import chi_mean

METHODS = ("nlm", "tv", "wavelet", "bm3d")
MULTIFRAME = ("bm4d", "mppca", "tpca", "nordic")
NOISE_GIVEN = ("bm4d", "nordic")  # the multi-frame methods that take sigma; the others estimate it
# Methods that keep both cores of a 2-core machine busy on their own (CPU time / wall time of one run: bm3d 1.9,
# bm4d 1.8; mppca, nordic, tpca and the skimage methods 1.0): the benchmark runs only the others side by side
# (runtime.parallel_map), so that running two at a time gains time and leaves each run's own time unchanged.
OWN_THREADS = ("bm3d", "bm4d")
MPPCA_PATCH_RADIUS = 2
NORDIC_PATCH = 5

NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
NLM_H_PER_SIGMA = 0.8
TV_WEIGHT_PER_SIGMA = 0.75
WAVELET = "db1"

def rician_mean(amplitude, sigma):
    """E[M] of a Rician magnitude M = |A + sigma*(n1 + i n2)|, elementwise; same units as amplitude: the
    one-channel case of the noise law air.chi_mean."""
    return chi_mean(amplitude, sigma, 1)


# Table of E[M]/sigma against A/sigma for the inverse; beyond its end E[M] ~ sqrt(A^2 + sigma^2)
# to better than 1e-4 sigma.
_SNR_TABLE = np.concatenate([np.linspace(0.0, 5.0, 2001), np.linspace(5.0, 40.0, 3501)[1:]])
_MEAN_TABLE = rician_mean(_SNR_TABLE, 1.0)


def rician_bias_correction(expected_magnitude, sigma):
    """Invert the Rician mean: amplitude A >= 0 whose E[M] is `expected_magnitude`; float32.

    expected_magnitude: array (any shape), e.g. a denoised magnitude image (an estimate of E[M]);
    sigma: Rician sigma in the same units (> 0). Values at or below the mean of pure noise,
    sigma*sqrt(pi/2), map to 0; above the table (SNR 40) A = sqrt(E[M]^2 - sigma^2).
    """
    sigma = _check_sigma(sigma)
    ratio = np.asarray(expected_magnitude, dtype=np.float64) / sigma
    tabulated = np.interp(ratio, _MEAN_TABLE, _SNR_TABLE, left=0.0)
    asymptotic = np.sqrt(np.maximum(ratio ** 2 - 1.0, 0.0))
    snr = np.where(ratio > _MEAN_TABLE[-1], asymptotic, tabulated)
    return (snr * sigma).astype(np.float32)


def correct_rician_mean(estimate, sigma, zero=0.0):
    """The Rician mean inverted on a self-supervised model's output (main.py and enhance.py, train.mode not
    supervised, magnitude data): float32, same shape as `estimate`.

    A network trained on noisy targets (Noise2Noise, Noise2Void) learns their expectation, E[M], which in air and
    dark tissue lies above the amplitude (up to sigma sqrt(pi/2) where there is no signal). sigma: the noise of the
    noisy series the input came from, measured on its air background (noise.series_sigma), in the normalized
    units of `estimate`, whose zero signal sits at `zero`; the output is then treated as the classical methods'
    output is. Unchanged when no sigma could be measured (nan or 0: nothing to correct with)."""
    estimate = np.asarray(estimate, np.float32)
    if not sigma > 0:
        return estimate
    return rician_bias_correction(estimate - np.float32(zero), sigma) + np.float32(zero)


def estimate_sigma(noisy):
    """Noise sigma of one slice (H, W) from the data, in the slice's units (skimage, wavelet MAD).

    skimage.restoration.estimate_sigma takes the median absolute finest-scale diagonal wavelet
    coefficient / 0.6745 (Donoho & Johnstone 1994). Rician caveat: this is the standard deviation of
    *Gaussian* noise. In tissue (SNR >~ 3) Rician noise is close to Gaussian with std sigma, but in
    air it is Rayleigh with std sqrt(2 - pi/2) sigma ~ 0.66 sigma, so a slice dominated by air
    underestimates sigma by up to ~35%; edges and texture push the other way. Prefer the sigma
    recorded by the degradation step when it is known.
    """
    from skimage.restoration import estimate_sigma as skimage_estimate_sigma

    noisy = _check_slice(noisy)
    return float(skimage_estimate_sigma(noisy))


def denoise(method, noisy, sigma, rician=True, reference_sigma=0.0, spectrum=None):
    """Denoise one normalized slice with a classical method; float32 (H, W).

    method: one of METHODS ("nlm", "tv", "wavelet", "bm3d"); parameters in the module docstring.
    noisy: (H, W) magnitude slice in normalized units (0 = air, ~1 = bright tissue, not clipped).
    sigma: Rician noise sigma of `noisy` in the same units (> 0). For the "field" degradation this is
        the total sigma of the degraded slice, sqrt(sigma_source^2 + sigma_added^2), not sigma_added
        alone. None estimates it with estimate_sigma (see its caveat).
    rician: True runs the Gaussian denoiser and then inverts the Rician mean
        (rician_bias_correction), so air goes to ~0 instead of ~1.25 sigma; False returns the plain
        Gaussian-assumption output.
    reference_sigma: only with rician=True. 0 (default) returns the noise-free amplitude A. A
        positive value returns E[M] = rician_mean(A, reference_sigma), the expected magnitude of an
        image with that noise level: pass sigma_source to match a clean 3T reference that carries
        its own Rician floor (air ~1.25 sigma_source), as the evaluation against clean slices does.
    spectrum: the noise's spatial spectrum (simulate.noise.noise_spectrum; None: white). BM3D takes it as its noise
        PSD (correlated noise of a real scanner is structure to a white-noise denoiser); the others cannot.
    """
    if method not in METHODS:
        raise ValueError(f"unknown denoiser '{method}'; choose one of {', '.join(METHODS)}")
    noisy = _check_slice(noisy)
    sigma = estimate_sigma(noisy) if sigma is None else _check_sigma(sigma)
    if reference_sigma and not rician:
        raise ValueError("reference_sigma needs rician=True (it re-applies a Rician noise floor)")
    if reference_sigma:
        reference_sigma = _check_sigma(reference_sigma)

    if method == "nlm":
        from skimage.restoration import denoise_nl_means

        out = denoise_nl_means(noisy, patch_size=NLM_PATCH_SIZE, patch_distance=NLM_PATCH_DISTANCE,
                               h=NLM_H_PER_SIGMA * sigma, sigma=sigma, fast_mode=True)
    elif method == "tv":
        from skimage.restoration import denoise_tv_chambolle

        out = denoise_tv_chambolle(noisy, weight=TV_WEIGHT_PER_SIGMA * sigma)
    elif method == "wavelet":
        from skimage.restoration import denoise_wavelet

        out = denoise_wavelet(noisy, sigma=sigma, wavelet=WAVELET, mode="soft", method="BayesShrink",
                              rescale_sigma=True)
    else:
        import bm3d

        if spectrum is not None and not hasattr(np, "trapz"):
            np.trapz = np.trapezoid  # bm3d's colored-noise path (bm4d 4.x) calls np.trapz, gone since numpy 2.4
        out = bm3d.bm3d(noisy, sigma_psd=sigma if spectrum is None else noise_psd(spectrum, noisy.shape, sigma))

    out = np.asarray(out, dtype=np.float64).reshape(noisy.shape)
    if not rician:
        return out.astype(np.float32)
    amplitude = rician_bias_correction(out, sigma)
    if reference_sigma:
        return rician_mean(amplitude, reference_sigma).astype(np.float32)
    return amplitude


def noise_psd(spectrum, shape, sigma):
    """The power spectral density bm3d expects (unshifted FFT layout, shape (H, W)) of noise with per-pixel standard
    deviation sigma and a separable spectrum: sigma^2 * H * W * P_rows x P_cols (white noise: sigma^2 * H * W)."""
    from breastmri.simulate.noise import spectrum_power

    return sigma ** 2 * shape[0] * shape[1] * spectrum_power(spectrum, shape)


def denoise_frames(method, frames, sigma=None, rician=True, reference_sigma=0.0, patch_radius=MPPCA_PATCH_RADIUS,
                   register=False, window=None):
    """Denoise a stack of frames with a multi-frame method; float32, the frames' shape (the window's, given one).

    method: "bm4d", "mppca", "tpca" or "nordic". frames: normalized magnitude images (0 = air), (T, H, W) for bm4d,
    tpca and nordic (one slice position over time) or (T, Z, H, W) for mppca (a series: time points x slice
    positions; (T, H, W) is taken as Z = 1). sigma: Rician sigma of every frame (the noise level of bm4d and nordic;
    for mppca and tpca only the Rician correction uses it, they estimate the noise themselves). patch_radius: mppca's in-plane patch radius. rician,
    reference_sigma: as in denoise(). register: motion-correct each slice position's frames first (see above).
    window: (rows, cols) slices (step 1, at least 8 x 8 px): only that part of the output, (..., h, w); bm4d and
    mppca then run on the window of the (registered) frames and a margin (_registered) alone, which is all their
    output there depends on once the window reaches past their patches and searches (benchmark_kinetics: a
    lesion's ROI and a margin), tpca on the whole slice's noise estimate (context.temporal_projection's window).
    A single frame (T = 1) has no time axis to use: bm4d
    then runs on it as a 2-D image, mppca, tpca and nordic refuse (ValueError): the benchmark falls back to a 2-D method
    for such series.
    """
    if method not in MULTIFRAME:
        raise ValueError(f"unknown multi-frame denoiser '{method}'; choose one of {', '.join(MULTIFRAME)}")
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim not in (3, 4) or min(frames.shape[-2:]) < 8 or not np.all(np.isfinite(frames)):
        raise ValueError(f"expected finite frames shaped (T, H, W) or (T, Z, H, W) with H, W >= 8, got {frames.shape}")
    if window is not None:
        window = tuple(window)
        if len(window) != 2 or any(not isinstance(w, slice) or w.step not in (None, 1) for w in window):
            raise ValueError(f"window must be two slices (rows, cols) with step 1, e.g. (slice(40, 120), slice(10, "
                             f"90)), got {window!r}")
        kept = [len(range(*w.indices(n))) for w, n in zip(window, frames.shape[-2:])]
        if min(kept) < 8:
            raise ValueError(f"window {window} keeps {kept[0]} x {kept[1]} px of the {frames.shape[-2]} x "
                             f"{frames.shape[-1]} frames; give one of at least 8 x 8 px inside them")
    if rician or method in NOISE_GIVEN:
        sigma = _check_sigma(sigma)
    if reference_sigma and not rician:
        raise ValueError("reference_sigma needs rician=True (it re-applies a Rician noise floor)")
    if method != "mppca" and frames.ndim != 3:
        raise ValueError(f"{method} takes the (T, H, W) frames of one slice position, got {frames.shape}")
    if method == "tpca":
        if len(frames) < 2:
            raise ValueError("tpca needs at least 2 time points (it denoises along the time axis)")
        from breastmri.data.context import temporal_projection

        out = temporal_projection(frames, "guarded" if register else "local", window).astype(np.float64)
    elif method == "nordic":
        if len(frames) < 2:
            raise ValueError("nordic needs at least 2 time points (it denoises along the time axis)")
        out = _registered(lambda f: _nordic(f, sigma), frames, register, window)
    elif method == "bm4d":
        import bm4d

        out = _registered(lambda f: np.moveaxis(np.asarray(bm4d.bm4d(np.moveaxis(f, 0, -1), sigma_psd=sigma)), -1, 0),
                          frames, register, window)
    else:
        volume = frames[:, None] if frames.ndim == 3 else frames            # (T, Z, H, W)
        if volume.shape[0] < 2:
            raise ValueError("mppca needs at least 2 time points (it denoises along the time axis)")
        from dipy.denoise.localpca import mppca

        radius = np.array([patch_radius, patch_radius, mppca_z_radius(volume.shape[1])])
        out = _registered(lambda v: np.transpose(  # dipy's layout is (H, W, Z, T)
            mppca(np.transpose(v, (2, 3, 1, 0)), patch_radius=radius, suppress_warning=True), (3, 2, 0, 1)),
            volume, register, window)
        out = np.asarray(out, dtype=np.float64).reshape(frames.shape[:-2] + out.shape[-2:])
    if not rician:
        return out.astype(np.float32)
    amplitude = rician_bias_correction(out, sigma)
    if reference_sigma:
        return rician_mean(amplitude, _check_sigma(reference_sigma)).astype(np.float32)
    return amplitude


def _registered(run, frames, register, window=None):
    """run(frames) for (T, H, W) or (T, Z, H, W) frames; with register, on the frames of each slice position moved
    onto its first frame (registration.register_shifts), the output moved back onto each frame's grid: a Fourier shift
    there and a spline shift back, as the registered projection does (registration.shift_frames). window: that
    (rows, cols) part of the output only, run on its context.registered_region (the window and a margin, as the
    registered projection), registered on the whole slices (a crop would pull the phase correlation towards zero
    shift, see register_shifts)."""
    if not register:
        return run(frames if window is None else frames[(Ellipsis,) + tuple(window)])
    from breastmri.data.context import registered_region
    from breastmri.registration import register_shifts, shift_frames

    volume = frames[:, None] if frames.ndim == 3 else frames
    shifts = [register_shifts(volume[:, z]) for z in range(volume.shape[1])]
    moved = np.stack([shift_frames(volume[:, z], s) for z, s in enumerate(shifts)], axis=1).astype(frames.dtype)
    region, inner = registered_region(window, frames.shape[-2:], shifts)
    part = moved[(Ellipsis,) + region]
    out = np.asarray(run(part.reshape(frames.shape[:-2] + part.shape[-2:]))).reshape(part.shape)
    back = np.stack([shift_frames(out[:, z], -s, spline=True) for z, s in enumerate(shifts)], axis=1)[
        (Ellipsis,) + inner]
    return back.reshape(frames.shape[:-2] + back.shape[-2:])


def _nordic(frames, sigma):
    """patch_denoise's NORDIC on (T, H, W) frames with noise sigma: (T, H, W), every patch of NORDIC_PATCH^2 px."""
    from patch_denoise.space_time.lowrank import NordicDenoiser

    patch = min(NORDIC_PATCH, *frames.shape[1:])
    denoiser = NordicDenoiser((patch, patch), (patch - 1, patch - 1))
    state = np.random.get_state()  # its threshold is a Monte Carlo on numpy's global generator: seeded, then restored
    np.random.seed(0)
    quiet = logging.root.manager.disable
    logging.disable(max(quiet, logging.WARNING))  # it warns on the root logger when a patch has fewer pixels than frames
    try:
        out = denoiser.denoise(np.moveaxis(frames, 0, -1), noise_std=float(sigma), mask_threshold=-1, progbar=False)[0]
    finally:
        logging.disable(quiet)
        np.random.set_state(state)
    return np.moveaxis(np.asarray(out, np.float64), -1, 0)


def mppca_z_radius(n_positions):
    """mppca's patch radius across slice positions: 1 (3 positions) where the series has 3 or more, else 0."""
    return min(1, (n_positions - 1) // 2)


def mppca_slab(n_positions, k):
    """(lo, hi): the slice positions lo..hi-1 that mppca's output at position k depends on.

    Patches are centred only where they fit the volume, and a voxel's output averages the patches containing it;
    those have centres within k +- z-radius and reach k +- 2 z-radius. A slab of these positions has the same
    z-radius as the whole volume (it keeps >= 3 positions when the volume has them), so mppca on it returns
    position k unchanged (tests/test_denoisers.py checks this)."""
    reach = 2 * mppca_z_radius(n_positions)
    return max(0, k - reach), min(n_positions, k + reach + 1)


def _check_slice(noisy):
    noisy = np.asarray(noisy)
    if noisy.ndim != 2:
        raise ValueError(f"expected one slice shaped (H, W), got shape {noisy.shape}; "
                         "denoise a stack slice by slice")
    if min(noisy.shape) < 8:
        raise ValueError(f"slice {noisy.shape} is too small to denoise (need at least 8x8)")
    if not np.all(np.isfinite(noisy)):
        raise ValueError("slice contains NaN or inf values")
    return noisy.astype(np.float64)


def _check_sigma(sigma):
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number in normalized units, got {sigma}")
    return sigma


# ---------------------------------------------------------------------------------------------
# Synthetic check: a piecewise-constant phantom with Rician noise, used by the tests and __main__.

def phantom(size=64):
    """Piecewise-constant test slice (size, size), float32 in [0, 1]; no randomness.

    Air 0 around a body ellipse of 0.3 containing a bright 'fat' ellipse 0.9, a bright disk 1.0,
    a 0.6 square, and two low-signal regions: a 0.1 disk (SNR 2 at sigma 0.05) and a 0.05
    rectangle (SNR 1), where the Rician bias matters most.
    """
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size), np.float32)
    img[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.36) ** 2 <= 1] = 0.3
    img[((x - 0.38) / 0.15) ** 2 + ((y - 0.42) / 0.2) ** 2 <= 1] = 0.9
    img[(x - 0.66) ** 2 + (y - 0.35) ** 2 <= 0.07 ** 2] = 1.0
    img[(x - 0.66) ** 2 + (y - 0.62) ** 2 <= 0.09 ** 2] = 0.1
    img[(np.abs(x - 0.38) <= 0.06) & (np.abs(y - 0.72) <= 0.06)] = 0.6
    img[(np.abs(x - 0.5) <= 0.14) & (np.abs(y - 0.22) <= 0.035)] = 0.05
    return img


def rician_noise(clean, sigma, rng):
    """Magnitude of clean + complex Gaussian noise (std sigma per channel); float32, same shape."""
    clean = np.asarray(clean, dtype=np.float64)
    real = clean + sigma * rng.standard_normal(clean.shape)
    imag = sigma * rng.standard_normal(clean.shape)
    return np.hypot(real, imag).astype(np.float32)


def compare_rician(size=128, sigma=0.05, seed=0, methods=METHODS):
    """Denoise a Rician phantom with and without the correction; one dict of errors per variant.

    Variants: "noisy" (the input), "gaussian" (rician=False), "rician" (rician=True, the mean
    inversion) and, for reference only, "second_moment" = sqrt(max(out^2 - 2 sigma^2, 0)) applied to
    the same Gaussian output. Columns: mse (whole slice), mse_low (truth < 0.2: air and the two dark
    regions), mse_air (truth == 0), mse_dark (0 < truth < 0.2, dark tissue at SNR 1-2),
    bias_dark (mean error there), air_mean (mean output in air), seconds (one denoiser run).
    """
    truth = phantom(size).astype(np.float64)
    noisy = rician_noise(truth, sigma, np.random.default_rng(seed))
    low, air = truth < 0.2, truth == 0
    dark = low & ~air

    def row(method, variant, out, seconds):
        diff = out.astype(np.float64) - truth
        err = diff ** 2
        return {"method": method, "variant": variant, "mse": err.mean(), "mse_low": err[low].mean(),
                "mse_air": err[air].mean(), "mse_dark": err[dark].mean(), "bias_dark": diff[dark].mean(),
                "air_mean": float(out[air].mean()), "seconds": seconds}

    rows = [row("-", "noisy", noisy, 0.0)]
    for method in methods:
        start = time.perf_counter()
        plain = denoise(method, noisy, sigma, rician=False)
        seconds = time.perf_counter() - start
        rows.append(row(method, "gaussian", plain, seconds))
        rows.append(row(method, "rician", rician_bias_correction(plain, sigma), seconds))
        moment = np.sqrt(np.maximum(plain.astype(np.float64) ** 2 - 2 * sigma ** 2, 0))
        rows.append(row(method, "second_moment", moment, seconds))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compare the denoisers with and without the Rician "
                                                 "correction on a synthetic phantom.")
    parser.add_argument("--size", type=int, default=128, help="phantom side in pixels")
    parser.add_argument("--sigma", type=float, default=0.05, help="Rician sigma, normalized units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of " + ",".join(METHODS))
    args = parser.parse_args()
    results = compare_rician(args.size, args.sigma, args.seed, [m for m in args.methods.split(",") if m])
    print(f"phantom {args.size}x{args.size}, Rician sigma {args.sigma}, seed {args.seed}; low: truth < 0.2, "
          f"air: truth = 0, dark: 0 < truth < 0.2")
    columns = ["mse", "mse_low", "mse_air", "mse_dark", "bias_dark", "air_mean"]
    print(f"{'method':8s} {'variant':14s} " + " ".join(f"{c:>10s}" for c in columns) + f" {'s':>6s}")
    for r in results:
        print(f"{r['method']:8s} {r['variant']:14s} " + " ".join(f"{r[c]:10.2e}" for c in columns)
              + f" {r['seconds']:6.2f}")
