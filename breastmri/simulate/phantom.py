"""The physics and anatomy of the demo data (demo_data.py): the QIN-BREAST acquisition, a 3-D tissue phantom of
a prone breast with an enhancing lesion, and the signal of each series (spoiled gradient echo, extended Tofts
kinetics with each patient's AIF, coil sensitivities). No DICOM here: breastmri/simulate/demo_dicom.py
writes what this module simulates, demo_data.py assembles the tree. See demo_data.py for the whole story.
"""

import re
from datetime import date, timedelta

import numpy as np
from scipy import ndimage

from breastmri.config import DEFAULTS
from breastmri.simulate.lesions import (
    BPE_KTRANS_PER_MIN,
    bpe_grade,
    gland_kinetics,
    lesion_draws,
    place_lesions,
)
from breastmri.simulate.protocol import (
    BOLUS_DELAY_S,
    FLIP_DEG,
    FOV_MM,
    SLICE_THICKNESS_MM,
    TE_MS,
    TR_MS,
)

DEMO_DEFAULTS = DEFAULTS["demo"]
GENERATOR_VERSION = 7  # bump when the output changes, so ensure_demo_tree regenerates old trees

# Tissues at 3T. PD: relative proton density; T1/T2* in ms; T2 in ms (DWI only); ADC in 1e-3 mm^2/s (DWI only);
# Ktrans in 1/min, ve and vp as volume fractions (extended Tofts). Sources:
#   fat, fibroglandular T1 423 / 1680 ms and T2 154 / 71 ms: Edden et al., JMRI 2010;32:982 (3T, inversion
#     recovery); Rakow-Penner et al., JMRI 2006;23:87 (IDEAL, 3T) report the same ordering (367 / 1445 ms).
#   muscle T1 1412 ms, T2 50 ms: Stanisz et al., MRM 2005;54:507 (3T).
#   blood T1 ~1.65 s at 3T: Lu et al., MRM 2004;52:679.
#   skin 850 ms, lesion 1500 ms (untreated breast carcinoma is between muscle and gland), rib marrow, lung, T2*
#     and PD: assumed values, chosen for plausible contrast. Lung is dark (short T2*). The heart's blood pool has
#     blood's T1; its wall (myocardium) is muscle.
#   Kinetics: gland and lesions per voxel (lesions.py: background parenchymal enhancement, curve types), fat not
#     at all; vessels and the heart carry the patient's AIF.
TISSUES = {
    #           PD    T1    T2*   T2    ADC   Ktrans  ve    vp
    "skin":    (0.70, 850, 20.0, 40.0, 1.0, 0.020, 0.25, 0.010),
    "fat":     (0.90, 423, 40.0, 154., 0.05, 0.0, 0.0, 0.0),
    "gland":   (0.75, 1680, 30.0, 71.0, 2.0, 0.006, 0.25, 0.005),
    "vessel":  (0.90, 1650, 30.0, 150., 3.0, 0.0, 0.0, 0.0),   # blood: concentration is the AIF itself
    "muscle":  (0.75, 1412, 25.0, 50.0, 1.4, 0.020, 0.12, 0.010),
    "rib":     (0.55, 400, 8.0, 50.0, 0.3, 0.0, 0.0, 0.0),     # fatty marrow inside cortical bone
    "lung":    (0.08, 1300, 1.5, 30.0, 2.0, 0.0, 0.0, 0.0),
    "heart":   (0.90, 1650, 30.0, 150., 3.0, 0.0, 0.0, 0.0),   # blood pool: enhances with the AIF, pulsates
    "lesion":  (0.85, 1500, 35.0, 80.0, 1.0, np.nan, np.nan, np.nan),  # kinetics per voxel (lesions.py)
}
LABELS = ("air",) + tuple(TISSUES)  # label volume values index this tuple: 0 = air
DWI_FAT_SUPPRESSION = 0.08  # SPAIR leaves ~8 % of the fat signal in the DWI series

