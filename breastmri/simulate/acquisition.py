"""The phantom's series as a scanner stores them: signal equations per frame, motion, noise, 12-bit storage.

dce_series, t1map_series and dwi_series turn a phantom (tissue fractions, lesion, coil bias) into stored integer
images plus the noise-free signal they were drawn from (the truth the evaluation scores against).
"""

import numpy as np
from scipy import ndimage

from breastmri.simulate.noise import WHITE, shaped_noise
from breastmri.simulate.phantom import (
    BITS_STORED,
    DWI_FAT_SUPPRESSION,
    MAX_STORED,
    NOISE_SIGMA,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    TISSUES,
    _dwi_gain,
    _signal_gain,
    _spgr,
)
from breastmri.simulate.protocol import (
    DWI_B_VALUES,
    DWI_TE_MS,
    DWI_TR_MS,
    HEMATOCRIT,
    R1_RELAXIVITY_PER_MM_S,
    T1MAP_FLIPS_DEG,
    parker_aif,
    tofts_concentration,
)

# ---------------------------------------------------------------------------------------------------------------
# Signal synthesis: one whole series volume at a time.

def _add_noise_and_store(signal, rng, spectrum=WHITE):
    """Complex Gaussian noise (sigma NOISE_SIGMA per channel) on a real signal, magnitude, to 12-bit stored values.
    signal: float modality units, any shape -> uint16 same shape. spectrum: white (None), or the noise spectrum
    of a zero-filled acquisition (noise.zero_filled_spectrum): the noise correlated as a scanner's."""
    real, imag = shaped_noise(signal.shape, spectrum, rng)  # white: the same draws, in the same order, as ever
    real = signal + NOISE_SIGMA * real
    imag *= NOISE_SIGMA
    stored = np.rint((np.hypot(real, imag) - RESCALE_INTERCEPT) / RESCALE_SLOPE)
    if stored.max() > MAX_STORED:  # cannot happen with _signal_gain(); a changed constant would clip silently
        raise RuntimeError(f"simulated signal exceeds {BITS_STORED} bits ({stored.max():.0f}); lower the gain")
    return stored.astype(np.uint16)


def _weight(ph, name):
    """Signal weight of one tissue per voxel: its fraction, times the fat's proton-density texture for fat."""
    return ph["fractions"][name] * ph["fat_texture"] if name == "fat" else ph["fractions"][name]


def frame_motion(rng, n_frames, rows, cols, px, max_mm):
    """In-plane displacement of each DCE frame relative to the first, float32 (n_frames, 2, rows, cols) in
    pixels (row, column components), and the largest displacement of each frame in mm.

    Frame 0 is the reference (zero). Every later frame gets a rigid shift (up to 0.6 max_mm, the table and the
    patient settling, breathing transmitted through the chest wall) plus a smooth elastic field (a 20 mm
    Gaussian-smoothed random field, scaled to at most 0.4 max_mm): the total never exceeds max_mm."""
    fields = np.zeros((n_frames, 2, rows, cols), np.float32)
    largest = [0.0] * n_frames
    if max_mm <= 0:
        return fields, largest
    for t in range(1, n_frames):
        angle, rigid = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.6) * max_mm
        elastic = np.stack([ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 20.0 / px, mode="reflect")
                            for _ in range(2)])
        elastic *= rng.uniform(0.0, 0.4) * max_mm / (np.hypot(*elastic).max() + 1e-12)
        total = elastic + (rigid * np.array([np.sin(angle), np.cos(angle)]))[:, None, None]
        fields[t] = total / px
        largest[t] = float(np.hypot(*total).max())
    return fields, largest


def _move(volume, field):
    """volume (slices, H, W) resampled at grid + field (2, H, W) pixels, cubic spline, edges repeated."""
    rows, cols = volume.shape[1:]
    grid = np.mgrid[:rows, :cols].astype(np.float32) + field
    return np.stack([ndimage.map_coordinates(img, grid, order=3, mode="nearest") for img in volume])


