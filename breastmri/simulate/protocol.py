"""The QIN-BREAST DCE protocol the phantom imitates, and the contrast agent's kinetics.

Timing (frame times, injection gap, bolus arrival), sequence parameters (TR, TE, flip angle, the T1-map flips,
the DWI b-values) and the tracer kinetics: the Parker population arterial input function (Parker et al. 2006,
doi:10.1002/mrm.21066) and the extended Tofts model (Tofts et al. 1999, doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S).
"""

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Acquisition: the QIN-BREAST DCE protocol (TCIA collection page; Li et al., Invest Radiol 2015;50:195): sagittal
# 3-D RF-spoiled gradient echo, TR/TE/flip = 7.9 ms / 4.6 ms / 20 deg as reported for this protocol, 22 cm FOV,
# 192 x 192, 5 mm slices, 3 frames before the injection of gadopentetate (0.1 mmol/kg). TE 4.6 ms is near the
# second fat-water in-phase echo at 3T (~2.3 ms period), so fat and gland add instead of cancelling at boundaries.
FIELD_STRENGTH_T = 3.0
TR_MS, TE_MS, FLIP_DEG = 7.9, 4.6, 20.0
FOV_MM = 220.0                 # square field of view; PixelSpacing = FOV_MM / matrix (1.146 mm at 192)
SLICE_THICKNESS_MM = 5.0
FRAME_INTERVAL_S = 17.49       # time between temporal positions in the real headers
INJECTION_GAP_S = 69.45        # the one longer gap, after the last pre-contrast frame (contrast is injected)
PRE_CONTRAST_FRAMES = 3
BOLUS_ARRIVAL_AFTER_PRE_S = 40.0  # arrival in the breast after the last pre-contrast frame: ~75 s with 3 frames
T1MAP_FLIPS_DEG = tuple(range(2, 21, 2))  # QIN-BREAST multi-flip T1 mapping: 10 flip angles 2..20 deg
DWI_B_VALUES = (0.0, 500.0)    # s/mm^2
DWI_TR_MS, DWI_TE_MS = 2500.0, 45.0
FULL_SIZE = {"slices": 20, "time_points": 25}  # the real series

# Contrast agent relaxivity at 3T: 4.9 /mM/s, the value this project's spec fixes (gadobutrol-like; Szomolanyi
# et al. 2019 report 4.9-5.0 /mM/s in plasma at 3T). For gadopentetate (Magnevist) in plasma at 3T Rohrer et al.
# (Invest Radiol 2005;40:715) give ~3.7 /mM/s; with it the lesions would enhance somewhat less.
R1_RELAXIVITY_PER_MM_S = 4.9
HEMATOCRIT = 0.42
# Population AIF of Parker et al., MRM 2006;56:993 (whole blood, mM, t in minutes after arrival).
PARKER_AIF = dict(A1=0.809, A2=0.330, T1=0.17046, T2=0.365, sigma1=0.0563, sigma2=0.132,
                  alpha=1.050, beta=0.1685, s=38.078, tau=0.483)


def frame_times(time_points):
    """Acquisition times (s) of the DCE temporal positions and the bolus arrival time (s).

    The real pattern is kept for any number of frames: up to 3 pre-contrast frames 17.49 s apart, one 69.45 s gap
    (injection), then 17.49 s apart; the bolus reaches the breast 40 s after the last pre-contrast frame (~75 s).
    -> (times float64 (time_points,), arrival_s float, n_pre int)
    """
    n_pre = min(PRE_CONTRAST_FRAMES, time_points - 1)
    pre = [k * FRAME_INTERVAL_S for k in range(n_pre)]
    last_pre = pre[-1]
    post = [last_pre + INJECTION_GAP_S + k * FRAME_INTERVAL_S for k in range(time_points - n_pre)]
    return np.round(np.array(pre + post), 3), round(last_pre + BOLUS_ARRIVAL_AFTER_PRE_S, 3), n_pre


def parker_aif(t_s, arrival_s):
    """Plasma concentration Cp(t) in mM (Parker 2006 whole-blood AIF / (1 - hematocrit)), zero before arrival."""
    p = PARKER_AIF
    tm = np.maximum(np.asarray(t_s, dtype=np.float64) - arrival_s, 0.0) / 60.0
    blood = (p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(-(tm - p["T1"]) ** 2 / (2 * p["sigma1"] ** 2))
             + p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(-(tm - p["T2"]) ** 2 / (2 * p["sigma2"] ** 2))
             + p["alpha"] * np.exp(-p["beta"] * tm) / (1 + np.exp(-p["s"] * (tm - p["tau"]))))
    return np.where(np.asarray(t_s) >= arrival_s, blood, 0.0) / (1 - HEMATOCRIT)


def tofts_concentration(times_s, arrival_s, ktrans_per_min, ve, vp, dt_s=0.25):
    """Extended Tofts tissue concentration (mM) at times_s, split into plasma and interstitial parts:
    Ct(t) = vp Cp(t) + Ktrans * integral Cp(tau) exp(-kep (t - tau)) dtau, kep = Ktrans / ve (Tofts et al.,
    JMRI 1999;10:223). -> (vp * Cp at times_s, EES part at times_s), each float64 (len(times_s),)."""
    grid = np.arange(0.0, float(np.max(times_s)) + dt_s, dt_s)
    cp = parker_aif(grid, arrival_s)
    if ktrans_per_min > 0:
        kep_per_s = ktrans_per_min / ve / 60.0
        ees = np.convolve(cp, np.exp(-kep_per_s * grid))[: len(grid)] * dt_s * (ktrans_per_min / 60.0)
    else:
        ees = np.zeros_like(grid)
    return vp * np.interp(times_s, grid, cp), np.interp(times_s, grid, ees)


# An acquisition matrix smaller than the reconstruction matrix, zero-filled (demo_data.py --correlated-noise): the
# acquired fraction of k-space along rows and columns. Its noise correlates with the neighbouring pixel at about
# sin(pi f) / (pi f): 0.64 and 0.53, near the 0.68 and 0.56 measured on a real breast DCE slice.
ACQUIRED_FRACTION = (0.5, 0.58)
