"""Is the model worth using? Baselines, speed and scaling, measured on the same data in the same run.

    python benchmark.py --run-dir runs/demo --data data/processed_demo --max-slices 48
    python benchmark.py --run-dir runs/demo --parts quality --methods noisy,bm3d,unet
    python benchmark.py --run-dir runs/demo --thesis-run runs/demo_thesis --parts speed,scaling

The 2021 thesis reported its autoencoder alone, without even the degraded input to compare with. This script
puts every restoration a researcher could already run next to each other, on the same held-out slices (the
test patients: never used for training or checkpoint selection; the validation patients only when the data has
no test split, said so in the report):
the degraded input ("noisy"), the four classical denoisers of denoisers.py (non-local means "nlm", total
variation "tv", wavelet shrinkage "wavelet", BM3D "bm3d"), the thesis autoencoder ("thesis") and the default
model ("unet"). Three parts, chosen with --parts (default all three):

quality  Test split of --data, whole slices: PairedSlices(data, "test", max_slices=N) (N evenly spaced
         slices, the same for every method). Per slice and method: PSNR, SSIM and MSE over the whole image and
         over the body mask, against the 3T image and, when the data has one (demo data), against the
         noise-free truth: the headline reference (metrics.whole_and_masked; metrics.body_mask of the truth, or
         of the 3T image without one), and the time the
         method took (ms per slice; the networks per batch of the run's batch_size divided by its size, after
         one warm-up batch; the classical methods one slice at a time, mostly on one core). Summary: mean and
         95% Student-t interval over *patient* means (metrics.mean_ci with groups = patient ids: slices of one
         patient are not independent), the slice-level mean and std, and the gain over the degraded input,
         paired per slice and then averaged per patient.
speed    (a) preprocessing slices/s: preprocessing.benchmark on a generated demo tree (--speed-series series of
         4 slices x 4 time points, the data's demo.matrix, resized to its preprocess.image_size), one worker.
         (b) training images/s of each model with its own config (batch, patch, augmentation), a newly built
         model compiled as main.py does, fed by PairedSlices from disk (the real pipeline) and by the same kind of
         batches preloaded as numpy arrays, alternately, --speed-rounds times each (best round kept: the
         machine may be shared); steady state = steps after --speed-warmup warm-up steps, timed from
         batch-end timestamps; "pipeline cost" = 1 - pipeline / in-memory images/s (the goal is < 10%).
         PairedSlices.__getitem__ alone is timed too (read ms per batch), to tell the cost of reading and
         cropping from the cost of Keras' PyDataset -> tf.data adapter.
         (c) inference ms per --speed-size^2 slice (default 512) for each model at batch 1 and at the run's
         batch size (median of >= --speed-reps timed calls after 2 warm-ups, predict_on_batch, host->device
         copies included), next to its FLOPs per slice (model.count_flops: 2 x conv multiply-adds) and the
         achieved GFLOP/s = FLOPs / seconds, to compare with the device's peak. The U-Net is fully
         convolutional and keeps its trained weights at any size; the thesis autoencoder has a fixed input and
         is rebuilt at 512 with untrained weights when it was trained at another size (timing only; said so).
         (d) each classical method on --speed-bm3d-slices validation slices resized to --speed-size (cubic),
         so "N x faster than BM3D" is measured on the same machine in the same run.
scaling  Time and peak memory as the work grows, each size in a fresh child process (`benchmark.py
         --_scaling-child ...`), so its peak RSS is its own (VmHWM from /proc/self/status: on Linux
         getrusage's ru_maxrss of a child inherits the parent's resident size at fork, which would put
         the ~600 MiB of this TensorFlow process into every child; ru_maxrss elsewhere):
         preprocessing.run on trees of --scaling-series series (default 1, 4, 16; 16 slices each) and
         inference of the run's model on --scaling-slices slices (default 16, 64, 256) of the 16-series
         output, read through a memmapped PairedSlices. Linear time shows as a constant time per slice, flat
         memory as a peak that does not grow with n. Peak RSS counts the touched pages of memory-mapped arrays
         (file-backed, reclaimable page cache), so the inference child also reports its largest anonymous
         resident memory (RssAnon from /proc, sampled after every batch): the memory the process really owns.
         At the defaults the part takes about a minute on 2 cores (most of it importing TensorFlow 3 times).

Noise level given to the classical methods (they are run at their best, not handicapped):
1. The recorded sigma. preprocessing.py records per series sigma_source (the 3T image's own Rician sigma,
   measured in its air background) and sigma_added, in normalized units at acquisition resolution.
   Field model: the degraded image is Rician with sigma_total = sqrt(sigma_source^2 + sigma_added^2) around
   the true amplitude A, and the clean reference is itself Rician with sigma_source. So the denoiser removes
   sigma_total (it converges to E[M]), the Rician mean is inverted with sigma_total (-> A) and the expected
   magnitude at sigma_source is put back (reference_sigma in denoisers.py), the mean of the clean reference.
   Gaussian model (the thesis): noisy = clean + N(0, sigma_added) is additive and symmetric on top of the
   clean (which already carries its Rician floor), so sigma_added and no Rician correction.
   The uncorrected output of the same run (field model only; it costs nothing) is reported as "<method>_gauss".
2. Resizing. Noise is added at acquisition resolution (e.g. 192^2) and the pair is then resized (cubic up to
   256^2 or 512^2). Interpolation averages neighbouring noise samples: the noise becomes spatially correlated
   and its pixel std drops (x0.86 for 192 -> 256). A denoiser tuned for white noise of std sigma is given the
   std it actually sees, sigma_pixel = g * sigma, where g is the std of unit white noise after the same
   preprocessing.resize_square (simulated, seeded; g = 1 without resizing). benchmark.json "noise" checks this
   against the data: the std of (noisy - clean) in tissue (> 10 sigma_total; there the magnitude noise is close
   to Gaussian and noisy - clean is the added noise alone) divided by g * sigma_added; ~1 on the demo data.
   The Rician inversion uses the unscaled sigma_total: interpolation weights sum to 1, so local means, and
   with them the Rician bias (1.25 sigma in air), are those of acquisition resolution.
   skimage's estimate_sigma is not used when a sigma is recorded: it reads the finest wavelet band, where
   upsampled noise has little energy (it returns about 1/3 of the true sigma for 192 -> 256), and it reads
   Rician noise low in air. Without a recorded sigma it is the fallback, divided by its response to resized
   white noise (then reference_sigma = 0: the clean's own floor is unknown).
3. Calibration (--calibrate-slices, default 12; 0 turns it off). sigma_pixel is the right scale, but the
   methods' parameters (denoisers.py) were tuned on white noise and correlated noise moves their optimum (on
   demo-like data NLM, TV and wavelet preferred 0.6-0.8 sigma_pixel, BM3D 1.0-1.25). Each classical method gets
   the multiplier from SIGMA_SCALES with the best mean body-mask PSNR, against the headline reference, on
   randomly drawn (seeded) *training* slices with tissue (body mask >= 10% of the slice), never the slices it
   is scored on: a small hyperparameter search on the data the networks were trained on. The slices and the
   chosen multipliers are recorded in benchmark.json (quality.calibration_record).
4. Reference. Against the truth a method is scored on its amplitude estimate (Rician mean inverted); against
   the 3T image on the same estimate with the 3T image's own Rician floor put back, because the 3T image's air
   is not zero. The networks are scored as they are (trained against the 3T image, see the README).

Models: --run-dir is a main.py run (config.yaml, model.keras, metrics.json); its model is "unet" (or "thesis"
when it is a thesis_autoencoder run). The thesis autoencoder is --thesis-run, or else found: the newest
sibling run dir whose config.yaml has model.name thesis_autoencoder and whose metrics.json has the same
data_dir. Both runs' training budget (epochs, steps, batch, patch, learning rate, training seconds) goes into
the report. The thesis autoencoder takes exactly image_size^2 slices; on data of another size it is skipped
with a note rather than fed resized slices (interpolation would change the noise it is scored on).

Outputs (--out, default <run-dir>/benchmark/): benchmark.json (everything), benchmark.md (tables for the
README: header with data, degradation, budget and machine; quality, with the paired gain over the degraded
input; speed; scaling), benchmark.png (PSNR/SSIM per method with CIs; body-mask PSNR against ms per slice),
benchmark_per_slice.csv (one row per method and slice). benchmark.json's "headline" object is the number the
project is judged by: per method, body PSNR on the test split against the truth (3T without one). cache/ keeps the generated demo DICOM tree for the
speed and scaling parts between runs.

Runtime (2 shared CPU cores, 256^2 demo slices, --max-slices 48, all methods and parts): about 8-10 min.
Quality ~5 min, nearly all BM3D (4-8 s per 256^2 slice depending on the load: ~4 min for 48 slices plus
~0.5 min of calibration; NLM ~0.1 s, TV and wavelet < 0.05 s, the networks 0.03-0.1 s per slice); speed
~3 min (training 4 fits per model, inference at 512^2, BM3D at 512^2 10-30 s); scaling ~1 min.
--methods without bm3d, or a smaller --max-slices, make it a few minutes.
"""