def dce_series(ph, times_s, arrival_s, rng, motion=None, noise_spectrum=WHITE):
    """DCE series of one visit: (stored uint16 (time_points, slices, H, W), truth float32 same shape).

    Each tissue's concentration follows the extended Tofts model with the shifted Parker AIF; R1(t) = 1/T1 +
    r1 Ct(t); the spoiled-gradient-echo signal of each tissue is weighted by its voxel fraction; the lesion has
    its own Ktrans/ve/vp with a per-voxel Ktrans multiplier; then coil sensitivity, frame motion (`motion`: the
    displacement fields of frame_motion, or None), noise, magnitude, storage. truth is the noise-free signal in
    modality units, after motion: exactly what the noise was added to.
    """
    frac = ph["fractions"]
    shape = ph["bias"].shape
    names = [n for n in TISSUES if n != "lesion"]
    curves = []
    for name in names:
        pd, t1, t2s, _, _, ktrans, ve, vp = TISSUES[name]
        if name == "vessel":
            conc = parker_aif(times_s, arrival_s) * (1 - HEMATOCRIT)  # whole-blood concentration
        else:
            plasma, ees = tofts_concentration(times_s, arrival_s, ktrans, ve, vp)
            conc = plasma + ees
        curves.append(_spgr(pd, 1000.0 / t1 + R1_RELAXIVITY_PER_MM_S * conc, t2s))
    fractions = np.stack([_weight(ph, n).ravel() for n in names])             # (K, N)
    signal = np.asarray(np.stack(curves, axis=1), np.float32) @ fractions     # (T, N)
    if ph["lesion"] is not None:
        idx = np.flatnonzero(frac["lesion"].ravel() > 0)
        les = ph["lesion"]
        pd, t1, t2s = TISSUES["lesion"][:3]
        plasma, ees = tofts_concentration(times_s, arrival_s, les["ktrans_per_min"], les["ve"], les["vp"])
        m = ph["lesion_ktrans_multiplier"].ravel()[idx]
        r1 = 1000.0 / t1 + R1_RELAXIVITY_PER_MM_S * (plasma[:, None] + ees[:, None] * m[None, :])
        signal[:, idx] += (_spgr(pd, r1, t2s) * frac["lesion"].ravel()[idx]).astype(np.float32)
    signal *= ph["bias"].ravel()[None, :] * np.float32(_signal_gain())
    signal = signal.reshape((len(times_s),) + shape)
    if motion is not None:
        for t in range(1, len(times_s)):
            if np.any(motion[t]):
                signal[t] = _move(signal[t], motion[t])
        np.clip(signal, 0, None, out=signal)  # cubic splines overshoot a little at edges; signal is >= 0
    return _add_noise_and_store(signal, rng, noise_spectrum), signal


def t1map_series(ph, rng):
    """Multi-flip-angle series (pre-contrast): stored uint16 (len(T1MAP_FLIPS_DEG), slices, H, W)."""
    frac, les = ph["fractions"], ph["lesion"]
    shape = ph["bias"].shape
    signal = np.zeros((len(T1MAP_FLIPS_DEG), int(np.prod(shape))), np.float32)
    for name in TISSUES:
        pd, t1, t2s = TISSUES[name][:3]
        s_flip = np.array([_spgr(pd, 1000.0 / t1, t2s, flip) for flip in T1MAP_FLIPS_DEG], np.float32)
        signal += s_flip[:, None] * _weight(ph, name).ravel()[None, :]
    signal *= ph["bias"].ravel()[None, :] * np.float32(_signal_gain())
    return _add_noise_and_store(signal.reshape((len(T1MAP_FLIPS_DEG),) + shape), rng)


def dwi_series(ph, rng):
    """Spin-echo EPI diffusion series with fat suppression: stored uint16 (len(DWI_B_VALUES), slices, H, W).
    S = PD (1 - exp(-TR/T1)) exp(-TE/T2) exp(-b ADC)."""
    frac = ph["fractions"]
    shape = ph["bias"].shape
    signal = np.zeros((len(DWI_B_VALUES), int(np.prod(shape))), np.float32)
    for name, (pd, t1, _, t2, adc, *_) in TISSUES.items():
        pd = pd * (DWI_FAT_SUPPRESSION if name in ("fat", "rib") else 1.0) * (0.1 if name == "vessel" else 1.0)
        s_b = np.array([pd * (1 - np.exp(-DWI_TR_MS / t1)) * np.exp(-DWI_TE_MS / t2) * np.exp(-b * adc * 1e-3)
                        for b in DWI_B_VALUES], np.float32)
        signal += s_b[:, None] * _weight(ph, name).ravel()[None, :]
    signal *= ph["bias"].ravel()[None, :] * np.float32(_dwi_gain())
    return _add_noise_and_store(signal.reshape((len(DWI_B_VALUES),) + shape), rng)
