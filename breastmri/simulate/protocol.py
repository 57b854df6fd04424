"""The QIN-BREAST DCE protocol the phantom imitates, and the contrast agent's kinetics.

Timing (frame times, bolus arrival), sequence parameters (TR, TE, flip angle, the T1-map flips,
the DWI b-values) and the tracer kinetics: the Parker population arterial input function (Parker et al. 2006,
doi:10.1002/mrm.21066) and the extended Tofts model (Tofts et al. 1999, doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S).
"""

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Acquisition: the QIN-BREAST DCE protocol (TCIA collection page; Li et al., Invest Radiol 2015;50:195): sagittal
# 3-D RF-spoiled gradient echo, TR/TE/flip = 7.9 ms / 4.6 ms / 20 deg as reported for this protocol, 22 cm FOV,
# 192 x 192, 5 mm slices, 25 temporal positions 16.4 s apart without a pause, 4 of them before the contrast
# (gadopentetate, 0.1 mmol/kg) reaches the breast: what a real series of this protocol shows. TE 4.6 ms is near the
# second fat-water in-phase echo at 3T (~2.3 ms period), so fat and gland add instead of cancelling at boundaries.
FIELD_STRENGTH_T = 3.0
TR_MS, TE_MS, FLIP_DEG = 7.9, 4.6, 20.0
FOV_MM = 220.0                 # square field of view; PixelSpacing = FOV_MM / matrix (1.146 mm at 192)
SLICE_THICKNESS_MM = 5.0
FRAME_INTERVAL_S = 16.4        # time between temporal positions
PRE_CONTRAST_FRAMES = 4
# The bolus reaches the breast this long after the last pre-contrast frame, drawn per patient (Parker's AIF peaks
# ~10 s after arrival, so the next frame enhances); it was injected BOLUS_TRANSIT_S before (arm to breast).
BOLUS_DELAY_S = (2.0, 7.0)
BOLUS_TRANSIT_S = 15.0
T1MAP_FLIPS_DEG = tuple(range(2, 21, 2))  # QIN-BREAST multi-flip T1 mapping: 10 flip angles 2..20 deg
DWI_B_VALUES = (0.0, 500.0)    # s/mm^2
DWI_TR_MS, DWI_TE_MS = 2500.0, 45.0
FULL_SIZE = {"slices": 20, "time_points": 25}  # the real series