import argparse
import csv
import functools
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from config import ConfigError, load_config

METHODS = ("noisy", "nlm", "tv", "wavelet", "bm3d", "thesis", "unet")
CLASSICAL = ("nlm", "tv", "wavelet", "bm3d")
MODELS = ("thesis", "unet")
PARTS = ("quality", "speed", "scaling")
METRICS = ("psnr", "ssim", "mse")
# Multipliers of sigma_pixel tried by the calibration (module docstring, point 3).
SIGMA_SCALES = (0.6, 0.8, 1.0, 1.25)
# Tissue for the noise check: clean magnitude above this many sigma_total, where Rician ~ Gaussian.
TISSUE_SNR = 10.0
# Demo series for the speed and scaling parts: small, so that 16 series (256 slices) stay quick.
DEMO_SLICES, DEMO_TIME_POINTS = 4, 4
CHILD_TIMEOUT_S = 600


class BenchmarkError(Exception):
    """A problem with the inputs (missing run, unknown method, empty split): printed on one line, exit 2."""


def _log(message):
    print(message, flush=True)


# -----------------------------------------------------------------------------
# runs and models

def read_run(run_dir):
    """A main.py run dir as {"dir", "cfg", "metrics", "method"} (metrics: {} when there is no metrics.json)."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / "config.yaml", run_dir / "model.keras"
    for path in (cfg_path, model_path):
        if not path.is_file():
            raise BenchmarkError(f"{path} not found: give a run dir written by main.py (config.yaml + model.keras)")
    try:
        cfg = load_config(cfg_path)
    except ConfigError as e:
        raise BenchmarkError(f"{cfg_path}: {e}") from e
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    method = "thesis" if cfg["model"]["name"] == "thesis_autoencoder" else "unet"
    return {"dir": run_dir, "cfg": cfg, "metrics": metrics, "method": method}


def find_thesis_run(run_dir, data_dir):
    """The newest sibling of run_dir that is a thesis_autoencoder run evaluated on data_dir, or None.

    "Evaluated on" = the data_dir main.py wrote into its metrics.json resolves to the same folder.
    """
    run_dir, data = Path(run_dir).resolve(), Path(data_dir).resolve()
    found = []
    for sibling in sorted(run_dir.parent.iterdir()):
        if sibling == run_dir or not (sibling / "model.keras").is_file():
            continue
        try:
            run = read_run(sibling)
        except (BenchmarkError, ValueError):
            continue
        recorded = run["metrics"].get("data_dir")
        if run["method"] == "thesis" and recorded and Path(recorded).resolve() == data:
            found.append(((sibling / "model.keras").stat().st_mtime, sibling))
    return max(found)[1] if found else None


def load_model(run):
    """The run's model.keras, loaded as main.py loads it."""
    import main

    return main.load_model(run["dir"] / "model.keras")


def budget(run):
    """What the run was trained with, from its config.yaml and the "train" block of its metrics.json."""
    t, done = run["cfg"]["train"], run["metrics"].get("train", {})
    return {"run_dir": str(run["dir"]), "model": run["cfg"]["model"]["name"], "epochs": t["epochs"],
            "epochs_run": done.get("epochs_run"), "steps_per_epoch": t["steps_per_epoch"],
            "batch_size": t["batch_size"], "patch_size": t["patch_size"], "augment": t["augment"],
            "learning_rate": t["learning_rate"], "loss": t["loss"], "train_seconds": done.get("seconds"),
            "train_images_per_s_with_validation": done.get("images_per_s_with_validation"),
            "data_dir": run["metrics"].get("data_dir")}


def compare_budgets(budgets):
    """A note when the runs were not trained with the same epochs, steps per epoch and batch size."""
    keys = ("epochs", "steps_per_epoch", "batch_size")
    if len(budgets) < 2 or len({tuple(b[k] for k in keys) for b in budgets.values()}) == 1:
        return None
    return "training budgets differ: " + "; ".join(
        f"{m}: " + ", ".join(f"{k} {b[k]}" for k in keys) for m, b in budgets.items())


# -----------------------------------------------------------------------------
# noise level of the classical methods (module docstring)

@functools.lru_cache(maxsize=None)
def resize_noise_gains(rows, cols, size):
    """(std_gain, estimator_gain) of unit white noise through preprocessing.resize_square to size x size.

    std_gain: pixel std after resizing (1.0 when the square side equals size). estimator_gain: what
    skimage's estimate_sigma reads on that resized noise. Seeded; four 2-D samples of the padded square side.
    """
    from skimage.restoration import estimate_sigma

    from preprocessing import resize_square

    side = max(int(rows), int(cols))
    noise = np.random.default_rng(0).standard_normal((4, side, side)).astype(np.float32)
    resized = noise if side == size else resize_square(noise, size)
    std_gain = float(resized.std() / noise.std())
    estimator_gain = float(np.mean([estimate_sigma(r.astype(np.float64)) for r in resized]) / noise.std())
    return std_gain, estimator_gain


def _zero(row):
    """Normalized value of zero signal, -lo / (hi - lo) (0 when the manifest lacks the range)."""
    lo, hi = row.get("norm_lo"), row.get("norm_hi")
    return -lo / (hi - lo) if lo is not None and hi is not None and hi > lo else 0.0


def noise_levels(row, noisy):
    """The noise of one degraded slice as the classical methods need it.

    row: its manifest row; noisy: (S, S) slice. Returns {"model", "source" ("manifest" | "estimated"),
    "sigma_total" (acquisition resolution: Rician inversion), "sigma_pixel" (std the denoiser sees after the
    resize: denoiser strength), "sigma_reference" (sigma_source, the clean reference's own Rician sigma; 0 if
    unknown), "rician" (bool), "zero"}. All in normalized units.
    """
    size = noisy.shape[-1]
    model = row.get("degrade_model") or "unknown"
    source, added = row.get("sigma_source"), row.get("sigma_added")
    std_gain, estimator_gain = resize_noise_gains(row.get("rows") or size, row.get("cols") or size, size)
    zero = _zero(row)
    if model == "gaussian" and added:
        total, reference, origin = float(added), 0.0, "manifest"
    elif model == "field" and source is not None and added is not None and math.hypot(source, added) > 0:
        total, reference, origin = math.hypot(source, added), float(source), "manifest"
    else:
        from denoisers import estimate_sigma

        total, reference, origin = estimate_sigma(np.asarray(noisy) - zero) / estimator_gain, 0.0, "estimated"
        total = max(total, 1e-6)  # a noise-free slice: the denoisers need a positive sigma
    return {"model": model, "source": origin, "sigma_total": total, "sigma_pixel": total * std_gain,
            "sigma_reference": reference, "rician": model != "gaussian", "zero": zero}


def classical_denoise(method, noisy, levels, scale=1.0):
    """(main, gauss, amplitude): the method's output for one slice (H, W), float32, on the normalized scale.

    The denoiser runs once with sigma = scale * sigma_pixel under the Gaussian assumption (denoisers.denoise,
    rician=False). For Rician data, amplitude inverts the Rician mean with sigma_total (the estimate of the
    noise-free signal: what is scored against the truth), main re-applies the 3T reference's own floor
    (sigma_reference) to it (what is scored against the 3T image, whose air is not zero), as
    denoise(..., rician=True, reference_sigma=...) does when there is no resize and scale = 1; gauss is the
    uncorrected output. For the gaussian model all three are the plain output (gauss None). Air (zero signal) may
    sit slightly off 0 after normalization: the shift is undone.
    """
    from denoisers import denoise, rician_bias_correction, rician_mean

    zero = levels["zero"]
    plain = denoise(method, np.asarray(noisy, dtype=np.float64) - zero, scale * levels["sigma_pixel"], rician=False)
    if not levels["rician"]:
        out = (plain + np.float32(zero)).astype(np.float32)
        return out, None, out
    amplitude = rician_bias_correction(plain, levels["sigma_total"])
    main = rician_mean(amplitude, levels["sigma_reference"]) if levels["sigma_reference"] > 0 else amplitude
    return ((main + zero).astype(np.float32), (plain + np.float32(zero)).astype(np.float32),
            (amplitude + zero).astype(np.float32))


def eval_split(data_dir):
    """"test" when the data has test patients (never used for training or checkpoint selection), else "val"."""
    from data_factory import read_manifest

    return "test" if any(r["split"] == "test" for r in read_manifest(data_dir)) else "val"


def check_noise(data_dir, n=4):
    """Recorded sigma vs the data: per slice, measured std of (noisy - clean) in tissue / (g * sigma_added)."""
    from data_factory import PairedSlices

    ds = PairedSlices(data_dir, eval_split(data_dir), batch_size=1, max_slices=n)
    checks = []
    for b in range(len(ds)):
        noisy, clean = (a[0, ..., 0].astype(np.float64) for a in ds[b])
        row = ds.batch_rows(b)[0]
        levels = noise_levels(row, noisy)
        added = row.get("sigma_added")
        tissue = clean - levels["zero"] > TISSUE_SNR * levels["sigma_total"]
        if not added or levels["source"] != "manifest" or tissue.sum() < 100:
            continue
        gain = levels["sigma_pixel"] / levels["sigma_total"]
        measured = float((noisy - clean)[tissue].std())
        checks.append({"patient_id": row["patient_id"], "slice_index": row["slice_index"], "sigma_added": added,
                       "resize_std_gain": gain, "predicted_pixel_std": gain * added,
                       "measured_pixel_std": measured, "ratio": measured / (gain * added),
                       "tissue_pixels": int(tissue.sum())})
    ratios = [c["ratio"] for c in checks]
    return {"slices": checks, "mean_ratio": float(np.mean(ratios)) if ratios else None}


