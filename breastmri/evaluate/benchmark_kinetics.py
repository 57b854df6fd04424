"""benchmark.py's kinetics check: does a method keep the contrast-enhancement curve a DCE series is read for?

    lesions = find_lesions(data_dir, "test")
    result = lesion_kinetics(["noisy", "bm3d", "bm4d", "unet"], models, data_dir, lesions, params, stacks)

A denoiser that borrows from neighbouring time points can flatten or shift the enhancement curve (wash-in, peak,
washout) while it raises PSNR. Per test lesion and method: the relative-enhancement curve inside the lesion mask,

    RE(t) = (S(t) - S0) / S0,    S(t) = mean signal in the mask at frame t,  S0 = mean of S over the n_pre
                                 pre-contrast frames (demo_data.frame_times),

with S on a scale where air is 0 (normalized value - zero: the normalization is linear, so RE is that of the
modality values), and its errors against the truth's curve in the same mask on the same frames:
  rmse         sqrt(mean over frames of (RE - RE_truth)^2), in units of RE (0.1 = 10 percentage points)
  peak_error   (max RE - max RE_truth) / max RE_truth (signed; the headline's peak_enhancement_error is the mean
               of its absolute value over the test lesions: 0.05 = 5%)
  slope_error  (slope - slope_truth) / slope_truth, slope = initial wash-in (RE at the first post-contrast frame
               - RE at the last pre-contrast frame) / their time difference, per minute

and, voxel by voxel in the ROI, the extended Tofts model fit to each voxel's RE curve (tofts_maps: the visit's
own AIF and bolus arrival from the tree's demo_params.json ground truth, kep searched on the generator's table,
Ktrans and vp by least squares), against the same fit of the truth's frames:
  ktrans_error, ve_error   median over the ROI's voxels of |parameter - truth's| / the median of the truth's
                           (RE is about proportional to the concentration, so the fitted Ktrans is in RE units:
                           relative errors are what compares; the same fit on the truth leaves the model's own
                           mismatch out of the error)
  lesion_psnr              PSNR of the ROI's voxels over every frame against the truth (normalized units, data
                           range 1), where body PSNR averages the lesion away

Where the lesion comes from (design). demo_data.write_truth leaves in each DCE series folder of the demo tree
LESION_FILE, the lesion mask as one uint8 image per SOP instance (same order as TRUTH_INDEX's
sop_instance_uids), and TRUTH_INDEX["lesion"]: the frame times, n_pre and the noise-free curve. Preprocessing
does not carry any of it: find_lesions reads the tree recorded in the data's summary.json ("dicom_root"; a
relative path is taken from the working directory, then from this repo), and maps the mask to each manifest
row by its sop_instance_uid; masks of another grid are resized like the images (grid.resize_square,
then > 0.5). The ROI is the lesion's largest cross-section (the slice position with the most mask pixels),
drawn once and kept for every frame, as a reader draws it; so each method denoises one (x, y, t) stack per
lesion. The truth curve is computed from the preprocessed truth frames in the same ROI (so every curve shares
grid and mask); on the acquisition grid it equals the generator's exported central curve (checked, recorded as
export_max_abs_diff). Real data has no lesion files: the check is then skipped with a note.
"""

import json
from pathlib import Path

import numpy as np

from breastmri.files import save_figure_atomic

ROOT = Path(__file__).resolve().parents[2]  # the repository
# The multi-frame classical methods run on the lesion's bounding box and this margin only (px of the data's grid),
# a fraction of the slice (about a quarter of a 192^2 demo slice; bm4d runs 3x faster). mppca's and tpca's curves
# are the whole slices' (local patches; tpca keeps the whole slice's noise estimate; tested). bm4d's move by up
# to 0.003 in RE (0.1% of the peak; mean peak error over 3 demo test lesions 0.50% instead of 0.45%; a 56 px
# margin: 0.47%): a few of its matches and aggregation weights reach farther.
KINETICS_MARGIN = 32


