"""Simulate a lower-field (1.5T) MR image from a 3T one. All the physics of the project lives here.

Three models, chosen by cfg["degrade"]["model"]:

- "gaussian" (the 2021 thesis): noisy = clean + N(0, sigma), sigma in normalized [0, 1] units. Kept so the
  thesis numbers can be reproduced; it is not what a scanner does (it adds noise of the same level to air and
  tissue, can go negative, and ignores how much noise the 3T image already carries).
- "field" (the default): magnitude MR images carry Rician noise (Gudbjartsson & Patz, MRM 1995;34:910-914):
  the complex image has independent Gaussian noise of std sigma in the real and imaginary channels and the
  magnitude is taken afterwards. SNR grows with B0; Edelstein et al. (MRM 1986;3:604-618) showed the intrinsic
  SNR is about linear in B0 when body (sample) noise dominates, which is the case for the torso at 1.5-3T.
  Pohmann, Speck & Scheffler (MRM 2016;75:801-809) measured a steeper B0**1.65 in the *brain* at 3-9.4T, so the
  exponent is anatomy- and coil-dependent; for the torso/breast at 1.5 vs 3T exponents close to 1 (about
  0.96-0.98) are reported, and clinical 1.5T/3T comparisons usually see smaller gains (30-60%, i.e. a 1.5T/3T
  SNR ratio of about 0.63-0.77) because 3T protocols spend part of the gain on resolution, speed or SAR
  limits. Hence snr_ratio = (target/source) ** field_exponent, overridable by degrade.snr_ratio.

  The field model measures the native noise sigma_src of the series from its air background, sets the target
  noise to sigma_target = sigma_src / snr_ratio (same signal, lower SNR), and adds complex Gaussian noise of
  sigma_add = sqrt(sigma_target**2 - sigma_src**2) before taking the magnitude again: independent noise adds in
  variance, so the result has sigma_target in the real channel and is again (approximately) Rician.
  Optionally (resolution_scale < 1) only the central part of k-space is kept first, as a coarser
  lower-field matrix would acquire, zero-filled back to the same matrix so the pair stays pixel-aligned.

- "none": the input series already is the noisy image (a user's own 1.5T scans, for the self-supervised modes of
  main.py, train.mode): nothing is simulated, noisy is the input, and no clean pair exists. The native noise
  sigma is still measured and recorded (sigma_source), as the Rician correction of self-supervised output needs it.

Everything here works at acquisition resolution, before any resizing: resampling first would turn white
noise into spatially correlated blobs that no scanner produces.

    rng = series_rng(cfg["seed"], series_uid)
    noisy, info = degrade(clean, cfg["degrade"], rng)   # clean: (n, H, W) float32, normalized
"""

import hashlib
import math

import numpy as np

from breastmri.config import ConfigError
from breastmri.simulate.air import chi_mean
from breastmri.simulate.noise import (
    WHITE,
    difference_images,
    measure_noise,
    neighbour_correlation,
    noise_spectrum,
    shaped_noise,
    spectrum_correlation,
)

MODELS = ("field", "gaussian", "none")
# the models add_noise can draw again (train.fresh_noise)
NOISE_MODELS = ("field", "gaussian")

def snr_ratio(degrade_cfg):
    """Target/source SNR ratio (< 1 means a noisier target): degrade.snr_ratio if set, otherwise
    (target_field_t / source_field_t) ** field_exponent (Edelstein 1986: about linear in B0 in the body)."""
    override = degrade_cfg.get("snr_ratio")
    if override is not None:
        ratio = float(override)
    else:
        source, target = float(degrade_cfg["source_field_t"]), float(degrade_cfg["target_field_t"])
        if source <= 0 or target <= 0:
            raise ConfigError(f"degrade.source_field_t ({source}) and degrade.target_field_t ({target}) must be > 0")
        ratio = (target / source) ** float(degrade_cfg["field_exponent"])
    if not 0 < ratio <= 1:
        raise ConfigError(f"degrade snr_ratio is {ratio:g}; it must lie in (0, 1] (noise can only be added, so the "
                          "target must not have a higher SNR than the source: check degrade.snr_ratio or the fields)")
    return ratio


def series_rng(seed, series_uid):
    """A Generator seeded from the global seed and the SeriesInstanceUID: the same series always gets the same
    noise, whatever the order or the number of worker processes that handle it."""
    uid_bits = int.from_bytes(hashlib.sha256(str(series_uid).encode()).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), uid_bits]))


