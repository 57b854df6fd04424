"""benchmark.py's calibration: every classical method run at its best, its parameter chosen on training slices.

    params, table, note, record = calibrate(["bm3d", "bm4d", "mppca"], data_dir, 12)

sigma_pixel (benchmark_quality's noise level) is the right scale, but the methods' parameters (breastmri/restore/denoisers.py) were
tuned on white noise, and correlated noise moves their optimum (on the demo TV, wavelet and NORDIC prefer
0.6-0.8 sigma_pixel, BM3D and BM4D 1.5). So each classical method gets the parameter with the best mean body-mask PSNR,
against the headline reference, on randomly drawn (seeded) *training* slices with tissue (body mask >= 10% of the
slice), never the slices it is scored on: a small hyperparameter search on the data the networks were trained on.

- 2-D methods (--calibrate-slices, default 12; 0 turns it off): the multiplier of sigma_pixel from SIGMA_SCALES,
  climbed from 1.0 (climb: PSNR against strength has one peak, so the multipliers past it are not run).
- Multi-frame methods (--calibrate-stacks): bm4d's and nordic's sigma multiplier (SIGMA_SCALES, climbed from 1.0)
  on the (x, y, t) stacks of the first calibration slices, mppca's patch radius (MPPCA_RADII, climbed from 2) on
  their series' volumes, denoised on a
  CALIBRATION_CROP^2 window around the body (a full BM4D stack costs ~30 s; registered on the whole slices, as
  the scored stacks are) and scored on every frame of the window.

The runs of a multiplier (2-D) or of all candidates (multi-frame) are spread over the cores (runtime.parallel_map)
when the method runs on one core (benchmark_quality.workers_for).
The slices and the chosen parameters are recorded in benchmark.json (quality.calibration_record).
"""

import numpy as np

from breastmri.evaluate.benchmark_quality import (
    CLASSICAL,
    MPPCA_RADII,
    MULTIFRAME,
    Stacks,
    classical_denoise,
    noise_levels,
    timed_call,
    timed_multiframe,
    workers_for,
)
from breastmri.runtime import parallel_map

# Multipliers of sigma_pixel tried by the calibration.
SIGMA_SCALES = (0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0)
# The multi-frame methods' grids, each climbed from its middle value (tpca has no parameter)
MULTIFRAME_CANDIDATES = {"bm4d": SIGMA_SCALES, "mppca": MPPCA_RADII, "nordic": SIGMA_SCALES}
MULTIFRAME_START = {"bm4d": 1.0, "mppca": MPPCA_RADII[1], "nordic": 1.0}
CALIBRATION_CROP = 96                          # side of the in-plane window the multi-frame calibration scores


def tissue_slices(data_dir, split, n, seed, min_body_fraction=0.1):
    """n slices of `split` drawn at random (seeded) among those whose body mask covers >= min_body_fraction of
    the image: [(row, noisy, clean, truth or None, mask)]. Calibration on slices with tissue: edge slices that are
    almost all air would tune a denoiser for air."""
    from breastmri.data.paired import PairedSlices
    from breastmri.metrics import body_mask

    ds = PairedSlices(data_dir, split, batch_size=1)
    picked = []
    for i in np.random.default_rng([seed, 9]).permutation(len(ds.rows)):
        noisy, clean = (a[0, ..., 0] for a in ds[int(i)])
        truth = ds.truth_batch(int(i))
        truth = None if truth is None else truth[0, ..., 0]
        mask = body_mask(clean if truth is None else truth)
        if mask.mean() >= min_body_fraction:
            picked.append((ds.rows[int(i)], noisy, clean, truth, mask))
            if len(picked) == n:
                break
    return picked


def climb(candidates, start, score):
    """(best candidate, {candidate: score} of those tried): a walk over the sorted grid from candidates[start]
    outward, each way until a candidate scores below its neighbour. Denoising strength against PSNR rises to
    one peak and falls, and on such a grid this finds the maximum without the runs past the peak (BM3D's 0.6
    sigma multiplier, 12 slices x 1.6 s on 2 cores)."""
    scores = {candidates[start]: score(candidates[start])}
    for step in (-1, 1):
        i = start
        while 0 <= i + step < len(candidates):
            scores[candidates[i + step]] = score(candidates[i + step])
            if scores[candidates[i + step]] < scores[candidates[i]]:
                break
            i += step
    return max(scores, key=scores.get), scores


