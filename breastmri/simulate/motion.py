"""How a patient moves during a DCE series, and how that moves the phantom's frames.

Measured on a real breast DCE slice of the QIN-BREAST protocol: the pre-contrast frames lie within 0.15 px of each
other; when the contrast is injected the patient jumps (there about (1.6, 2.6) px), then drifts slowly back over
minutes, not all the way (to about (1.2, 0.1) px after 5 min). patient_motion draws that pattern per patient: a
still pre-contrast phase, a jump at the first post-contrast frame, an exponential drift back towards a residual
offset, small breathing jitter on every frame, a smooth non-rigid deformation of the breast that follows the same
time course, and through-plane motion (the slice picks up its neighbours). Frame 0 is the reference.
"""

import numpy as np
from scipy import ndimage

from breastmri.simulate.protocol import SLICE_THICKNESS_MM

PRE_JITTER_MM = 0.03        # std of the rigid jitter of a pre-contrast frame, per axis
BREATHING_MM = 0.08         # std of the rigid jitter of a post-contrast frame, per axis
DRIFT_S = (60.0, 200.0)     # time constant of the drift back after the jump
ELASTIC_MM = 20.0           # smoothness of the non-rigid deformation
BREATHING_DEFORMATION_MM = (0.05, 0.15)  # rms of each frame's own breathing deformation, per axis (per patient)
BREATHING_SMOOTH_MM = 10.0  # its smoothness


def smooth_displacement(rng, shape, smooth_px, rms=None):
    """A smooth random in-plane displacement field (2, *shape): two Gaussian-smoothed (smooth_px) white fields,
    scaled so that the std over both is `rms` (in the caller's units), or left as drawn (rms None)."""
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), smooth_px, mode="reflect")
                      for _ in range(2)])
    if rms is not None:
        field *= rms / (field.std() + 1e-12)
    return field


def patient_motion(rng, times_s, n_pre, shape, px, max_mm):
    """Displacements of every frame relative to frame 0.

    times_s: (T,) frame times; n_pre: frames before contrast; shape: (slices, rows, cols); px: pixel size (mm);
    max_mm: the largest in-plane displacement of any pixel (the jump's scale; 0 turns motion off).
    -> (fields float32 (T, 2, rows, cols) in pixels (row, column components), through_plane float32 (T,) in slices,
    largest in-plane displacement of each frame in mm (T,))."""
    n_times = len(times_s)
    _, rows, cols = shape
    fields = np.zeros((n_times, 2, rows, cols), np.float32)
    through = np.zeros(n_times, np.float32)
    if max_mm <= 0 or n_times < 2:
        return fields, through, [0.0] * n_times
    jump = rng.normal(size=2)
    jump *= rng.uniform(0.4, 0.7) * max_mm / np.linalg.norm(jump)        # rigid part of the jump, mm
    keep = rng.uniform(0.05, 0.8, 2)                                    # fraction of the jump never drifted back
    tau = rng.uniform(*DRIFT_S)
    elastic = smooth_displacement(rng, (rows, cols), ELASTIC_MM / px)
    elastic *= rng.uniform(0.1, 0.25) * max_mm / (np.hypot(*elastic).max() + 1e-12)
    dz_mm = rng.uniform(-0.15, 0.15) * max_mm
    breathing_mm = rng.uniform(*BREATHING_DEFORMATION_MM)
    jitter = rng.normal(size=(n_times, 3))
    start = float(times_s[min(n_pre, n_times - 1)])
    largest = [0.0] * n_times
    for t in range(1, n_times):
        if t < n_pre:
            rigid, profile, dz = PRE_JITTER_MM * jitter[t, :2], 0.0, 0.0
        else:
            decay = np.exp(-(float(times_s[t]) - start) / tau)
            profile = keep + (1 - keep) * decay
            rigid = jump * profile + BREATHING_MM * jitter[t, :2]
            dz = dz_mm * float(np.mean(profile)) + BREATHING_MM * jitter[t, 2]
        # breathing: a small smooth deformation of its own in every frame (the frame's mix of respiratory phases)
        breath = smooth_displacement(rng, (rows, cols), BREATHING_SMOOTH_MM / px, breathing_mm)
        total = elastic * np.mean(profile) + rigid[:, None, None] + breath
        size = float(np.hypot(*total).max())
        if size > max_mm:  # the jitter can push the largest displacement past max_mm: scale the frame back
            total *= max_mm / size
            size = max_mm
        fields[t] = total / px
        through[t] = dz / SLICE_THICKNESS_MM
        largest[t] = size
    return fields, through, largest


def move_frame(volume, field, through_plane):
    """volume (slices, H, W) resampled at grid + field (2, H, W) pixels (cubic spline, edges repeated), then shifted
    by through_plane slices (linear between neighbouring slices, the end slices repeated)."""
    rows, cols = volume.shape[1:]
    if np.any(field):
        grid = np.mgrid[:rows, :cols].astype(np.float32) + field
        volume = np.stack([ndimage.map_coordinates(img, grid, order=3, mode="nearest") for img in volume])
    if through_plane:
        position = np.clip(np.arange(len(volume)) + through_plane, 0, len(volume) - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, len(volume) - 1)
        w = (position - low).astype(np.float32)[:, None, None]
        volume = volume[low] * (1 - w) + volume[high] * w
    return volume