# -----------------------------------------------------------------------------
# quality

def slice_scores(pred, clean, mask, truth=None):
    """{"psnr", "ssim", "mse", "masked_psnr", "masked_ssim", "masked_mse"} of one slice against the 3T image
    (metrics.py), plus the same with a "truth_" prefix against the noise-free truth when one is given. pred is
    one image, or a pair (against 3T, against truth) for the classical methods (see classical_denoise)."""
    from metrics import whole_and_masked

    for_3t, for_truth = pred if isinstance(pred, tuple) else (pred, pred)
    scores = {}
    for prefix, image, reference in (("", for_3t, clean), ("truth_", for_truth, truth)):
        if reference is None:
            continue
        whole, masked = whole_and_masked(image, reference, mask)
        scores.update({f"{prefix}{m}": whole[m] for m in METRICS})
        scores.update({f"{prefix}masked_{m}": masked[m] for m in METRICS})
    return scores


def _slices(ds):
    """Yield (position, row, noisy, clean, truth or None) of every slice of a PairedSlices, (H, W) float32."""
    for b in range(len(ds)):
        noisy, clean = ds[b]
        truth = ds.truth_batch(b) if ds.patch_size is None and not ds.augment else None
        for j, row in enumerate(ds.batch_rows(b)):
            yield (b * ds.batch_size + j, row, noisy[j, ..., 0], clean[j, ..., 0],
                   None if truth is None else truth[j, ..., 0])


def tissue_slices(data_dir, split, n, seed, min_body_fraction=0.1):
    """n slices of `split` drawn at random (seeded) among those whose body mask covers >= min_body_fraction of
    the image: [(row, noisy, clean, truth or None, mask)]. Calibration on slices with tissue: edge slices that are
    almost all air would tune a denoiser for air."""
    from data_factory import PairedSlices
    from metrics import body_mask

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


def calibrate(methods, data_dir, n_slices, seed=0):
    """{method: sigma multiplier} with the best mean body PSNR on n_slices random training slices with tissue,
    against the headline reference (the truth when the data has one, else the 3T image).

    Returns ({method: scale}, {method: {str(scale): mean body PSNR}}, note or None, record): record names the
    slices, the reference and the chosen parameters (for benchmark.json). n_slices 0: all 1.0.
    """
    from tqdm import tqdm

    from metrics import slice_metrics

    scales = {m: 1.0 for m in methods}
    if not methods or n_slices < 1:
        return scales, {}, None, {}
    try:
        slices = tissue_slices(data_dir, "train", n_slices, seed)
    except ValueError as e:
        return scales, {}, f"no calibration ({e}); sigma multiplier 1.0", {}
    if not slices:
        return scales, {}, "no calibration (no training slice with tissue); sigma multiplier 1.0", {}
    reference = "truth" if all(t is not None for _, _, _, t, _ in slices) else "3T"
    table = {}
    for method in methods:
        psnr = {s: [] for s in SIGMA_SCALES}
        for row, noisy, clean, truth, mask in tqdm(slices, desc=f"calibrate {method}", unit="slice", leave=False):
            levels = noise_levels(row, noisy)
            for s in SIGMA_SCALES:
                main_out, _, amplitude = classical_denoise(method, noisy, levels, s)
                if reference == "truth":
                    psnr[s].append(slice_metrics(amplitude, truth, mask)["psnr"])
                else:
                    psnr[s].append(slice_metrics(main_out, clean, mask)["psnr"])
        table[method] = {str(s): float(np.nanmean(v)) for s, v in psnr.items()}
        scales[method] = max(SIGMA_SCALES, key=lambda s: np.nanmean(psnr[s]))
    record = {"split": "train", "n_slices": len(slices), "seed": seed, "reference": reference, "region": "body",
              "slices": [{"patient_id": r["patient_id"], "series_uid": r["series_uid"],
                          "slice_index": r["slice_index"]} for r, *_ in slices],
              "candidates": list(SIGMA_SCALES),
              "chosen": {m: {"sigma_scale": scales[m], "body_psnr": table[m][str(scales[m])]} for m in table}}
    return scales, table, None, record


def evaluate_quality(methods, models, data_dir, max_slices, scales, split="test"):
    """Per-slice scores of every method on the same held-out slices (`split`, the test patients by default).

    methods: names from METHODS, in table order; models: {"unet" | "thesis": (run, keras model)};
    scales: {classical method: sigma multiplier}. Every slice is scored against the 3T image and, when the data
    has it, against the noise-free truth, with one body mask per slice (of the truth if there is one, else of the
    3T image), as main.py does. Returns (rows, skipped): rows are dicts with method, patient_id, series_uid,
    slice_index, the slice_scores, ms and (classical) sigma_pixel; skipped = {method: reason}.
    """
    from tqdm import tqdm

    from data_factory import PairedSlices
    from metrics import body_mask

    held_out = PairedSlices(data_dir, split, batch_size=8, max_slices=max_slices)
    h, w = held_out.image_shape
    masks = {}

    def mask_of(position, clean, truth):
        if position not in masks:
            masks[position] = body_mask(clean if truth is None else truth)
        return masks[position]

    def record(method, row, scores, ms, **extra):
        rows.append({"method": method, "patient_id": row["patient_id"], "series_uid": row["series_uid"],
                     "slice_index": row["slice_index"], **scores, "ms": ms, **extra})

    rows, skipped = [], {}
    for method in methods:
        if method in MODELS and method not in models:
            skipped[method] = "no run of this model (give --thesis-run, or a run of it as --run-dir)"
            continue
        if method in MODELS:
            run, model = models[method]
            shape = tuple(model.inputs[0].shape[1:3])
            if any(s is not None and s != d for s, d in zip(shape, (h, w))):
                skipped[method] = (f"{run['cfg']['model']['name']} takes {shape[0]}x{shape[1]} slices, the data has "
                                   f"{h}x{w}; not resized (interpolation would change the noise it is scored on)")
                continue
        bar = tqdm(total=len(held_out.rows), desc=f"{method:8s}", unit="slice")
        if method in MODELS:
            ds = PairedSlices(data_dir, split, batch_size=run["cfg"]["train"]["batch_size"], max_slices=max_slices)
            model.predict_on_batch(ds[0][0])  # warm-up: tracing is not inference time
            for b in range(len(ds)):
                noisy, clean = ds[b]
                truth = ds.truth_batch(b)
                start = time.perf_counter()
                pred = np.asarray(model.predict_on_batch(noisy), dtype=np.float32)
                ms = 1000 * (time.perf_counter() - start) / len(noisy)
                for j, row in enumerate(ds.batch_rows(b)):
                    c, t = clean[j, ..., 0], None if truth is None else truth[j, ..., 0]
                    record(method, row, slice_scores(pred[j, ..., 0], c, mask_of(b * ds.batch_size + j, c, t), t),
                           ms)
                bar.update(len(noisy))
        else:
            for position, row, noisy, clean, truth in _slices(held_out):
                mask = mask_of(position, clean, truth)
                if method == "noisy":
                    record(method, row, slice_scores(noisy, clean, mask, truth), 0.0)
                else:
                    levels = noise_levels(row, noisy)
                    start = time.perf_counter()
                    main_out, gauss, amplitude = classical_denoise(method, noisy, levels, scales.get(method, 1.0))
                    ms = 1000 * (time.perf_counter() - start)
                    sigma = scales.get(method, 1.0) * levels["sigma_pixel"]
                    record(method, row, slice_scores((main_out, amplitude), clean, mask, truth), ms,
                           sigma_pixel=sigma)
                    if gauss is not None:
                        record(f"{method}_gauss", row, slice_scores(gauss, clean, mask, truth), ms, sigma_pixel=sigma)
                bar.update()
        bar.close()
    return rows, skipped


