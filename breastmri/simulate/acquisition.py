"""The phantom's series as a scanner stores them: signal equations per frame, motion, then the receive chain.

dce_series, t1map_series and dwi_series turn a phantom (tissue fractions, kinetics, coil sensitivities) into
stored integer images plus the noise-free signal they were drawn from (the truth the evaluation scores against).
The receive chain (ghosts, zero-filled acquisition, channels, storage) is scanner.py's; motion is motion.py's.
"""

import numpy as np
from scipy import ndimage

from breastmri.simulate.motion import move_frame, smooth_displacement
from breastmri.simulate.phantom import (
    DWI_FAT_SUPPRESSION,
    INFLOW_MAX,
    NOISE_SIGMA,
    TISSUES,
    _dwi_gain,
    _signal_gain,
    _spgr,
)
from breastmri.simulate.protocol import (
    ACQUIRED_FRACTION,
    DWI_B_VALUES,
    DWI_TE_MS,
    DWI_TR_MS,
    HEMATOCRIT,
    R1_RELAXIVITY_PER_MM_S,
    T1MAP_FLIPS_DEG,
    parker_aif,
    tissue_concentration,
)
from breastmri.simulate.scanner import band_limit, ghosts, receive, store

BLOOD = ("vessel", "heart")  # their concentration is the patient's AIF itself (whole blood)
CARDIAC_MM = 2.0             # rms of the blood pool's displacement from frame to frame, per axis
CARDIAC_SMOOTH_MM = 8.0      # its smoothness
RESPIRATION_SMOOTH_MM = 15.0  # smoothness of the chest's breathing deformation (motion.py has the breast's)


def _weight(ph, name):
    """Signal weight of one tissue per voxel: its fraction, times the fat's proton-density texture for fat."""
    return ph["fractions"][name] * ph["fat_texture"] if name == "fat" else ph["fractions"][name]


def noise_sigma(ph):
    """The patient's noise per receive channel and real/imaginary part, modality units."""
    return NOISE_SIGMA * ph["patient"]["noise_factor"]


def dce_series(ph, times_s, arrival_s, rng, motion=None, fractions=ACQUIRED_FRACTION):
    """DCE series of one visit: (stored uint16 (time_points, slices, H, W), truth float32 same shape).

    Each tissue's concentration follows the extended Tofts model with the patient's AIF arriving at arrival_s,
    voxel by voxel where the phantom has maps (gland, lesions); R1(t) = 1/T1 + r1 C(t); the spoiled-gradient-echo
    signal of each tissue is weighted by its voxel fraction; the blood pool's signal changes from frame to frame
    (pulsation); then coil sensitivity, motion (`motion`: (fields, through_plane) of motion.patient_motion, or
    None), ghosts, the zero-filled acquisition of `fractions` of k-space (None: the full matrix and white noise),
    channels, storage (scanner.py). truth is |image| before noise: exactly what the noise was added to.
    """
    d = ph["patient"]
    shape = ph["bias"].shape
    times_s = np.asarray(times_s, np.float64)
    n_times = len(times_s)

    def plasma(t):
        return parker_aif(t, arrival_s, **d["aif"])

    blood = (plasma(times_s) * (1 - HEMATOCRIT))[:, None]
    pulse = np.exp(d["pulsation"] * rng.standard_normal(n_times))
    signal = np.zeros((n_times, int(np.prod(shape))), np.float32)
    pulsating = np.zeros_like(signal)
    for name in TISSUES:
        weight = _weight(ph, name).ravel()
        idx = np.flatnonzero(weight > 0)
        if len(idx) == 0:
            continue
        pd, t1, t2s = TISSUES[name][:3]
        if name in BLOOD:
            conc = blood
        else:
            ktrans, ve, vp = (v.ravel()[idx] if np.ndim(v) else v for v in ph["kinetics"][name])
            conc = tissue_concentration(times_s, plasma, ktrans, ve, vp)
        part = (_spgr(pd, 1000.0 / t1 + R1_RELAXIVITY_PER_MM_S * conc, t2s) * weight[idx]).astype(np.float32)
        if name == "heart":
            pulsating[:, idx] += part
        else:
            signal[:, idx] += part
    scale = ph["bias"].ravel()[None, :] * np.float32(_signal_gain())
    signal = (signal * scale).reshape((n_times,) + shape)
    pulsating = (pulsating * scale).reshape((n_times,) + shape)
    # Each frame catches the heart at another mix of cardiac phases: the blood pool is deformed (a smooth random
    # displacement of a few mm), its signal scaled (inflow) and mottled by flow (inflow enhancement and turbulent
    # dephasing, a smooth random relative change of rms `flow`) differently in every frame: a change that no few
    # time courses describe, as on the chest side of a real breast DCE.
    px = ph["pixel_mm"]
    chest = ph["chest"]
    for t in range(n_times):
        # Breathing moves the chest wall, ribs, lung and heart far more than the prone breast, differently in every
        # frame (each frame averages its own mix of respiratory phases).
        field = smooth_displacement(rng, shape[1:], RESPIRATION_SMOOTH_MM / px, d["respiration_mm"] / px)
        field = field.astype(np.float32)
        part = signal[t] * chest
        signal[t] += move_frame(part, field, 0.0) - part
        pulsating[t] = move_frame(pulsating[t], field, 0.0)
        field = smooth_displacement(rng, shape[1:], CARDIAC_SMOOTH_MM / px, CARDIAC_MM / px)
        flow = ndimage.gaussian_filter(rng.standard_normal(shape), CARDIAC_SMOOTH_MM / 2 / px, mode="reflect")
        flow *= d["flow"] / (flow.std() + 1e-12)
        # flow voids darken the blood down to nothing; inflow brightens it by at most 15 % (and keeps 12 bits)
        factor = np.clip(pulse[t] * (1 + flow), 0.0, INFLOW_MAX).astype(np.float32)
        pulsating[t] = move_frame(pulsating[t] * factor, field.astype(np.float32), 0.0)
    signal += pulsating
    if motion is not None:
        fields, through = motion
        for t in range(1, n_times):
            if np.any(fields[t]) or through[t]:
                signal[t] = move_frame(signal[t], fields[t], through[t])
                pulsating[t] = move_frame(pulsating[t], fields[t], through[t])
        np.clip(signal, 0, None, out=signal)  # cubic splines overshoot a little at edges; signal is >= 0
        np.clip(pulsating, 0, None, out=pulsating)
    image = signal + ghosts(pulsating, d["ghost"], rng)
    image = band_limit(image, fractions)
    truth = np.abs(image).astype(np.float32)
    return store(receive(image, ph["coils"], noise_sigma(ph), rng, fractions)), truth