def enhancement_curve(frames, mask, n_pre):
    """RE(t) of frames (T, H, W) (air at 0) inside mask (H, W) bool: float64 (T,) (demo_data.lesion_curve)."""
    from breastmri.simulate.demo_dicom import lesion_curve

    curve, enhancement = lesion_curve(frames, mask, n_pre)
    if curve is None:
        raise ValueError("empty lesion mask")
    return enhancement


def initial_slope(enhancement, times_s, n_pre):
    """Wash-in rate of RE per minute: from the last pre-contrast frame to the first post-contrast frame."""
    before, after = max(int(n_pre), 1) - 1, max(int(n_pre), 1)
    return float((enhancement[after] - enhancement[before]) / (times_s[after] - times_s[before]) * 60.0)


def curve_errors(enhancement, truth, times_s, n_pre):
    """Errors of one RE curve against the truth's (both (T,)); see the module docstring."""
    enhancement, truth = np.asarray(enhancement, np.float64), np.asarray(truth, np.float64)
    peak, peak_truth = float(enhancement.max()), float(truth.max())
    slope, slope_truth = initial_slope(enhancement, times_s, n_pre), initial_slope(truth, times_s, n_pre)
    return {"rmse": float(np.sqrt(np.mean((enhancement - truth) ** 2))), "peak": peak, "peak_truth": peak_truth,
            "peak_error": (peak - peak_truth) / peak_truth if peak_truth else float("nan"),
            "slope_per_min": slope, "slope_truth_per_min": slope_truth,
            "slope_error": (slope - slope_truth) / slope_truth if slope_truth else float("nan")}


def tofts_maps(enhancement, times_s, arrival_s, aif):
    """Extended Tofts fit of RE curves (T, N): for each kep of KEP_TABLE_PER_MIN the least-squares (Ktrans, vp) of
    RE = Ktrans basis(kep) + vp Cp, the kep with the smallest residual kept -> (ktrans (N,), ve (N,)), ve = Ktrans /
    kep. arrival_s and aif (dose, width, washout): the visit's plasma curve (protocol.parker_aif)."""
    from breastmri.simulate.protocol import KEP_TABLE_PER_MIN, parker_aif, tofts_basis

    def cp(t):
        return parker_aif(t, arrival_s, **aif)

    enhancement = np.asarray(enhancement, np.float64)
    basis, plasma = tofts_basis(times_s, cp, KEP_TABLE_PER_MIN), cp(np.asarray(times_s, np.float64))
    best = np.full(enhancement.shape[1], np.inf)
    ktrans, kep = np.zeros(enhancement.shape[1]), np.ones(enhancement.shape[1])
    for k, rate in enumerate(KEP_TABLE_PER_MIN):
        design = np.stack([basis[:, k], plasma], 1)
        coefficients = np.linalg.pinv(design) @ enhancement
        residual = ((design @ coefficients - enhancement) ** 2).sum(0)
        better = residual < best
        best[better], ktrans[better], kep[better] = residual[better], coefficients[0, better], rate
    return ktrans, ktrans / kep


def voxel_enhancement(frames, mask, n_pre):
    """RE(t) of every voxel of `mask` in frames (T, h, w) (air at 0): float64 (T, voxels)."""
    voxels = np.asarray(frames, np.float64)[:, mask]
    baseline = voxels[:max(int(n_pre), 1)].mean(0)
    return (voxels - baseline) / np.where(np.abs(baseline) > 1e-6, baseline, 1e-6)