def reference_ceilings(data_dir, split, max_slices):
    """What the two references allow, measured on the held-out slices (body mask, mean over slices, dB).

    The 3T image x = S + n_src carries noise of its own (variance s2 = sigma_src^2); the degraded input
    y = x + n_add (a2 = sigma_add^2, total t2 = s2 + a2). Against the truth S, reproducing the 3T image exactly
    gains 10 log10(t2 / s2) over the input (6.0 dB at SNR ratio 0.5): the "3T quality" level, which a denoiser
    may exceed. Against the 3T image, even the truth gains only 10 log10(t2 / a2) = 10 log10(1 + s2 / a2) over
    the input (4.8 dB), while the best possible estimate of x from y, the MMSE estimate S + (s2 / t2)(y - S)
    (Gaussian approximation), has error variance s2 a2 / t2 and gains 10 log10(t2 / s2) (6.0 dB): against the
    3T image an MSE-trained network is rewarded for keeping part of the noise. Returns {} without truth."""
    from data_factory import PairedSlices
    from metrics import body_mask, slice_metrics

    ds = PairedSlices(data_dir, split, batch_size=1, max_slices=max_slices)
    if not ds.has_truth:
        return {}
    cols = {k: [] for k in ("input_vs_truth", "3t_vs_truth", "input_vs_3t", "truth_vs_3t", "mmse_vs_3t")}
    for _, row, noisy, clean, truth in _slices(ds):
        mask = body_mask(truth)
        if not mask.any() or not row.get("sigma_added"):
            continue
        w = row["sigma_source"] ** 2 / (row["sigma_source"] ** 2 + row["sigma_added"] ** 2)
        for key, image, reference in (("input_vs_truth", noisy, truth), ("3t_vs_truth", clean, truth),
                                      ("input_vs_3t", noisy, clean), ("truth_vs_3t", truth, clean),
                                      ("mmse_vs_3t", truth + w * (noisy - truth), clean)):
            cols[key].append(slice_metrics(image, reference, mask)["psnr"])
    if not cols["input_vs_truth"]:
        return {}
    out = {k: float(np.mean(v)) for k, v in cols.items()}
    out.update({"n_slices": len(cols["input_vs_truth"]),
                "gain_3t_vs_truth": out["3t_vs_truth"] - out["input_vs_truth"],
                "gain_truth_vs_3t": out["truth_vs_3t"] - out["input_vs_3t"],
                "gain_mmse_vs_3t": out["mmse_vs_3t"] - out["input_vs_3t"]})
    return out


def aggregate(rows, confidence=0.95):
    """Per method: each metric's mean and Student-t CI over patient means, plus slice mean/std and timing.

    rows: per-slice dicts (method, patient_id, series_uid, slice_index, psnr, ssim, mse, masked_*, ms, and
    truth_* / truth_masked_* when the data has a truth).
    Returns {method: {"n_slices", "n_patients", "whole": {m: ci}, "masked": {m: ci}, ["truth_whole",
    "truth_masked",] "ms_per_slice",
    "gain_vs_noisy": {"whole": {...}, "masked": {...}} (when "noisy" rows exist)}}, ci = metrics.mean_ci over
    patient means + "slice_mean", "slice_std". The gain is paired per slice (method - noisy on the same
    slice), then averaged per patient.
    """
    from metrics import mean_ci

    def stats(values, patients):
        ci = mean_ci(values, groups=patients, confidence=confidence)
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[~np.isnan(finite)]
        ci["slice_mean"] = float(finite.mean()) if finite.size else math.nan
        ci["slice_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        return ci

    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    noisy = {(r["series_uid"], r["slice_index"]): r for r in by_method.get("noisy", [])}
    regions = [("whole", ""), ("masked", "masked_")]
    if rows and all("truth_psnr" in r for r in rows):
        regions += [("truth_whole", "truth_"), ("truth_masked", "truth_masked_")]
    summary = {}
    for method, items in by_method.items():
        patients = [str(r["patient_id"]) for r in items]
        entry = {"n_slices": len(items), "n_patients": len(set(patients)),
                 "ms_per_slice": float(np.mean([r["ms"] for r in items]))}
        for region, prefix in regions:
            entry[region] = {m: stats([float(r[prefix + m]) for r in items], patients) for m in METRICS}
        paired = [(r, noisy.get((r["series_uid"], r["slice_index"]))) for r in items]
        paired = [(r, n) for r, n in paired if n is not None]
        if noisy and method != "noisy" and paired:
            groups = [str(r["patient_id"]) for r, _ in paired]
            entry["gain_vs_noisy"] = {
                region: {m: mean_ci([float(r[prefix + m]) - float(n[prefix + m]) for r, n in paired],
                                    groups=groups, confidence=confidence) for m in ("psnr", "ssim")}
                for region, prefix in regions}
        summary[method] = entry
    return summary


# -----------------------------------------------------------------------------
# speed

def _median_seconds(fn, min_reps, min_seconds=1.0, max_reps=50):
    """Median wall time of fn() over at least min_reps calls (more, up to max_reps, until min_seconds)."""
    times, total = [], 0.0
    while len(times) < min_reps or (total < min_seconds and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return float(np.median(times)), len(times)


def time_inference(model, size, batch, min_reps):
    """ms per size x size slice at this batch size, after 2 warm-up calls; with FLOPs and GFLOP/s."""
    from model import count_flops

    x = np.random.default_rng(0).random((batch, size, size, 1), dtype=np.float32)
    for _ in range(2):
        model.predict_on_batch(x)
    seconds, reps = _median_seconds(lambda: model.predict_on_batch(x), min_reps)
    per_slice = seconds / batch
    flops = count_flops(model, size, size)
    return {"size": size, "batch": batch, "ms_per_slice": 1000 * per_slice, "reps": reps,
            "gflops_per_slice": flops / 1e9, "gflop_per_s": flops / per_slice / 1e9}


def model_for_speed(run, trained, size):
    """(model, note) able to take size x size inputs: the trained model when it can, else the same architecture
    with untrained weights (timing only). None and a reason when the architecture cannot take that size."""
    from model import check_input_size, get_model

    cfg = run["cfg"]
    try:
        check_input_size(cfg, size, size)
        return trained, "trained weights"
    except ValueError:
        pass
    resized = {**cfg, "preprocess": {**cfg["preprocess"], "image_size": size}}
    try:
        check_input_size(resized, size, size)
        return get_model(resized), f"rebuilt at {size}x{size}, untrained weights (timing only)"
    except ValueError as e:
        return None, str(e)


def _batch_clock():
    """A Keras callback that records the time at the end of every training batch (in .ends)."""
    import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return BatchClock()


def time_training(run, data_dir, steps, warmup, rounds=2):
    """Training images/s of a model of the run's config: PairedSlices from disk vs the same batches in memory.

    One freshly built and compiled model (as main.py builds it) is fitted for one epoch of warmup + steps
    batches from each feed, alternately, `rounds` times; images/s counts the steps after the warm-up from
    batch-end timestamps (tracing and iterator start-up excluded) and keeps each feed's best round, so a
    burst of load from other processes on a shared machine does not decide the comparison.
    read_ms_per_batch: PairedSlices.__getitem__ alone (memmap reads, crops, flips), timed while preloading.
    """
    import keras

    from data_factory import PairedSlices
    from main import get_loss, psnr_metric
    from model import check_input_size, get_model

    cfg, t = run["cfg"], run["cfg"]["train"]
    total = warmup + steps

    def dataset():
        return PairedSlices(data_dir, "train", batch_size=t["batch_size"], shuffle=True, augment=t["augment"],
                            patch_size=t["patch_size"], steps_per_epoch=total, seed=cfg["seed"],
                            workers=t["workers"], use_multiprocessing=t["use_multiprocessing"])

    def images_per_s(fit):
        clock = _batch_clock()
        fit(clock)
        ends = clock.ends[warmup - 1:]
        return t["batch_size"] * (len(ends) - 1) / (ends[-1] - ends[0])

    pipeline, preload = dataset(), dataset()
    shape = pipeline.image_shape if t["patch_size"] is None else (t["patch_size"],) * 2
    check_input_size(cfg, *shape)  # a fixed-size model on data of another size: ValueError with the reason
    start = time.perf_counter()
    batches = [preload[i] for i in range(total)]  # batches like the pipeline's, read before any clock starts
    read_ms = 1000 * (time.perf_counter() - start) / total
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    keras.utils.set_random_seed(cfg["seed"])
    model = get_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(t["learning_rate"]), loss=get_loss(t["loss"]),
                  metrics=[psnr_metric()])
    from_disk, in_memory = [], []
    for _ in range(rounds):
        from_disk.append(images_per_s(lambda clock: model.fit(pipeline, epochs=1, shuffle=False, verbose=0,
                                                              callbacks=[clock])))
        in_memory.append(images_per_s(lambda clock: model.fit(x, y, batch_size=t["batch_size"], epochs=1,
                                                              shuffle=False, verbose=0, callbacks=[clock])))
    best_disk, best_memory = max(from_disk), max(in_memory)
    return {"batch_size": t["batch_size"], "input": f"{x.shape[1]}x{x.shape[2]}",
            "patch_size": t["patch_size"], "steps": steps, "warmup_steps": warmup, "rounds": rounds,
            "pipeline_images_per_s": best_disk, "in_memory_images_per_s": best_memory,
            "pipeline_cost": 1.0 - best_disk / best_memory, "read_ms_per_batch": read_ms,
            "step_ms_in_memory": 1000 * t["batch_size"] / best_memory,
            "rounds_images_per_s": {"pipeline": from_disk, "in_memory": in_memory}, "workers": t["workers"]}


def demo_tree(cache_dir, cfg, n_series):
    """(root, series folders): a cached demo DICOM tree with at least n_series DCE series of 16 slices each."""
    from demo_data import ensure_demo_tree
    from preprocessing import index_tree

    # Every demo patient has 2 or 3 MR visits with one DCE series each.
    patients = max(2, math.ceil(n_series / 2))
    root = ensure_demo_tree(Path(cache_dir) / "demo_dicom", patients=patients, seed=cfg["demo"]["seed"],
                            slices=DEMO_SLICES, time_points=DEMO_TIME_POINTS, matrix=cfg["demo"]["matrix"])
    series, _, _ = index_tree(root)
    folders = sorted({Path(s.frames[0][0]).parent for s in series})
    if len(folders) < n_series:
        raise BenchmarkError(f"the demo tree {root} has {len(folders)} series, fewer than {n_series}")
    return Path(root), folders


def subset_tree(root, folders, dst):
    """A DICOM tree at dst holding only `folders` (hard links where the filesystem allows, else copies)."""
    def link(src, target):
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)

    for folder in folders:
        shutil.copytree(folder, Path(dst) / folder.relative_to(root), copy_function=link)
    return Path(dst)


