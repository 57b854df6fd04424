"""Image-quality metrics for restored slices: MSE, RMSE, PSNR and SSIM, whole image and inside the body.

All metrics compare a prediction (or the noisy input) with the clean 3T slice on the normalized scale
(0 = air, 1 = the series' robust high percentile), with an explicit data_range = DATA_RANGE = 1.0;
nothing is clipped. Per slice, two regions:
- whole image: as the thesis reported;
- body mask (body_mask of the clean slice): air excluded, because air is a large, easy region that
  inflates SSIM and PSNR and hides errors in tissue.

    m = slice_metrics(pred, clean)                          # {"mse", "rmse", "psnr", "ssim"}
    row = pair_metrics(pred, noisy, clean)                  # the 16 columns of a per-slice row
    summary = summarize(rows); print(format_table(summary))

Definitions (standard; pred and clean are H x W, MAX = data_range):
    MSE  = mean((pred - clean)^2)          RMSE = sqrt(MSE)
    PSNR = 10 log10(MAX^2 / MSE)  [dB]     (inf for identical images; see summarize for how it is reported)
    SSIM = mean of the local SSIM map (Wang et al. 2004, IEEE TIP 13:600, doi:10.1109/TIP.2003.819861)
Inside a mask, MSE is the mean over the masked pixels, PSNR follows from that MSE, and SSIM is the
mean of the same SSIM map over the masked pixels.

SSIM settings, the same everywhere (SSIM_SETTINGS, skimage.metrics.structural_similarity defaults):
7x7 uniform window (gaussian_weights=False), sample covariance (use_sample_covariance=True),
K1 = 0.01, K2 = 0.03, data_range = 1.0, computed in float64. Wang et al. used an 11x11 Gaussian
window (sigma 1.5) with population covariance, which is also what tf.image.ssim does; the numbers
differ slightly (typically in the third decimal), so compare SSIM only between runs of this module.
skimage averages the map without a 3-pixel border (half the window), where the window would leave
the image; the masked SSIM excludes the same border, so an all-True mask gives the whole-image value.

How this differs from the thesis' equations. The thesis wrote
    "MSE"  = sqrt( 1/(m n) sum_ij (I_ij - K_ij)^2 )     -- a root: this is the RMSE
    "PSNR" = 10 log10( MAX / MSE )                      -- the peak is not squared
Taken literally, with MAX = 1 the missing square makes no difference, but the square-rooted "MSE"
does: the literal PSNR is 10 log10(1 / RMSE) = half the standard PSNR in dB (an RMSE of 0.0348 gives
14.6 dB instead of 29.2 dB). The thesis' reported 29.18 dB is in the range of the standard
definition, so its code presumably used a library PSNR; we use the standard definitions above.
thesis_mse and thesis_psnr implement the thesis' equations literally, for comparison only.

CLI: `python breastmri/metrics.py --csv per_slice.csv [--json summary.json]` summarizes a per-slice table
(columns as in pair_metrics plus patient_id); `python breastmri/metrics.py` alone prints the standard and the
thesis formulas side by side on a synthetic slice.
"""

import argparse
import csv
import json
import math
import warnings

import numpy as np
from scipy import ndimage, stats

from breastmri.files import write_text_atomic

DATA_RANGE = 1.0
METRICS = ("mse", "rmse", "psnr", "ssim")

# skimage's defaults, spelled out so that every SSIM of the project uses the same settings.
SSIM_SETTINGS = {"win_size": 7, "gaussian_weights": False, "use_sample_covariance": True,
                 "K1": 0.01, "K2": 0.03}

# body_mask: a 3x3 median removes single-pixel Rician speckle without moving edges (a Gaussian blur
# would shift a thresholded edge outwards); tissue counts from 15% of the slice's bright level or
# Otsu's threshold, whichever is lower (lower keeps dim tissue such as muscle or fat-suppressed fat);
# the threshold never goes below 3 noise sigmas or 0.05, so an all-air slice gives an empty mask.
MASK_MEDIAN_SIZE = 3
MASK_TISSUE_FRACTION = 0.15
MASK_NOISE_SIGMAS = 3.0
MASK_FLOOR = 0.05
MASK_MIN_AREA_FRACTION = 0.001


# ---------------------------------------------------------------------------------------------
# Body mask