def kspace_crop(stack, scale):
    """Keep the central `scale` fraction of k-space per axis, zero-fill, and return the complex image.

    stack: (n, H, W) or (H, W) real. Returns complex64 of the same shape and the kept fraction of the k-space
    samples (kept_rows * kept_cols / (H * W)), which is also the fraction of white-noise variance that
    survives. A hard cut is what a smaller acquisition matrix does (truncation/Gibbs ringing included)."""
    stack = np.asarray(stack, dtype=np.float32)
    squeeze = stack.ndim == 2
    if squeeze:
        stack = stack[None]
    n, rows, cols = stack.shape
    keep_r, keep_c = max(1, round(rows * scale)), max(1, round(cols * scale))
    mask = np.zeros((rows, cols), dtype=bool)
    r0, c0 = rows // 2 - keep_r // 2, cols // 2 - keep_c // 2  # fftshift puts DC at index size // 2
    mask[r0:r0 + keep_r, c0:c0 + keep_c] = True
    mask = np.fft.ifftshift(mask)
    out = np.empty(stack.shape, dtype=np.complex64)
    for start in range(0, n, 16):  # chunks keep the complex128 FFT buffers small
        k = np.fft.fft2(stack[start:start + 16])
        k[:, ~mask] = 0
        out[start:start + 16] = np.fft.ifft2(k)
    return (out[0] if squeeze else out), keep_r * keep_c / (rows * cols)


def degrade(clean, degrade_cfg, rng, zero=0.0, layout=None):
    """Simulated lower-field version of a normalized clean stack.

    clean: float32 (n, H, W) at acquisition resolution, normalized as (x - lo) / (hi - lo), not clipped.
    degrade_cfg: cfg["degrade"]. rng: np.random.Generator (use series_rng).
    zero: the value of "no signal" in clean's units (preprocessing passes -lo / (hi - lo)); the field model
        forms magnitudes around it, because Rician statistics are defined relative to zero signal.
    layout: the series' (time_index, position_index) per slice; with repeated time points the noise can be read
        from the anatomy when the air is masked (noise.measure_noise).
    Returns (noisy float32 (n, H, W), info) with info = {"model", "sigma_source", "sigma_added", "snr_ratio",
    "sigma_method"}; sigmas in clean's (normalized) units at acquisition resolution. For the gaussian model,
    snr_ratio is the ratio it implies for the measured source noise, sigma_src / sqrt(sigma_src^2 + sigma^2).
    """
    model = degrade_cfg["model"]
    if model not in MODELS:
        raise ConfigError(f"degrade.model is '{model}'; choose one of {', '.join(MODELS)}")
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim != 3:
        raise ValueError(f"degrade expects a stack (n, H, W), got shape {clean.shape}")
    magnitude = clean - np.float32(zero)
    differences = difference_images(magnitude, layout)  # the series' repeated anatomy: noise level and spectrum
    noise = measure_noise(magnitude, layout, differences=differences)
    sigma_src, method = noise["sigma"], noise["method"]

    if model == "none":  # the input is the low-field scan itself: the same array, nothing added
        return clean, {"model": model, "sigma_source": sigma_src, "sigma_added": 0.0, "snr_ratio": 1.0,
                       "sigma_method": method, **_noise_record(noise)}
    if model == "gaussian":
        sigma = float(degrade_cfg["sigma"])
        if sigma < 0:
            raise ConfigError(f"degrade.sigma is {sigma}; it must be >= 0")
        # The thesis: np.random.normal(0, sigma, shape) added to the normalized image.
        noisy = add_noise(clean, "gaussian", sigma, rng)
        ratio = sigma_src / math.hypot(sigma_src, sigma) if sigma_src > 0 else float("nan")
        return noisy, {"model": model, "sigma_source": sigma_src, "sigma_added": sigma, "snr_ratio": ratio,
                       "sigma_method": method, **_noise_record(noise)}

    ratio = snr_ratio(degrade_cfg)
    scale = degrade_cfg.get("resolution_scale")
    scale = 1.0 if scale is None else float(scale)
    if not 0 < scale <= 1:
        raise ConfigError(f"degrade.resolution_scale is {scale}; it must lie in (0, 1]")
    sigma_target = sigma_src / ratio
    if scale < 1:
        signal, kept = kspace_crop(magnitude, scale)
        # The native noise is low-passed with the signal: only the kept fraction of its variance remains,
        # so more noise is added to reach the same sigma_target. The SNR gain of bigger voxels in a coarser
        # protocol is not modelled on top: snr_ratio stands for the net per-pixel SNR ratio of the protocols.
        sigma_remaining = sigma_src * math.sqrt(kept)
    else:
        signal, sigma_remaining = magnitude, sigma_src
    sigma_add = math.sqrt(max(sigma_target**2 - sigma_remaining**2, 0.0))
    shape = _source_shape(magnitude, layout, differences, degrade_cfg.get("noise_spectrum", "measured"), noise)
    noisy = add_noise(signal, "field", sigma_add, rng, zero=0.0, spectrum=shape["noise_spectrum"])
    noisy += np.float32(zero)
    return noisy, {
        "model": model, "sigma_source": sigma_src, "sigma_added": sigma_add, "snr_ratio": ratio,
        "sigma_method": method, **_noise_record(noise), **shape}