def map_errors(frames, truth_frames, mask, times_s, n_pre, arrival_s, aif, truth_maps=None):
    """{"ktrans_error", "ve_error", "lesion_psnr"} of a method's frames (T, h, w) against the truth's (air at 0).
    truth_maps: the truth's (ktrans, ve) when the caller has them (one fit per lesion for every method)."""
    fitted = tofts_maps(voxel_enhancement(frames, mask, n_pre), times_s, arrival_s, aif)
    if truth_maps is None:
        truth_maps = tofts_maps(voxel_enhancement(truth_frames, mask, n_pre), times_s, arrival_s, aif)
    errors = {name: float(np.median(np.abs(f - t)) / max(abs(float(np.median(t))), 1e-9))
              for name, f, t in zip(("ktrans_error", "ve_error"), fitted, truth_maps)}
    mse = float(np.mean((np.asarray(frames, np.float64)[:, mask] - np.asarray(truth_frames, np.float64)[:, mask]) ** 2))
    return {**errors, "lesion_psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def visit_kinetics(root):
    """{DCE SeriesInstanceUID: (bolus arrival s after the first frame, AIF dict)} of the tree's ground truth
    (demo_params.json), {} without one."""
    params = Path(root) / "demo_params.json"
    if not params.is_file():
        return {}
    found = {}
    for patient in json.loads(params.read_text()).get("summary", {}).get("ground_truth", []):
        for visit in patient.get("visits", []):
            if visit.get("aif") and visit.get("bolus_arrival_s") is not None:
                found[visit["dce_series_uid"]] = (float(visit["bolus_arrival_s"]), dict(visit["aif"]))
    return found


def dicom_root(data_dir):
    """The DICOM tree the data was preprocessed from (summary.json "dicom_root"), or None."""
    summary = Path(data_dir) / "summary.json"
    if not summary.is_file():
        return None
    recorded = json.loads(summary.read_text()).get("dicom_root")
    if not recorded:
        return None
    for candidate in (Path(recorded), ROOT / recorded):
        if candidate.is_dir():
            return candidate
    return None


def lesion_index(root):
    """{sop_instance_uid: (series folder, image index, lesion record)} of every DCE series with a lesion."""
    from breastmri.dicom.pixels import TRUTH_INDEX

    found = {}
    for index_file in Path(root).rglob(TRUTH_INDEX):
        record = json.loads(index_file.read_text())
        lesion = record.get("lesion")
        if lesion:
            for i, uid in enumerate(record["sop_instance_uids"]):
                found[uid] = (index_file.parent, i, lesion)
    return found


def find_lesions(data_dir, split):
    """(lesions, note): one entry per series of `split` whose lesion mask the tree holds.

    Each lesion: {"patient_id", "series_uid", "position_index", "rows" (manifest rows of the ROI position, one
    per time point), "mask" (H, W) bool on the data's grid, "window" ((rows, cols) slices: the mask's bounding box
    and KINETICS_MARGIN), "times_s", "n_pre", "voxels", "export" (the generator's central RE curve, for the
    check)}. note: why there are none, or None."""
    from breastmri.data.grid import resize_square
    from breastmri.data.manifest import read_manifest

    root = dicom_root(data_dir)
    if root is None:
        return [], "kinetics skipped: the DICOM tree in the data's summary.json (dicom_root) is not reachable"
    index = lesion_index(root)
    if not index:
        return [], f"kinetics skipped: {root} has no lesion masks (real data, or a demo tree made before them)"
    series = {}
    for row in read_manifest(data_dir, split):
        series.setdefault(row["series_uid"], []).append(row)
    lesions, masks_cache, kinetics = [], {}, visit_kinetics(root)
    for uid, rows in series.items():
        hits = [index.get(r["sop_instance_uid"]) for r in rows]
        if any(h is None for h in hits) or rows[0].get("time_index") is None:
            continue
        lesion = hits[0][2]
        n_times = rows[0]["n_times"]
        if len(lesion["frame_times_s"]) != n_times or n_times < 2:
            continue
        areas = {}
        for row, (folder, i, _) in zip(rows, hits):
            if folder not in masks_cache:
                from breastmri.simulate.demo_dicom import LESION_FILE

                masks_cache[folder] = np.load(folder / LESION_FILE, mmap_mode="r")
            if row["time_index"] == 0:
                areas[row["position_index"]] = (int(masks_cache[folder][i].sum()), row, masks_cache[folder][i])
        if not areas:
            continue
        position = max(areas, key=lambda k: areas[k][0])
        _, row0, mask = areas[position]
        shape = np.load(Path(data_dir) / row0["truth_file"], mmap_mode="r").shape[1:]
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            mask = resize_square(mask[None].astype(np.float32), shape[0])[0] > 0.5
        frames = sorted((r for r in rows if r["position_index"] == position), key=lambda r: r["time_index"])
        if len(frames) != n_times or not mask.any():
            continue
        (y0, y1), (x0, x1) = ((int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
        window = (slice(max(0, y0 - KINETICS_MARGIN), y1 + KINETICS_MARGIN),
                  slice(max(0, x0 - KINETICS_MARGIN), x1 + KINETICS_MARGIN))
        lesions.append({"patient_id": row0["patient_id"], "series_uid": uid, "position_index": position,
                        "rows": frames, "mask": mask, "window": window,
                        "times_s": np.asarray(lesion["frame_times_s"], np.float64),
                        "n_pre": int(lesion["n_pre"]), "voxels": int(mask.sum()),
                        "export": lesion.get("central_relative_enhancement"), "aif": kinetics.get(uid)})
    return lesions, None if lesions else f"kinetics skipped: no {split} series with a lesion in {root}"


def _frames(data_dir, rows, key, cache):
    out = []
    for r in rows:
        if r[key] not in cache:
            cache[r[key]] = np.load(Path(data_dir) / r[key], mmap_mode="r")
        out.append(np.asarray(cache[r[key]][r["slice_index"]], np.float32))
    return np.stack(out)


def method_frames(method, lesion, data_dir, models, params, stacks, arrays, split):
    """The method's output for every frame of the lesion's ROI position, on the lesion's window, float32 (T, h, w)
    on the normalized scale: the amplitude estimate for the classical methods (what is scored against the truth),
    the prediction for the networks, the input for "noisy"; None when the method cannot run here. The multi-frame
    methods run on the window (KINETICS_MARGIN), the others on whole slices, cropped."""
    from breastmri.evaluate.benchmark_quality import (
        CLASSICAL,
        MODELS,
        MULTIFRAME,
        classical_denoise,
        noise_levels,
    )

    rows, at = lesion["rows"], (Ellipsis,) + lesion["window"]
    noisy = _frames(data_dir, rows, "noisy_file", arrays)
    if method == "noisy":
        return noisy[at]
    if method in CLASSICAL:
        return np.stack([classical_denoise(method, n, noise_levels(r, n), params.get(method, 1.0))[2]
                         for r, n in zip(rows, noisy)])[at]
    if method in MULTIFRAME:
        return np.stack([stacks.denoise(method, r, noise_levels(r, n), lesion["window"])[0][2]
                         for r, n in zip(rows, noisy)])
    if method in MODELS and method in models:
        from breastmri.data.paired import PairedSlices
        from breastmri.restore.networks import context_offsets

        run, model = models[method]
        key = (method, split)
        if key not in arrays:
            ds = PairedSlices(data_dir, split, batch_size=1, context=context_offsets(run["cfg"]))
            arrays[key] = (ds, {(r["series_uid"], r["slice_index"]): i for i, r in enumerate(ds.rows)})
        ds, where = arrays[key]
        shape = tuple(model.inputs[0].shape[1:3])
        if any(s is not None and s != d for s, d in zip(shape, noisy.shape[1:])):
            return None
        from breastmri.evaluate.benchmark_quality import model_prediction

        inputs = np.concatenate([ds[where[(r["series_uid"], r["slice_index"])]][0] for r in rows])
        return model_prediction(run, model, inputs, rows, ds, arrays.setdefault((method, "sigmas"), {}))[at]
    return None


def lesion_kinetics(methods, models, data_dir, lesions, params, stacks, split="test"):
    """Per lesion and method the RE curve and its errors; per method the means over lesions.

    Returns {"lesions": [{patient_id, series_uid, position_index, voxels, times_s, n_pre, truth (RE curve),
    export_max_abs_diff, methods: {method: {curve, rmse, peak_error, slope_error, ...}}}], "summary": {method:
    {n_lesions, rmse, peak_enhancement_error (mean |peak_error|), slope_error (mean |slope_error|),
    peak_error_signed (mean), ktrans_error, ve_error, lesion_psnr (means over lesions; None without the tree's
    AIF)}}}."""
    from breastmri.data.manifest import _zero
    from breastmri.evaluate.benchmark_quality import MULTIFRAME

    arrays, out = {}, []
    for method in (m for m in methods if m in MULTIFRAME):  # each lesion's stack: one run for all its frames
        stacks.prefetch(method, [lesion["rows"][0] for lesion in lesions], [lesion["window"] for lesion in lesions])
    for lesion in lesions:
        rows, zero, at = lesion["rows"], _zero(lesion["rows"][0]), lesion["window"]
        mask = lesion["mask"][at]
        truth_frames = _frames(data_dir, rows, "truth_file", arrays)[(Ellipsis,) + at] - zero
        truth = enhancement_curve(truth_frames, mask, lesion["n_pre"])
        truth_maps = (tofts_maps(voxel_enhancement(truth_frames, mask, lesion["n_pre"]), lesion["times_s"],
                                 *lesion["aif"]) if lesion.get("aif") else None)
        entry = {"patient_id": lesion["patient_id"], "series_uid": lesion["series_uid"],
                 "position_index": lesion["position_index"], "voxels": lesion["voxels"],
                 "times_s": lesion["times_s"].tolist(), "n_pre": lesion["n_pre"], "truth": truth.tolist(),
                 "export_max_abs_diff": (float(np.abs(truth - np.asarray(lesion["export"])).max())
                                         if lesion["export"] is not None and len(lesion["export"]) == len(truth)
                                         else None),
                 "methods": {}}
        for method in methods:
            frames = method_frames(method, lesion, data_dir, models, params, stacks, arrays, split)
            if frames is None:
                continue
            curve = enhancement_curve(frames - zero, mask, lesion["n_pre"])
            entry["methods"][method] = {"curve": curve.tolist(),
                                        **curve_errors(curve, truth, lesion["times_s"], lesion["n_pre"])}
            if lesion.get("aif"):
                entry["methods"][method].update(map_errors(frames - zero, truth_frames, mask, lesion["times_s"],
                                                           lesion["n_pre"], *lesion["aif"], truth_maps=truth_maps))
        out.append(entry)
    summary = {}
    for method in methods:
        errors = [e["methods"][method] for e in out if method in e["methods"]]
        if errors:
            summary[method] = {"n_lesions": len(errors), "rmse": float(np.mean([e["rmse"] for e in errors])),
                               "peak_enhancement_error": float(np.mean([abs(e["peak_error"]) for e in errors])),
                               "peak_error_signed": float(np.mean([e["peak_error"] for e in errors])),
                               "slope_error": float(np.mean([abs(e["slope_error"]) for e in errors])),
                               **{key: float(np.mean([e[key] for e in errors])) if all(key in e for e in errors)
                                  else None for key in ("ktrans_error", "ve_error", "lesion_psnr")}}
    return {"lesions": out, "summary": summary}


def plot_kinetics(kinetics, shown, out_png, max_lesions=6):
    """benchmark_kinetics.png: one panel per lesion (at most max_lesions), RE (%) against time for the truth
    (black) and the methods in `shown` (e.g. degraded input, default model, best classical)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lesions = kinetics["lesions"][:max_lesions]
    cols = min(3, len(lesions))
    rows = -(-len(lesions) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    styles = {"noisy": dict(color="gray", ls="--", marker=".")}
    for ax, lesion in zip(axes.ravel(), lesions):
        t = np.asarray(lesion["times_s"])
        ax.plot(t, 100 * np.asarray(lesion["truth"]), "k-o", lw=2, ms=4, label="truth")
        for i, method in enumerate(shown):
            m = lesion["methods"].get(method)
            if m is not None:
                style = styles.get(method, dict(color=f"C{i}", marker="s" if i % 2 else "^", ms=4))
                ax.plot(t, 100 * np.asarray(m["curve"]), label=f"{method} (peak {100 * m['peak_error']:+.1f}%)",
                        **style)
        ax.axvline(t[lesion["n_pre"] - 1], color="gray", lw=0.5, ls=":")
        ax.set_title(f"{lesion['patient_id']} position {lesion['position_index']} ({lesion['voxels']} px)",
                     fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("relative enhancement (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(lesions):]:
        ax.axis("off")
    fig.suptitle("Lesion enhancement curves (S(t) - S0) / S0 in the lesion ROI, test split", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
