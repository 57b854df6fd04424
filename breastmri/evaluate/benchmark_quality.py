"""benchmark.py's quality part: every method on the same held-out slices, scored against the truth and the 3T image.

    rows, skipped = evaluate_quality(["noisy", "bm3d", "bm4d", "unet"], models, data_dir, 48, params)

The degraded input, the 2-D classical methods of breastmri/restore/denoisers.py (nlm, tv, wavelet, bm3d, one slice at a time), the
multi-frame classical methods (bm4d over the (x, y, t) stack of the slice's position, mppca over the series'
(x, y, z, t) volume, tpca, the default U-Net's projection channel alone, and nordic, optimal-shrinkage local PCA,
over the (x, y, t) stack: each stack or volume is denoised once, cached, and the requested slices are read from it)
and the networks (main.py runs, fed the context their config asks for). Per slice: PSNR, SSIM, MSE over the
whole image and the body mask (metrics.whole_and_masked), per method the patient-level summary (aggregate).

Noise level given to the classical methods (they are run at their best, not handicapped):
1. The recorded sigma. preprocessing.py records per series sigma_source (the 3T image's own Rician sigma,
   measured in its air background) and sigma_added, in normalized units at acquisition resolution.
   Field model: the degraded image is Rician with sigma_total = sqrt(sigma_source^2 + sigma_added^2) around
   the true amplitude A, and the clean reference is itself Rician with sigma_source. So the denoiser removes
   sigma_total (it converges to E[M]), the Rician mean is inverted with sigma_total (-> A) and the expected
   magnitude at sigma_source is put back (reference_sigma in breastmri/restore/denoisers.py), the mean of the clean reference.
   Gaussian model (the thesis): noisy = clean + N(0, sigma_added) is additive and symmetric on top of the
   clean (which already carries its Rician floor), so sigma_added and no Rician correction.
   The uncorrected output of the same run (field model only; it costs nothing) is reported as "<method>_gauss".
2. Resizing. Noise is added at acquisition resolution (e.g. 192^2) and the pair is then resized (cubic up to
   256^2 or 512^2). Interpolation averages neighbouring noise samples: the noise becomes spatially correlated
   and its pixel std drops (x0.86 for 192 -> 256). A denoiser tuned for white noise of std sigma is given the
   std it actually sees, sigma_pixel = g * sigma, where g is the std of unit white noise after the same
   grid.resize_square (simulated, seeded; g = 1 without resizing). benchmark.json "noise" checks this
   against the data: the std of (noisy - clean) in tissue (> 10 sigma_total; there the magnitude noise is close
   to Gaussian and noisy - clean is the added noise alone) divided by g * sigma_added; ~1 on the demo data.
   The Rician inversion uses the unscaled sigma_total: interpolation weights sum to 1, so local means, and
   with them the Rician bias (1.25 sigma in air), are those of acquisition resolution.
   skimage's estimate_sigma is not used when a sigma is recorded: it reads the finest wavelet band, where
   upsampled noise has little energy (it returns about 1/3 of the true sigma for 192 -> 256), and it reads
   Rician noise low in air. Without a recorded sigma it is the fallback, divided by its response to resized
   white noise (then reference_sigma = 0: the clean's own floor is unknown).
3. Calibration: each classical method's parameter is chosen on training slices (breastmri/evaluate/benchmark_calibration.py).
4. Reference. Against the truth a method is scored on its amplitude estimate (Rician mean inverted); against
   the 3T image on the same estimate with the 3T image's own Rician floor put back, because the 3T image's air
   is not zero. The networks are scored as they are (trained against the 3T image, see docs/metrics.md).
5. Multi-frame methods on series with one time point (or a frame missing from the layout): nothing to group
   along time, so the slice falls back to the 2-D bm3d run and the row says so (fallback column, and a note).

"""

import functools
import math
import time
from pathlib import Path

import numpy as np

from breastmri.data.manifest import _zero
from breastmri.restore.denoisers import MULTIFRAME, NOISE_GIVEN, OWN_THREADS
from breastmri.runtime import parallel_map