def frame_times(time_points):
    """Acquisition times (s) of the DCE temporal positions, the earliest bolus arrival (s) and the number of frames
    before it.

    The real series is 25 frames 16.4 s apart, 4 before contrast. Fewer frames sample that schedule: the pre-contrast
    frames (min(4, half of time_points rounded up)) and the rest spread evenly over the post-contrast frames up to the
    last one, so a short series still spans wash-in, peak and wash-out; more than 25 continue 16.4 s apart.
    -> (times float64 (time_points,), arrival_s float (the earliest of BOLUS_DELAY_S), n_pre int)
    """
    n_full = max(FULL_SIZE["time_points"], time_points)
    n_pre = max(1, min(PRE_CONTRAST_FRAMES, (time_points + 1) // 2))
    post = np.rint(np.linspace(PRE_CONTRAST_FRAMES, n_full - 1, time_points - n_pre)).astype(int)
    picks = list(range(n_pre)) + [int(i) for i in post]
    times = np.round(np.array(picks, np.float64) * FRAME_INTERVAL_S, 3)
    last_pre = (PRE_CONTRAST_FRAMES - 1) * FRAME_INTERVAL_S
    return times, round(last_pre + BOLUS_DELAY_S[0], 3), n_pre


# Contrast agent relaxivity at 3T: 4.9 /mM/s, the value this project's spec fixes (gadobutrol-like; Szomolanyi
# et al. 2019 report 4.9-5.0 /mM/s in plasma at 3T). For gadopentetate (Magnevist) in plasma at 3T Rohrer et al.
# (Invest Radiol 2005;40:715) give ~3.7 /mM/s; with it the lesions would enhance somewhat less.
R1_RELAXIVITY_PER_MM_S = 4.9
HEMATOCRIT = 0.42
# Population AIF of Parker et al., MRM 2006;56:993 (whole blood, mM, t in minutes after arrival).
PARKER_AIF = dict(A1=0.809, A2=0.330, T1=0.17046, T2=0.365, sigma1=0.0563, sigma2=0.132,
                  alpha=1.050, beta=0.1685, s=38.078, tau=0.483)


def parker_aif(t_s, arrival_s, dose=1.0, width=1.0, washout=1.0):
    """Plasma concentration Cp(t) in mM (Parker 2006 whole-blood AIF / (1 - hematocrit)), zero before arrival.

    A patient's own AIF: dose scales every amplitude (cardiac output, weight-based dosing), width stretches the
    first and second pass in time (bolus dispersion), washout scales the slow exponential decay (renal clearance);
    1, 1, 1 is Parker's population curve. Parker et al. report a between-patient spread of this size."""
    p = dict(PARKER_AIF)
    for key in ("A1", "A2", "alpha"):
        p[key] *= dose
    for key in ("T1", "T2", "sigma1", "sigma2"):
        p[key] *= width
    p["beta"] *= washout
    tm = np.maximum(np.asarray(t_s, dtype=np.float64) - arrival_s, 0.0) / 60.0
    blood = (p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(-(tm - p["T1"]) ** 2 / (2 * p["sigma1"] ** 2))
             + p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(-(tm - p["T2"]) ** 2 / (2 * p["sigma2"] ** 2))
             + p["alpha"] * np.exp(-p["beta"] * tm) / (1 + np.exp(-p["s"] * (tm - p["tau"]))))
    return np.where(np.asarray(t_s) >= arrival_s, blood, 0.0) / (1 - HEMATOCRIT)


def tofts_basis(times_s, cp, kep_per_min, dt_s=0.25):
    """The interstitial (EES) part of the extended Tofts model per unit Ktrans (Tofts et al., JMRI 1999;10:223):
    integral Cp(tau) exp(-kep (t - tau)) dtau / 60, for each kep. cp: a function of time (s) -> plasma mM.
    -> float64 (len(times_s), len(kep_per_min)): Ct(t) = vp Cp(t) + Ktrans[/min] * basis[t, kep]."""
    grid = np.arange(0.0, float(np.max(times_s)) + dt_s, dt_s)
    plasma = cp(grid)
    out = np.empty((len(times_s), len(kep_per_min)))
    for j, kep in enumerate(np.atleast_1d(kep_per_min)):
        ees = np.convolve(plasma, np.exp(-kep / 60.0 * grid))[: len(grid)] * dt_s / 60.0
        out[:, j] = np.interp(times_s, grid, ees)
    return out


# Voxelwise kinetics use a table of EES curves on log-spaced kep (1/min) and interpolate between them: kep of breast
# tissue spans ~0.05 (persistent) to ~5 /min (fast wash-out); a necrotic lesion's rim reaches beyond, so up to 60.
KEP_TABLE_PER_MIN = np.geomspace(0.02, 60.0, 64)


def tissue_concentration(times_s, cp, ktrans_per_min, ve, vp):
    """Extended Tofts concentration (mM) of many voxels: ktrans, ve, vp arrays (N,) -> float32 (len(times_s), N).
    kep = Ktrans / ve is interpolated on KEP_TABLE_PER_MIN in log kep (ktrans 0 gives vp Cp only)."""
    ktrans, ve, vp = (np.atleast_1d(np.asarray(v, np.float64)) for v in (ktrans_per_min, ve, vp))
    table = tofts_basis(times_s, cp, KEP_TABLE_PER_MIN)
    kep = np.clip(ktrans / np.maximum(ve, 1e-6), KEP_TABLE_PER_MIN[0], KEP_TABLE_PER_MIN[-1])
    position = np.interp(np.log(kep), np.log(KEP_TABLE_PER_MIN), np.arange(len(KEP_TABLE_PER_MIN)))
    low = np.minimum(position.astype(int), len(KEP_TABLE_PER_MIN) - 2)
    w = (position - low)[None, :]
    ees = table[:, low] * (1 - w) + table[:, low + 1] * w
    return (vp[None, :] * cp(np.asarray(times_s, np.float64))[:, None] + ktrans[None, :] * ees).astype(np.float32)


# An acquisition matrix smaller than the reconstruction matrix, zero-filled, through a k-space filter (scanner.py):
# the acquired fraction of k-space along rows and columns, and the filter's taper (noise.zero_filled_spectrum).
# Their noise correlates with the neighbouring pixel at about 0.71 and 0.63 (0.64 and 0.53 without the filter);
# motion and ghosts between frames take some 0.05 off what a frame difference shows, near the 0.68 and 0.56
# measured on a real breast DCE slice.
ACQUIRED_FRACTION = (0.5, 0.58)
KSPACE_TAPER = 0.1
# Real scanners acquire other parts of k-space: all of it (ProstateX's TWIST dynamic: 160 x 160 of 160 x 160), or a
# reduced phase resolution. A tree's kspace (demo_tree.KSPACE_MODES) is "protocol" (every visit acquires
# ACQUIRED_FRACTION: the calibrated phantom), "full" (the full matrix: white noise, no band limit) or "mixed": each
# visit acquires one of BAND_LIMITS, drawn equally often (None: the full matrix), so that a network trained on it
# meets signal above every band limit and learns to tell a band limit from the noise's texture instead of taking
# one as the edge of signal (docs/real_data.md).
BAND_LIMITS = (ACQUIRED_FRACTION, (0.75, 0.75), None)