def preprocessing_config(run, data_dir):
    """The config the data was preprocessed with (its summary.json), else the run's own config."""
    summary = Path(data_dir) / "summary.json"
    if summary.is_file():
        recorded = json.loads(summary.read_text()).get("config")
        if recorded:
            try:
                return load_config(None, [recorded])
            except ConfigError:
                pass
    return run["cfg"]


def classical_speed(methods, data_dir, size, n_slices):
    """ms per size x size slice of each classical method on validation slices resized with cubic interpolation."""
    import cv2

    from data_factory import PairedSlices

    ds = PairedSlices(data_dir, eval_split(data_dir), batch_size=1, max_slices=n_slices)
    results = {}
    for method in methods:
        times = []
        for b in range(len(ds)):
            noisy = ds[b][0][0, ..., 0]
            levels = noise_levels(ds.batch_rows(b)[0], noisy)
            if noisy.shape[0] != size:
                noisy = cv2.resize(noisy, (size, size), interpolation=cv2.INTER_CUBIC)
            start = time.perf_counter()
            classical_denoise(method, noisy, levels)
            times.append(time.perf_counter() - start)
        results[method] = {"size": size, "slices": len(times), "ms_per_slice": 1000 * float(np.mean(times))}
        _log(f"  {method} at {size}x{size}: {results[method]['ms_per_slice']:.0f} ms per slice")
    return results


def speed_part(args, models, data_dir, prep_cfg, cache_dir, classical):
    from preprocessing import benchmark as preprocessing_benchmark

    result, notes = {"models": {}}, []
    _log(f"speed: preprocessing {args.speed_series} demo series")
    root, folders = demo_tree(cache_dir, prep_cfg, max(args.speed_series, max(args.scaling_series, default=1)))
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tree = subset_tree(root, folders[:args.speed_series], Path(tmp) / "tree")
        pre = preprocessing_benchmark(tree, prep_cfg, workers=args.workers, out_dir=Path(tmp))
    result["preprocessing"] = {k: pre[k] for k in ("slices", "series", "workers", "image_size", "seconds",
                                                   "slices_per_s", "slices_per_s_processing")}
    result["preprocessing"]["matrix"] = prep_cfg["demo"]["matrix"]

    for method, (run, trained) in models.items():
        entry = {}
        _log(f"speed: {method} inference at {args.speed_size}x{args.speed_size}")
        model, note = model_for_speed(run, trained, args.speed_size)
        if model is None:
            entry["inference_skipped"] = note
        else:
            entry["weights"] = note
            entry["inference"] = [time_inference(model, args.speed_size, b, args.speed_reps)
                                  for b in sorted({1, run["cfg"]["train"]["batch_size"]})]
        _log(f"speed: {method} training steps")
        try:
            entry["training"] = time_training(run, data_dir, args.speed_steps, args.speed_warmup,
                                              args.speed_rounds)
        except ValueError as e:  # a fixed-size model on data of another size
            entry["training_skipped"] = str(e).splitlines()[0]
        result["models"][method] = entry

    result["classical"] = classical_speed(classical, data_dir, args.speed_size, args.speed_bm3d_slices)
    bm3d = result["classical"].get("bm3d", {}).get("ms_per_slice")
    for method, entry in result["models"].items():
        for timing in entry.get("inference", []):
            timing["speedup_vs_bm3d"] = bm3d / timing["ms_per_slice"] if bm3d else None
        training = entry.get("training")
        if training and training["pipeline_cost"] >= 0.10:
            notes.append(f"{method}: measured pipeline cost {training['pipeline_cost']:.0%} of training throughput "
                         f"(goal < 10%); reading a batch alone takes "
                         f"{training['read_ms_per_batch'] / training['step_ms_in_memory']:.0%} of a training step")
    result["notes"] = notes
    return result


# -----------------------------------------------------------------------------
# scaling (each size in a fresh child process)

def _proc_status_mib(key):
    """A memory line of /proc/self/status (Linux) in MiB, e.g. "VmHWM" or "RssAnon"; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _peak_rss_mib():
    """Peak resident memory of this process, MiB.

    VmHWM (the high-water mark of this process's own address space) where Linux provides it: ru_maxrss of a
    child started by a big parent is not clean, because Linux carries the parent's resident size at fork into
    the child's ru_maxrss across exec. Elsewhere getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux, bytes on macOS).
    """
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _anon_rss_mib():
    """Current anonymous resident memory (RssAnon): what the process owns, without file-backed pages."""
    return _proc_status_mib("RssAnon")


def scaling_child(args):
    """Body of `benchmark.py --_scaling-child preprocess|infer`: one size, one JSON line on stdout."""
    if args._scaling_child == "preprocess":
        import preprocessing

        cfg = load_config(None, [json.loads(Path(args.child_config).read_text())])
        after_import = _peak_rss_mib()
        summary = preprocessing.run(args.child_root, args.child_out, cfg, workers=1, progress=False)
        result = {"series": summary["series_used"], "slices": summary["slices"], "seconds": summary["seconds"],
                  "peak_rss_mib": _peak_rss_mib(), "rss_after_import_mib": after_import}
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from data_factory import PairedSlices

        run = read_run(args.run_dir)
        model = load_model(run)
        ds = PairedSlices(args.child_data, None, batch_size=run["cfg"]["train"]["batch_size"], max_slices=args.n)
        model.predict_on_batch(ds[0][0])  # warm-up (tracing)
        after_load = _peak_rss_mib()
        anon = [_anon_rss_mib()]
        start = time.perf_counter()
        for b in range(len(ds)):
            model.predict_on_batch(ds[b][0])
            anon.append(_anon_rss_mib())
        seconds = time.perf_counter() - start
        result = {"slices": len(ds.rows), "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
                  "rss_after_load_mib": after_load,
                  "peak_anon_rss_mib": max(anon) if None not in anon else None,
                  "image_size": list(ds.image_shape)}
    print(json.dumps(result))


def _run_child(command):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *command], capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, env=env, cwd=Path(__file__).resolve().parent)
    if done.returncode != 0:
        raise RuntimeError(f"scaling child {' '.join(command[:2])} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def scaling_part(args, run, prep_cfg, cache_dir):
    sizes = sorted(args.scaling_series)
    root, folders = demo_tree(cache_dir, prep_cfg, max(sizes[-1], args.speed_series))
    result = {"preprocess": [], "infer": [], "series_slices": DEMO_SLICES * DEMO_TIME_POINTS,
              "matrix": prep_cfg["demo"]["matrix"], "image_size": prep_cfg["preprocess"]["image_size"]}
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp = Path(tmp)
        config_path = tmp / "config.json"
        config_path.write_text(json.dumps(prep_cfg))
        for n in sizes:
            tree = subset_tree(root, folders[:n], tmp / f"tree_{n}")
            out = tmp / f"processed_{n}"
            _log(f"scaling: preprocessing {n} series in a child process")
            entry = _run_child(["--_scaling-child", "preprocess", "--n", str(n), "--child-root", str(tree),
                                "--child-out", str(out), "--child-config", str(config_path)])
            result["preprocess"].append({"n_series": n, **entry})
        data = tmp / f"processed_{sizes[-1]}"
        available = result["preprocess"][-1]["slices"]
        for n in sorted(args.scaling_slices):
            if n > available:
                result.setdefault("notes", []).append(f"inference: {n} slices asked, {available} available")
                continue
            _log(f"scaling: inference on {n} slices in a child process")
            entry = _run_child(["--_scaling-child", "infer", "--n", str(n), "--run-dir", str(run["dir"]),
                                "--child-data", str(data)])
            result["infer"].append({"n_slices": n, **entry})
    for kind, unit in (("preprocess", "slices"), ("infer", "slices")):
        entries = result[kind]
        for e in entries:
            e["ms_per_slice"] = 1000 * e["seconds"] / e[unit]
        if len(entries) > 1:
            result[f"{kind}_time_per_slice_ratio"] = entries[-1]["ms_per_slice"] / entries[0]["ms_per_slice"]
            result[f"{kind}_peak_rss_growth_mib"] = entries[-1]["peak_rss_mib"] - entries[0]["peak_rss_mib"]
    return result


# -----------------------------------------------------------------------------
# report

def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import tensorflow as tf

    info.update({"tensorflow": tf.__version__, "keras": keras.__version__})
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    info["device"] = ", ".join(names) if names else "CPU"
    return info


def data_info(data_dir, eval_rows, image_shape, split):
    """Which data and which degradation, from the manifest rows and the data's summary.json."""
    from data_factory import read_manifest

    every = read_manifest(data_dir)
    split_all = [r for r in every if r["split"] == split]

    def mean_of(key):
        values = [r[key] for r in eval_rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    summary_path = Path(data_dir) / "summary.json"
    recorded = json.loads(summary_path.read_text()).get("config", {}) if summary_path.is_file() else {}
    return {"data_dir": str(data_dir), "image_size": list(image_shape), "split": split,
            "acquisition_matrix": sorted({f"{r['rows']}x{r['cols']}" for r in eval_rows if r.get("rows")}),
            "eval_slices_used": len(eval_rows), "eval_slices_total": len(split_all),
            "eval_patients": len({r["patient_id"] for r in eval_rows}),
            "truth": all(r.get("truth_file") for r in eval_rows),
            "train_slices": sum(r["split"] == "train" for r in every),
            "degrade_model": sorted({r.get("degrade_model") or "unknown" for r in eval_rows}),
            "degrade_config": recorded.get("degrade"), "snr_ratio": mean_of("snr_ratio"),
            "sigma_source": mean_of("sigma_source"), "sigma_added": mean_of("sigma_added")}


def _num(value, digits=2, scientific=False):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}e}" if scientific else f"{value:.{digits}f}"