METRICS = ("psnr", "ssim", "mse")
CLASSICAL = ("nlm", "tv", "wavelet", "bm3d")   # one slice at a time (denoisers.METHODS)
# the networks: the thesis autoencoder, the supervised default, and self-supervised runs (train.mode)
MODELS = ("thesis", "unet", "noise2noise", "noise2void")
MPPCA_RADII = (1, 2, 3)                        # mppca: in-plane patch radius (benchmark_calibration picks one)
# The multi-frame methods read motion-corrected stacks (denoisers.denoise_frames(register=True)), the registration
# the default U-Net's projection gets: every temporal method is compared on the same aligned time courses. The
# demo's frames move by up to 1.5 mm; unregistered, mppca scored 31.62 dB on the 16 benchmark slices.
REGISTER = True
# Tissue for the noise check: clean magnitude above this many sigma_total, where Rician ~ Gaussian.
TISSUE_SNR = 10.0
FALLBACK_2D = "bm3d"                           # multi-frame methods on a series with one time point


class BenchmarkError(Exception):
    """A problem with the inputs (missing run, unknown method, empty split): printed on one line, exit 2."""


# -----------------------------------------------------------------------------
# noise level of the classical methods (module docstring)

@functools.lru_cache(maxsize=None)
def resize_noise_gains(rows, cols, size):
    """(std_gain, estimator_gain) of unit white noise through grid.resize_square to size x size.

    std_gain: pixel std after resizing (1.0 when the square side equals size). estimator_gain: what
    skimage's estimate_sigma reads on that resized noise. Seeded; four 2-D samples of the padded square side.
    """
    from skimage.restoration import estimate_sigma

    from breastmri.data.grid import resize_square

    side = max(int(rows), int(cols))
    noise = np.random.default_rng(0).standard_normal((4, side, side)).astype(np.float32)
    resized = noise if side == size else resize_square(noise, size)
    std_gain = float(resized.std() / noise.std())
    estimator_gain = float(np.mean([estimate_sigma(r.astype(np.float64)) for r in resized]) / noise.std())
    return std_gain, estimator_gain


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
        from breastmri.restore.denoisers import estimate_sigma

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
    from breastmri.restore.denoisers import denoise

    zero = levels["zero"]
    plain = denoise(method, np.asarray(noisy, dtype=np.float64) - zero, scale * levels["sigma_pixel"], rician=False)
    return rician_outputs(plain, levels)


def rician_outputs(plain, levels):
    """(main, gauss, amplitude) from a denoiser's plain Gaussian-assumption output (any shape, air at 0), back on
    the normalized scale: see classical_denoise. Shared by the 2-D and the multi-frame methods."""
    from breastmri.restore.denoisers import rician_bias_correction, rician_mean

    zero = levels["zero"]
    if not levels["rician"]:
        out = (plain + np.float32(zero)).astype(np.float32)
        return out, None, out
    amplitude = rician_bias_correction(plain, levels["sigma_total"])
    main = rician_mean(amplitude, levels["sigma_reference"]) if levels["sigma_reference"] > 0 else amplitude
    return ((main + zero).astype(np.float32), (plain + np.float32(zero)).astype(np.float32),
            (amplitude + zero).astype(np.float32))


def multiframe_denoise(method, frames, levels, param=None, window=None):
    """(main, gauss, amplitude) of a multi-frame method on normalized frames ((T, H, W) for bm4d, tpca and nordic,
    (T, Z, H, W) for mppca), float32, as classical_denoise for one slice. param: bm4d's and nordic's multiplier of
    sigma_pixel (default 1), mppca's patch radius (default MPPCA_RADII[1]); tpca takes none. window: the
    (rows, cols) part of the frames to denoise and return (denoisers.denoise_frames)."""
    from breastmri.restore.denoisers import denoise_frames

    noisy = np.asarray(frames, np.float64) - levels["zero"]
    if method in NOISE_GIVEN:
        plain = denoise_frames(method, noisy, (1.0 if param is None else param) * levels["sigma_pixel"], rician=False,
                               register=REGISTER, window=window)
    else:  # mppca and tpca measure the noise themselves
        plain = denoise_frames(method, noisy, rician=False, patch_radius=MPPCA_RADII[1] if param is None else param,
                               register=REGISTER, window=window)
    return rician_outputs(plain, levels)


# -----------------------------------------------------------------------------
# multi-frame methods: stacks from the manifest layout, each denoised once