def body_mask(clean):
    """Boolean (H, W) mask of the body (True) versus air (False) for one normalized clean slice.

    clean: (H, W), normalized (0 ~ air, ~1 bright tissue), with a noisy Rician air background.
    Rule: s = 3x3 median of the slice; threshold
        t = max(min(Otsu(s), 0.15 * p99(s)), 3 * sigma_noise, 0.05),
    with sigma_noise from skimage's wavelet estimator; keep s > t, drop connected pieces smaller than
    0.1% of the image (at least 16 px), fill holes. Dark regions enclosed by tissue (a lung or
    fluid fully inside the body outline in this slice) are therefore included; dark regions open to
    the image edge (lung cut by the field of view, air) are excluded, as is dim tissue below the
    threshold that touches the edge. A slice without tissue (all air) returns an all-False mask;
    slice_metrics then reports the masked metrics as NaN, and summarize skips those slices.
    """
    from skimage.filters import threshold_otsu
    from skimage.restoration import estimate_sigma

    clean = np.asarray(clean, dtype=np.float64)
    if clean.ndim != 2:
        raise ValueError(f"body_mask expects one slice shaped (H, W), got shape {clean.shape}")
    if not np.all(np.isfinite(clean)):
        raise ValueError("body_mask: the slice contains NaN or inf values")

    smoothed = ndimage.median_filter(clean, size=MASK_MEDIAN_SIZE, mode="nearest")
    tissue = MASK_TISSUE_FRACTION * np.percentile(smoothed, 99)
    if np.ptp(smoothed) > 0:
        tissue = min(tissue, float(threshold_otsu(smoothed)))
    with warnings.catch_warnings():  # a noise-free (e.g. all-zero) slice has no wavelet noise to measure
        warnings.simplefilter("ignore", RuntimeWarning)
        noise = float(estimate_sigma(clean))
    noise = MASK_NOISE_SIGMAS * noise if math.isfinite(noise) else 0.0
    mask = smoothed > max(tissue, noise, MASK_FLOOR)

    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        min_area = max(16, MASK_MIN_AREA_FRACTION * clean.size)
        keep = sizes >= min_area
        keep[0] = False
        mask = keep[labels]
    return ndimage.binary_fill_holes(mask)


# ---------------------------------------------------------------------------------------------
# Per-slice metrics

def _check_images(pred, clean, name="prediction"):
    pred, clean = np.asarray(pred), np.asarray(clean)
    if pred.shape != clean.shape or pred.ndim != 2:
        raise ValueError(f"expected two slices of the same shape (H, W), got {pred.shape} and {clean.shape}")
    if min(clean.shape) < SSIM_SETTINGS["win_size"]:
        raise ValueError(f"slices {clean.shape} are smaller than the "
                         f"{SSIM_SETTINGS['win_size']}-pixel SSIM window")
    for label, image in ((name, pred), ("clean", clean)):
        if not np.all(np.isfinite(image)):
            raise ValueError(f"the {label} slice contains NaN or inf values")
    return pred.astype(np.float64), clean.astype(np.float64)


def _check_mask(mask, shape):
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the slice shape {shape}")
    return mask.astype(bool)


def _from_mse(mse, ssim, data_range):
    psnr = 10.0 * math.log10(data_range ** 2 / mse) if mse > 0 else math.inf
    return {"mse": float(mse), "rmse": math.sqrt(mse), "psnr": float(psnr), "ssim": float(ssim)}


def _whole_and_masked(pred, clean, mask, data_range):
    """Whole-image and masked metrics of one (pred, clean) pair from a single SSIM map."""
    from skimage.metrics import structural_similarity

    whole_ssim, ssim_map = structural_similarity(pred, clean, data_range=data_range, full=True,
                                                 **SSIM_SETTINGS)
    squared = (pred - clean) ** 2
    whole = _from_mse(squared.mean(), whole_ssim, data_range)
    if mask is None:
        return whole, None

    pad = (SSIM_SETTINGS["win_size"] - 1) // 2
    inner = np.zeros_like(mask)
    inner[pad:mask.shape[0] - pad, pad:mask.shape[1] - pad] = True
    if not mask.any() or not (mask & inner).any():
        return whole, {m: math.nan for m in METRICS}
    masked = _from_mse(squared[mask].mean(), ssim_map[mask & inner].mean(dtype=np.float64), data_range)
    return whole, masked