# Storage: uint16, 12 bits stored, modality value = stored * RESCALE_SLOPE + RESCALE_INTERCEPT (slope != 1 so a
# reader that forgets the rescale is caught). NOISE_SIGMA is the native 3T noise per receive channel and per
# real/imaginary part, in modality units, times a per-patient factor: calibrated so that the breast's SNR
# (evaluate/realism.py) is near the 29.9 of a real QIN-BREAST DCE slice (docs/simulation.md).
BITS_STORED = 12
MAX_STORED = 2 ** BITS_STORED - 1
RESCALE_SLOPE, RESCALE_INTERCEPT = 1.25, 0.0
NOISE_SIGMA = 13.2
N_COILS = 8                    # receive channels of the breast coil, combined by sum of squares (scanner.py)
GHOST_RANGE = (0.08, 0.2)      # rms error of a k-space line of the pulsating blood pool, per patient
FLOW_RANGE = (0.5, 1.0)        # rms relative change of the blood pool's signal by flow, frame to frame
RESPIRATION_MM = (3.5, 5.0)    # rms of the chest's deformation from frame to frame (breathing), per axis
BIAS_RANGE = (0.6, 1.35)       # coil sensitivity is clipped to this range
GLAND_LOGISTIC_WIDTH = 0.6   # gland fraction = logistic((texture - threshold) / width): wide, so partial volume
FAT_TEXTURE_STD = 0.04         # fat proton density varies by ~4 % (std) with the same power-law texture
HEADROOM = 0.98                # the brightest possible voxel uses at most this fraction of the 12-bit range
INFLOW_MAX = 1.15              # the blood pool's flow factor is clipped to this (acquisition.py)
OVERSHOOT = 1.1                # Gibbs ringing of the zero-filled acquisition plus ghosts, at most
NOISE_FACTOR_RANGE = (0.7, 1.45)  # a patient's noise relative to NOISE_SIGMA is clipped to this