def _ci_cell(ci, digits, scientific=False):
    """'mean [low, high]', or the mean alone when there is no interval (one patient)."""
    if ci is None:
        return "—"
    mean = _num(ci["mean"], digits, scientific)
    if ci.get("ci_low") is None or not math.isfinite(ci["ci_low"]):
        return mean
    return f"{mean} [{_num(ci['ci_low'], digits, scientific)}, {_num(ci['ci_high'], digits, scientific)}]"


def _ms(value):
    if value is None or value == 0:  # 0: the degraded input, nothing to run
        return "—"
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def quality_rows(report):
    """Method names in table order: requested methods, each followed by its _gauss variant."""
    names = []
    for method in report["methods"]:
        names.append(method)
        if f"{method}_gauss" in report["quality"]["summary"]:
            names.append(f"{method}_gauss")
    return names


def markdown(report):
    """benchmark.md: a header (data, degradation, budget, machine) and one table per part that ran."""
    d, m = report["data"], report["machine"]
    deg = d.get("degrade_config") or {}
    if "field" in d["degrade_model"]:
        degradation = (f"field model (Rician), {deg.get('source_field_t', '?')} T -> {deg.get('target_field_t', '?')} "
                       f"T, SNR ratio {_num(d['snr_ratio'], 3)}")
    else:
        degradation = f"{', '.join(d['degrade_model'])} model (additive Gaussian, the thesis)"
    lines = [
        "# Benchmark: restoring simulated 1.5T from 3T breast MRI", "",
        f"- **Data**: `{d['data_dir']}`, {d['split']} split: {d['eval_slices_used']} of {d['eval_slices_total']} slices "
        f"(evenly spaced) from {d['eval_patients']} patient(s), {d['image_size'][0]}x{d['image_size'][1]} "
        f"(acquired {', '.join(d['acquisition_matrix']) or '?'}); {d['train_slices']} training slices.",
        f"- **Degradation**: {degradation}; mean sigma_source {_num(d['sigma_source'], 4)}, sigma_added "
        f"{_num(d['sigma_added'], 4)} (normalized units, acquisition resolution).",
        f"- **Machine**: {m['platform']}, {m['cpus_usable']} of {m['cpu_count']} CPUs ({m['cpu']}), "
        f"device {m['device']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}.",
        f"- **Run**: {report['date']}, `{report['command']}`.", ""]

    if report["budget"]:
        lines += ["## Training budget", "",
                  "| Model | Run | Epochs (run) | Steps/epoch | Batch | Patch | LR | Loss | Training s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, b in report["budget"].items():
            lines.append(f"| {method} | `{b['run_dir']}` | {b['epochs']} ({b['epochs_run'] or '?'}) | "
                         f"{b['steps_per_epoch'] or 'one pass'} | {b['batch_size']} | {b['patch_size'] or 'whole'} | "
                         f"{b['learning_rate']:g} | {b['loss']} | {_num(b['train_seconds'], 1)} |")
        if report.get("budget_note"):
            lines += ["", f"Note: {report['budget_note']}."]
        lines.append("")

    if "quality" in report:
        q = report["quality"]
        n = max((s["n_patients"] for s in q["summary"].values()), default=0)
        interval = (f"Mean [95% CI over {n} patient means, Student t]" if n > 1 else
                    "Mean (one patient: no confidence interval)")
        split = d["split"]
        lines += ["## Quality", "",
                  f"{interval} on the {split} slices ({'patients never used for training or checkpoint selection' if split == 'test' else 'NO test patients: these are the checkpoint-selection patients'}); "
                  "'body' = inside the body mask (of the truth when there is one, else of the 3T image); 'gain' = "
                  "method - degraded input on the same slice (paired, then averaged per patient). ms per slice on "
                  "this machine (classical methods on one slice at a time, networks per batch).", ""]
        blocks = [("truth", "truth_", "against the noise-free truth (the headline)")] if d.get("truth") else []
        blocks.append(("3T", "", "against the 3T image (itself noisy: see the README on ceilings)"))
        for label, prefix, title in blocks:
            lines += [f"### {label} reference: {title}", "",
                      "| Method | PSNR body (dB) | SSIM body | Gain, PSNR body (dB) | PSNR (dB) | SSIM | MSE | "
                      "ms / slice |", "|---|---|---|---|---|---|---|---|"]
            for name in quality_rows(report):
                s = q["summary"].get(name)
                if s is None:
                    lines.append(f"| {name} | skipped: {q['skipped'].get(name, 'not run')} |  |  |  |  |  |  |")
                    continue
                w, k = s[f"{prefix}whole"], s[f"{prefix}masked"]
                gain = (_ci_cell(s["gain_vs_noisy"][f"{prefix}masked"]["psnr"], 2) if "gain_vs_noisy" in s
                        else "—")
                lines.append(f"| {name} | {_ci_cell(k['psnr'], 2)} | {_ci_cell(k['ssim'], 3)} | {gain} | "
                             f"{_ci_cell(w['psnr'], 2)} | {_ci_cell(w['ssim'], 3)} | {_ci_cell(w['mse'], 2, True)} | "
                             f"{_ms(s['ms_per_slice'])} |")
            lines.append("")
        c = q.get("ceilings")
        if c:
            lines += [f"References, on the same {c['n_slices']} slices (body PSNR, dB): the degraded input scores "
                      f"{c['input_vs_truth']:.2f} against the truth and {c['input_vs_3t']:.2f} against the 3T image. "
                      f"The 3T image itself scores {c['3t_vs_truth']:.2f} against the truth (+{c['gain_3t_vs_truth']:.2f}"
                      f": 3T quality); against the 3T image the truth scores {c['truth_vs_3t']:.2f} "
                      f"(+{c['gain_truth_vs_3t']:.2f}) and the MMSE estimate of the 3T image {c['mmse_vs_3t']:.2f} "
                      f"(+{c['gain_mmse_vs_3t']:.2f}), which keeps part of the noise.", ""]
        lines += ["Notes:"]
        for note in q["notes"]:
            lines.append(f"- {note}")
        lines.append("")

    if "speed" in report:
        s = report["speed"]
        p = s["preprocessing"]
        lines += ["## Speed", "", "| Step | Model / method | Size | Throughput | ms / slice | GFLOP / slice | "
                  "GFLOP/s | Note |", "|---|---|---|---|---|---|---|---|",
                  f"| preprocessing | — | {p['matrix']}² -> {p['image_size']}² | {p['slices_per_s']:.1f} slices/s | "
                  f"{_ms(1000 / p['slices_per_s'])} |  |  | {p['series']} series, {p['slices']} slices, "
                  f"{p['workers']} worker(s), indexing included |"]
        for method, e in s["models"].items():
            tr = e.get("training")
            if tr:
                lines.append(f"| training, data pipeline | {method} | {tr['input']} x {tr['batch_size']} | "
                             f"{tr['pipeline_images_per_s']:.1f} images/s |  |  |  | PairedSlices from disk, "
                             f"{tr['workers']} worker(s) |")
                lines.append(f"| training, arrays in memory | {method} | {tr['input']} x {tr['batch_size']} | "
                             f"{tr['in_memory_images_per_s']:.1f} images/s |  |  |  | pipeline cost "
                             f"{tr['pipeline_cost']:.0%} (goal < 10%); reading a batch: "
                             f"{tr['read_ms_per_batch']:.0f} of {tr['step_ms_in_memory']:.0f} ms per step |")
            elif e.get("training_skipped"):
                lines.append(f"| training | {method} |  |  |  |  |  | skipped: {e['training_skipped']} |")
            for inf in e.get("inference", []):
                speedup = inf.get("speedup_vs_bm3d")
                note = e["weights"] + (f"; {speedup:.0f}x faster than BM3D" if speedup else "")
                lines.append(f"| inference | {method} | {inf['size']}² x {inf['batch']} |  | "
                             f"{_ms(inf['ms_per_slice'])} | {inf['gflops_per_slice']:.2f} | "
                             f"{inf['gflop_per_s']:.1f} | {note} |")
            if e.get("inference_skipped"):
                lines.append(f"| inference | {method} |  |  |  |  |  | skipped: {e['inference_skipped']} |")
        for method, c in s["classical"].items():
            lines.append(f"| denoising | {method} | {c['size']}² |  | {_ms(c['ms_per_slice'])} |  |  | "
                         f"{c['slices']} slice(s), Gaussian run + Rician correction |")
        for note in s["notes"]:
            lines.append(f"\nNote: {note}.")
        lines += ["", "Training throughput is the best of --speed-rounds alternating measurements per feed; on a "
                  "machine shared with other work, differences of 10-20% can be load, not pipeline: the read time "
                  "per batch (PairedSlices alone) against the step time is the steadier measure of reading cost.", ""]

    if "scaling" in report:
        sc = report["scaling"]
        lines += ["## Scaling", "",
                  f"Each size in a fresh process. Preprocessing: demo series of {sc['series_slices']} slices, "
                  f"{sc['matrix']}² -> {sc['image_size']}². Inference: the run's model through a memmapped "
                  "PairedSlices. Peak RSS includes touched pages of memory-mapped files (page cache); "
                  "'anon' is the process's own memory.", "",
                  "| Part | n | Slices | Seconds | ms / slice | Peak RSS (MiB) | Peak anon (MiB) |",
                  "|---|---|---|---|---|---|---|"]
        for e in sc["preprocess"]:
            lines.append(f"| preprocessing | {e['n_series']} series | {e['slices']} | {e['seconds']:.2f} | "
                         f"{_ms(e['ms_per_slice'])} | {e['peak_rss_mib']:.0f} | — |")
        for e in sc["infer"]:
            lines.append(f"| inference | {e['n_slices']} slices | {e['slices']} | {e['seconds']:.2f} | "
                         f"{_ms(e['ms_per_slice'])} | {e['peak_rss_mib']:.0f} | "
                         f"{_num(e.get('peak_anon_rss_mib'), 0)} |")
        for kind, label in (("preprocess", "preprocessing"), ("infer", "inference")):
            ratio = sc.get(f"{kind}_time_per_slice_ratio")
            if ratio is not None:
                lines.append(f"\n{label}: time per slice at the largest size / smallest = {ratio:.2f} "
                             f"(1 = linear); peak RSS grows by {sc[f'{kind}_peak_rss_growth_mib']:.0f} MiB.")
        for note in sc.get("notes", []):
            lines.append(f"\nNote: {note}.")
        lines.append("")
    return "\n".join(lines)


def plot(report, out_png):
    """benchmark.png: (left) PSNR (bars) and SSIM (markers, right axis) per method with 95% CIs;
    (right) body-mask PSNR against ms per slice, log x (the degraded input as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    summary = report["quality"]["summary"]
    names = [n for n in quality_rows(report) if n in summary]
    prefix = "truth_" if report["data"].get("truth") else ""  # the headline reference
    reference = "noise-free truth" if prefix else "3T image"

    def value_err(ci):
        """(mean, half-width of the CI); the half-width is NaN (no error bar drawn) without an interval."""
        mean = ci["mean"] if ci["mean"] is not None else np.nan
        low, high = ci.get("ci_low"), ci.get("ci_high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return mean, np.nan
        return mean, (high - low) / 2

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(names))
    for offset, region, label, color in ((-0.2, "whole", "PSNR whole", "#9ecae1"),
                                         (0.2, "masked", "PSNR body", "#3182bd")):
        vals = [value_err(summary[n][prefix + region]["psnr"]) for n in names]
        left.bar(x + offset, [v for v, _ in vals], 0.4, yerr=[e for _, e in vals], capsize=3, color=color,
                 label=label, error_kw={"ecolor": "#636363", "elinewidth": 1})
    psnrs = [summary[n][prefix + r]["psnr"]["mean"] for n in names for r in ("whole", "masked")]
    finite = [p for p in psnrs if p is not None and math.isfinite(p)]
    if finite:
        left.set_ylim(min(finite) - 3, max(finite) + 2)
    left.set_ylabel("PSNR (dB)")
    left.set_xticks(x, names, rotation=30, ha="right")
    twin = left.twinx()
    for offset, region, marker in ((-0.1, "whole", "o"), (0.3, "masked", "D")):  # off the bars' error bars
        vals = [value_err(summary[n][prefix + region]["ssim"]) for n in names]
        twin.errorbar(x + offset, [v for v, _ in vals], yerr=[e for _, e in vals], fmt=marker, color="black",
                      capsize=3, markersize=5, label=f"SSIM {'whole' if region == 'whole' else 'body'}")
    twin.set_ylabel("SSIM")
    handles = left.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    fig.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="lower left", ncol=4,
               bbox_to_anchor=(0.01, 0.0))
    n_patients = max(s["n_patients"] for s in summary.values())
    left.set_title(f"Quality vs {reference}, {report['data']['split']} split (95% CI over {n_patients} patients)"
                   if n_patients > 1 else f"Quality vs {reference} (one patient: no confidence interval)",
                   fontsize=10)

    colors = {}
    for name in names:
        s = summary[name]
        mean, err = value_err(s[prefix + "masked"]["psnr"])
        if name == "noisy" or s["ms_per_slice"] <= 0:
            right.axhline(mean, color="gray", linestyle="--", linewidth=1)
            right.text(0.99, mean, "degraded input ", transform=right.get_yaxis_transform(), va="bottom",
                       ha="right", fontsize=8, color="gray")
            continue
        # an uncorrected "_gauss" variant: hollow marker in its method's colour, label on the left
        base = name.removesuffix("_gauss")
        color = colors.setdefault(base, f"C{len(colors)}")
        variant = name != base
        right.errorbar(s["ms_per_slice"], mean, yerr=None if math.isnan(err) else err, fmt="o", capsize=3,
                       color=color, markerfacecolor="none" if variant else color)
        right.annotate(name, (s["ms_per_slice"], mean), textcoords="offset points", xytext=(-6 if variant else 6, 0),
                       ha="right" if variant else "left", va="center", fontsize=8, color=color)
    right.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    right.xaxis.set_major_formatter(plain)
    right.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    right.xaxis.set_minor_formatter(plain)
    right.margins(x=0.15)  # room for the labels left and right of the outermost points
    right.set_xlabel("ms per slice (log scale)")
    right.set_ylabel(f"PSNR in the body mask vs {reference} (dB)")
    right.set_title("Quality against time", fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def write_per_slice(rows, path):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# -----------------------------------------------------------------------------
# command line

def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", help="main.py run dir of the default model (config.yaml + model.keras)")
    p.add_argument("--data", help="preprocessing output (default: data_dir in the run's metrics.json)")
    p.add_argument("--thesis-run", help="run dir of the thesis autoencoder (default: a sibling run on the same data)")
    p.add_argument("--max-slices", type=int, default=48,
                   help="held-out (test) slices, evenly spaced, the same for every method (0: all; default 48)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--out", help="output folder (default <run-dir>/benchmark)")
    p.add_argument("--calibrate-slices", type=int, default=12,
                   help="random training slices with tissue used to pick each classical method's sigma multiplier "
                        "(0: off; default 12)")
    p.add_argument("--speed-size", type=int, default=512, help="side of the slices timed in the speed part")
    p.add_argument("--speed-steps", type=int, default=10, help="timed training steps per model and feed")
    p.add_argument("--speed-warmup", type=int, default=3, help="training steps before the clock starts")
    p.add_argument("--speed-rounds", type=int, default=2,
                   help="alternating training measurements per feed (disk, memory); the best of each is kept")
    p.add_argument("--speed-reps", type=int, default=5, help="minimum timed inference calls per batch size")
    p.add_argument("--speed-bm3d-slices", type=int, default=1, help="slices per classical method at --speed-size")
    p.add_argument("--speed-series", type=int, default=4, help="demo series preprocessed for slices/s")
    p.add_argument("--workers", type=int, default=1, help="preprocessing worker processes in the speed part")
    p.add_argument("--scaling-series", type=_int_list, default=[1, 4, 16], help="series counts to preprocess")
    p.add_argument("--scaling-slices", type=_int_list, default=[16, 64, 256], help="slice counts to infer")
    # internal: one size of the scaling part in a fresh process
    p.add_argument("--_scaling-child", choices=("preprocess", "infer"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-root", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    p.add_argument("--child-data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._scaling_child:
        return args
    if not args.run_dir:
        p.error("--run-dir is required (a run dir written by main.py)")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.parts = [m.strip() for m in args.parts.split(",") if m.strip()]
    for name, given, known in (("--methods", args.methods, METHODS), ("--parts", args.parts, PARTS)):
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            p.error(f"{name}: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    for name in ("max_slices", "calibrate_slices"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("speed_size", "speed_steps", "speed_rounds", "speed_reps", "speed_bm3d_slices", "speed_series",
                 "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.speed_warmup < 1:
        p.error("--speed-warmup must be >= 1 (the first step traces the model)")
    return args


def resolve_data_dir(args, run):
    data = args.data or run["metrics"].get("data_dir") or "data/processed"
    if not (Path(data) / "manifest.csv").is_file():
        raise BenchmarkError(f"{data}/manifest.csv not found; give --data (the --out folder of preprocessing.py)")
    return Path(data)


def run_benchmark(args):
    """All requested parts; returns the report dict (also written to --out)."""
    from data_factory import PairedSlices
    from main import setup_devices

    run = read_run(args.run_dir)
    data_dir = resolve_data_dir(args, run)
    out = Path(args.out) if args.out else run["dir"] / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    max_slices = args.max_slices or None

    try:  # the run's device settings, on one device (a benchmark measures one device, not a strategy)
        setup_devices({**run["cfg"]["train"], "distribute": "none", "cpu_devices": 1})
    except RuntimeError as e:  # devices already initialized in this process (tests): keep them
        _log(f"devices: {e}")

    runs, notes = {run["method"]: run}, []
    thesis_dir = args.thesis_run or (find_thesis_run(run["dir"], data_dir) if run["method"] != "thesis" else None)
    if thesis_dir and run["method"] != "thesis":
        runs["thesis"] = read_run(thesis_dir)
        if runs["thesis"]["method"] != "thesis":
            raise BenchmarkError(f"--thesis-run {thesis_dir} is a {runs['thesis']['cfg']['model']['name']} run")
        if not args.thesis_run:
            notes.append(f"thesis autoencoder found next to the run: {thesis_dir}")
    for method, r in runs.items():
        recorded = r["metrics"].get("data_dir")
        if recorded and Path(recorded).resolve() != data_dir.resolve():
            notes.append(f"{method} was evaluated on {recorded}, not on {data_dir}")
    wanted_models = [m for m in MODELS if m in args.methods or ("speed" in args.parts and m in runs)]
    models = {m: (runs[m], load_model(runs[m])) for m in wanted_models if m in runs}
    budgets = {m: budget(r) for m, r in runs.items()}

    split = eval_split(data_dir)
    if split != "test":
        notes.append(f"{data_dir} has no test patients: every number is on the validation patients, on which the "
                     "networks' checkpoints were selected")
    held_out = PairedSlices(data_dir, split, batch_size=1, max_slices=max_slices)
    report = {"date": datetime.now().isoformat(timespec="seconds"),
              "command": args.command, "methods": args.methods, "parts": args.parts,
              "machine": machine_info(), "data": data_info(data_dir, held_out.rows, held_out.image_shape, split),
              "budget": budgets, "budget_note": compare_budgets(budgets), "notes": notes}
    d = report["data"]
    _log(f"data: {d['eval_slices_used']} of {d['eval_slices_total']} {split} slices from {d['eval_patients']} "
         f"patient(s), {d['image_size'][0]}x{d['image_size'][1]}, degradation {', '.join(d['degrade_model'])}; "
         "models: " + ", ".join(f"{m} ({r['dir']})" for m, r in runs.items()))
    classical = [m for m in args.methods if m in CLASSICAL]

    if "quality" in args.parts:
        noise = check_noise(data_dir)
        if noise["mean_ratio"] is not None:
            _log(f"noise check: measured / predicted pixel std of the added noise = {noise['mean_ratio']:.3f}")
        scales, table, calib_note, calibration = calibrate(classical, data_dir, args.calibrate_slices,
                                                           seed=run["cfg"]["seed"])
        rows, skipped = evaluate_quality(args.methods, {m: v for m, v in models.items() if m in args.methods},
                                         data_dir, max_slices, scales, split=split)
        if not rows:
            raise BenchmarkError("no method produced any result; check --methods")
        write_per_slice(rows, out / "benchmark_per_slice.csv")
        summary = aggregate(rows)
        ceilings = reference_ceilings(data_dir, split, max_slices)
        q_notes = quality_notes(report, noise, scales, table, calib_note, summary, skipped, classical,
                                args.calibrate_slices)
        report["quality"] = {"summary": summary, "skipped": skipped, "noise": noise, "sigma_scales": scales,
                             "calibration": table, "calibration_slices": args.calibrate_slices,
                             "calibration_record": calibration, "ceilings": ceilings, "notes": q_notes}
    if "speed" in args.parts:
        report["speed"] = speed_part(args, models, data_dir, preprocessing_config(run, data_dir), cache_dir,
                                     classical)
    if "scaling" in args.parts:
        report["scaling"] = scaling_part(args, run, preprocessing_config(run, data_dir), cache_dir)

    if "quality" in report:
        report["headline"] = headline(report, run["method"])

    from metrics import json_safe

    (out / "benchmark.json").write_text(json.dumps(json_safe(report), indent=2, default=str))
    text = markdown(report)
    (out / "benchmark.md").write_text(text + "\n")
    if "quality" in report:
        plot(report, out / "benchmark.png")
    print()
    print(text)
    print(f"wrote {out}/: benchmark.json, benchmark.md" + (", benchmark.png, benchmark_per_slice.csv"
                                                           if "quality" in report else ""))
    report["out"] = str(out)
    return report


def headline(report, default_model):
    """The number the project is judged by, per method: body PSNR on the held-out split against the truth (the
    3T image when the data has no truth), with its patient-level CI, SSIM and the speed at 512^2."""
    truth = report["data"].get("truth")
    region = "truth_masked" if truth else "masked"
    speed = report.get("speed", {})
    methods = {}
    for name in quality_rows(report):
        s = report["quality"]["summary"].get(name)
        if s is None:
            continue
        base = name.removesuffix("_gauss")
        ms = None
        if base in MODELS:
            inference = speed.get("models", {}).get(base, {}).get("inference", [])
            ms = next((i["ms_per_slice"] for i in inference if i["size"] == 512 and i["batch"] == 1), None)
        elif base in speed.get("classical", {}) and speed["classical"][base]["size"] == 512:
            ms = speed["classical"][base]["ms_per_slice"]
        psnr = s[region]["psnr"]
        methods[name] = {"kind": "input" if name == "noisy" else "model" if base in MODELS else "classical",
                         "default": name == default_model, "psnr": psnr["mean"],
                         "psnr_ci": [psnr["ci_low"], psnr["ci_high"]], "ssim": s[region]["ssim"]["mean"],
                         "ms_per_slice_512": ms, "peak_enhancement_error": None}
    return {"reference": "truth" if truth else "3T", "split": report["data"]["split"], "region": "body",
            "methods": methods}


def quality_notes(report, noise, scales, table, calib_note, summary, skipped, classical, n_calibration):
    """The sentences under the quality table: how the classical methods were run and what was skipped."""
    notes = list(report["notes"])
    models = report["data"]["degrade_model"]
    if classical:
        if "field" in models:
            notes.append("classical methods: sigma_pixel = g x sqrt(sigma_source² + sigma_added²) (g: noise std "
                         "gain of the resize), Rician mean inverted with the acquisition-resolution sigma, "
                         "clean floor re-applied at sigma_source; '_gauss' rows: the same run without the "
                         "Rician correction")
        else:
            notes.append("classical methods: sigma_pixel = g x sigma_added (additive Gaussian noise, no Rician "
                         "correction; g: noise std gain of the resize)")
        gain = noise["slices"][0]["resize_std_gain"] if noise["slices"] else None
        if noise["mean_ratio"] is not None:
            notes.append(f"noise check on {len(noise['slices'])} slices: g = {gain:.3f}; measured std of "
                         f"(noisy - clean) in tissue / (g x sigma_added) = {noise['mean_ratio']:.3f}")
        if table:
            reference = "the noise-free truth" if report["data"].get("truth") else "the 3T image"
            notes.append(f"sigma multiplier per method, best body PSNR against {reference} on {n_calibration} "
                         "random training slices with tissue (seeded; listed in benchmark.json): "
                         + ", ".join(f"{m} {s:g}" for m, s in scales.items() if m in table))
        if report["data"].get("truth") and "field" in models:
            notes.append("against the truth the classical methods are scored on their amplitude estimate (Rician "
                         "mean inverted); against the 3T image on the same estimate with the 3T image's own Rician "
                         "floor put back (its air is not zero)")
        elif calib_note:
            notes.append(calib_note)
        effects = []
        for method in classical:
            corrected, plain = summary.get(method), summary.get(f"{method}_gauss")
            if corrected and plain:
                whole = corrected["whole"]["psnr"]["mean"] - plain["whole"]["psnr"]["mean"]
                body = corrected["masked"]["psnr"]["mean"] - plain["masked"]["psnr"]["mean"]
                effects.append(f"{method} {whole:+.2f} / {body:+.2f}")
        if effects:
            notes.append("Rician correction, PSNR corrected - uncorrected (whole / body, dB): " + ", ".join(effects))
    for method, reason in skipped.items():
        if method not in report["methods"]:  # requested methods show their reason in their own row
            notes.append(f"{method} skipped: {reason}")
    return notes


def main(argv=None):
    args = parse_args(argv)
    if args._scaling_child:
        return scaling_child(args)
    args.command = "python benchmark.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        return run_benchmark(args)
    except (BenchmarkError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