def slice_metrics(pred, clean, mask=None, data_range=DATA_RANGE):
    """{"mse", "rmse", "psnr", "ssim"} of pred against clean; floats.

    pred, clean: (H, W) on the normalized scale (H, W >= 7). mask: None for the whole image, or a
    bool (H, W) array (e.g. body_mask(clean)) to average the squared error and the SSIM map over it
    (the SSIM map without its 3-pixel border, as skimage does). An empty mask gives NaN for every
    metric. Identical images give mse 0, psnr inf, ssim 1.
    """
    pred, clean = _check_images(pred, clean)
    if mask is None:
        return _whole_and_masked(pred, clean, None, data_range)[0]
    return _whole_and_masked(pred, clean, _check_mask(mask, clean.shape), data_range)[1]


def whole_and_masked(pred, clean, mask, data_range=DATA_RANGE):
    """(whole, masked) metric dicts of one (pred, clean) pair from a single SSIM map: what a loop over slices
    that wants both should call (two slice_metrics calls would compute the SSIM map twice)."""
    pred, clean = _check_images(pred, clean)
    return _whole_and_masked(pred, clean, _check_mask(mask, clean.shape), data_range)


def pair_metrics(pred, noisy, clean, mask=None, data_range=DATA_RANGE):
    """The 16 per-slice columns for the model output and the noisy input, each against clean.

    Keys: model_<m>, noisy_<m>, model_masked_<m>, noisy_masked_<m> for m in mse, rmse, psnr, ssim.
    mask: bool (H, W); None computes body_mask(clean). Two SSIM maps per call (model, noisy), each
    used for both the whole-image and the masked SSIM.
    """
    pred, clean = _check_images(pred, clean)
    noisy, _ = _check_images(noisy, clean, name="noisy")
    mask = body_mask(clean) if mask is None else _check_mask(mask, clean.shape)
    row = {}
    for name, image in (("model", pred), ("noisy", noisy)):
        whole, masked = _whole_and_masked(image, clean, mask, data_range)
        row.update({f"{name}_{m}": whole[m] for m in METRICS})
        row.update({f"{name}_masked_{m}": masked[m] for m in METRICS})
    return {key: row[key] for key in _row_columns()}


def _row_columns():
    return [f"{name}{region}_{m}"
            for region in ("", "_masked") for name in ("model", "noisy") for m in METRICS]


def thesis_mse(pred, clean):
    """The thesis' "MSE" equation taken literally, FOR COMPARISON ONLY: sqrt(mean((pred-clean)^2)).

    It has a square root, so it is the RMSE (equal to slice_metrics(...)["rmse"]).
    """
    pred, clean = _check_images(pred, clean)
    return float(np.sqrt(np.mean((pred - clean) ** 2)))


def thesis_psnr(pred, clean, peak=1.0):
    """The thesis' PSNR equation taken literally, FOR COMPARISON ONLY: 10 log10(peak / "MSE").

    "MSE" is thesis_mse (an RMSE) and the peak is not squared, so with peak = 1 this is half the
    standard PSNR in dB. inf for identical images.
    """
    value = thesis_mse(pred, clean)
    return 10.0 * math.log10(peak / value) if value > 0 else math.inf


# ---------------------------------------------------------------------------------------------
# Aggregation