class Stacks:
    """The frames of a series for the multi-frame methods, read from the memmaps by the manifest's layout.

    A slice (t, k) of a series is the manifest row with that time_index and position_index and the same
    series_uid; bm4d takes the (T, H, W) frames of one position k, mppca the (T, Z, H, W) volume of the series,
    or only the slab of its positions that the scored ones depend on (denoisers.mppca_slab: the same output
    there): plan() names the rows that will be scored, and the slabs of their positions are merged where they
    overlap, so each position is denoised once. denoise() runs a method on the stack or slab of a row once and
    keeps the result, so the slices scored from one run cost one run."""

    def __init__(self, data_dir, params=None):
        from breastmri.data.manifest import read_manifest

        self.data_dir, self.params = Path(data_dir), dict(params or {})
        self.layout, self._arrays, self._cache, self._planned = {}, {}, {}, {}
        for r in read_manifest(data_dir):
            if r.get("time_index") is not None:
                self.layout.setdefault(r["series_uid"], {})[(r["time_index"], r["position_index"])] = r

    def plan(self, rows):
        """Record the positions that will be scored, per series (mppca merges their slabs)."""
        for r in rows:
            if r.get("position_index") is not None:
                self._planned.setdefault(r["series_uid"], set()).add(r["position_index"])

    def slab(self, row, n_positions):
        """(lo, hi) positions of the mppca run that serves the row: its own slab, or the merged slab of the planned
        positions of its series where merging saves work (slabs overlapping by 2 z-radius or more: the union
        then has no more patch centres than the two runs)."""
        from breastmri.restore.denoisers import mppca_slab, mppca_z_radius

        k = row["position_index"]
        own = mppca_slab(n_positions, k)
        if k not in self._planned.get(row["series_uid"], ()):
            return own
        merged = []
        for a, b in sorted(mppca_slab(n_positions, p) for p in self._planned[row["series_uid"]]):
            if merged and merged[-1][1] - a >= 2 * mppca_z_radius(n_positions):
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return next((a, b) for a, b in merged if a <= own[0] and own[1] <= b)

    def array(self, relative_path):
        if relative_path not in self._arrays:
            self._arrays[relative_path] = np.load(self.data_dir / relative_path, mmap_mode="r")
        return self._arrays[relative_path]

    def rows_of(self, row, whole_series=False):
        """Rows of the row's stack: [[row per position] per time] (whole_series) or [row per time] at the row's
        position; None when the series has one time point or a frame is missing (no stack to use)."""
        layout = self.layout.get(row["series_uid"], {})
        n_times, n_positions = row.get("n_times") or 1, row.get("n_positions") or 1
        positions = range(n_positions) if whole_series else [row.get("position_index")]
        grid = [[layout.get((t, k)) for k in positions] for t in range(n_times)]
        if n_times < 2 or any(r is None for frame in grid for r in frame):
            return None
        return grid if whole_series else [frame[0] for frame in grid]

    def frames(self, rows, key="noisy_file"):
        """float32 array of the rows' slices (any nesting of lists -> the same leading axes, then H, W)."""
        if isinstance(rows, dict):
            return np.asarray(self.array(rows[key])[rows["slice_index"]], dtype=np.float32)
        return np.stack([self.frames(r, key) for r in rows])

    def denoise(self, method, row, levels, window=None):
        """((main, gauss, amplitude) of the row's slice, ms per frame of the stack's run, fallback or None);
        window: (rows, cols) slices: that part of the slice only, the multi-frame method run on that part of the
        stack (multiframe_denoise; the 2-D fallback on the whole slice, cropped).

        bm4d, tpca and nordic: the (T, H, W) stack of the row's position (bm4d, nordic: sigma = scale *
        sigma_pixel); mppca: the (T, Z', H, W) slab of the series' positions that the row's position depends on
        (denoisers.mppca_slab: the same output there as the whole volume), with the calibrated patch radius.
        Without a stack (one time point): the 2-D FALLBACK_2D run of classical_denoise on the slice alone."""
        job = self._job(method, row, window)
        window = (slice(None), slice(None)) if window is None else tuple(window)
        if job is None:
            start = time.perf_counter()
            out = classical_denoise(FALLBACK_2D, self.frames(row), levels, self.params.get(FALLBACK_2D, 1.0))
            out = tuple(None if o is None else o[(Ellipsis,) + window] for o in out)
            return out, 1000 * (time.perf_counter() - start), f"{FALLBACK_2D} (no time axis)"
        key, stack_rows, at, window = job
        if key not in self._cache:
            self._cache[key] = timed_multiframe((method, self.frames(stack_rows), levels, self.params.get(method),
                                                 window))
        outputs, ms = self._cache[key]
        return tuple(None if o is None else o[at] for o in outputs), ms, None

    def prefetch(self, method, rows, windows=None):
        """Denoise the stacks that `rows` (with `windows`; default whole slices) will ask denoise() for, side by side
        (workers_for), each run's ms per frame its own."""
        pending = {}
        for row, window in zip(rows, windows or [None] * len(rows)):
            job = self._job(method, row, window)
            if job is not None and job[0] not in self._cache and job[0] not in pending:
                pending[job[0]] = job[1], noise_levels(row, self.frames(row)), job[3]
        jobs = [(method, self.frames(stack_rows), lv, self.params.get(method), window)
                for stack_rows, lv, window in pending.values()]
        self._cache.update(zip(pending, parallel_map(timed_multiframe, jobs, workers_for(method))))

    def _job(self, method, row, window=None):
        """(cache key, stack rows, the row's index in the run's output, window (None: whole)) of the run serving
        the row; None when the row has no stack (one time point, or a frame missing)."""
        window = (slice(None), slice(None)) if window is None else tuple(window)
        whole = method == "mppca"
        stack_rows = self.rows_of(row, whole_series=whole)
        if stack_rows is None:
            return None
        k = row["position_index"]
        if whole:  # only the positions that k (and the planned positions near it) depend on
            lo, hi = self.slab(row, len(stack_rows[0]))
            stack_rows = [frame[lo:hi] for frame in stack_rows]
            key, at = (method, row["series_uid"], lo, hi), (row["time_index"], k - lo)
        else:
            key, at = (method, row["series_uid"], k), (row["time_index"],)
        return key + tuple((w.start, w.stop, w.step) for w in window), stack_rows, at, window