SPECTRA = ("measured", "white")
# When the frame differences give a spectrum that is not the scanner's noise. Zero-filling and k-space windows
# low-pass the noise: its neighbour correlation is positive (real series: 0.5-0.85). Up to WEAK_CORRELATION the
# noise counts as white, and a correlation below -NEGATIVE_CORRELATION on either axis is anatomy, not noise: what
# motion between the frames leaves after a rigid registration is a derivative of the texture, whose spectrum rises
# with frequency (a phantom moved elastically between frames: -0.23 to +0.16). So is a difference whose sigma reads
# more than DIFFERENCE_EXCESS above the air's: a breathing breast and the heart's ghosts add some 20% (the demo
# tree's median; noise.difference_images leaves out the blocks they dominate), a moving one far more.
WEAK_CORRELATION, NEGATIVE_CORRELATION, DIFFERENCE_EXCESS = 0.15, 0.05, 1.35


def _source_shape(magnitude, layout, differences, mode, noise):
    """{"noise_spectrum", "noise_spectrum_from", "noise_correlation_source", "noise_correlation_added"}: the
    spectrum the added noise takes (measured from the series' frame differences, or WHITE) and why, the neighbour
    correlation [rows, cols] of the source noise as the differences read it (None when the series does not repeat
    its anatomy), and that of the added noise."""
    if mode not in SPECTRA:
        raise ConfigError(f"degrade.noise_spectrum must be one of {', '.join(SPECTRA)}, not {mode!r}")
    source = neighbour_correlation(*differences[:2]) if differences is not None else None
    estimates = noise["estimates"]
    excess = estimates.get("frame_difference", 0) / estimates["background"] if not noise["masked_background"] \
        and estimates.get("background") else 1.0
    if mode == "white":
        spectrum, origin = WHITE, "white (degrade.noise_spectrum)"
    elif source is None:
        spectrum, origin = WHITE, "white: no repeated frames to measure it"
    elif max(source) <= WEAK_CORRELATION:
        spectrum, origin = WHITE, "white: the source noise is (nearly) white"
    elif min(source) < -NEGATIVE_CORRELATION or excess > DIFFERENCE_EXCESS:
        spectrum, origin = WHITE, "white: the frame differences hold more than noise (motion or change)"
    else:
        spectrum, origin = noise_spectrum(differences), "frame differences"
    return {"noise_spectrum": spectrum, "noise_spectrum_from": origin,
            "noise_correlation_source": None if source is None else [round(c, 4) for c in source],
            "noise_correlation_added": [round(c, 4) for c in spectrum_correlation(spectrum)]}


def _noise_record(noise):
    """What degrade() records of the noise measurement beside sigma_source and sigma_method."""
    return {"sigma_estimates": noise["estimates"], "masked_background": noise["masked_background"],
            "sigma_disagree": noise["disagree"], "background_channels": noise.get("background_channels", 0),
            **({"air_fit_rejected": True} if noise.get("air_fit_rejected") else {})}


def add_noise(clean, model, sigma, rng, zero=0.0, spectrum=None):
    """One fresh noise draw of a degradation model on any stack or crop: float32, same shape as clean.

    field: the clean magnitude (clean - zero) is the real channel (its phase is unknown), complex Gaussian noise of
    std sigma is added and the magnitude taken again (Rician). gaussian (the thesis): clean + N(0, sigma).
    spectrum: the series' noise spectrum (noise.noise_spectrum; None: white): field noise is shaped like the
    scanner's, correlated between neighbouring pixels, at the same per-pixel sigma (noise.shaped_noise; a crop
    gets the spectrum resampled to its size, the same correlation per pixel lag).
    degrade() draws the stored pair with it, and PairedSlices draws a new one per training sample (train.fresh_noise),
    so both are the same process."""
    if model == "gaussian":
        return np.asarray(clean, np.float32) + rng.normal(0.0, sigma, size=np.shape(clean)).astype(np.float32)
    if model != "field":
        raise ConfigError(f"degrade model {model!r} cannot draw noise; choose one of {', '.join(NOISE_MODELS)}")
    real, imag = shaped_noise(np.shape(clean), spectrum, rng)
    real *= np.float32(sigma)
    imag *= np.float32(sigma)
    if np.iscomplexobj(clean):
        real += clean.real - np.float32(zero)
        imag += clean.imag
    else:
        real += np.asarray(clean, np.float32) - np.float32(zero)
    noisy = np.hypot(real, imag, out=real)  # in place: one stack less at peak memory
    noisy += np.float32(zero)
    return noisy