def t1map_series(ph, rng, fractions=ACQUIRED_FRACTION):
    """Multi-flip-angle series (pre-contrast): stored uint16 (len(T1MAP_FLIPS_DEG), slices, H, W)."""
    shape = ph["bias"].shape
    signal = np.zeros((len(T1MAP_FLIPS_DEG), int(np.prod(shape))), np.float32)
    for name in TISSUES:
        pd, t1, t2s = TISSUES[name][:3]
        s_flip = np.array([_spgr(pd, 1000.0 / t1, t2s, flip) for flip in T1MAP_FLIPS_DEG], np.float32)
        signal += s_flip[:, None] * _weight(ph, name).ravel()[None, :]
    signal *= ph["bias"].ravel()[None, :] * np.float32(_signal_gain())
    return _acquire(ph, signal.reshape((len(T1MAP_FLIPS_DEG),) + shape), rng, fractions)


def dwi_series(ph, rng, fractions=ACQUIRED_FRACTION):
    """Spin-echo EPI diffusion series with fat suppression: stored uint16 (len(DWI_B_VALUES), slices, H, W).
    S = PD (1 - exp(-TR/T1)) exp(-TE/T2) exp(-b ADC)."""
    shape = ph["bias"].shape
    signal = np.zeros((len(DWI_B_VALUES), int(np.prod(shape))), np.float32)
    for name, (pd, t1, _, t2, adc, *_) in TISSUES.items():
        pd = pd * (DWI_FAT_SUPPRESSION if name in ("fat", "rib") else 1.0) * (0.1 if name == "vessel" else 1.0)
        s_b = np.array([pd * (1 - np.exp(-DWI_TR_MS / t1)) * np.exp(-DWI_TE_MS / t2) * np.exp(-b * adc * 1e-3)
                        for b in DWI_B_VALUES], np.float32)
        signal += s_b[:, None] * _weight(ph, name).ravel()[None, :]
    signal *= ph["bias"].ravel()[None, :] * np.float32(_dwi_gain())
    return _acquire(ph, signal.reshape((len(DWI_B_VALUES),) + shape), rng, fractions)


def _acquire(ph, signal, rng, fractions):
    """The receive chain of a series without pulsation (no ghosts): stored uint16, same shape as signal.
    fractions: the acquired k-space (dce_series), None for the full matrix."""
    image = band_limit(signal, fractions)
    return store(receive(image, ph["coils"], noise_sigma(ph), rng, fractions))