def workers_for(method):
    """Runs side by side for a classical method: 1 if it uses every core itself (denoisers.OWN_THREADS), else all."""
    return 1 if method in OWN_THREADS else None


def timed_call(job):
    """(fn(*args, **kwargs), seconds) of job = (fn, args[, kwargs]): a run's own time, also in parallel_map."""
    fn, args, kwargs = job if len(job) == 3 else (*job, {})
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def timed_multiframe(job):
    """(multiframe_denoise's outputs, ms per frame of the run) of job = (method, frames, levels, param, window)."""
    outputs, seconds = timed_call((multiframe_denoise, job))
    return outputs, 1000 * seconds / (job[1].size // np.prod(job[1].shape[-2:]))


def eval_split(data_dir):
    """"test" when the data has test patients (never used for training or checkpoint selection), else "val"."""
    from breastmri.data.manifest import read_manifest

    return "test" if any(r["split"] == "test" for r in read_manifest(data_dir)) else "val"


def check_noise(data_dir, n=4):
    """Recorded sigma vs the data: per slice, measured std of (noisy - clean) in tissue / (g * sigma_added)."""
    from breastmri.data.paired import PairedSlices

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
    (breastmri/metrics.py), plus the same with a "truth_" prefix against the noise-free truth when one is given. pred is
    one image, or a pair (against 3T, against truth) for the classical methods (see classical_denoise)."""
    from breastmri.metrics import whole_and_masked

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


def model_prediction(run, model, inputs, rows, dataset, cache):
    """A network's output for a batch of whole-slice inputs (B, H, W, C) -> float32 (B, H, W), as main.py evaluates
    it (evaluation.network_output: the change common to a position's frames taken back, model.common_anatomy;
    self-supervised runs get the Rician mean inverted; cache keeps the series' noise and the positions' maps)."""
    from breastmri.evaluate.evaluation import network_output
    from breastmri.restore import training
    from breastmri.restore.networks import keeps_common, size_multiple

    return network_output(model, inputs, rows, dataset, size_multiple(run["cfg"]),
                          lambda row: training.needs_rician_correction(run["cfg"], row.get("degrade_model")),
                          keeps_common(run["cfg"]), cache)


def evaluate_quality(methods, models, data_dir, max_slices, params, split="test", stacks=None, times_per_position=1):
    """Per-slice scores of every method on the same held-out slices (`split`, the test patients by default):
    max_slices of them, as that many / times_per_position slice positions (data_factory.spread_slices).

    methods: names from METHODS, in table order; models: {"unet" | "thesis": (run, keras model)}, each fed the
    context its config asks for (model.context_offsets); params: {classical method: sigma multiplier (mppca: patch
    radius)}. The multi-frame methods denoise each stack once (Stacks) and report ms per frame of that run;
    a slice without a stack falls back to FALLBACK_2D (its row's "fallback" column). Every slice is scored against the 3T image and, when the data
    has it, against the noise-free truth, with one body mask per slice (of the truth if there is one, else of the
    3T image), as main.py does. Returns (rows, skipped): rows are dicts with method, patient_id, series_uid,
    slice_index, the slice_scores, ms and (classical) sigma_pixel; skipped = {method: reason}.
    """
    from tqdm import tqdm

    from breastmri.data.paired import PairedSlices
    from breastmri.evaluate.evaluation import common_maps
    from breastmri.metrics import body_mask
    from breastmri.restore.networks import context_offsets, keeps_common, size_multiple

    held_out = PairedSlices(data_dir, split, batch_size=8, max_slices=max_slices,
                            times_per_position=times_per_position)
    stacks = stacks or Stacks(data_dir, params)
    stacks.plan(held_out.rows)
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
            ds = PairedSlices(data_dir, split, batch_size=run["cfg"]["train"]["batch_size"], max_slices=max_slices,
                              times_per_position=times_per_position, context=context_offsets(run["cfg"]))
            model.predict_on_batch(ds[0][0])  # warm-up: tracing is not inference time
            sigmas, keeps, multiple = {}, keeps_common(run["cfg"]), size_multiple(run["cfg"])
            for b in range(len(ds)):
                noisy, clean = ds[b]
                truth = ds.truth_batch(b)
                # the common change's maps first: enhance.py predicts every frame once anyway
                common_maps(model, ds.batch_rows(b), ds, multiple, keeps, sigmas)
                start = time.perf_counter()
                pred = model_prediction(run, model, noisy, ds.batch_rows(b), ds, sigmas)
                ms = 1000 * (time.perf_counter() - start) / len(noisy)
                for j, row in enumerate(ds.batch_rows(b)):
                    c, t = clean[j, ..., 0], None if truth is None else truth[j, ..., 0]
                    record(method, row, slice_scores(pred[j], c, mask_of(b * ds.batch_size + j, c, t), t), ms)
                bar.update(len(noisy))
        else:
            for position, row, noisy, clean, truth in _slices(held_out):
                mask = mask_of(position, clean, truth)
                if method == "noisy":
                    record(method, row, slice_scores(noisy, clean, mask, truth), 0.0)
                elif method in MULTIFRAME:
                    if position == 0:
                        stacks.prefetch(method, held_out.rows)
                    levels = noise_levels(row, noisy)
                    (main_out, gauss, amplitude), ms, fallback = stacks.denoise(method, row, levels)
                    extra = {"fallback": fallback} if fallback else {}
                    record(method, row, slice_scores((main_out, amplitude), clean, mask, truth), ms, **extra)
                    if gauss is not None:
                        record(f"{method}_gauss", row, slice_scores(gauss, clean, mask, truth), ms, **extra)
                else:
                    levels = noise_levels(row, noisy)
                    start = time.perf_counter()
                    main_out, gauss, amplitude = classical_denoise(method, noisy, levels, params.get(method, 1.0))
                    ms = 1000 * (time.perf_counter() - start)
                    sigma = params.get(method, 1.0) * levels["sigma_pixel"]
                    record(method, row, slice_scores((main_out, amplitude), clean, mask, truth), ms,
                           sigma_pixel=sigma)
                    if gauss is not None:
                        record(f"{method}_gauss", row, slice_scores(gauss, clean, mask, truth), ms, sigma_pixel=sigma)
                bar.update()
        bar.close()
    return rows, skipped


def reference_ceilings(data_dir, split, max_slices, times_per_position=1):
    """What the two references allow, measured on the held-out slices (body mask, mean over slices, dB).

    The 3T image x = S + n_src carries noise of its own (variance s2 = sigma_src^2); the degraded input
    y = x + n_add (a2 = sigma_add^2, total t2 = s2 + a2). Against the truth S, reproducing the 3T image exactly
    gains 10 log10(t2 / s2) over the input (6.0 dB at SNR ratio 0.5): the "3T quality" level, which a denoiser
    may exceed. Against the 3T image, even the truth gains only 10 log10(t2 / a2) = 10 log10(1 + s2 / a2) over
    the input (4.8 dB), while the best possible estimate of x from y, the MMSE estimate S + (s2 / t2)(y - S)
    (Gaussian approximation), has error variance s2 a2 / t2 and gains 10 log10(t2 / s2) (6.0 dB): against the
    3T image an MSE-trained network is rewarded for keeping part of the noise. Returns {} without truth."""
    from breastmri.data.paired import PairedSlices
    from breastmri.metrics import body_mask, slice_metrics

    ds = PairedSlices(data_dir, split, batch_size=1, max_slices=max_slices, times_per_position=times_per_position)
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
    from breastmri.metrics import mean_ci

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