def _spgr(pd, r1_per_s, t2star_ms, flip_deg=FLIP_DEG, tr_ms=TR_MS, te_ms=TE_MS):
    """Steady-state spoiled gradient echo (Ernst): S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*),
    E1 = exp(-TR R1). Arrays broadcast; R1 in 1/s, times in ms. Relative signal: PD = 1, T1 -> 0 gives sin(a)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms * 1e-3 * np.asarray(r1_per_s, dtype=np.float64))
    return pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te_ms / t2star_ms)


def _headroom_numerator():
    """Modality units left for the signal below the 12-bit ceiling: the headroom minus 6 noise sigmas of the
    noisiest patient (NOISE_SIGMA times the largest noise factor)."""
    return HEADROOM * MAX_STORED * RESCALE_SLOPE - 6 * NOISE_SIGMA * NOISE_FACTOR_RANGE[1]


def _signal_gain():
    """Modality units per unit of _spgr signal, chosen so that the brightest possible voxel (T1 -> 0, the largest
    PD exp(-TE/T2*), maximal coil sensitivity, the blood pool's inflow factor, ghosts and the zero-filled
    acquisition's Gibbs overshoot, plus 6 noise sigmas) still fits the 12-bit range: no contrast dose or patient
    can clip a peak."""
    brightest = max(pd * np.exp(-TE_MS / t2s) for pd, _, t2s, *_ in TISSUES.values()) * np.sin(np.deg2rad(FLIP_DEG))
    return _headroom_numerator() / (brightest * BIAS_RANGE[1] * INFLOW_MAX * OVERSHOOT)


def _dwi_gain():
    """Same idea for the DWI series: the spin-echo signal is at most PD = 1 (no inflow, no ghosts)."""
    return _headroom_numerator() / (BIAS_RANGE[1] * OVERSHOOT)


# ---------------------------------------------------------------------------------------------------------------
# Anatomy. Physical coordinates of the sagittal grid, in mm: a = anterior -> posterior (image columns),
# s = superior -> inferior (image rows), x = lateral offset of the slice from the breast centre (slices).

DENSITY_CYCLE = ("scattered", "heterogeneous", "dense", "scattered", "fatty", "heterogeneous")


def _patient_draws(seed, index):
    """Every scalar random choice of one patient (independent of grid size), from the patient's own seed."""
    rng = np.random.default_rng([seed, 1, index])
    # Density classes cycle (roughly the population mix, scattered and heterogeneous most common), so that even
    # a few patients show different breast types; the seed shifts the cycle.
    density = DENSITY_CYCLE[(index + seed) % len(DENSITY_CYCLE)]
    d = {
        "density": str(density),
        # fraction of the glandular envelope that is fibroglandular tissue, per BI-RADS-like class
        "gland_fraction": {"fatty": 0.12, "scattered": 0.32, "heterogeneous": 0.55, "dense": 0.8}[density]
        + rng.uniform(-0.05, 0.05),
        "a_cw0": rng.uniform(148, 168),        # chest wall (back of the pectoral muscle) at the breast centre
        "tilt": rng.uniform(-0.08, 0.08),      # mm of chest wall per mm of s
        "curv": rng.uniform(4, 14),            # chest wall bends back superiorly and inferiorly
        "muscle_mm": rng.uniform(7, 14),
        "subcut_chest_mm": rng.uniform(6, 16),  # fat over the pectoral muscle above and below the breast
        "s0": rng.uniform(98, 122),            # breast axis (nipple height)
        "b_sup": rng.uniform(75, 100), "b_inf": rng.uniform(50, 72),
        "p_sup": rng.uniform(1.15, 1.6),       # upper contour slopes gently into the chest
        "p_inf": rng.uniform(2.0, 3.0),        # lower contour is rounded, with a fold
        "length": rng.uniform(60, 118),        # chest wall to nipple, prone (pendulous)
        "half_width": rng.uniform(65, 85),     # lateral half extent of the breast
        "nipple_mm": rng.uniform(4, 8),
        "skin_mm": rng.uniform(1.5, 2.5),
        "subcut_mm": rng.uniform(4, 9),        # subcutaneous fat between skin and gland
        "retro_mm": rng.uniform(4, 9),         # retromammary fat between gland and muscle
        "rib_spacing": rng.uniform(21, 27), "rib_phase": rng.uniform(0, 1),
        "heart_s": rng.uniform(20, 50), "heart_a": rng.uniform(10, 30),
        "bias": rng.normal(0.0, 0.12, 6),
        "n_vessels": int(rng.integers(3, 7)),
        "age": int(rng.integers(32, 71)),
        "n_visits": int(rng.integers(2, 4)),
        "baseline": date(1990, 1, 1) + timedelta(days=int(rng.integers(0, 3650))),
        "days": [0, int(rng.integers(14, 25)), int(rng.integers(60, 150))],
        "petct_day": -int(rng.integers(1, 8)),
        "study_minute": int(rng.integers(8 * 60, 16 * 60)),
    }
    if density == "fatty":
        d["subcut_mm"] += 3.0  # fatty breasts: thicker subcutaneous fat
    # Lesions (lesions.py): none in every 4th patient, else a main lesion and 0-2 satellites.
    d["lesions"] = lesion_draws(rng, index)
    # Kinetics: the patient's own AIF (Parker's population curve with between-patient spread of dose, bolus width
    # and wash-out), bolus arrival after the last pre-contrast frame, background parenchymal enhancement level.
    d["aif"] = {"dose": float(np.exp(rng.normal(0, 0.2))), "width": rng.uniform(0.8, 1.4),
                "washout": float(np.exp(rng.normal(0, 0.3)))}
    d["bolus_delay_s"] = rng.uniform(*BOLUS_DELAY_S)
    d["bpe_ktrans_per_min"] = float(np.exp(rng.uniform(*np.log(BPE_KTRANS_PER_MIN))))
    # Acquisition: this patient's noise relative to NOISE_SIGMA (body size, coil loading, positioning), the cardiac
    # pulsation of the blood pool's signal from frame to frame (inflow), and the strength of its ghosts along the
    # phase-encoding direction (k-space lines acquired at different cardiac phases).
    d["noise_factor"] = float(np.clip(np.exp(rng.normal(0, 0.2)), *NOISE_FACTOR_RANGE))
    d["pulsation"] = rng.uniform(0.1, 0.3)
    d["ghost"] = rng.uniform(*GHOST_RANGE)
    d["flow"] = rng.uniform(*FLOW_RANGE)
    d["respiration_mm"] = rng.uniform(*RESPIRATION_MM)
    d["coil_jitter"] = rng.uniform(-15, 15, (N_COILS, 2))
    d["ducts"] = [(rng.uniform(-20, 20), rng.uniform(-30, 30), rng.uniform(25, 55), rng.uniform(0.5, 1.1))
                  for _ in range(int(rng.integers(4, 9)))]
    d["field_seed"] = int(rng.integers(2 ** 31))
    d["dynamic_plain"] = index % 4 == 1  # a minority of patients have the series named plain "dynamic"
    return d


def _grid(slices, matrix):
    """Voxel-centre coordinates in mm: x (slices, 1, 1), s (1, matrix, 1), a (1, 1, matrix); px = pixel size."""
    px = FOV_MM / matrix
    x = ((np.arange(slices) - (slices - 1) / 2) * SLICE_THICKNESS_MM)[:, None, None]
    s = ((np.arange(matrix) + 0.5) * px)[None, :, None]
    a = ((np.arange(matrix) + 0.5) * px)[None, None, :]
    return x, s, a, px


def _ramp(value, px):
    """Partial-volume fraction of a voxel behind a boundary at signed distance `value` (mm, >0 inside)."""
    return np.clip(value / px + 0.5, 0.0, 1.0)


def _smooth_noise(rng, shape, sigma_mm, spacing_mm):
    """Gaussian-smoothed white noise with zero mean and unit std; sigma and spacing per axis in mm."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                    [s / p for s, p in zip(sigma_mm, spacing_mm)], mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def power_law_field(rng, shape, beta, px, slice_correlation=0.6):
    """Gaussian random field, float32 (slices, H, W), zero mean and unit std, whose in-plane power spectrum is
    ~ 1/f^beta (f in cycles/mm; below one cycle per field of view it is flat, so the mean stays finite).

    Each slice is white noise shaped in the Fourier domain; neighbouring slices are mixed as an AR(1) chain
    (correlation `slice_correlation`), which couples them without changing any slice's spectrum."""
    slices, rows, cols = shape
    fy, fx = np.fft.fftfreq(rows, d=px)[:, None], np.fft.rfftfreq(cols, d=px)[None, :]
    f = np.maximum(np.hypot(fy, fx), 1.0 / (max(rows, cols) * px))
    amplitude = (f ** (-beta / 2.0)).astype(np.float32)
    out = np.empty(shape, np.float32)
    previous = None
    for k in range(slices):
        white = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((rows, cols))) * amplitude, s=(rows, cols))
        white = (white - white.mean()) / (white.std() + 1e-12)
        previous = white if previous is None else (slice_correlation * previous
                                                   + np.sqrt(1 - slice_correlation ** 2) * white)
        out[k] = previous
    return (out - out.mean()) / (out.std() + 1e-12)