def expected_target(truth, sigma_source, channels, zero=0.0):
    """The expected 3T magnitude of the noise-free image (train.target expected): float32, same shape as truth.

    A magnitude image never shows the amplitude A where the signal is low: its mean there is raised by the noise
    floor, E[M] = air.chi_mean(A, sigma, N) for N receive channels combined by sum of squares. A network trained
    towards the truth learns to take away the floor of the data it was trained on, N channels at the phantom's
    sigma, and takes the same amount away from a real scan whose floor is another (adaptive combination: about one
    channel): on the ProstateX dynamic that darkened the muscle by 1.1 input sigmas. The 3T image's expected value
    keeps its own floor, whatever N: what the degraded input adds to it is the added noise's alone (E[M^2] grows by
    2 sigma_added^2 for any N), so what the network learns transfers between scanners, and it is what a real 3T
    frame shows. channels: the chi law the 3T image's air fits (manifest noise_channels; 0, no air to fit, is
    taken as one channel, the smallest floor); zero: the normalized value of zero signal."""
    amplitude = np.asarray(truth, np.float32) - np.float32(zero)
    return (chi_mean(amplitude, float(sigma_source), channels) + float(zero)).astype(np.float32)


def decorrelated_target(clean, noisy, sigma_source, sigma_added):
    """A training target whose noise is uncorrelated with the degraded input's: clean - c (noisy - clean), with
    c = sigma_source**2 / sigma_added**2 (train.target decorrelated).

    The simulated input carries the 3T image's own noise n (variance sigma_source**2) plus the added noise e
    (sigma_added**2): noisy ~ clean + e, clean = truth + n (in tissue, where the magnitude is close to its real
    channel). A network trained to predict the 3T image learns to keep the part of n it can see in the input,
    which is noise against the anatomy. With target = clean - c e the target's noise n - c e has covariance
    sigma_source**2 - c sigma_added**2 = 0 with the input's n + e, so (Gaussian, hence independent) its conditional
    mean is zero and an MSE-trained network learns E[truth | input] instead of E[3T | input]: the
    recorrupted-to-recorrupted argument of Pang et al. (CVPR 2021) and Noisier2Noise (Moran et al., CVPR 2020),
    applied to the pair the simulation already has. The price is a noisier target (variance
    sigma_source**2 (1 + c)), which costs steps, not bias. noisy - clean stands for e: exact for the gaussian
    model, the real channel of e up to e_imag**2 / (2 signal) for the field model in tissue; in air the target
    is only pulled towards zero, where the truth is. Works for the stored draw (validation) and fresh draws alike.
    """
    if not sigma_added > 0:
        raise ValueError(f"a decorrelated target needs added noise (sigma_added {sigma_added}); this series has none")
    c = np.float32((float(sigma_source) / float(sigma_added)) ** 2)
    clean = np.asarray(clean, np.float32)
    return clean - c * (np.asarray(noisy, np.float32) - clean)


if __name__ == "__main__":
    # A quick look at the numbers a config implies: python breastmri/simulate/degrade.py [--config FILE] [--set key=value ...]
    import argparse

    from breastmri.config import load_config

    parser = argparse.ArgumentParser(description="Print the SNR ratio and noise levels a degrade config implies.")
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    d = cfg["degrade"]
    if d["model"] == "field":
        r = snr_ratio(d)
        origin = "degrade.snr_ratio" if d["snr_ratio"] is not None else (
            f"{d['target_field_t']} T / {d['source_field_t']} T to the power {d['field_exponent']}")
        print(f"field model: snr_ratio {r:.3f} ({origin}): "
              f"noise grows x{1 / r:.2f}, added sigma = {math.sqrt(1 / r**2 - 1):.3f} x native sigma")
    elif d["model"] == "gaussian":
        print(f"gaussian model (thesis): sigma {d['sigma']} in normalized units")
    else:
        print("none: the input series is the noisy image (self-supervised training, train.mode)")