def calibrate(methods, data_dir, n_slices, seed=0, n_stacks=2):
    """Each classical method's parameter with the best mean body PSNR on random training slices with tissue,
    against the headline reference (the truth when the data has one, else the 3T image): the 2-D methods' sigma
    multiplier (SIGMA_SCALES, climbed from 1.0: the table lists the multipliers tried) on n_slices slices;
    bm4d's and nordic's multiplier and mppca's patch radius (MULTIFRAME_CANDIDATES, climbed from MULTIFRAME_START)
    on the stacks / volumes of the first n_stacks of those slices, on a window (calibrate_multiframe).

    Returns ({method: parameter}, {method: {str(candidate): mean body PSNR}}, note or None, record): record names
    the slices, the reference and the chosen parameters (for benchmark.json). n_slices 0: the defaults (1.0,
    mppca radius 2).
    """
    from breastmri.metrics import slice_metrics

    params = {m: MULTIFRAME_START.get(m, 1.0) for m in methods}
    if not methods or n_slices < 1:
        return params, {}, None, {}
    try:
        slices = tissue_slices(data_dir, "train", n_slices, seed)
    except ValueError as e:
        return params, {}, f"no calibration ({e}); default parameters", {}
    if not slices:
        return params, {}, "no calibration (no training slice with tissue); default parameters", {}
    reference = "truth" if all(t is not None for _, _, _, t, _ in slices) else "3T"
    table, levels = {}, [noise_levels(row, noisy) for row, noisy, *_ in slices]
    for method in [m for m in methods if m in CLASSICAL]:
        def mean_psnr(scale):
            outputs = [out for out, _ in parallel_map(timed_call, [(classical_denoise, (method, noisy, lv, scale))
                                                                   for (_, noisy, *_), lv in zip(slices, levels)],
                                                      workers_for(method))]
            psnr = [slice_metrics(amplitude, truth, mask)["psnr"] if reference == "truth"
                    else slice_metrics(main_out, clean, mask)["psnr"]
                    for (_, _, clean, truth, mask), (main_out, _, amplitude) in zip(slices, outputs)]
            return float(np.nanmean(psnr))

        params[method], scores = climb(SIGMA_SCALES, SIGMA_SCALES.index(1.0), mean_psnr)
        table[method] = {str(s): v for s, v in scores.items()}
    stacks = []
    multiframe = [m for m in methods if m in MULTIFRAME]
    if multiframe:
        found, stacks = calibrate_multiframe(multiframe, data_dir, slices, reference, n_stacks)
        for method, (best, psnr) in found.items():
            params[method], table[method] = best, psnr
    chosen = {m: {"parameter": "patch_radius" if m == "mppca" else "sigma_scale", "value": params[m],
                  "body_psnr": table[m][str(params[m])]} for m in table}
    for entry in chosen.values():
        entry[entry["parameter"]] = entry["value"]
    record = {"split": "train", "n_slices": len(slices), "seed": seed, "reference": reference, "region": "body",
              "slices": [{"patient_id": r["patient_id"], "series_uid": r["series_uid"],
                          "slice_index": r["slice_index"]} for r, *_ in slices],
              "candidates": {**{m: list(SIGMA_SCALES) for m in methods if m in CLASSICAL},
                             **{m: list(c) for m, c in MULTIFRAME_CANDIDATES.items() if m in methods}},
              "multiframe_stacks": stacks, "multiframe_crop": CALIBRATION_CROP, "chosen": chosen}
    return params, table, None, record


def _crop_window(mask, side):
    """(rows slice, cols slice) of a side x side window centred on the mask's centre of mass, inside the image."""
    h, w = mask.shape
    cy, cx = (np.argwhere(mask).mean(axis=0) if mask.any() else (h / 2, w / 2))
    top = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
    left = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
    return slice(top, top + side), slice(left, left + side)


def calibrate_multiframe(methods, data_dir, slices, reference, n_stacks):
    """({method: (best parameter, {str(candidate): mean body PSNR})}, [stack records]) for bm4d, mppca and nordic
    (tpca has nothing to calibrate).

    The stacks are those of the first n_stacks calibration slices whose series has more than one time point,
    denoised on a CALIBRATION_CROP^2 window around the slice's body mask; every frame of the stack (bm4d, nordic) or of
    the series volume (mppca) is scored in its own body mask against the reference."""
    from breastmri.metrics import body_mask, slice_metrics

    stacks, used = Stacks(data_dir), []
    for row, noisy, _, _, mask in slices:
        whole = stacks.rows_of(row, whole_series=True)
        if whole is not None and len(used) < n_stacks:
            used.append((row, noisy, _crop_window(mask, CALIBRATION_CROP), whole))
    found = {}
    for method in (m for m in methods if m in MULTIFRAME_CANDIDATES):
        work = []  # per stack: the reference frames and the run's frames and noise levels
        for row, noisy, window, whole in used:
            rows = whole if method == "mppca" else [frame[row["position_index"]] for frame in whole]
            ref = stacks.frames(rows, "truth_file" if reference == "truth" else "clean_file")[(Ellipsis,) + window]
            work.append((ref, stacks.frames(rows), noise_levels(row, noisy), window))

        def mean_psnr(candidate):
            jobs = [(method, frames, levels, candidate, window) for _, frames, levels, window in work]
            psnr = []
            for (ref, *_), ((main_out, _, amplitude), _) in zip(work, parallel_map(timed_multiframe, jobs,
                                                                                   workers_for(method))):
                out = amplitude if reference == "truth" else main_out
                flat = out.reshape((-1,) + out.shape[-2:])
                for image, target in zip(flat, ref.reshape(flat.shape)):
                    mask = body_mask(target)
                    if mask.any():
                        psnr.append(slice_metrics(image, target, mask)["psnr"])
            return float(np.nanmean(psnr))

        if used:
            candidates = MULTIFRAME_CANDIDATES[method]
            best, scores = climb(candidates, candidates.index(MULTIFRAME_START[method]), mean_psnr)
            found[method] = best, {str(c): v for c, v in scores.items()}
    records = [{"patient_id": r["patient_id"], "series_uid": r["series_uid"], "position_index": r["position_index"],
                "window": [w.start for w in window]} for r, _, window, _ in used]
    return found, records