def spectrum_beta(patch, px=1.0, low=2, high=0.5):
    """Exponent beta of a power spectrum ~ 1/f^beta, estimated from one (H, W) patch or a stack of them.

    Each patch loses its mean plane (a gradient would add 1/f^2 power), is Hann-windowed, and its periodogram
    is averaged radially in 1-frequency-bin rings; beta = -slope of log power against log f, fitted from ring
    `low` (the lowest rings hold few samples and the window's leakage) to `high` x Nyquist (above it the pixel
    grid's partial volume and interpolation bend the spectrum down)."""
    patches = np.asarray(patch, np.float64)
    patches = patches[None] if patches.ndim == 2 else patches
    n, h, w = patches.shape
    yy, xx = np.mgrid[:h, :w]
    design = np.stack([np.ones(h * w), yy.ravel(), xx.ravel()], axis=1)
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.zeros((h, w))
    for p in patches:
        residual = p.ravel() - design @ np.linalg.lstsq(design, p.ravel(), rcond=None)[0]
        power += np.abs(np.fft.fft2(residual.reshape(h, w) * window)) ** 2
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    ring = np.rint(np.hypot(fy, fx) * min(h, w)).astype(int)
    top = int(high * min(h, w) / 2)
    radii = np.arange(low, top + 1)
    means = np.array([power[ring == r].mean() for r in radii])
    slope = np.polyfit(np.log(radii / (min(h, w) * px)), np.log(means), 1)[0]
    return float(-slope)


