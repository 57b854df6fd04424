"""How real does a DCE series look? The statistics a generated series and a real one are compared by.

    python demo_data.py --realism path/to/real/DCE/series      # the real series next to a generated one

Every statistic is computed by the same code on both, at the middle slice position of the dynamic (the series,
or the series stored one per time point, assembled as preprocessing assembles them):

- region: the body (the mean frame above 10% of its 99th percentile), restricted to the 55% of the body's width
  farthest from the chest wall (the image side the body covers most: the torso leaves the field of view there);
- noise: 1.4826 x the median absolute deviation of (frame 1 - frame 0) / sqrt(2) in the region;
- SNR: the mean of frame 0 in the region over that noise;
- noise neighbour correlation: the correlation coefficient of that difference image with itself shifted by one
  pixel along each image axis, inside the region;
- projection residual: the PSNR in the region of the local temporal PCA projection of the frames (8 x 8 blocks at
  stride 4, Marchenko-Pastur edge, every block's noise from the smallest eigenvalue of the whole slice's temporal
  covariance: the projection's first definition, kept here so that the figures stay comparable; data.context
  _projection "local" with block_noise_fit False) against the frames themselves, range the 99.5th percentile of the
  frames in the region: how far a series is from "exactly low-rank plus white noise";
- fine-detail kurtosis: the kurtosis (3 for a Gaussian) of the high-pass detail of the mean frame (the mean frame
  minus its Gaussian blur of DETAIL_BLUR_PX) in the region eroded by DETAIL_EROSION_PX: real anatomy's fine
  structure is sparse (edges, vessels, septa: a few large values), a texture's is not;
- time points, their spacing (the median gap of the acquisition times), the frames before contrast arrives (its most-enhancing
  pixels in the region rise: noise.frames_before_contrast), and the largest rigid shift of a frame from frame 0 (phase
  correlation, pixels).
"""

import math

import numpy as np
from scipy import ndimage

from breastmri.data.context import _projection
from breastmri.dicom.dynamics import assemble_dynamics, select_frames
from breastmri.dicom.index import index
from breastmri.dicom.pixels import read_series
from breastmri.registration import register_shifts
from breastmri.simulate.noise import body_of, frames_before_contrast, neighbour_correlation

BREAST_FRACTION = 0.55
DETAIL_BLUR_PX, DETAIL_EROSION_PX = 1.5, 4  # fine-detail kurtosis: the blur it takes off, the region's edge left out


def dynamic_frames(series_dir):
    """(frames (T, H, W) at the middle position of the longest dynamic under series_dir, acquisition times (s)
    or None, its description). ValueError when the folder holds no series of at least 3 time points."""
    series, _, _ = index(series_dir)
    series = assemble_dynamics(series)
    series = [s for s in series if len({t for t, _ in s.layout}) >= 3]
    if not series:
        raise ValueError(f"{series_dir} holds no MR series of at least 3 time points")
    s = max(series, key=lambda s: len({t for t, _ in s.layout}))
    positions = sorted({k for _, k in s.layout})
    middle = positions[len(positions) // 2]
    picks = [i for _, i in sorted((t, i) for i, (t, k) in enumerate(s.layout) if k == middle)]
    return read_series(select_frames(s, picks)), _times(s, picks), s.series_description  # only those frames


def _times(series, indices):
    """Acquisition times (s) of the picked frames, as the index read them; None when a frame has none."""
    times = [series.times[i] for i in indices] if series.times else []
    return None if not times or None in times else np.asarray(times)


def breast_region(frames):
    """Boolean (H, W): the body, restricted to the BREAST_FRACTION of its width farthest from the chest wall."""
    mean = frames.mean(axis=0)
    body = body_of(mean)
    edges = {"top": body[0].mean(), "bottom": body[-1].mean(), "left": body[:, 0].mean(), "right": body[:, -1].mean()}
    chest = max(edges, key=edges.get)
    axis = 0 if chest in ("top", "bottom") else 1
    extent = np.flatnonzero(body.any(axis=1 - axis))
    lo, hi = extent[0], extent[-1] + 1
    keep = int(round(BREAST_FRACTION * (hi - lo)))
    band = np.zeros(body.shape[axis], bool)
    if chest in ("top", "left"):
        band[hi - keep:hi] = True
    else:
        band[lo:lo + keep] = True
    region = body & (band[:, None] if axis == 0 else band[None, :])
    return region


def statistics(frames, times_s=None):
    """The statistics of the module docstring for frames (T, H, W) of one slice position."""
    frames = np.asarray(frames, np.float64)
    region = breast_region(frames)
    diff = (frames[1] - frames[0]) / math.sqrt(2)
    values = diff[region]
    noise = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    correlation = [round(c, 3) for c in neighbour_correlation(diff[None], region[None])]
    projected = _projection(frames.astype(np.float32), "local", None, block_noise_fit=False)[0].astype(np.float64)
    data_range = float(np.percentile(frames[:, region], 99.5))
    mse = float(np.mean((projected - frames)[:, region] ** 2))
    shifts = np.hypot(*register_shifts(frames.astype(np.float32))[1:].T)
    mean = frames.mean(axis=0)
    inner = ndimage.binary_erosion(region, iterations=DETAIL_EROSION_PX)
    detail = (mean - ndimage.gaussian_filter(mean, DETAIL_BLUR_PX))[inner]
    detail = detail - detail.mean()
    return {
        "time_points": len(frames),
        "spacing_s": None if times_s is None else round(float(np.median(np.diff(times_s))), 2),
        "frames_before_contrast": frames_before_contrast(frames, region),
        "snr": round(float(frames[0][region].mean()) / noise, 1) if noise > 0 else None,
        "noise_correlation": correlation,
        "projection_residual_db": round(10 * math.log10(data_range ** 2 / mse), 1) if mse > 0 else None,
        "detail_kurtosis": round(float(np.mean(detail ** 4) / np.mean(detail ** 2) ** 2), 1)
        if detail.size > 1 and np.any(detail) else None,
        "largest_shift_px": round(float(shifts.max(initial=0.0)), 2),
        "region_pixels": int(region.sum()),
    }


def median_statistics(many):
    """The median of several statistics dicts, statistic by statistic (lists element by element; integers stay
    integers where the median is one; anything else is the first one's)."""
    median = {}
    for key in many[0]:
        values = [g[key] for g in many]
        if all(isinstance(v, list) for v in values):
            median[key] = [round(float(np.median(c)), 3) for c in zip(*values)]
        elif all(isinstance(v, (int, float)) for v in values):
            middle = float(np.median(values))
            integral = middle.is_integer() and all(isinstance(v, int) for v in values)
            median[key] = int(middle) if integral else round(middle, 2)
        else:
            median[key] = values[0]
    return median


def table(columns):
    """Markdown table of statistics side by side: columns is {name: statistics dict}."""
    names = list(columns)
    rows = [("time points", "time_points"), ("spacing (s)", "spacing_s"),
            ("frames before contrast arrives", "frames_before_contrast"), ("SNR in the breast", "snr"),
            ("noise neighbour correlation (axis 0, axis 1)", "noise_correlation"),
            ("projection residual (dB)", "projection_residual_db"),
            ("fine-detail kurtosis (3: a Gaussian texture)", "detail_kurtosis"),
            ("largest rigid shift from frame 0 (px)", "largest_shift_px")]
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key in rows:
        cells = []
        for name in names:
            value = columns[name].get(key)
            cells.append(", ".join(map(str, value)) if isinstance(value, list) else "-" if value is None else str(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