def group_means(values, groups):
    """{label: mean of its values} for one group label per value, labels in first-seen order, NaN values dropped
    first (a label whose values are all NaN is left out)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if groups.shape != values.shape:
        raise ValueError(f"got {values.size} values but {groups.size} group labels")
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    return {label: float(values[groups == label].mean()) for label in dict.fromkeys(groups.tolist())}


def mean_ci(values, groups=None, confidence=0.95):
    """Mean, sample std and Student-t confidence interval; {"mean", "std", "ci_low", "ci_high", "n"}.

    values: 1-D numbers (e.g. per-slice PSNR). groups: None, or one label per value (e.g. patient
    ids); then values are first averaged within each group and the statistics are over the group
    means (n = number of groups), because slices of one patient are not independent.
    NaN values (e.g. masked metrics of an all-air slice) are dropped first. std uses ddof=1;
    CI = mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n). With n = 1 std and the CI are NaN (one
    group says nothing about the spread); with n = 0 everything is NaN. An inf value (PSNR of a
    perfect slice) makes the mean inf and std/CI NaN.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if groups is not None:
        values = np.array(list(group_means(values, groups).values()), dtype=np.float64)
    else:
        values = values[~np.isnan(values)]

    n = int(values.size)
    nan = math.nan
    if n == 0:
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "n": 0}
    with np.errstate(invalid="ignore"):
        mean = float(values.mean())
        if n == 1:
            return {"mean": mean, "std": nan, "ci_low": nan, "ci_high": nan, "n": 1}
        std = float(values.std(ddof=1))
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def _mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": math.nan, "std": math.nan}
    with np.errstate(invalid="ignore"):
        std = float(values.std(ddof=1)) if values.size > 1 else math.nan
        return {"mean": float(values.mean()), "std": std}


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def summarize(rows, prefix=""):
    """metrics.json structure from per-slice rows.

    rows: iterable of dicts with patient_id (series_uid and slice_index are carried by the rows but
    not needed here) and the 16 columns of pair_metrics (numbers or numeric strings, e.g. from a
    CSV), each name preceded by `prefix` ("" for the 3T reference, "truth_" for the noise-free truth:
    main.py stores both references' columns in one row). Returns
        {"model": {m: {"mean", "std"}}, "noisy_input": {...},
         "masked": {"model": {...}, "noisy_input": {...}},
         "per_patient": {pid: {"n_slices", "model": {m: mean}, "noisy_input": {m: mean},
                               "masked": {"model": {m: mean}, "noisy_input": {m: mean}}}},
         "patient_ci": {"model": {"psnr": mean_ci, "ssim": mean_ci}, "noisy_input": {...},
                        "gain": {...},   # model - noisy input, paired per slice
                        "masked": {"model": {...}, "noisy_input": {...}, "gain": {...}}},
         "n_slices": N, "n_slices_masked": slices with a non-empty body mask, "n_patients": P,
         "data_range": 1.0}
    for m in mse, rmse, psnr, ssim. Means and stds are over slices (std with ddof=1, NaN for one
    slice); PSNR is averaged per slice in dB (as fastMRI does), not computed from the mean MSE.
    Slices with an empty body mask (NaN masked metrics) are left out of the masked statistics only.
    A slice with PSNR inf (prediction identical to clean) is kept: the mean becomes inf and the std
    NaN, reported as such rather than capped.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("summarize got no rows; evaluate at least one slice")
    columns = _row_columns()
    missing = [c for c in ["patient_id"] + [prefix + c for c in columns] if c not in rows[0]]
    if missing:
        raise ValueError(f"per-slice rows lack the columns {', '.join(missing)}; "
                         "build them with pair_metrics")
    table = {c: np.array([float(row[prefix + c]) for row in rows], dtype=np.float64) for c in columns}
    patients = np.array([str(row["patient_id"]) for row in rows])
    outputs = {"model": "model", "noisy_input": "noisy"}  # summary name -> column prefix

    def per_metric(region, reduce, select=slice(None)):
        """{summary name: {metric: reduce(column values)}} for region "" (whole) or "_masked"."""
        return {name: {m: reduce(table[f"{prefix}{region}_{m}"][select]) for m in METRICS}
                for name, prefix in outputs.items()}

    def patient_cis(region):
        cis = {name: {m: mean_ci(table[f"{prefix}{region}_{m}"], groups=patients) for m in ("psnr", "ssim")}
               for name, prefix in outputs.items()}
        with np.errstate(invalid="ignore"):  # inf - inf for a perfect slice is NaN, dropped by mean_ci
            gains = {m: table[f"model{region}_{m}"] - table[f"noisy{region}_{m}"] for m in ("psnr", "ssim")}
        cis["gain"] = {m: mean_ci(gain, groups=patients) for m, gain in gains.items()}
        return cis

    summary = per_metric("", _mean_std)
    summary["masked"] = per_metric("_masked", _mean_std)
    summary["per_patient"] = {}
    for pid in dict.fromkeys(patients.tolist()):
        of_patient = patients == pid
        entry = {"n_slices": int(of_patient.sum())}
        entry.update(per_metric("", _nanmean, of_patient))
        entry["masked"] = per_metric("_masked", _nanmean, of_patient)
        summary["per_patient"][pid] = entry
    summary["patient_ci"] = patient_cis("")
    summary["patient_ci"]["masked"] = patient_cis("_masked")
    summary["n_slices"] = len(rows)
    summary["n_slices_masked"] = int((~np.isnan(table["model_masked_mse"])).sum())
    summary["n_patients"] = len(summary["per_patient"])
    summary["data_range"] = DATA_RANGE
    return summary


# ---------------------------------------------------------------------------------------------
# Report

def _fmt(value, digits, scientific=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}e}" if scientific else f"{value:.{digits}f}"


def format_table(summary, confidence=0.95, split="Test", reference="clean 3T"):
    """Markdown table in the thesis' format (its Table 1: MSE, PSNR, SSIM on the validation set).

    Rows: model output and noisy input, whole image and body mask, each metric as mean +- std over
    slices; then, when summary has patient_ci, the patient-level confidence intervals of PSNR and
    SSIM and of the gain of the model over its input. split and reference name what was scored
    against what (e.g. "Test", "noise-free truth").
    """
    lines = [f"{split} set: {summary['n_slices']} slices from {summary.get('n_patients', '?')} patients, "
             f"data_range {summary['data_range']}; mean ± std over slices.", "",
             f"| Image vs. {reference} | Region | MSE | RMSE | PSNR (dB) | SSIM |",
             "|---|---|---|---|---|---|"]
    labels = {"model": "Model output", "noisy_input": "Noisy input (simulated)"}
    regions = (("whole image", summary), ("body mask", summary["masked"]))
    for region, block in regions:
        for key, label in labels.items():
            s = block[key]
            cells = [f"{_fmt(s['mse']['mean'], 2, True)} ± {_fmt(s['mse']['std'], 1, True)}",
                     f"{_fmt(s['rmse']['mean'], 4)} ± {_fmt(s['rmse']['std'], 4)}",
                     f"{_fmt(s['psnr']['mean'], 2)} ± {_fmt(s['psnr']['std'], 2)}",
                     f"{_fmt(s['ssim']['mean'], 3)} ± {_fmt(s['ssim']['std'], 3)}"]
            lines.append(f"| {label} | {region} | " + " | ".join(cells) + " |")
    if summary.get("n_slices_masked", summary["n_slices"]) != summary["n_slices"]:
        lines.append(f"\nBody mask: {summary['n_slices_masked']} slices (the others have no tissue).")

    if "patient_ci" in summary:
        ci = summary["patient_ci"]
        n = ci["model"]["psnr"]["n"]
        alone = " (one patient: an interval needs two, so it reads nan)" if n == 1 else ""
        lines += ["", f"Patient level: mean [{confidence:.0%} CI] over {n} patient means (Student t){alone}.", "",
                  f"| Image vs. {reference} | Region | PSNR (dB) | SSIM |", "|---|---|---|---|"]
        labels = dict(labels, gain="Gain (model - noisy)")
        for region, block in (("whole image", ci), ("body mask", ci["masked"])):
            for key, label in labels.items():
                p, s = block[key]["psnr"], block[key]["ssim"]
                lines.append(f"| {label} | {region} | {_fmt(p['mean'], 2)} [{_fmt(p['ci_low'], 2)}, "
                             f"{_fmt(p['ci_high'], 2)}] | {_fmt(s['mean'], 3)} [{_fmt(s['ci_low'], 3)}, "
                             f"{_fmt(s['ci_high'], 3)}] |")
    return "\n".join(lines)


def json_safe(obj):
    """Nested dict/list with NaN and inf replaced by None, so json.dumps writes standard JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _demo():
    """Standard versus thesis formulas on a synthetic slice (a disk with Gaussian noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128]
    clean = np.where((x - 64) ** 2 + (y - 64) ** 2 < 45 ** 2, 0.7, 0.0)
    for sigma in (0.01, 0.035, 0.1):
        noisy = clean + sigma * rng.standard_normal(clean.shape)
        m = slice_metrics(noisy, clean)
        print(f"noise std {sigma:5.3f}: MSE {m['mse']:.2e}  RMSE {m['rmse']:.4f}  PSNR {m['psnr']:6.2f} dB  "
              f"SSIM {m['ssim']:.3f} | thesis 'MSE' {thesis_mse(noisy, clean):.4f}  "
              f"thesis 'PSNR' {thesis_psnr(noisy, clean):6.2f} dB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Summarize per-slice metrics, or compare the standard "
                                                 "and thesis formulas on a synthetic slice.")
    parser.add_argument("--csv", help="per-slice CSV with patient_id and the pair_metrics columns")
    parser.add_argument("--json", help="also write the summary to this JSON file")
    args = parser.parse_args()
    if args.csv is None:
        _demo()
    else:
        result = summarize(_read_rows(args.csv))
        print(format_table(result))
        if args.json:
            write_text_atomic(args.json, json.dumps(json_safe(result), indent=2))