def _anatomy(d, slices, matrix, texture_beta=DEMO_DEFAULTS["texture_beta"]):
    """Visit-independent tissue fractions of one patient (everything but the lesion), float32 (slices, H, W) each,
    and the fat's own texture (a multiplier of its proton density, mean 1)."""
    x, s, a, px = _grid(slices, matrix)
    spacing = (SLICE_THICKNESS_MM, px, px)
    shape = (slices, matrix, matrix)
    rng = np.random.default_rng(d["field_seed"])
    ds_ = s - d["s0"]

    # Chest wall, pectoral muscle, body surface above/below the breast (functions of s and x).
    a_cw = d["a_cw0"] + d["tilt"] * ds_ + d["curv"] * (ds_ / 110.0) ** 2 + 0.002 * x ** 2
    muscle = d["muscle_mm"] * np.clip(1 + 0.6 * (-ds_) / d["b_sup"], 0.35, 1.8)  # thicker superiorly
    a_pm = a_cw - muscle
    a_body = a_pm - d["subcut_chest_mm"]

    # Breast mound: a rounded cone from the body surface to the nipple, shorter and lower off-centre laterally.
    lat = np.sqrt(np.clip(1 - (x / d["half_width"]) ** 2, 0, 1))
    length = d["length"] * lat ** 0.7
    half = np.where(ds_ < 0, d["b_sup"], d["b_inf"]) * (0.55 + 0.45 * lat)
    t = np.clip(np.abs(ds_) / half, 0, 1)
    p = np.where(ds_ < 0, d["p_sup"], d["p_inf"])
    profile = (1 - t ** p) ** (1 / p)
    nipple = d["nipple_mm"] * np.exp(-(ds_ / 4.0) ** 2) * np.exp(-(x / 6.0) ** 2)
    a_front = a_body - length * profile - nipple
    k = 4.0  # soft minimum: the breast blends into the chest wall over a few mm instead of a sharp corner
    a_surf = np.minimum(a_body, a_front) - k * np.log1p(np.exp(-np.abs(a_body - a_front) / k))  # (slices, H, 1)

    body = _ramp(a - a_surf, px).astype(np.float32)            # (slices, H, W)
    inside = body >= 0.5
    depth = np.stack([ndimage.distance_transform_edt(m, sampling=px) for m in inside]) - 0.5 * px
    skin = (body * _ramp(d["skin_mm"] - depth, px)).astype(np.float32)
    interior = body - skin

    # Regions along a (soft boundaries): breast/subcutaneous | pectoral muscle | rib band | lung/heart.
    rib_band = 12.0
    w_pm, w_cw, w_deep = _ramp(a - a_pm, px), _ramp(a - a_cw, px), _ramp(a - (a_cw + rib_band), px)
    breast_region = 1 - w_pm

    # Ribs: ovals in the band behind the chest wall, cut obliquely by the sagittal plane.
    phase = (s / d["rib_spacing"] + d["rib_phase"]) % 1.0 - 0.5
    rib_r = np.hypot((phase * d["rib_spacing"]) / 7.0, (a - (a_cw + rib_band / 2)) / 5.0)
    rib = _ramp((1 - rib_r) * 5.0, px)
    heart_r = np.hypot((s - (d["s0"] + d["heart_s"])) / 70.0, (a - (a_cw + rib_band + d["heart_a"])) / 50.0)
    heart = _ramp((1 - heart_r) * 40.0, px)
    blood = _ramp((0.78 - heart_r) * 40.0, px)   # the blood pool inside a ~11 mm wall of myocardium

    # Fibroglandular tissue: an envelope (deep to the subcutaneous fat, anterior to the retromammary fat, inside
    # the mound) filled to the patient's density by a power-law random field. Real fibroglandular tissue has an
    # anatomic noise power spectrum ~ 1/f^beta (beta 1.7-1.9 in thin tomographic slices, ~3 in projections;
    # Chen et al., Med Phys 2012;39:1435), which is what makes patch-based denoisers work less well on real
    # breasts than on piecewise-smooth phantoms. The field is sampled on coordinates that converge towards the
    # nipple, like ducts (a power law is scale-free, so the warp keeps beta), and mapped to a gland fraction by a
    # wide logistic: continuous partial volume rather than a binary mask, whose edges would steepen the spectrum.
    # A centrality prior keeps gland around the retroareolar axis (a smooth, low-frequency term).
    in_mound = _ramp(a_pm - a, px) * _ramp(half * 0.97 - np.abs(ds_), px)
    envelope = (np.clip((depth - d["subcut_mm"]) / 2.0 + 0.5, 0, 1)
                * np.clip((a_pm - d["retro_mm"] - a) / 2.0 + 0.5, 0, 1) * in_mound)
    texture = power_law_field(rng, shape, texture_beta, px)
    # converge: at column a, rows are sampled (s - s0) * scale(a) around the axis, scale >1 near the nipple
    frac_to_nipple = np.clip((a_body - a) / np.maximum(length, 1.0), 0, 0.95)  # 0 at the base, ~1 at the nipple
    scale = 1.0 / (1.0 - 0.75 * frac_to_nipple)
    rows = (d["s0"] + ds_ * scale) / px - 0.5
    kk, _, jj = np.broadcast_arrays(np.arange(slices)[:, None, None], rows, np.arange(matrix)[None, None, :])
    rows = np.broadcast_to(rows, shape)
    texture = ndimage.map_coordinates(texture, [kk, rows, jj], order=1, mode="mirror").reshape(shape)
    prior = texture - 0.5 * (ds_ / half) ** 2
    env_mask = envelope > 0.5
    if env_mask.any():
        threshold = np.quantile(prior[env_mask], 1 - np.clip(d["gland_fraction"], 0.02, 0.98))
    else:
        threshold = np.inf
    gland_p = 1 / (1 + np.exp(-(prior - threshold) / GLAND_LOGISTIC_WIDTH)) * envelope
    # Cooper's ligaments: thin septa through the subcutaneous fat (zero crossings of a smooth field).
    septa = _smooth_noise(rng, shape, (3.0, 3.5, 3.5), spacing)
    ligament = 0.5 * np.exp(-(septa / 0.1) ** 2) * (1 - envelope) * in_mound
    gland_p = np.maximum(gland_p, ligament)
    # Lactiferous ducts: thin strands of fibroglandular tissue converging on the nipple from the retroareolar gland.
    a_tip = d["a_cw0"] - d["muscle_mm"] - d["subcut_chest_mm"] - d["length"] - d["nipple_mm"]
    start = np.array([0.0, d["s0"], a_tip + 3.0])
    for dx, ds, depth_mm, radius in d["ducts"]:
        seg = np.array([dx, ds, depth_mm])
        along = np.clip(((x - start[0]) * seg[0] + (s - start[1]) * seg[1] + (a - start[2]) * seg[2])
                        / (seg @ seg), 0, 1)
        dist = np.sqrt((x - start[0] - along * seg[0]) ** 2 + (s - start[1] - along * seg[1]) ** 2
                       + (a - start[2] - along * seg[2]) ** 2)
        gland_p = np.maximum(gland_p, _ramp(radius - dist, px) * in_mound)

    f = {
        "skin": skin,
        "fat": interior * breast_region * (1 - gland_p),
        "gland": interior * breast_region * gland_p,
        "muscle": interior * ((w_pm - w_cw) + (w_cw - w_deep) * (1 - rib)),
        "rib": interior * (w_cw - w_deep) * rib,
        "lung": interior * w_deep * (1 - heart),
        "heart": interior * w_deep * blood,
    }
    f["muscle"] = f["muscle"] + interior * w_deep * (heart - blood)

    # Vessels: a few 1.5-3 mm vessels running from the chest wall towards the nipple, wavy in s, drifting in x.
    vessel = np.zeros(shape, np.float32)
    for _ in range(d["n_vessels"]):
        r = rng.uniform(1.0, 2.0)
        s_c = d["s0"] + rng.uniform(-0.7, 0.7) * d["b_inf"] + rng.uniform(3, 8) * np.sin(
            2 * np.pi * a / rng.uniform(40, 90) + rng.uniform(0, 2 * np.pi))
        x_c = rng.uniform(-1, 1) * 0.6 * d["half_width"] + rng.uniform(-0.15, 0.15) * (a - d["a_cw0"])
        over_s = np.clip(np.minimum(s + px / 2, s_c + r) - np.maximum(s - px / 2, s_c - r), 0, None) / px
        over_x = np.clip(np.minimum(x + SLICE_THICKNESS_MM / 2, x_c + r)
                         - np.maximum(x - SLICE_THICKNESS_MM / 2, x_c - r), 0, None) / SLICE_THICKNESS_MM
        vessel = np.maximum(vessel, over_s * over_x)
    vessel *= interior * breast_region * in_mound
    keep = 1 - vessel / np.maximum(interior, 1e-6)
    for name in ("fat", "gland"):
        f[name] = f[name] * keep
    f["vessel"] = vessel
    f = {k: np.asarray(v, np.float32) for k, v in f.items()}

    # Receive coil sensitivity: smooth, higher near the breast coil, falling off towards the chest.
    c = d["bias"]
    an, sn, xn = (a - 110.0) / 110.0, ds_ / 110.0, x / 100.0
    log_b = (c[0] * an + c[1] * sn + c[2] * sn ** 2 + c[3] * xn + c[4] * an * sn + c[5] * an ** 2
             - 0.5 * np.clip((a - a_cw) / 60.0, 0, 1))
    bias = np.exp(np.broadcast_to(log_b, shape))
    breast_mask = (f["fat"] + f["gland"]) > 0.5
    bias = bias / (np.mean(bias[breast_mask]) if breast_mask.any() else 1.0)
    bias = np.clip(bias, *BIAS_RANGE).astype(np.float32)
    # The receive channels: elements on an arc in front of the breast, in two rows (medial, lateral); each sees the
    # tissue near it (a loop's sensitivity falls as (1 + (r/R)^2)^-1.5). Unit weights: their squares sum to 1 in
    # every voxel, so the sum-of-squares combination of the noise-free channels is the bias-weighted signal.
    weights = []
    for i, (js, ja) in enumerate(d["coil_jitter"]):
        angle = np.pi * (0.15 + 0.7 * (i // 2) / max(N_COILS // 2 - 1, 1))
        cs = d["s0"] - 110.0 * np.cos(angle) + js
        ca = d["a_cw0"] - 40.0 - 110.0 * np.sin(angle) + ja
        cx = 35.0 if i % 2 else -35.0
        weights.append(np.broadcast_to((1 + ((s - cs) ** 2 + (a - ca) ** 2 + (x - cx) ** 2) / 70.0 ** 2) ** -1.5,
                                       shape))
    coils = np.stack(weights).astype(np.float32)
    coils /= np.sqrt((coils ** 2).sum(axis=0, keepdims=True))
    # Fat lobules are not perfectly uniform either: a weak power-law modulation of its proton density.
    fat_texture = (1 + FAT_TEXTURE_STD * power_law_field(rng, shape, texture_beta, px)).astype(np.float32)
    chest = np.broadcast_to(w_cw, shape).astype(np.float32)  # behind the chest wall: moves with every breath
    return f, bias, envelope, depth, fat_texture, coils, chest


def _patient_index(patient):
    if isinstance(patient, str):
        match = re.fullmatch(r"QIN-BREAST-01-(\d{4})", patient)
        if not match:
            raise ValueError(f"unknown demo patient id {patient!r} (expected like QIN-BREAST-01-0001)")
        return int(match.group(1)) - 1
    if int(patient) < 0:
        raise ValueError(f"patient index must be >= 0, got {patient}")
    return int(patient)


def patient_id(index):
    """Demo PatientID of a 0-based patient index: 0 -> 'QIN-BREAST-01-0001'."""
    return f"QIN-BREAST-01-{index + 1:04d}"


def phantom(patient, visit=0, seed=DEMO_DEFAULTS["seed"], slices=DEMO_DEFAULTS["slices"], matrix=192,
            texture_beta=DEMO_DEFAULTS["texture_beta"]):
    """Ground truth of one patient's MR visit, on the grid of its DCE series.

    patient: 0-based index or PatientID ('QIN-BREAST-01-0001'); visit: 0 (baseline), 1, 2.
    Returns a dict:
      fractions: {tissue: float32 (slices, matrix, matrix) in [0, 1]}, tissues as in TISSUES (air = 1 - sum)
      labels:    uint8 (slices, matrix, matrix), index into LABELS (argmax of the fractions, air included)
      bias:      float32 (slices, matrix, matrix), combined coil sensitivity (multiplies the signal, not the noise)
      coils:     float32 (N_COILS, slices, matrix, matrix), each channel's share: squares sum to 1 per voxel
      fat_texture: float32 (slices, matrix, matrix), multiplier of the fat's proton density (mean ~1)
      kinetics:  {tissue: (Ktrans /min, ve, vp)}, scalars or float32 (slices, matrix, matrix) maps (gland, lesion)
      ktrans, ve: float32 (slices, matrix, matrix), the tissues' fraction-weighted mean per voxel (0 in air, blood
                 counts as 0): the parameter maps a voxelwise Tofts fit is scored against
      lesions:   list of records (diameter_mm, curve, ktrans_per_min, ve, vp, shape, centre_index, ...), main first;
      density, bpe: str; patient: the patient's scalar draws
    Axis 0 is slice k of the DCE series (instances t * slices + k + 1), axes 1-2 are pixel rows and columns.
    """
    index = _patient_index(patient)
    d = _patient_draws(seed, index)
    if visit not in range(d["n_visits"]):
        raise ValueError(f"{patient_id(index)} has visits 0..{d['n_visits'] - 1} with seed {seed}, not {visit}")
    f, bias, envelope, depth, fat_texture, coils, chest = _anatomy(d, slices, matrix, texture_beta)
    grid = _grid(slices, matrix)
    frac, lesion_kinetics, records = place_lesions(d["lesions"], visit, grid, envelope, depth, d["subcut_mm"])
    body = sum(f.values())
    frac = np.minimum(frac, body - f["skin"])  # the lesions replace tissue beneath the skin
    keep = 1 - frac / np.maximum(body - f["skin"], 1e-6)
    for name in f:
        if name != "skin":
            f[name] = (f[name] * keep).astype(np.float32)
    f["lesion"] = frac.astype(np.float32)
    fractions = {name: f[name] for name in TISSUES}
    kinetics = {name: tuple(float(v) for v in TISSUES[name][5:8]) for name in TISSUES}
    kinetics["gland"] = gland_kinetics(np.random.default_rng([d["field_seed"], 5]), bias.shape,
                                       (SLICE_THICKNESS_MM, grid[3], grid[3]), d["bpe_ktrans_per_min"])
    kinetics["lesion"] = lesion_kinetics
    total = np.maximum(sum(fractions.values()), 1e-6)
    maps = [sum(fractions[name] * kinetics[name][j] for name in TISSUES) / total for j in (0, 1)]
    stack = np.stack([1 - sum(fractions.values())] + list(fractions.values()))
    return {"fractions": fractions, "labels": np.argmax(stack, axis=0).astype(np.uint8), "bias": bias,
            "coils": coils, "chest": chest, "fat_texture": fat_texture, "gland_envelope": envelope.astype(np.float32),
            "kinetics": kinetics, "ktrans": maps[0].astype(np.float32), "ve": maps[1].astype(np.float32),
            "lesions": records, "density": d["density"],
            "bpe": bpe_grade(d["bpe_ktrans_per_min"]), "patient": d, "pixel_mm": grid[3]}
